"""`make study`: the memory-bench grid. Every arm on the same seeds, each run scored per context and
per position bucket, paired tests against a baseline arm, and (with a local and a global arm) the
deficit / closure tables (golf/eval/deficit.py); one record folder records/studies/<date>_<name>/.

    make study NAME=x ARMS='base=;sssl=MIXERS=swa_pattern ATTN_WINDOW=64 GLOBAL_EVERY=4;rmt=RMT_MEMORY=8' \
        BASELINE=base LOCAL=sssl GLOBAL=base CONTEXTS=256,512,1024 SEEDS=1,2,3 [COMMON='ITERATIONS=250'] [PROBES=1]

ARMS is `;`-separated `name=SETTINGS` (SETTINGS as in `make ablate A=...`; empty = the preset).
Runs go through golf.submit.runs.run_seed, so a rerun (or another study or ablation) reuses every
finished run from runs/cache/, and each run's per-context score (its own file in the run folder)
is reused too. Every arm's settings are checked (the model built on the meta device) and the
record name is refused if taken, before anything trains.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path
from typing import Any

from golf.core.config import FIELD_TYPES, Hyperparameters, layer_mixers
from golf.core.utils import GolfError, atomic_dir, device_description, git_commit, now_stamp, sweep_stale, today
from golf.eval.deficit import DEFAULT_FLOOR
from golf.eval.probes import probe_artifact
from golf.eval.score import parse_contexts
from golf.model.mechanisms.sliding_window import SlidingWindowAttention
from golf.submit import records as R
from golf.submit.runs import SeedRun, Stages, copy_seed_files, ensure_data, read_json, run_seed, say
from golf.submit.settings import config_env, default_preset, parse_seeds, parse_settings, resolve_config
from golf.submit.study_report import build_record, write_record

_ARM = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,39}$")


def parse_arms(text: str) -> dict[str, dict[str, Any]]:
    """'base=;sssl=ATTN_WINDOW=64 MIXERS=swa_pattern' -> {'base': {}, 'sssl': {...}} (typed, checked)."""
    arms: dict[str, dict[str, Any]] = {}
    for part in (p.strip() for p in (text or "").split(";")):
        if not part:
            continue
        name, _, body = part.partition("=")
        name = name.strip()
        if name.lower() in FIELD_TYPES or not _ARM.match(name):
            raise GolfError(f"ARMS: {part!r} does not start with an arm name; write name=SETTINGS, "
                            f"e.g. ARMS='base=;sssl=MIXERS=swa_pattern ATTN_WINDOW=64'")
        if name in arms:
            raise GolfError(f"ARMS: arm {name!r} is named twice; give every arm its own name")
        arms[name] = parse_settings(body, f"ARMS arm {name}")
    if len(arms) < 2:
        raise GolfError(f"ARMS={text!r}: a study needs at least two arms, e.g. ARMS='base=;mem=NUM_MEMORY_TOKENS=8'")
    return arms


def local_window(h: Hyperparameters) -> int:
    """The sliding window of an arm's local layers in tokens (0: it has none)."""
    return SlidingWindowAttention.window_size(h) if "swa" in layer_mixers(h.model_config()) else 0


def score_at_contexts(run: SeedRun, h: Hyperparameters, contexts: list[int], stages: Stages) -> tuple[dict[str, Any], Path]:
    """The run's artifact scored at each context (non-overlapping windows, 64-token position buckets)
    by the score stage: (report, its file). Kept in the run folder, so a reused run is not scored again."""
    out = run.run_dir / f"contexts_{'-'.join(map(str, contexts))}_m{h.score_max_tokens}.json"
    rep = read_json(out)
    if not all(str(c) in (rep.get("contexts") or {}) for c in contexts):
        # the headline of this report is not used: non-overlapping windows and no TTT make it cheap
        h2 = dataclasses.replace(h, eval_contexts=",".join(map(str, contexts)), eval_stride=h.eval_seq_len, ttt="")
        say(f"{run.run_id}: scoring at contexts {','.join(map(str, contexts))}")
        stages.evaluate(config_env(h2), h2, run.run_dir / "model.ptz", out, run.run_dir / "pipeline.log")
        rep = read_json(out)
    missing = [c for c in contexts if str(c) not in (rep.get("contexts") or {})]
    if missing:
        raise GolfError(f"{out}: no score at context(s) {missing} (longer than the val tokens scored, "
                        f"{rep.get('tokens')}?); use shorter CONTEXTS or a larger SCORE_MAX_TOKENS")
    return rep, out


