"""The main job: train -> quantise -> check size -> sliding-window eval -> record, plus A/B and verify.

    python -m golf.submit.pipeline submit [--name N] [--preset P] [--seeds 1,2,3] [--track T] [--author A] ...
    python -m golf.submit.pipeline ablate --name N --a "ENV=.. ENV=.." --b "ENV=.." [--seeds 1,2,3] [--preset P]
    python -m golf.submit.pipeline verify --record DIR [--artifact PATH] [--seeds S] [--tolerance X]

Each stage is its own entry point run as a subprocess (so `NPROC=8` runs training under torchrun and
every seed gets its own log): `python -m golf.data.prepare`, `train_gpt.py`, `quantize.py`,
`eval_bpb.py`. Settings reach them through the environment under the challenge's names
(NUM_LAYERS=..., SEED, RUN_ID, DATA_PATH, ...): the pipeline resolves the full config once and
passes all of it, so the record's config is exactly what ran. Training settings come from the
environment (`make train-and-submit NUM_LAYERS=10`) or extra flags (`--num-layers 10`).

Records are written with `atomic_dir`: built under a temporary name and renamed at the end, so an
interrupted run leaves no half record, and an existing name is refused before any training.

Run cache: a seed's result is keyed by (code files, full config, seed, data manifest) under
`runs/cache/`; an identical run is reused instead of retrained (so several ablations against the
same A arm train A once). Reuse is recorded per seed (`reused`, `run_id`). `--fresh` turns it off.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from golf.core import plots
from golf.core.config import (BYTES_CAP, PRESETS, Hyperparameters, apply_overrides, check_name, from_dict, load_config,
                              parse_cli, parse_env)
from golf.core.utils import (GolfError, atomic_dir, atomic_write_json, atomic_write_text, device_description,
                             git_commit, main_guard, now_stamp, repo_root, sha256_bytes, sha256_file, today)
from golf.data.folder import split_layout
from golf.submit import records as R
from golf.submit import stats
from golf.train.run import score_contexts

CACHE_DIR = "cache"  # under OUT_DIR (runs/cache)
DEFAULT_DATA_PATH = Hyperparameters.data_path


def say(msg: str) -> None:
    print(f"[golf] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# stages: one method per stage, each a subprocess. Tests swap in a subclass that fakes them.


def run_command(argv: Sequence[str], env: dict[str, str], log_path: Path, echo: bool = True) -> None:
    """Run a stage; its output goes to the terminal and is appended to log_path. Non-zero -> GolfError."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(
            list(argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                if echo:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                tail = (tail + [line.rstrip()])[-15:]
            rc = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted: do not leave a training process behind
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    if rc != 0:
        raise GolfError(
            f"{shlex.join(argv[:3])} ... failed with exit code {rc}; full output in {log_path}. Last lines:\n"
            + "\n".join(tail)
        )


class Stages:
    """The stage commands (the contracts in COMMON.md). Paths are relative to the working directory."""

    echo = True

    def __init__(self, python: str = sys.executable):
        self.py = python
        self.root = repo_root()

    def _launcher(self, env: dict[str, str]) -> list[str]:
        # NPROC>1: run under torchrun (DDP); the stage scripts read RANK/WORLD_SIZE themselves.
        n = int(env.get("NPROC", "1") or 1)
        if n > 1:
            return [self.py, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
        return [self.py]

    def prepare_data(self, env: dict[str, str], log: Path) -> None:
        run_command([self.py, "-m", "golf.data.prepare"], env, log, self.echo)

    def run(self, env: dict[str, str], run_dir: Path, log: Path) -> None:
        """train -> export -> score in one process (train_gpt.py): final.pt, model.ptz, size.json, eval.json."""
        run_command(self._launcher(env) + [str(self.root / "train_gpt.py")], env, log, self.echo)

    def evaluate(self, env: dict[str, str], h: Hyperparameters, artifact: Path, out_json: Path, log: Path) -> None:
        """The score stage alone on a given artifact (`make verify ARTIFACT=...`)."""
        argv = self._launcher(env) + [
            str(self.root / "eval_bpb.py"), "--artifact", str(artifact), "--data-path", h.data_path,
            "--seq-len", str(h.eval_seq_len), "--stride", str(h.eval_stride),
            "--batch-windows", str(h.eval_batch_windows), "--out", str(out_json),
            "--contexts", score_contexts(h),
        ]
        run_command(argv, env, log, self.echo)


# ---------------------------------------------------------------------------------------------
# configuration


def parse_seeds(s: str | None, default: int, count_ok: bool = False) -> list[int]:
    """'1,2,3' -> [1, 2, 3]. With count_ok (ablations, where one seed can give no p-value), a single
    number N means N seeds 1..N, as in `make ablate SEEDS=3`."""
    if not s:
        return [default]
    try:
        seeds = [int(x) for x in s.replace(" ", "").split(",") if x]
        if count_ok and "," not in s and len(seeds) == 1:
            if not 2 <= seeds[0] <= 64:
                raise GolfError(f"SEEDS={s}: an ablation needs 2-64 seeds (a count) or a list like 1,2,3")
            seeds = list(range(1, seeds[0] + 1))
    except ValueError:
        raise GolfError(f"--seeds {s!r}: give comma-separated integers, e.g. SEEDS=1,2,3") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise GolfError(f"--seeds {s!r}: give distinct seeds, e.g. SEEDS=1,2,3")
    return seeds


def parse_settings(text: str, source: str) -> dict[str, Any]:
    """'NUM_LAYERS=10 SMEAR_GATE=0' -> {'num_layers': 10, 'smear_gate': False}; typos -> close matches."""
    out: dict[str, Any] = {}
    for tok in shlex.split(text or ""):
        if "=" not in tok:
            raise GolfError(f"{source}: {tok!r} is not a setting; write NAME=VALUE, e.g. {source}=\"NUM_LAYERS=10\"")
        name, value = tok.split("=", 1)
        key = check_name(name, source)
        if key in ("seed", "run_id", "preset", "out_dir"):
            raise GolfError(f"{source}: {name} is set by the pipeline (use --seeds / --preset), not per arm")
        out[key] = value
    apply_overrides(Hyperparameters(), out, source)  # type check now, before anything trains
    return {k: getattr(apply_overrides(Hyperparameters(), {k: v}, source), k) for k, v in out.items()}


def resolve_config(preset: str, settings: dict[str, Any], seed: int, run_id: str) -> Hyperparameters:
    """defaults < preset < settings (env/CLI/arm) < seed, run id; finalized (derived values filled)."""
    h = load_config(argv=[], env={}, preset=preset, finalize=False)  # checks the preset name
    apply_overrides(h, settings, "settings")
    h.seed, h.run_id, h.preset = seed, run_id, preset
    return h.finalize()


def config_env(h: Hyperparameters, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a stage runs with: the caller's plus every setting under its challenge name."""
    env = dict(os.environ if base is None else base)
    for k, v in h.to_dict().items():
        if k == "resume":
            continue
        env[k.upper()] = ("1" if v else "0") if isinstance(v, bool) else str(v)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def default_preset() -> str:
    return "tiny" if device_description().startswith("cpu") else "record"


# ---------------------------------------------------------------------------------------------
# data


def ensure_data(h: Hyperparameters, stages: Stages, log: Path) -> None:
    p = Path(h.data_path)
    if (p / "manifest.json").is_file():
        split_layout(p)  # before any training: the splits are the manifest's, disjoint, counts matching
        return
    if p == Path(DEFAULT_DATA_PATH):
        say(f"{p} not found: preparing the default corpus (python -m golf.data.prepare)")
        stages.prepare_data(config_env(h), log)
        if (p / "manifest.json").is_file():
            split_layout(p)
            return
        raise GolfError(f"data preparation finished but {p}/manifest.json is missing; see {log}")
    raise GolfError(
        f"DATA_PATH {p} has no manifest.json. Make the data first: `make data CORPUS=<file> DATA_OUT={p}` "
        f"(any JSONL/Parquet/text corpus), `make data-fineweb VARIANT=sp1024` (the challenge's data), "
        f"or leave DATA_PATH unset for the default corpus ({DEFAULT_DATA_PATH})"
    )


def manifest_hash(h: Hyperparameters) -> str:
    p = Path(h.data_path) / "manifest.json"
    return sha256_file(p) if p.is_file() else ""


# ---------------------------------------------------------------------------------------------
# one seed: train -> quantise -> size check -> eval (or a cached result)


@dataclass
class SeedRun:
    seed: int
    run_id: str
    run_dir: Path
    result: dict[str, Any]  # the record's seed_results entry
    config: dict[str, Any]
    reused: bool = False
    files: dict[str, Path] = field(default_factory=dict)  # train_log, eval_json, metrics, plot


def code_version(root: Path | None = None) -> str | None:
    """The code a run used, for the cache: the git blob ids of every tracked file outside records/,
    plus the uncommitted diff and new (untracked, not ignored) .py files; None when git cannot tell.

    Not the commit: committing a record moves HEAD without changing any code, and the next ablation
    against the same A arm must still reuse it. (The record itself pins the commit, see submit.)
    """
    root = Path(root) if root is not None else repo_root()

    def git(*args: str) -> bytes:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, timeout=30, check=True).stdout

    try:
        tree = git("ls-tree", "-r", "-z", "HEAD").split(b"\0")
        diff = git("diff", "HEAD", "--", ".", ":(exclude)records")
        new = git("ls-files", "-z", "--others", "--exclude-standard").decode().split("\0")
    except (OSError, subprocess.SubprocessError):
        return None
    # ls-tree entries are "<mode> <type> <blob id>\t<path>"; records/ never changes the code.
    blob = b"\0".join(e for e in tree if not e.split(b"\t", 1)[-1].startswith(b"records/")) + b"\0" + diff
    for f in sorted(f for f in new if f.endswith(".py")):
        if (root / f).is_file():
            blob += f.encode() + b"\0" + (root / f).read_bytes()
    return sha256_bytes(blob)[:32]


def cache_key(h: Hyperparameters, code: str) -> str:
    cfg = {k: v for k, v in h.to_dict().items() if k not in ("run_id", "out_dir", "resume")}
    blob = json.dumps({"code": code, "config": cfg, "data": manifest_hash(h)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _read_json(p: Path) -> dict[str, Any]:
    try:
        d = json.loads(Path(p).read_text(encoding="utf-8"))
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def logged_config(train_log: Path) -> dict[str, Any] | None:
    """The `config:{...}` header line golf.core.utils.RunLog writes: the config the run actually used."""
    try:
        with open(train_log, encoding="utf-8", errors="replace") as f:
            for i, line in enumerate(f):
                if line.startswith("config:"):
                    return json.loads(line[len("config:"):])
                if i > 200:
                    break
    except (OSError, ValueError):
        pass
    return None


def collect_result(h: Hyperparameters, run_dir: Path, wall: float) -> dict[str, Any]:
    """A seed's result from the files its run wrote: eval.json (score stage), size.json (export
    stage), metrics.json (training stage)."""
    ev = _read_json(run_dir / "eval.json")
    size = _read_json(run_dir / "size.json")
    metrics = _read_json(run_dir / "metrics.json")
    for name, d in (("eval.json", ev), ("size.json", size), ("metrics.json", metrics)):
        if not d:
            raise GolfError(f"{run_dir / name} is missing or not JSON: the stage that writes it did not finish")
    for k in ("val_loss", "val_bpb"):
        if not isinstance(ev.get(k), (int, float)):
            raise GolfError(f"{run_dir / 'eval.json'} has no {k}; re-run eval_bpb.py")
    if not isinstance(size.get("bytes_total"), int):
        raise GolfError(f"{run_dir / 'size.json'} has no integer bytes_total; re-run quantize.py")
    plain = (ev.get("contexts") or {}).get(str(h.eval_seq_len)) or {}
    return {
        "seed": h.seed,
        "run_id": h.run_id,
        "val_loss": float(ev["val_loss"]),
        "val_bpb": float(ev["val_bpb"]),
        "val_bpb_roundtrip_nonsliding": plain.get("val_bpb"),
        "val_bpb_prequant": metrics.get("val_bpb"),  # training's own final val: float weights, no sliding
        "bytes_total": int(size["bytes_total"]),
        "bytes_code": size.get("bytes_code"),
        "bytes_model": size.get("bytes_model"),
        "steps": metrics.get("steps"),
        "train_seconds": metrics.get("train_seconds"),
        "eval_seconds": ev.get("seconds"),
        "wall_seconds": round(wall, 2),
        "eval_tokens": ev.get("tokens"),
        "eval_bytes": ev.get("bytes"),
    }


def run_files(run_dir: Path) -> dict[str, Path]:
    files = {
        "train_log": run_dir / "train.log",
        "stage_log": run_dir / "pipeline.log",
        "eval_json": run_dir / "eval.json",
        "size_json": run_dir / "size.json",
        "metrics": run_dir / "metrics.json",
        "plot": run_dir / "bpb_vs_position.png",
    }
    return {k: p for k, p in files.items() if p.is_file()}


def run_seed(h: Hyperparameters, stages: Stages, use_cache: bool = True) -> SeedRun:
    run_dir = Path(h.out_dir) / h.run_id
    code = code_version() if use_cache else None
    key = cache_key(h, code) if code else None
    entry_path = Path(h.out_dir) / CACHE_DIR / f"{key}.json" if key else None
    if entry_path is not None and entry_path.is_file():
        entry = _read_json(entry_path)
        old = Path(entry.get("run_dir", ""))
        if entry.get("result") and (old / "eval.json").is_file() and (old / "size.json").is_file():
            say(f"seed {h.seed}: reusing cached run {entry['run_id']} (same code, config, seed and data)")
            result = {**entry["result"], "reused": True}
            return SeedRun(h.seed, entry["run_id"], old, result, entry.get("config") or h.to_dict(), True, run_files(old))

    if run_dir.exists():
        raise GolfError(f"{run_dir} already exists; use another RUN_ID or remove it")
    run_dir.mkdir(parents=True)
    log = run_dir / "pipeline.log"
    env = config_env(h)
    say(f"seed {h.seed}: train -> export -> score {h.run_id} (log {run_dir / 'train.log'})")
    t0 = time.time()
    stages.run(env, run_dir, log)
    wall = time.time() - t0
    if not (run_dir / "final.pt").is_file():
        raise GolfError(f"training finished but {run_dir / 'final.pt'} is missing; see {log}")
    size = _read_json(run_dir / "size.json")
    if not isinstance(size.get("bytes_total"), int):
        raise GolfError(f"{run_dir / 'size.json'} is missing or has no bytes_total; see {log}")
    if size["bytes_total"] > BYTES_CAP:
        raise GolfError(
            f"seed {h.seed}: bytes_total {size['bytes_total']:,} is over the {BYTES_CAP:,}-byte cap "
            f"({json.dumps(size)}); lower QUANT_*_BITS or the model size. No record was written."
        )
    if not (run_dir / "eval.json").is_file():
        raise GolfError(f"the run finished but {run_dir / 'eval.json'} (its round-trip score) is missing; see {log}")
    result = collect_result(h, run_dir, wall)
    cfg = h.to_dict()
    logged = logged_config(run_dir / "train.log")
    if logged:
        try:  # typed through the dataclass; the log is what actually ran
            cfg = from_dict(logged, f"{run_dir / 'train.log'} config").to_dict()
        except GolfError as e:
            say(f"warning: could not read the config logged by training ({e}); recording the resolved one")
        diff = sorted(k for k in cfg if k not in ("run_id", "out_dir", "resume") and cfg[k] != h.to_dict().get(k))
        if diff:
            say(f"warning: training used settings that differ from the pipeline's: {', '.join(diff)}")
    if entry_path is not None:
        atomic_write_json(entry_path, {"key": key, "code": code, "run_id": h.run_id, "run_dir": str(run_dir),
                                       "result": result, "config": cfg})
    say(f"seed {h.seed}: val_bpb {result['val_bpb']:.4f}, bytes_total {result['bytes_total']:,}")
    return SeedRun(h.seed, h.run_id, run_dir, result, cfg, False, run_files(run_dir))


def unique_run_id(out_dir: str, base: str) -> str:
    rid, i = base, 1
    while (Path(out_dir) / rid).exists():
        i += 1
        rid = f"{base}_{i}"
    return rid


def _copy_seed_files(run: SeedRun, dest: Path, prefix: str = "") -> list[str]:
    """Copy a seed's log, eval JSON, metrics and plot into a record folder; returns the file names."""
    names = []
    src_log = run.files.get("train_log") or run.files.get("stage_log")
    pairs = [
        (src_log, f"{prefix}train_seed{run.seed}.log"),
        (run.files.get("eval_json"), f"{prefix}eval_seed{run.seed}.json"),
        (run.files.get("size_json"), f"{prefix}size_seed{run.seed}.json"),
        (run.files.get("metrics"), f"{prefix}metrics_seed{run.seed}.json"),
        (run.files.get("plot"), f"{prefix}bpb_vs_position_seed{run.seed}.png"),
    ]
    for src, name in pairs:
        if src is not None and Path(src).is_file():
            shutil.copyfile(src, dest / name)
            names.append(name)
    return names


def _history(run: SeedRun) -> list[dict]:
    m = run.files.get("metrics")
    return (_read_json(m).get("history") or []) if m else []


# ---------------------------------------------------------------------------------------------
# submit


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
        "data": R.store_manifest(Path(records_dir), base.data_path),
        "run_ids": [r.run_id for r in runs],
        "reused_runs": [r.run_id for r in runs if r.reused],
    }
    with atomic_dir(dest) as tmp:
        files = []
        for r in runs:
            files += _copy_seed_files(r, tmp)
        if plots.loss_curves({f"seed {r.seed}": _history(r) for r in runs}, tmp / "loss_curve.png", title=name):
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


# ---------------------------------------------------------------------------------------------
# ablate


def ablate(
    name: str,
    a: str,
    b: str,
    seeds: str | None = None,
    preset: str | None = None,
    settings: dict[str, Any] | None = None,
    records_dir: str | Path = "records",
    stages: Stages | None = None,
    use_cache: bool = True,
) -> Path:
    """Paired A/B on the same seeds; every seed of both arms goes into one record folder."""
    stages = stages or Stages()
    settings = dict(settings or {})
    name = R.check_record_name(name)
    arm_a, arm_b = parse_settings(a, "A"), parse_settings(b, "B")
    if arm_a == arm_b:
        say("warning: A and B are the same settings (an A/A test)")
    preset = preset or default_preset()
    seed_list = parse_seeds(seeds or "3", Hyperparameters.seed, count_ok=True)
    cfg_a = resolve_config(preset, {**settings, **arm_a}, seed_list[0], "check")
    resolve_config(preset, {**settings, **arm_b}, seed_list[0], "check")  # both arms must be valid up front
    existing = R.find_existing(Path(records_dir), R.ABLATIONS_TRACK, name)
    if existing is not None:
        raise GolfError(f"an ablation named {name!r} already exists ({existing}); choose another NAME")
    date, stamp = today(), now_stamp()
    dest = R.record_dir(Path(records_dir), R.ABLATIONS_TRACK, date, name)
    ensure_data(cfg_a, stages, Path(cfg_a.out_dir) / f"prepare_{stamp}.log")

    commit = git_commit()  # before training (see submit)
    runs: dict[str, list[SeedRun]] = {"A": [], "B": []}
    for s in seed_list:
        # Interleave the arms seed by seed so slow drift of the machine hits both arms alike.
        for arm, over in (("A", arm_a), ("B", arm_b)):
            h = resolve_config(preset, {**settings, **over}, s, f"{name}_{stamp}_{arm}_s{s}")
            runs[arm].append(run_seed(h, stages, use_cache))

    ra, rb = [r.result for r in runs["A"]], [r.result for r in runs["B"]]
    cmp = stats.compare_arms([r["val_loss"] for r in ra], [r["val_loss"] for r in rb],
                             [r["val_bpb"] for r in ra], [r["val_bpb"] for r in rb])
    per_seed = [
        {"seed": s, "val_bpb_a": x["val_bpb"], "val_bpb_b": y["val_bpb"], "diff_bpb": y["val_bpb"] - x["val_bpb"],
         "val_loss_a": x["val_loss"], "val_loss_b": y["val_loss"], "diff_nats": y["val_loss"] - x["val_loss"]}
        for s, x, y in zip(seed_list, ra, rb)
    ]
    arm_summary = lambda rs, over, rr: {  # noqa: E731
        "settings": R.env_assignments(over),
        "val_bpb": stats.mean([r["val_bpb"] for r in rs]), "val_bpb_std": stats.std([r["val_bpb"] for r in rs]),
        "val_loss": stats.mean([r["val_loss"] for r in rs]),
        "bytes_total": max(r["bytes_total"] for r in rs),
        "seed_results": rs, "config": rr[0].config, "run_ids": [r.run_id for r in rr],
        "reused_runs": [r.run_id for r in rr if r.reused],
    }
    rec = {
        "kind": "ablation", "name": name, "date": date, "preset": preset, "seeds": seed_list,
        "common_settings": R.env_assignments(settings),
        "A": arm_summary(ra, arm_a, runs["A"]), "B": arm_summary(rb, arm_b, runs["B"]),
        "per_seed": per_seed, "comparison": cmp,
        "bars": {"challenge": f">= {stats.CHALLENGE_MIN_NATS} nats better at one-sided paired p < {stats.CHALLENGE_P}",
                 "practice": f"one-sided Welch p < {stats.PRACTICE_P} (B better than A)"},
        "commit": commit, "hardware": device_description(),
        "data": R.store_manifest(Path(records_dir), cfg_a.data_path),
    }
    with atomic_dir(dest) as tmp:
        files = []
        for arm in ("A", "B"):
            for r in runs[arm]:
                files += _copy_seed_files(r, tmp, prefix=f"{arm}_")
        hist = {f"{arm} s{r.seed}": _history(r) for arm in ("A", "B") for r in runs[arm]}
        plots.ablation_plot(seed_list, [r["val_bpb"] for r in ra], [r["val_bpb"] for r in rb], hist,
                            tmp / "ablation.png", title=name)
        rec["files"] = ["ablation.json", "README.md", "ablation.png"] + sorted(files)
        atomic_write_json(tmp / "ablation.json", rec)
        atomic_write_text(tmp / "README.md", render_ablation_readme(rec))
    say(f"ablation written: {dest}  dBPB (B-A) {cmp['mean_diff_bpb']:+.4f}, p {cmp['p_paired']:.3g}, "
        f"challenge bar {'met' if cmp['meets_challenge_bar'] else 'not met'}, "
        f"practice bar {'met' if cmp['meets_practice_bar'] else 'not met'}")
    return dest


def render_ablation_readme(rec: dict[str, Any]) -> str:
    c = rec["comparison"]
    f = lambda x, nd=4: "-" if x is None or x != x else (f"{x:+.{nd}f}" if nd < 0 else f"{x:.{nd}f}")  # noqa: E731
    sign = lambda x: "-" if x != x else f"{x:+.4f}"  # noqa: E731
    a_set = " ".join(rec["A"]["settings"]) or "(preset defaults)"
    b_set = " ".join(rec["B"]["settings"]) or "(preset defaults)"
    lines = [
        f"# Ablation: {rec['name']}",
        "",
        f"- A: `{a_set}`",
        f"- B: `{b_set}`",
        f"- common: preset `{rec['preset']}` {' '.join(rec['common_settings'])}; seeds {rec['seeds']} (paired, all reported)",
        f"- commit `{rec['commit']}`, {rec['hardware']}, {rec['date']}",
        "",
        "| seed | A val_bpb | B val_bpb | B-A bpb | A val_loss | B val_loss | B-A nats | A run | B run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p, x, y in zip(rec["per_seed"], rec["A"]["seed_results"], rec["B"]["seed_results"]):
        lines.append(
            f"| {p['seed']} | {f(p['val_bpb_a'])} | {f(p['val_bpb_b'])} | {sign(p['diff_bpb'])} | {f(p['val_loss_a'])} "
            f"| {f(p['val_loss_b'])} | {sign(p['diff_nats'])} | {x.get('run_id')}{' (cached)' if x.get('reused') else ''} "
            f"| {y.get('run_id')}{' (cached)' if y.get('reused') else ''} |"
        )
    lines += [
        f"| **mean** | {f(rec['A']['val_bpb'])} | {f(rec['B']['val_bpb'])} | **{sign(c['mean_diff_bpb'])}** "
        f"| {f(rec['A']['val_loss'])} | {f(rec['B']['val_loss'])} | **{sign(c['mean_diff_nats'])}** | | |",
        "",
        f"- paired t-test (scipy.stats.ttest_rel, two-sided, val_loss): p = {c['p_paired']:.4g}; "
        f"one-sided (B better): p = {c['p_paired_b_better']:.4g}",
        f"- challenge bar ({rec['bars']['challenge']}): p = {c['p_challenge']:.4g} -> "
        f"**{'met' if c['meets_challenge_bar'] else 'not met'}**",
        f"- practice bar ({rec['bars']['practice']}): p = {c['p_welch_b_better']:.4g} -> "
        f"**{'met' if c['meets_practice_bar'] else 'not met'}**",
        f"- bytes_total: A {rec['A']['bytes_total']:,}, B {rec['B']['bytes_total']:,}",
        "",
        "![A vs B](ablation.png)",
        "",
        "Reproduce:",
        "",
        "```",
        f"git checkout {str(rec['commit']).replace('+dirty', '')}",
        f"make ablate NAME={rec['name']} PRESET={rec['preset']} A={shlex.quote(' '.join(rec['A']['settings']))} "
        f"B={shlex.quote(' '.join(rec['B']['settings']))} SEEDS={','.join(map(str, rec['seeds']))} "
        + " ".join(rec["common_settings"]),
        "```",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# verify


def verify(
    record: str | Path,
    artifact: str | Path | None = None,
    seeds: str | None = None,
    tolerance: float | None = None,
    data_path: str | None = None,
    stages: Stages | None = None,
) -> bool:
    """Re-evaluate a record's artifact (given, or rebuilt from commit + config) and check its claims."""
    stages = stages or Stages()
    folder = Path(record)
    if not folder.is_dir():
        raise GolfError(f"{folder} is not a record folder; pass RECORD=records/<track>/<date>_<name>")
    sub, problems = R.validate_record(folder)
    if sub is None:
        raise GolfError(f"{folder}: {problems[0]}")
    ok = True
    for p in problems:
        say(f"FAIL record check: {p}")
        ok = False
    by_seed = {r["seed"]: r for r in sub.get("seed_results", []) if isinstance(r, dict) and "seed" in r}
    seed_list = sorted(by_seed) if seeds == "all" else parse_seeds(seeds, sub["seeds"][0])
    for s in seed_list:
        if s not in by_seed:
            raise GolfError(f"{folder}: seed {s} is not in the record (seeds {sub['seeds']})")
    h0 = from_dict({k: v for k, v in sub["config"].items()}, f"{folder}/submission.json config")
    if data_path:
        h0.data_path = data_path
    stamp = now_stamp()
    if artifact is not None:
        if len(seed_list) != 1:
            raise GolfError("--artifact is one seed's artifact: pass one --seeds value with it")
        tol = 1e-4 if tolerance is None else tolerance
    else:
        tol = 0.01 if tolerance is None else tolerance
        have, want = git_commit(), str(sub["commit"])
        if have != want or want.endswith("+dirty"):
            raise GolfError(
                f"the record was made at commit {want} but this tree is at {have}; run "
                f"`git checkout {want.replace('+dirty', '')}` (with a clean tree) and verify again, "
                f"or pass ARTIFACT=<model.ptz> to check an artifact you have"
            )
        ensure_data(h0, stages, Path(h0.out_dir) / f"prepare_{stamp}.log")
    for s in seed_list:
        claim = by_seed[s]
        h = from_dict(h0.to_dict())
        h.seed, h.run_id = s, unique_run_id(h.out_dir, f"verify_{sub['name']}_{stamp}_s{s}")
        h.finalize()
        run_dir = Path(h.out_dir) / h.run_id
        run_dir.mkdir(parents=True, exist_ok=False)
        log, env = run_dir / "pipeline.log", config_env(h)
        if artifact is None:
            say(f"seed {s}: rebuilding the artifact from commit {sub['commit']} + the record's config")
            stages.run(env, run_dir, log)  # train -> export -> score: eval.json scores the rebuilt artifact
            size_total = _read_json(run_dir / "size.json").get("bytes_total")
        else:
            art = Path(artifact)
            if not art.is_file():
                raise GolfError(f"artifact {art} not found")
            size_total = art.stat().st_size + int(sub.get("bytes_code") or 0)
            stages.evaluate(env, h, art, run_dir / "eval.json", log)
        ev = _read_json(run_dir / "eval.json")
        got = ev.get("val_bpb")
        if not isinstance(got, (int, float)):
            raise GolfError(f"{run_dir / 'eval.json'} has no val_bpb; see {log}")
        diff = got - claim["val_bpb"]
        good = abs(diff) <= tol
        say(f"{'PASS' if good else 'FAIL'} seed {s}: val_bpb {got:.6f} vs claimed {claim['val_bpb']:.6f} "
            f"(diff {diff:+.2e}, tolerance {tol:g})")
        ok &= good
        if not isinstance(size_total, int):
            say(f"FAIL seed {s}: no size could be measured")
            ok = False
        else:
            fits = size_total <= BYTES_CAP
            say(f"{'PASS' if fits else 'FAIL'} seed {s}: bytes_total {size_total:,} (cap {BYTES_CAP:,}; "
                f"claimed {claim['bytes_total']:,})")
            ok &= fits
    say(f"verdict: {'VERIFIED' if ok else 'NOT VERIFIED'} ({folder})")
    return ok


# ---------------------------------------------------------------------------------------------
# CLI


def _settings_from(env: dict[str, str], extra: Sequence[str]) -> dict[str, Any]:
    """Training settings from the environment (challenge names) and extra --flags; typos are errors."""
    s = parse_env(env)
    s.update(parse_cli(list(extra)))
    for k in ("run_id",):
        s.pop(k, None)
    return s


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m golf.submit.pipeline", description=__doc__.split("\n\n")[0])
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
    pv = sub.add_parser("verify", help="re-evaluate a record and check its claims")
    pv.add_argument("--record", required=True)
    pv.add_argument("--artifact")
    pv.add_argument("--seeds", help="seeds to check (default: the first; 'all' for every seed)")
    pv.add_argument("--tolerance", type=float, help="allowed |val_bpb diff| (default 1e-4 with --artifact, 0.01 rebuilt)")
    pv.add_argument("--data-path")
    args, extra = p.parse_known_args(argv)
    if args.cmd == "verify":
        if extra:
            raise GolfError(f"verify takes no training settings ({' '.join(extra)}): the record's config is used")
        return 0 if verify(args.record, args.artifact or None, args.seeds, args.tolerance, args.data_path) else 1
    settings = _settings_from(dict(os.environ), extra)
    preset = args.preset or settings.pop("preset", None)  # --preset wins over a PRESET in the environment
    settings.pop("preset", None)
    if args.cmd == "submit":
        submit(args.name or None, preset, args.seeds, args.track or None, args.author, args.github_id, args.blurb,
               settings, args.records, use_cache=not args.fresh)
    else:
        if not args.name:
            raise GolfError("ablate needs NAME=..., e.g. make ablate NAME=memtok A='NUM_MEMORY_TOKENS=0' B=''")
        ablate(args.name, args.a, args.b, args.seeds, preset, settings, args.records, use_cache=not args.fresh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main_guard(main)())
