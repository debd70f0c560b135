"""Causal self-attention, registered as the sequence mixer "attn" (the backbone's default).

GQA (NUM_HEADS query heads share NUM_KV_HEADS key/value heads), q/k RMS norm with a learned
per-head query gain (QK_GAIN_INIT), partial RoPE (ROPE_DIMS of the head dim), all as in the public
parameter-golf records. Attention runs through F.scaled_dot_product_attention (no FlashAttention
dependency). Memory-token prefix positions come first in the sequence, so the causal mask already
makes them visible to every real token; a sliding window (golf/memory/sliding_window.py) keeps
them visible explicitly.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from golf.layers import CastedLinear, apply_rotary, rms_norm
from golf.memory.base import MixerContext, SequenceMixer, register, tag


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """q [B, H, T, hd], k/v [B, Hkv, S, hd]; causal when mask is None, else a bool mask [T, S]."""
    if k.shape[1] != q.shape[1]:
        try:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
        except TypeError:  # torch < 2.5 has no enable_gqa
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)


def window_mask(seq_len: int, window: int, num_prefix: int, device: torch.device) -> Tensor:
    """bool [T, T], True = may attend: causal, within `window` tokens back, or a prefix position
    (memory tokens stay visible to every layer, local ones included)."""
    i = torch.arange(seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    return (j <= i) & ((i - j < window) | (j < num_prefix))


@register
class CausalSelfAttention(SequenceMixer):
    name = "attn"

    def __init__(self, cfg: dict[str, Any], layer_idx: int):
        super().__init__(cfg, layer_idx)
        dim, h, hkv = int(cfg["model_dim"]), int(cfg["num_heads"]), int(cfg["num_kv_heads"])
        self.num_heads, self.num_kv_heads, self.head_dim = h, hkv, dim // h
        self.c_q = CastedLinear(dim, dim)
        self.c_k = CastedLinear(dim, hkv * self.head_dim)
        self.c_v = CastedLinear(dim, hkv * self.head_dim)
        self.proj = CastedLinear(dim, dim)
        nn.init.zeros_(self.proj.weight)  # fresh block = identity (public records)
        for lin in (self.c_q, self.c_k, self.c_v, self.proj):
            tag(lin.weight, quant="attn", optim="matrix")
        self.q_gain = tag(nn.Parameter(torch.full((h,), float(cfg.get("qk_gain_init", 1.5)))),
                          quant="control", optim="scalar")
        self.window = self.window_size(cfg)  # 0 = full causal attention

    def window_size(self, cfg: dict[str, Any]) -> int:
        return 0

    def forward(self, x: Tensor, ctx: MixerContext) -> Tensor:
        B, T, D = x.shape
        q = self.c_q(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        # q/k RMS norm then a learned per-head gain: stable logits without a softmax temperature
        q = rms_norm(q) * self.q_gain.to(q.dtype)[None, :, None, None]
        k = rms_norm(k)
        q_free = q  # position-free queries for mechanisms whose keys have no position
        if ctx.cos is not None:
            q, k = apply_rotary(q, ctx.cos, ctx.sin), apply_rotary(k, ctx.cos, ctx.sin)
        mask = None
        if self.window and self.window < T:
            mask = window_mask(T, self.window, ctx.num_prefix, x.device)
        y = _sdpa(q, k, v, mask)
        extra = ctx.attention_extra(self.layer_idx, q_free)
        if extra is not None:
            y = y + extra.to(y.dtype)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


def attend_slots(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Softmax attention of every query to a fixed set of slots (no mask): q [B, H, T, hd],
    k/v [Hkv, S, hd] -> [B, H, T, hd]. Used by persistent memory."""
    h, hkv = q.shape[1], k.shape[0]
    if h != hkv:
        k, v = k.repeat_interleave(h // hkv, dim=0), v.repeat_interleave(h // hkv, dim=0)
    att = torch.einsum("bhtd,hsd->bhts", q, k.to(q.dtype)) / math.sqrt(q.shape[-1])
    return torch.einsum("bhts,hsd->bhtd", att.softmax(dim=-1), v.to(q.dtype))