def study(name: str, arms: str, baseline: str, contexts: str, seeds: str | None = None, preset: str | None = None,
          settings: dict[str, Any] | None = None, common: str = "", local: str | None = None,
          global_: str | None = None, floor: float = DEFAULT_FLOOR, probes: bool = False,
          records_dir: str | Path = "records", stages: Stages | None = None, use_cache: bool = True) -> Path:
    stages = stages or Stages()
    name = R.check_record_name(name)
    arm_map = parse_arms(arms)
    if baseline not in arm_map:
        raise GolfError(f"BASELINE={baseline!r} is not one of the arms ({', '.join(arm_map)})")
    if bool(local) != bool(global_):
        raise GolfError("LOCAL and GLOBAL go together: name the local arm and the global arm, e.g. LOCAL=sssl GLOBAL=base")
    for role, arm in (("LOCAL", local), ("GLOBAL", global_)):
        if arm and arm not in arm_map:
            raise GolfError(f"{role}={arm!r} is not one of the arms ({', '.join(arm_map)})")
    if local and local == global_:
        raise GolfError(f"LOCAL and GLOBAL are both {local!r}; name two different arms")
    if floor < 0:
        raise GolfError(f"FLOOR={floor}: the deficit floor is a BPB difference >= 0, e.g. 0.005")
    ctx_list = parse_contexts(contexts)
    if not ctx_list:
        raise GolfError("CONTEXTS is empty: give the context lengths to score, e.g. CONTEXTS=256,512,1024")
    shared = {**(settings or {}), **parse_settings(common, "COMMON")}
    preset = preset or default_preset()
    seed_list = parse_seeds(seeds or "3", Hyperparameters.seed, count_ok=True)
    cfgs = {}
    for arm, over in arm_map.items():  # every arm valid (and buildable) before anything trains
        try:
            cfgs[arm] = resolve_config(preset, {**shared, **over}, seed_list[0], "check")
        except GolfError as e:
            raise GolfError(f"ARMS arm {arm}: {e}") from None
    existing = R.find_existing(Path(records_dir), R.STUDIES, name)
    if existing is not None:
        raise GolfError(f"a study named {name!r} already exists ({existing}); choose another NAME")
    date, stamp = today(), now_stamp()
    dest = R.record_dir(Path(records_dir), R.STUDIES, date, name)
    ensure_data(cfgs[baseline], stages, Path(cfgs[baseline].out_dir) / f"prepare_{stamp}.log")

    commit = git_commit()  # before training, as ablate and submit do
    runs: dict[str, list[SeedRun]] = {a: [] for a in arm_map}
    reports: dict[str, list[tuple[dict[str, Any], Path]]] = {a: [] for a in arm_map}
    for s in seed_list:
        for arm, over in arm_map.items():  # arms interleaved seed by seed: machine drift hits them alike
            h = resolve_config(preset, {**shared, **over}, s, f"{name}_{stamp}_{arm}_s{s}")
            runs[arm].append(run_seed(h, stages, use_cache))
            reports[arm].append(score_at_contexts(runs[arm][-1], h, ctx_list, stages))

    spec = dict(name=name, date=date, preset=preset, seeds=seed_list, contexts=ctx_list, baseline=baseline,
                local=local, global_=global_, floor=floor, window=local_window(cfgs[local]) if local else 0,
                common=R.env_assignments(shared), arm_settings={a: R.env_assignments(o) for a, o in arm_map.items()},
                commit=commit, hardware=device_description(),
                data=R.store_manifest(Path(records_dir), cfgs[baseline].data_path, cfgs[baseline].tokenizer_path))
    sweep_stale(dest.parent)
    with atomic_dir(dest) as tmp:
        files = []
        for arm, rs in runs.items():
            for r, (_, path) in zip(rs, reports[arm]):
                files += copy_seed_files(r, tmp, prefix=f"{arm}_")
                shutil.copyfile(path, tmp / f"{arm}_contexts_seed{r.seed}.json")
                files.append(f"{arm}_contexts_seed{r.seed}.json")
        probe_res = run_arm_probes(runs, ctx_list, tmp) if probes else None
        rec = build_record(spec, runs, {a: [rep for rep, _ in v] for a, v in reports.items()}, probe_res)
        write_record(tmp, rec, sorted(files))
    say(f"study written: {dest}")
    return dest


def run_arm_probes(runs: dict[str, list[SeedRun]], contexts: list[int], dest: Path) -> dict[str, Any]:
    """Retrieval probes (golf.eval.probes) on every run's artifact, the same trials for every arm."""
    out: dict[str, Any] = {}
    for arm, rs in runs.items():
        per_seed = [probe_artifact(Path(r.run_dir) / "model.ptz", dest / "probes" / f"{arm}_s{r.seed}", contexts,
                                   device="auto") for r in rs]
        out[arm] = {p: [s[p]["mean_accuracy"] for s in per_seed] for p in per_seed[0]}
    return out
