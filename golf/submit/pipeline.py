"""`make train-and-submit`: every seed's run (golf/submit/runs.py), then one record folder.

Records are written with `atomic_dir`: built under a temporary name and renamed at the end, so an
interrupted run leaves no half record, and an existing name is refused before any training."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from golf.core import plots
from golf.core.config import PRESETS, Hyperparameters, load_config
from golf.core.utils import (GolfError, atomic_dir, atomic_write_json, atomic_write_text, device_description,
                             git_commit, now_stamp, repo_root, sweep_stale, today)
from golf.submit import records as R
from golf.submit import stats
from golf.submit.runs import DEFAULT_DATA_PATH, Stages, copy_seed_files, ensure_data, run_seed, say, seed_history
from golf.submit.settings import default_preset, parse_seeds, resolve_config


def submit(
    name: str | None = None,
    preset: str | None = None,
    seeds: str | None = None,
    track: str | None = None,
    author: str | None = None,
    github_id: str | None = None,
    blurb: str | None = None,
    settings: dict[str, Any] | None = None,
    records_dir: str | Path = "records",
    stages: Stages | None = None,
    use_cache: bool = True,
) -> Path:
    """Train every seed, then write one record atomically. Returns the record folder."""
    stages = stages or Stages()
    settings = dict(settings or {})
    preset = preset or default_preset()
    if preset not in PRESETS:
        load_config(argv=[], env={}, preset=preset)  # raises with close matches
    base = resolve_config(preset, settings, settings.get("seed", Hyperparameters.seed), "check")
    if base.score_max_tokens:
        raise GolfError(f"SCORE_MAX_TOKENS={base.score_max_tokens} scores only a val prefix; a record is scored on "
                        f"the whole val split. Unset it (prefix scores are for `make ablate`)")
    seed_list = parse_seeds(seeds, base.seed)
    stamp = now_stamp()
    name = R.check_record_name(name or f"{preset}_{stamp[9:]}")
    hardware = device_description()
    track = track or R.default_track(preset, hardware, base.data_path, DEFAULT_DATA_PATH)
    R.check_record_name(track)
    date = today()
    existing = R.find_existing(Path(records_dir), track, name)
    if existing is not None:
        raise GolfError(f"a record named {name!r} already exists ({existing}); choose another NAME (records are never overwritten)")
    dest = R.record_dir(Path(records_dir), track, date, name)

    ensure_data(base, stages, Path(base.out_dir) / f"prepare_{stamp}.log")
    commit = git_commit()  # taken before training: the code that ran, even if the tree changes meanwhile
    runs = []
    for s in seed_list:
        h = resolve_config(preset, settings, s, f"{name}_{stamp}_s{s}")
        runs.append(run_seed(h, stages, use_cache))

    results = [r.result for r in runs]
    bpbs = [r["val_bpb"] for r in results]
    sub = {
        "author": author or _git_user() or "unknown",
        "github_id": github_id or os.environ.get("GITHUB_ID", ""),
        "name": name,
        "blurb": blurb or f"golf {preset} preset, {len(seed_list)} seed(s): " + "; ".join(R.techniques(runs[0].config)[1:4]),
        "date": date,
        "val_loss": stats.mean([r["val_loss"] for r in results]),
        "val_bpb": stats.mean(bpbs),
        "bytes_total": max(r["bytes_total"] for r in results),
        "bytes_code": max((r.get("bytes_code") or 0) for r in results),
        "track": track,
        "record_path": str(Path("records") / track / dest.name),
        "seeds": seed_list,
        "seed_results": results,
        "val_bpb_std": stats.std(bpbs),
        "val_loss_std": stats.std([r["val_loss"] for r in results]),
        "commit": commit,
        "config": runs[0].config,
        "hardware": hardware,
        "nproc": int(os.environ.get("NPROC", "1") or 1),
        "train_seconds": stats.mean([float(r["train_seconds"] or 0) for r in results]),
        "eval_seconds": stats.mean([float(r["eval_seconds"] or 0) for r in results]),
        "data": R.store_manifest(Path(records_dir), base.data_path, base.tokenizer_path),
        "run_ids": [r.run_id for r in runs],
        "reused_runs": [r.run_id for r in runs if r.reused],
    }

    sweep_stale(dest.parent)
    with atomic_dir(dest) as tmp:
        files = []
        for r in runs:
            files += copy_seed_files(r, tmp)
        if plots.loss_curves({f"seed {r.seed}": seed_history(r) for r in runs}, tmp / "loss_curve.png", title=name):
            files.append("loss_curve.png")
        sub["files"] = ["submission.json", "README.md"] + sorted(files)
        atomic_write_json(tmp / "submission.json", sub)
        atomic_write_text(tmp / "README.md", R.render_readme(sub))
        _, problems = R.validate_record(tmp)
        if problems:
            raise GolfError(f"the record would be invalid ({'; '.join(problems)}); nothing was written")
    say(f"record written: {dest}  val_bpb {sub['val_bpb']:.4f} (std {sub['val_bpb_std']:.4f}), "
        f"bytes_total {sub['bytes_total']:,}")
    return dest


def _git_user() -> str:
    try:
        r = subprocess.run(["git", "config", "user.name"], capture_output=True, text=True, timeout=5, cwd=repo_root())
        return r.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
