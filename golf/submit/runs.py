"""One seed's run: the stage subprocess (train_gpt.py: train -> export -> score in one process; the
pipeline's only subprocess, so `NPROC=8` runs it under torchrun and every seed gets its own log),
the data it needs, and the run cache.

Run cache: a seed's result is keyed by (code files, full config, seed, data manifest) under
`runs/cache/`; an identical run is reused instead of retrained (so several ablations against the
same A arm train A once). Reuse is recorded per seed (`reused`, `run_id`). `--fresh` turns it off."""
from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from golf.core.config import BYTES_CAP, Hyperparameters, from_dict
from golf.core.utils import GolfError, atomic_write_json, repo_root, sha256_bytes, sha256_file
from golf.data.folder import describe_folder, split_layout
from golf.submit.settings import config_env
from golf.train.run import score_contexts

CACHE_DIR = "cache"  # under OUT_DIR (runs/cache)
DEFAULT_DATA_PATH = Hyperparameters.data_path


def say(msg: str) -> None:
    print(f"[golf] {msg}", flush=True)


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
            "--contexts", score_contexts(h), "--max-tokens", str(h.score_max_tokens),
        ] + (["--tokenizer-path", h.tokenizer_path] if h.tokenizer_path else [])
        run_command(argv, env, log, self.echo)


def ensure_data(h: Hyperparameters, stages: Stages, log: Path) -> None:
    """Before any training: the data folder's splits are there, disjoint, their counts as listed
    (golf's manifest, or the challenge's own download read by its file names)."""
    p = Path(h.data_path)
    if (p / "manifest.json").is_file() or (p.is_dir() and any(split_layout(p).values())):
        layout = split_layout(p)
        missing = [s for s, files in layout.items() if not files]
        if missing:
            raise GolfError(f"DATA_PATH {p} has no {' or '.join(missing)} shards (golf's manifest.json lists them; "
                            f"the challenge's download names them fineweb_{{train,val}}_NNNNNN.bin)")
        return
    if p == Path(DEFAULT_DATA_PATH):
        say(f"{p} not found: preparing the default corpus (python -m golf.data.prepare)")
        stages.prepare_data(config_env(h), log)
        if (p / "manifest.json").is_file():
            split_layout(p)
            return
        raise GolfError(f"data preparation finished but {p}/manifest.json is missing; see {log}")
    raise GolfError(
        f"DATA_PATH {p} has neither golf's manifest.json nor the challenge's fineweb_{{train,val}}_NNNNNN.bin shards. "
        f"Make the data first: `make data CORPUS=<file> DATA_OUT={p}` (any JSONL/Parquet/text corpus), "
        f"`make data-fineweb VARIANT=sp1024` (the challenge's data), or leave DATA_PATH unset for the default "
        f"corpus ({DEFAULT_DATA_PATH})"
    )


def manifest_hash(h: Hyperparameters) -> str:
    """The data's identity for the cache: golf's manifest, else the folder's description plus each
    shard's modification time (a challenge download has no manifest to hash)."""
    p = Path(h.data_path)
    if (p / "manifest.json").is_file():
        return sha256_file(p / "manifest.json")
    if not p.is_dir():
        return ""
    desc = describe_folder(p, h.tokenizer_path)
    stamps = sorted((f.name, f.stat().st_mtime_ns) for f in p.glob("fineweb_*.bin"))
    return sha256_bytes(json.dumps([desc, stamps], sort_keys=True).encode())


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


def read_json(p: Path) -> dict[str, Any]:
    try:
        d = json.loads(Path(p).read_text(encoding="utf-8"))
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def collect_result(h: Hyperparameters, run_dir: Path, wall: float) -> dict[str, Any]:
    """A seed's result from the files its run wrote: eval.json (score stage), size.json (export
    stage), metrics.json (training stage)."""
    ev = read_json(run_dir / "eval.json")
    size = read_json(run_dir / "size.json")
    metrics = read_json(run_dir / "metrics.json")
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
        # the float weights on the same tokens as val_bpb_roundtrip_nonsliding (older runs: training's
        # own final val, on a VAL_MAX_TOKENS prefix)
        "val_bpb_prequant": (ev.get("prequant") or {}).get("val_bpb", metrics.get("val_bpb")),
        "val_loss_prequant": (ev.get("prequant") or {}).get("val_loss"),
        "bytes_total": int(size["bytes_total"]),
        "bytes_code": size.get("bytes_code"),
        "bytes_model": size.get("bytes_model"),
        "params": metrics.get("params"),  # the model's parameter count (training logs it; older runs: None)
        "steps": metrics.get("steps"),
        "train_seconds": metrics.get("train_seconds"),
        "eval_seconds": ev.get("seconds"),
        "wall_seconds": round(wall, 2),
        "eval_tokens": ev.get("tokens"),
        "score_max_tokens": int(ev.get("max_tokens") or 0),  # > 0: scored on a val prefix (ablations only)
        "eval_bytes": ev.get("bytes"),
    }


def max_params(results: list[dict[str, Any]]) -> int | None:
    """An arm's parameter count (the same for every seed); None when its runs predate the count."""
    counts = [r["params"] for r in results if isinstance(r.get("params"), int)]
    return max(counts) if counts else None


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


CACHED_FILES = ("model.ptz", "size.json", "eval.json", "metrics.json", "train.log")  # a reusable run has them all


