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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise GolfError(f"no checkpoint at {path}; pass RUN_ID=<id> of a run under OUT_DIR that wrote one")
    try:
        # our own file, with numpy/python RNG states inside: not loadable with weights_only
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated / corrupt file
        raise GolfError(f"{path} could not be read ({e}); it is corrupt: delete it and start the run again") from None
