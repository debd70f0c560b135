"""The code half of the byte budget: the bytes of the train_gpt.py a submission ships."""
from __future__ import annotations

import functools
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import golf
from golf.core.utils import GolfError


def in_bundle() -> bool:
    """True when golf runs from the single-file bundle (its modules carry `<golf>/...` names)."""
    return str(getattr(golf, "__file__", "")).startswith("<golf>")


def bundled_code_bytes(config: Mapping[str, Any] | None = None) -> int:
    """Inside a bundle: that very file. In the repo: the bundle with `config`'s recipe baked in, built
    now (the train_gpt.py `make submission` ships for that run). A typical figure if neither can be
    measured (an installed package without its sources)."""
    if in_bundle():
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if main_file and os.path.isfile(main_file):
            return os.path.getsize(main_file)
    return _built_bundle_bytes(json.dumps(dict(config or {}), sort_keys=True, default=str))


@functools.lru_cache(maxsize=8)  # building the bundle costs ~2 s of lzma; once per recipe and process
def _built_bundle_bytes(config_json: str) -> int:
    try:
        # The builder is imported by name: a bundle never holds it (it would count against the cap
        # it measures), and inside one the file's own size is the answer above.
        bundle = importlib.import_module("golf.compress.bundle")
        return len(bundle.bundle_bytes(config=json.loads(config_json) or None))
    except GolfError:
        raise
    except Exception:  # noqa: BLE001 - no sources around: a typical bundle size
        return 60_000


def code_bytes(code: str | Path | None = None, config: Mapping[str, Any] | None = None) -> tuple[int, str]:
    """(bytes, what was measured): the given file, or the single-file bundle with `config` baked in."""
    if code:
        p = Path(code)
        if not p.is_file():
            raise GolfError(f"--code {p}: no such file; pass the bundled train_gpt.py (make bundle) or leave it out")
        return p.stat().st_size, str(p)
    what = "this file (the single-file bundle)" if in_bundle() else \
        "bundle with this run's settings baked in (python -m golf.compress.bundle, generated now)"
    return bundled_code_bytes(config), what
