"""Settings for the pipeline's runs: seeds, `ENV=value` strings, the resolved Hyperparameters, and
the environment a stage subprocess gets (the challenge's names)."""
from __future__ import annotations

import os
import shlex
from typing import Any, Sequence

import torch

from golf.core.config import Hyperparameters, apply_overrides, check_name, load_config, parse_cli, parse_env
from golf.core.utils import GolfError, device_description
from golf.model.gpt import GPT


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
    h.finalize()
    if run_id == "check":
        check_buildable(h)
    return h


def check_buildable(h: Hyperparameters) -> None:
    """Build the model on the meta device (no memory, no time): an unknown mixer or mechanism, or
    two that cannot go together, fails here, before any arm of any run trains."""
    with torch.device("meta"):
        GPT(h.model_config())


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


def settings_from(env: dict[str, str], extra: Sequence[str]) -> dict[str, Any]:
    """Training settings from the environment (challenge names) and extra --flags; typos are errors."""
    s = parse_env(env)
    s.update(parse_cli(list(extra)))
    for k in ("run_id",):
        s.pop(k, None)
    return s
