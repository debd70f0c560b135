"""The pipeline's command line:

    python -m golf.submit.cli submit [--name N] [--preset P] [--seeds 1,2,3] [--track T] [--author A] ...
    python -m golf.submit.cli ablate --name N --a "ENV=.. ENV=.." --b "ENV=.." [--seeds 1,2,3] [--preset P]
    python -m golf.submit.cli study --name N --arms "base=;mem=ENV=.." --baseline base --contexts 256,512,1024
        [--seeds 1,2,3] [--preset P] [--common "ENV=.."] [--local A --global B] [--floor 0.005] [--probes]
    python -m golf.submit.cli verify --record DIR [--artifact PATH] [--seeds S] [--tolerance X]
    python -m golf.submit.cli submission --record DIR [--out DIR] [--github-id ID] [--author A] [--track T]

Training settings come from the environment under the challenge's names (`make train-and-submit
NUM_LAYERS=10`) or extra flags (`--num-layers 10`)."""
from __future__ import annotations

import argparse
import os
from typing import Sequence

from golf.core.utils import GolfError, main_guard
from golf.eval.deficit import DEFAULT_FLOOR
from golf.submit.ablate import ablate
from golf.submit.challenge import DEFAULT_OUT, write_submission
from golf.submit.pipeline import submit
from golf.submit.settings import settings_from
from golf.submit.study import study
from golf.submit.study_report import rerender
from golf.submit.verify import verify


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m golf.submit.cli", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    ps = sub.add_parser("submit", help="train -> quantise -> size check -> eval -> record")
    ps.add_argument("--name")
    ps.add_argument("--preset")
    ps.add_argument("--seeds", help="comma-separated, e.g. 1,2,3 (default: SEED)")
    ps.add_argument("--track")
    ps.add_argument("--author", default=os.environ.get("AUTHOR"))
    ps.add_argument("--github-id", default=os.environ.get("GITHUB_ID"))
    ps.add_argument("--blurb", default=os.environ.get("BLURB"))
    ps.add_argument("--records", default="records")
    ps.add_argument("--fresh", action="store_true", help="do not reuse cached runs")
    pa = sub.add_parser("ablate", help="paired A/B on the same seeds")
    pa.add_argument("--name", required=True)
    pa.add_argument("--a", default="", help='settings of arm A, e.g. "NUM_MEMORY_TOKENS=0"')
    pa.add_argument("--b", default="", help='settings of arm B, e.g. "NUM_MEMORY_TOKENS=64"')
    pa.add_argument("--seeds", default="3", help="a count (3 = seeds 1,2,3) or a list 1,2,3")
    pa.add_argument("--preset")
    pa.add_argument("--records", default="records")
    pa.add_argument("--fresh", action="store_true")
    pt = sub.add_parser("study", help="the memory-bench grid: arms x seeds, per-context and per-position BPB")
    pt.add_argument("--name", required=True)
    pt.add_argument("--arms", required=True, help='";"-separated name=SETTINGS, e.g. "base=;mem=NUM_MEMORY_TOKENS=8"')
    pt.add_argument("--baseline", required=True, help="the arm every other arm is compared with")
    pt.add_argument("--contexts", default="256,512,1024", help="context lengths to score, e.g. 256,512,1024")
    pt.add_argument("--seeds", default="3", help="a count (3 = seeds 1,2,3) or a list 1,2,3")
    pt.add_argument("--preset")
    pt.add_argument("--common", default="", help='settings every arm gets, e.g. "ITERATIONS=250"')
    pt.add_argument("--local", default="", help="the local (sliding-window) arm of the deficit table")
    pt.add_argument("--global", dest="global_", default="", help="the global arm of the deficit table")
    pt.add_argument("--floor", type=float, default=DEFAULT_FLOOR, help="closure is NA where the deficit is below this (BPB)")
    pt.add_argument("--probes", action="store_true", help="retrieval probes on every run's artifact")
    pt.add_argument("--records", default="records")
    pt.add_argument("--fresh", action="store_true")
    pr = sub.add_parser("study-rerender", help="rebuild a study record's tables and figures from its own files")
    pr.add_argument("--record", required=True)
    pr.add_argument("--why", required=True, help="what changed in the report (kept in the record)")
    pr.add_argument("--note", action="append", default=[], help="a reading of the results for the README (repeatable)")
    pv = sub.add_parser("verify", help="re-evaluate a record and check its claims")
    pv.add_argument("--record", required=True)
    pv.add_argument("--artifact")
    pv.add_argument("--seeds", help="seeds to check (default: every seed of the record)")
    pv.add_argument("--tolerance", type=float, help="allowed |val_bpb diff| (default 1e-4 with --artifact, 0.01 rebuilt)")
    pv.add_argument("--data-path")
    pc = sub.add_parser("submission", help="the challenge's pull-request folder from a record")
    pc.add_argument("--record", required=True)
    pc.add_argument("--out", default=DEFAULT_OUT, help="the challenge repository's root (a fork), or any folder")
    pc.add_argument("--github-id", default=os.environ.get("GITHUB_ID", ""))
    pc.add_argument("--author", default=os.environ.get("AUTHOR", ""))
    pc.add_argument("--track", default="", help="track_10min_16mb | track_non_record_16mb (default: from the record)")
    args, extra = p.parse_known_args(argv)
    if args.cmd == "submission":
        if extra:
            raise GolfError(f"submission takes no training settings ({' '.join(extra)}): nothing is re-run")
        dest = write_submission(args.record, args.out, args.github_id, args.author, args.track)
        print(f"wrote {dest}: README.md, submission.json, train_gpt.py, requirements.txt, train_seed*.log")
        return 0
    if args.cmd == "study-rerender":
        if extra:
            raise GolfError(f"study-rerender takes no training settings ({' '.join(extra)}): nothing is re-run")
        rerender(args.record, args.why, args.note)
        return 0
    if args.cmd == "verify":
        if extra:
            raise GolfError(f"verify takes no training settings ({' '.join(extra)}): the record's config is used")
        return 0 if verify(args.record, args.artifact or None, args.seeds, args.tolerance, args.data_path) else 1
    settings = settings_from(dict(os.environ), extra)
    preset = args.preset or settings.pop("preset", None)  # --preset wins over a PRESET in the environment
    settings.pop("preset", None)
    if args.cmd == "submit":
        submit(args.name or None, preset, args.seeds, args.track or None, args.author, args.github_id, args.blurb,
               settings, args.records, use_cache=not args.fresh)

    elif args.cmd == "study":
        study(args.name, args.arms, args.baseline, args.contexts, args.seeds, preset, settings, args.common,
              args.local or None, args.global_ or None, args.floor, args.probes, args.records, use_cache=not args.fresh)
    else:
        if not args.name:
            raise GolfError("ablate needs NAME=..., e.g. make ablate NAME=memtok A='NUM_MEMORY_TOKENS=0' B=''")
        ablate(args.name, args.a, args.b, args.seeds, preset, settings, args.records, use_cache=not args.fresh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main_guard(main)())