def cache_entry_problem(entry: dict[str, Any], run_dir: Path) -> str | None:
    """Why a cached run cannot be reused (None: it can): a file missing or changed since it was cached."""
    if not entry.get("result"):
        return "the cache entry has no result"
    hashes = entry.get("files")
    if not isinstance(hashes, dict):
        return "the cache entry predates file hashes"
    for f in CACHED_FILES:
        if not (run_dir / f).is_file():
            return f"{run_dir / f} is missing"
        if sha256_file(run_dir / f) != hashes.get(f):
            return f"{run_dir / f} changed since it was cached"
    return None


def run_seed(h: Hyperparameters, stages: Stages, use_cache: bool = True) -> SeedRun:
    run_dir = Path(h.out_dir) / h.run_id
    code = code_version() if use_cache else None
    key = cache_key(h, code) if code else None
    entry_path = Path(h.out_dir) / CACHE_DIR / f"{key}.json" if key else None
    if entry_path is not None and entry_path.is_file():
        entry = read_json(entry_path)
        old = Path(entry.get("run_dir", ""))
        why = cache_entry_problem(entry, old)
        if why is None:
            say(f"seed {h.seed}: reusing cached run {entry['run_id']} (same code, config, seed and data)")
            result = {**entry["result"], "reused": True}
            return SeedRun(h.seed, entry["run_id"], old, result, entry.get("config") or h.to_dict(), True, run_files(old))
        say(f"seed {h.seed}: not reusing cached run {entry.get('run_id')}: {why}; training it again")

    interrupted = interrupted_run(h) if h.resume else None
    if interrupted is not None:  # RESUME=1: continue this seed's interrupted run from its ckpt.pt
        h.run_id, run_dir = interrupted.name, interrupted
        say(f"seed {h.seed}: resuming {run_dir} from its checkpoint")
    else:
        if h.resume:
            say(f"seed {h.seed}: RESUME=1 but no interrupted run of it under {h.out_dir}/; starting it")
        # two pipelines of the same NAME started in the same second get distinct run folders
        h.run_id = unique_run_id(h.out_dir, h.run_id)
        run_dir = Path(h.out_dir) / h.run_id
        run_dir.mkdir(parents=True)
    log = run_dir / "pipeline.log"
    env = config_env(h)
    if interrupted is not None:
        env["RESUME"] = "1"
    say(f"seed {h.seed}: train -> export -> score {h.run_id} (log {run_dir / 'train.log'})")
    t0 = time.time()
    try:
        stages.run(env, run_dir, log)
    except (GolfError, KeyboardInterrupt) as e:
        if (run_dir / "ckpt.pt").is_file() and not (run_dir / "eval.json").is_file():
            raise GolfError(f"seed {h.seed} stopped before it finished ({e}); its checkpoint is "
                            f"{run_dir / 'ckpt.pt'}. Continue the whole pipeline: the same command with RESUME=1 "
                            f"(finished seeds are reused from the cache, this one resumes)") from None
        raise
    wall = time.time() - t0
    if not (run_dir / "final.pt").is_file():
        raise GolfError(f"training finished but {run_dir / 'final.pt'} is missing; see {log}")
    size = read_json(run_dir / "size.json")
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
    ran = read_json(run_dir / "metrics.json").get("config")
    if not isinstance(ran, dict):
        raise GolfError(f"{run_dir / 'metrics.json'} has no config: the run did not finish; see {log}")
    cfg = from_dict(ran, f"{run_dir / 'metrics.json'} config").to_dict()  # what actually ran, typed
    diff = sorted(k for k in cfg if k not in ("run_id", "out_dir", "resume") and cfg[k] != h.to_dict().get(k))
    if diff:
        say(f"warning: training used settings that differ from the pipeline's: {', '.join(diff)}")
    if entry_path is not None:
        atomic_write_json(entry_path, {"key": key, "code": code, "run_id": h.run_id, "run_dir": str(run_dir),
                                       "result": result, "config": cfg,
                                       "files": {f: sha256_file(run_dir / f) for f in CACHED_FILES}})
    say(f"seed {h.seed}: val_bpb {result['val_bpb']:.4f}, bytes_total {result['bytes_total']:,}")
    return SeedRun(h.seed, h.run_id, run_dir, result, cfg, False, run_files(run_dir))


_STAMPED = re.compile(r"^(?P<name>.+)_\d{8}_\d{6}_s(?P<seed>-?\d+)(?:_\d+)?$")


def interrupted_run(h: Hyperparameters) -> Path | None:
    """The newest run folder of this pipeline NAME and seed that holds a ckpt.pt and no score yet
    (an interrupted `make train-and-submit` / `make ablate`), or None."""
    m = _STAMPED.match(h.run_id)
    if not m:
        return None
    cands = []
    for ck in Path(h.out_dir).glob(f"{m.group('name')}_*_s{h.seed}*/ckpt.pt"):
        other = _STAMPED.match(ck.parent.name)
        if other and other.group("name") == m.group("name") and int(other.group("seed")) == h.seed \
                and not (ck.parent / "eval.json").exists():
            cands.append(ck.parent)
    return max(cands, key=lambda p: (p / "ckpt.pt").stat().st_mtime) if cands else None


def unique_run_id(out_dir: str, base: str) -> str:
    rid, i = base, 1
    while (Path(out_dir) / rid).exists():
        i += 1
        rid = f"{base}_{i}"
    return rid


def copy_seed_files(run: SeedRun, dest: Path, prefix: str = "") -> list[str]:
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


def seed_history(run: SeedRun) -> list[dict]:
    m = run.files.get("metrics")
    return (read_json(m).get("history") or []) if m else []
