"""Persistent memory: PERSISTENT_MEMORY learned key/value slots in every attention layer, shared by
all positions and independent of the input (Sukhbaatar et al. 2019, "Augmenting Self-attention with
Persistent Memory").

Each query attends to the slots with its own softmax and the result is added to the attention
output through a per-head residual scale that starts at zero, so switching it on starts as an
exact no-op and an A/B against the same backbone is fair. (The paper concatenates the slots to the
context keys under one softmax; a separate softmax keeps the fast SDPA path untouched and makes the
zero-init no-op exact.) Slot keys are RMS-normed like the context keys and meet the queries before
rotary embedding: slots have no position. Stored in fp16 (quant "control"), no weight decay.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from golf.core.config import GPTConfig
from golf.model.attention import attend_slots
from golf.model.layers import rms_norm
from golf.model.mixer import ModelMechanism, tag


def num_attention_modules(cfg: GPTConfig) -> int:
    """Attention modules are indexed by unique block (weight-tied blocks share their slots)."""
    return int(cfg.unique_layers) or int(cfg.num_layers)


class PersistentMemory(ModelMechanism):
    name = "persistent_memory"

    @classmethod
    def enabled(cls, cfg: GPTConfig) -> bool:
        return int(cfg.persistent_memory) > 0

    @classmethod
    def technique(cls, cfg: GPTConfig) -> str:
        return f"persistent memory: {cfg.persistent_memory} learned K/V slots per attention layer"

    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg)
        n, s = num_attention_modules(cfg), int(cfg.persistent_memory)
        hkv, h = int(cfg.num_kv_heads), int(cfg.num_heads)
        hd = int(cfg.model_dim) // h
        self.keys = tag(nn.Parameter(torch.randn(n, hkv, s, hd)), quant="control", optim="memory")
        self.values = tag(nn.Parameter(torch.randn(n, hkv, s, hd)), quant="control", optim="memory")
        self.scale = tag(nn.Parameter(torch.zeros(n, h)), quant="control", optim="scalar")

    def attention_extra(self, layer_idx: int, q: Tensor) -> Tensor | None:
        if layer_idx >= self.keys.shape[0]:
            return None
        out = attend_slots(q, rms_norm(self.keys[layer_idx]), self.values[layer_idx])
        return out * self.scale[layer_idx].to(out.dtype)[None, :, None, None]
