"""Small building blocks shared by the backbone and the mechanisms: CastedLinear (fp32 weights,
optional fake quantisation), RMSNorm, partial rotary embeddings (YaRN past the training length), the
(leaky) relu^2 MLP.

Follows the public parameter-golf train_gpt.py (openai/parameter-golf): parameter-free RMSNorm,
weights kept in fp32 and cast to the activation dtype so bf16 autocast works, relu^2 MLP.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from golf.model.mixer import tag
from golf.model.quantgrid import fake_quantize


class CastedLinear(nn.Linear):
    """A bias-free linear layer whose fp32 weight is cast to the input dtype in forward.

    `qat_bits` > 0 turns on late QAT: the forward uses golf.model.quantgrid.fake_quantize(w, bits) through a
    straight-through estimator (forward sees the quantised weight, backward the identity), at the
    same per-tensor bit width (and clip ratios, `qat_ratios`) the exporter will use. The trainer sets
    them through `GPT.set_qat_bits(plan, ratios)` where plan = golf.compress.quant.quant_plan(model, h)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__(in_features, out_features, bias=bias)
        self.qat_bits = 0
        self.qat_ratios: tuple[float, ...] | float | None = None  # clip rule; None = quantgrid.CLIP_RATIOS

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if 0 < self.qat_bits < 16:  # fake_quantize is the straight-through estimator itself
            w = fake_quantize(w, self.qat_bits) if self.qat_ratios is None else \
                fake_quantize(w, self.qat_bits, self.qat_ratios)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, w.to(x.dtype), b)


class QATEmbedding(nn.Embedding):
    """An embedding table that late QAT fake-quantises like CastedLinear (`qat_bits`, `qat_ratios`):
    the token embedding (also the tied LM head, through `qweight()`) and the BigramHash table are
    exported as integers too, so they learn the exporter's grid (golf issue 16)."""

    def __init__(self, num: int, dim: int):
        super().__init__(num, dim)
        self.qat_bits = 0
        self.qat_ratios: tuple[float, ...] | float | None = None

    def qweight(self) -> Tensor:
        if 0 < self.qat_bits < 16:
            return fake_quantize(self.weight, self.qat_bits) if self.qat_ratios is None else \
                fake_quantize(self.weight, self.qat_bits, self.qat_ratios)
        return self.weight

    def forward(self, idx: Tensor) -> Tensor:
        return F.embedding(idx, self.qweight()) if self.qat_bits else super().forward(idx)


def rms_norm(x: Tensor, eps: float | None = None) -> Tensor:
    return F.rms_norm(x, (x.size(-1),), eps=eps)


class RMSNorm(nn.Module):
    """Parameter-free RMSNorm (the public records learn no gain here: the per-block residual
    scales do that job and cost no bytes in the norm)."""

    def __init__(self, eps: float | None = None):
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.eps)


class Rotary(nn.Module):
    """Rotary tables for partial RoPE: only the first `rope_dims` of each head are rotated
    (record: 16 of 64), the rest carry position-free content. Tables are computed per forward
    (cheap, compile-friendly, no stale cache when the sequence length changes)."""

    def __init__(self, rope_dims: int, base: float = 10000.0, yarn_len: int = 0):
        super().__init__()
        assert rope_dims % 2 == 0 and rope_dims > 0, rope_dims
        self.rope_dims, self.base, self.yarn_len = rope_dims, base, yarn_len
        inv_freq = 1.0 / (base ** (torch.arange(0, rope_dims, 2, dtype=torch.float32) / rope_dims))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        inv_freq = self.inv_freq.to(device)
        if 0 < self.yarn_len < seq_len:
            # YaRN-style base stretch (PR #315, the records' Rotary): a window s times the training
            # length gets base * s^(r/(r-2)), so the slowest rotation still spans the whole window
            # instead of wrapping into angles training never saw. Within the training length: unchanged.
            r = self.rope_dims
            base = self.base * (seq_len / self.yarn_len) ** (r / max(r - 2, 1))
            inv_freq = 1.0 / (base ** (torch.arange(0, r, 2, dtype=torch.float32, device=device) / r))
        t = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        return freqs.cos().to(dtype)[None, None], freqs.sin().to(dtype)[None, None]  # [1, 1, T, rope/2]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [B, H, T, hd]; cos/sin [1, 1, T, r/2] rotate the first r dims (half-split convention)."""
    r = cos.shape[-1] * 2
    xr, xp = x[..., :r], x[..., r:]
    x1, x2 = xr[..., : r // 2], xr[..., r // 2:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    rot = torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)
    return torch.cat((rot, xp), dim=-1) if xp.shape[-1] else rot


class MLP(nn.Module):
    """relu^2 MLP (modded-nanogpt / parameter-golf); the output projection starts at zero so a
    fresh block is the identity. leaky_slope > 0: leaky_relu(x, slope)^2 (PR #493 uses 0.5), which
    keeps a gradient (and a small positive output) for negative pre-activations."""

    def __init__(self, dim: int, mult: float, leaky_slope: float = 0.0):
        super().__init__()
        self.leaky_slope = float(leaky_slope)
        hidden = int(round(mult * dim))
        self.fc = CastedLinear(dim, hidden)
        self.proj = CastedLinear(hidden, dim)
        nn.init.zeros_(self.proj.weight)
        tag(self.fc.weight, quant="mlp", optim="matrix")
        tag(self.proj.weight, quant="mlp", optim="matrix")

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        h = F.leaky_relu(h, self.leaky_slope) if self.leaky_slope else torch.relu(h)
        return self.proj(h.square())
