"""Retrieval probes on an artifact: what a model can fetch from far back in its context.

    python -m golf.eval.probes --artifact runs/<id>/model.ptz --out DIR [--contexts 256,512,1024]
        [--depths 0,0.25,0.5,0.75,1] [--pairs 4,8,16] [--distances 16,64,256] [--trials N] [--seed S]
        [--probes passkey,mqar,recall] [--filler repeat|random] [--device cpu]

Each probe (golf/eval/probe_tasks.py: passkey retrieval, multi-query associative recall, token
recall at a distance) writes DIR/<probe>.json (accuracy per context x depth | pairs | distance, the
chance level, its settings) and DIR/<probe>.png (a heat map; skipped with a message when matplotlib
is missing). Deterministic for a seed. Tiny models run it on a CPU in seconds; a language model
trained on text alone is expected near chance on random-token probes unless it learned to copy.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from golf.compress.artifact import load_artifact
from golf.core import plots
from golf.core.dist import pick_device
from golf.core.utils import GolfError, atomic_write_json, main_guard
from golf.eval import probe_tasks as T
from golf.eval.probe_run import cell_table, run_trials
from golf.eval.score import parse_contexts

PROBES = ("passkey", "mqar", "recall")


def say(msg: str) -> None:
    print(f"[golf] {msg}", flush=True)


def parse_list(spec: str | Sequence, setting: str, kind: type, lo: float, hi: float | None = None) -> list:
    """'0,0.5,1' -> [0.0, 0.5, 1.0], every value in [lo, hi]; anything else -> a GolfError naming the flag."""
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s) for s in spec]
    try:
        vals = [kind(s) for s in items if s]
    except ValueError:
        vals = []
    if not vals or any(v < lo or (hi is not None and v > hi) for v in vals) or len(set(vals)) != len(vals):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise GolfError(f"{setting} {spec!r}: give distinct comma-separated {kind.__name__}s {rng}, e.g. "
                        + {"--depths": "0,0.25,0.5,0.75,1", "--pairs": "4,8,16"}.get(setting, "16,64,256"))
    return vals


def build(vocab: int, contexts: Sequence[int], depths: Sequence[float], pairs: Sequence[int],
          distances: Sequence[int], trials: int, seed: int, probes: Sequence[str] = PROBES,
          filler: str = "repeat") -> list[T.ProbeSet]:
    """Every probe's trials, before any model runs (bad settings fail here)."""
    if trials < 1:
        raise GolfError(f"--trials {trials}: give at least 1 trial per cell")
    unknown = [p for p in probes if p not in PROBES]
    if unknown or not probes:
        raise GolfError(f"--probes {','.join(probes)}: choose from {', '.join(PROBES)}")
    made = {"passkey": lambda: T.passkey(vocab, contexts, depths, trials, seed, filler),
            "mqar": lambda: T.mqar(vocab, contexts, pairs, trials, seed),
            "recall": lambda: T.recall(vocab, contexts, distances, trials, seed)}
    sets = [made[p]() for p in probes]
    empty = [s.name for s in sets if not s.trials]
    if empty:
        raise GolfError(f"probe {', '.join(empty)}: no cell fits the contexts {list(contexts)}; use longer "
                        "--contexts or fewer --pairs / shorter --distances")
    return sets


def run_probes(model: nn.Module, sets: Sequence[T.ProbeSet], out: str | Path, seed: int,
               info: dict[str, Any] | None = None, plot: bool = True) -> dict[str, Any]:
    """Run built probe sets; write <probe>.json (+ .png) under `out`. Returns {probe: summary}."""
    out = Path(out)
    summary: dict[str, Any] = {}
    for ps in sets:
        t0 = time.perf_counter()
        table = cell_table(ps, run_trials(model, ps.trials))
        rec = {"probe": ps.name, "seed": seed, "rows": ps.rows, "row_label": "context (tokens)", "cols": ps.cols,
               "col_label": ps.col_label, "trials_per_cell": max((c["trials"] for c in table["cells"]), default=0),
               "chance_token": ps.chance, "settings": ps.settings, **table,
               "seconds": round(time.perf_counter() - t0, 3), **(info or {})}
        path = atomic_write_json(out / f"{ps.name}.json", rec)
        png = None
        if plot:
            try:
                png = plots.heatmap(table["accuracy"], ps.rows, ps.cols, out / f"{ps.name}.png",
                                    title=f"{ps.name}: exact-match accuracy (chance/token {ps.chance:.3g})",
                                    xlabel=ps.col_label, ylabel="context (tokens)")
            except ImportError:
                say(f"matplotlib is not installed: skipped {out / (ps.name + '.png')} (pip install matplotlib)")
        summary[ps.name] = {"mean_accuracy": table["mean_accuracy"], "json": str(path), "png": str(png) if png else None}
        say(f"{ps.name}: mean exact accuracy {table['mean_accuracy']:.3f} over {len(table['cells'])} cells "
            f"({rec['seconds']:.1f}s) -> {path}")
    return summary


def probe_artifact(artifact: str | Path, out: str | Path, contexts: Any = "256,512,1024",
                   depths: Any = "0,0.25,0.5,0.75,1", pairs: Any = "4,8,16", distances: Any = "",
                   trials: int = 10, seed: int = 1337, probes: Any = PROBES, filler: str = "repeat",
                   device: str = "cpu", plot: bool = True) -> dict[str, Any]:
    """Check every setting, load the artifact, run the probes (the CLI and `make study PROBES=1`)."""
    ctx = parse_contexts(contexts)
    if not ctx:
        raise GolfError("--contexts: give context lengths, e.g. 256,512,1024")
    dep = parse_list(depths, "--depths", float, 0.0, 1.0)
    prs = parse_list(pairs, "--pairs", int, 1)
    dist = parse_list(distances, "--distances", int, 1) if distances else T.default_distances(ctx)
    names = [p.strip() for p in probes.split(",")] if isinstance(probes, str) else list(probes)
    dev = pick_device(device, "--device")
    if not Path(artifact).is_file():
        raise GolfError(f"--artifact {artifact}: no such file; give a quantised artifact (runs/<id>/model.ptz)")
    model, meta = load_artifact(artifact, device=dev)
    vocab = int(meta["model_config"]["vocab_size"])
    sets = build(vocab, ctx, dep, prs, dist, trials, seed, names, filler)
    info = {"artifact": str(artifact), "artifact_commit": meta.get("commit"), "vocab_size": vocab, "device": str(dev)}
    return run_probes(model, sets, out, seed, info, plot)


@main_guard
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m golf.eval.probes", description=__doc__.split("\n\n")[0])
    p.add_argument("--artifact", required=True, help="the quantised artifact (runs/<id>/model.ptz)")
    p.add_argument("--out", required=True, help="folder for <probe>.json and <probe>.png")
    p.add_argument("--contexts", default="256,512,1024", help="context lengths (heat-map rows)")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="passkey: needle depths in [0, 1]")
    p.add_argument("--pairs", default="4,8,16", help="mqar: key-value pairs per sequence")
    p.add_argument("--distances", default="", help="recall: copy distances (default 16,64,256,... that fit)")
    p.add_argument("--trials", type=int, default=10, help="trials per cell")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--probes", default=",".join(PROBES))
    p.add_argument("--filler", default="repeat", choices=("repeat", "random"), help="passkey haystack")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--no-plot", action="store_true")
    a = p.parse_args(argv)
    probe_artifact(a.artifact, a.out, a.contexts, a.depths, a.pairs, a.distances, a.trials, a.seed, a.probes,
                   a.filler, a.device, plot=not a.no_plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
