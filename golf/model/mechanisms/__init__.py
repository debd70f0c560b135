"""The mechanism registry: a mechanism is its file plus one line here.

MIXERS are per-layer sequence mixers, chosen by MIXERS=attn,swa,stream,... (golf/model/mixer.py,
SequenceMixer); MECHANISMS are model-level plug-ins the backbone builds whenever `enabled(cfg)`
(ModelMechanism: memory tokens, persistent memory, weight-tied depth).
"""
from __future__ import annotations

import difflib

from golf.core.utils import GolfError
from golf.model.attention import CausalSelfAttention
from golf.model.mechanisms.deltanet import GatedDeltaNet
from golf.model.mechanisms.hypermixing import HyperMixing
from golf.model.mechanisms.memory_tokens import MemoryTokens
from golf.model.mechanisms.persistent import PersistentMemory
from golf.model.mechanisms.rmt import RecurrentMemory
from golf.model.mechanisms.sliding_window import SlidingWindowAttention
from golf.model.mechanisms.stream import StreamMixer
from golf.model.mechanisms.ttt_linear import TTTLinear
from golf.model.mechanisms.weight_tied import WeightTiedDepth
from golf.model.mixer import ModelMechanism, SequenceMixer

MIXERS: dict[str, type[SequenceMixer]] = {
    "attn": CausalSelfAttention,  # the backbone's own attention
    "swa": SlidingWindowAttention,
    "stream": StreamMixer,
    "deltanet": GatedDeltaNet,
    "hypermix": HyperMixing,
    "ttt_linear": TTTLinear,
}

MECHANISMS: dict[str, type[ModelMechanism]] = {
    "memory_tokens": MemoryTokens,
    "persistent_memory": PersistentMemory,
    "weight_tied": WeightTiedDepth,
    "rmt": RecurrentMemory,
}


def build_mixer(name: str, cfg, layer_idx: int) -> SequenceMixer:
    if name not in MIXERS:
        close = difflib.get_close_matches(name, list(MIXERS), n=3)
        raise GolfError(f"MIXERS: unknown mixer {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
                        + f" (known: {', '.join(sorted(MIXERS))})")
    return MIXERS[name](cfg, layer_idx)


def build_mechanisms(cfg) -> list[ModelMechanism]:
    return [cls(cfg) for name, cls in sorted(MECHANISMS.items()) if cls.enabled(cfg)]
