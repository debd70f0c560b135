"""Small shared helpers: the project's error type, atomic file writes, run provenance, run logs.

Everything that writes a file the user keeps (shards, manifests, artifacts, records) goes through
`atomic_write_*` so an interrupted run never leaves a half-written file under the final name.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator


class GolfError(RuntimeError):
    """A user-facing error: the message names the file involved and what to do about it.

    Entry points catch it and print the message without a traceback (exit code 2)."""


# ---------------------------------------------------------------------------------------------
# atomic writes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the final file gets the usual mode
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


_TMP_NAME = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?[A-Za-z0-9_]{6,}\.tmp$")
STALE_UNOWNED_SECONDS = 3600  # a temporary without its writer's pid (older golf) is stale after an hour


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_stale(folder: str | os.PathLike, say: Callable[[str], None] | None = print) -> list[Path]:
    """Remove the temporaries of killed atomic writes in `folder` (`.<name>.<pid>.<random>.tmp`, a
    file or a folder whose writing process is gone), naming each; returns what was removed. A
    temporary whose writer still runs is left alone."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TMP_NAME.match(p.name)
        if not m:
            continue
        pid = m.group("pid")
        if pid is not None and (int(pid) == os.getpid() or _alive(int(pid))):
            continue
        if pid is None and time.time() - p.stat().st_mtime < STALE_UNOWNED_SECONDS:
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        removed.append(p)
        if say is not None:
            say(f"[golf] removed {p}: the temporary of a write that was killed before it finished")
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, exist_ok: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it into place at the end.

    With exist_ok=False an existing `path` is an error (records are never overwritten)."""
    path = Path(path)
    if path.exists() and not exist_ok:
        raise GolfError(f"{path} already exists; choose another name (records are never overwritten)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        if path.exists():
            if not exist_ok:
                raise GolfError(f"{path} appeared while it was being written; nothing was overwritten")
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# hashing and provenance


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def git_commit(short: bool = False) -> str:
    """The commit the code runs at, with '+dirty' when the tree has uncommitted changes."""
    try:
        root = repo_root()
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        commit = rev.stdout.strip()
        if short:
            commit = commit[:12]
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10
        )
        return commit + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "numpy", "sentencepiece", "zstandard", "triton"):
        mod = sys.modules.get(name)
        try:
            if mod is None:
                import importlib

                mod = importlib.import_module(name)
            out[name] = getattr(mod, "__version__", "?")
        except Exception:
            pass
    return out


def device_description() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            return f"{n}x {torch.cuda.get_device_name(0)}"
    except Exception:
        pass
    return f"cpu ({os.cpu_count()} cores, {platform.machine()})"


def compile_stats() -> dict[str, int]:
    """Graphs and graph breaks torch.compile (dynamo) has produced in this process so far.

    Logged around the timed loop: a graph count that grows after the warm-up means a recompile ate
    training budget, and a graph break means a slower, split graph. Private torch counters, hence
    the guard: {} when they are not there."""
    try:
        from torch._dynamo.utils import counters
    except Exception:
        return {}
    return {"graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values()))}


def now_stamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d_%H%M%S")


def today() -> str:
    return _dt.date.today().isoformat()


# ---------------------------------------------------------------------------------------------
# run log


class RunLog:
    """One log file per run: a header (config, commit, versions, device), then `key:value` lines.

    Only rank 0 writes; other ranks get a silent logger. Lines also go to stdout unless quiet."""

    def __init__(self, path: str | os.PathLike | None, enabled: bool = True, echo: bool = True,
                 mirror: str | os.PathLike | None = None):
        """`mirror`: a second file that gets every line too (a submission's logs/<RUN_ID>.txt)."""
        self.path = Path(path) if path else None
        self.enabled = enabled
        self.echo = echo
        self._files = []
        if self.enabled:
            for p in (self.path, Path(mirror) if mirror else None):
                if p is not None:
                    p.parent.mkdir(parents=True, exist_ok=True)
                    self._files.append(open(p, "a", encoding="utf-8"))

    def write(self, line: str) -> None:
        if not self.enabled:
            return
        if self.echo:
            print(line, flush=True)
        for f in self._files:
            f.write(line + "\n")
            f.flush()

    def kv(self, **items: Any) -> None:
        """Write one greppable line: `key:value key:value ...`."""
        parts = []
        for k, v in items.items():
            if isinstance(v, float):
                v = f"{v:.6g}" if abs(v) < 1e6 else f"{v:.1f}"
            parts.append(f"{k}:{v}")
        self.write(" ".join(parts))

    def header(self, config: dict[str, Any]) -> None:
        self.write(f"# golf run log, {_dt.datetime.now().isoformat(timespec='seconds')}")
        self.kv(commit=git_commit())
        self.write("versions:" + json.dumps(package_versions(), sort_keys=True))
        self.write("device:" + device_description())
        self.write("config:" + json.dumps(config, sort_keys=True, default=str))

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []


def main_guard(fn):
    """Wrap an entry point's main(): GolfError → message on stderr and exit code 2, no traceback."""

    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GolfError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper
