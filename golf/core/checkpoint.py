"""Training checkpoints (ckpt.pt): everything needed to continue a run bit-for-bit on CPU.

model, optimizers, EMA, loader position, RNG states, step, elapsed training time, QAT flag and the
metrics history. Written atomically (temp file + rename) so a kill during the write leaves the
previous checkpoint intact.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from golf.core.utils import GolfError, atomic_path


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", final: bool = False) -> dict[str, Any]:
    """The one reader of golf's torch files. final=False: a training checkpoint (ckpt.pt, our own file
    with numpy / python RNG states inside, so not loadable with weights_only). final=True: a run's
    final.pt (tensors and plain data only: loaded with weights_only and checked for its keys)."""
    path = Path(path)
    if not path.is_file():
        raise GolfError(f"{path}: checkpoint not found; train first (python train_gpt.py writes runs/<id>/final.pt)"
                        if final else f"no checkpoint at {path}; pass RUN_ID=<id> of a run under OUT_DIR that wrote one")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=final)
    except Exception as e:  # noqa: BLE001 - truncated, corrupt or foreign file
        raise GolfError(f"{path}: cannot read the checkpoint ({type(e).__name__}: {e}); re-run training" if final else
                        f"{path} could not be read ({e}); it is corrupt: delete it and start the run again") from None
    missing = [k for k in ("config", "model_config", "state_dict") if k not in ck] if final else []
    if missing:
        raise GolfError(f"{path}: not a golf final.pt (missing {missing}); pass runs/<id>/final.pt written by train_gpt.py")
    return ck
