"""LQER: a low-rank correction of the quantisation error (Zhang et al. 2024, "LQER"; in parameter golf
PR #1797: rank 4, int4 factors in groups of 64, on the three tensors with the largest error).

For a quantised matrix W ~ W_q, the error E = W - W_q is approximated by its top-`rank` singular
directions, E ~ A B with A = U_r S_r [rows, r] and B = V_r^T [r, cols]; A and B are themselves
quantised (symmetric integers of `bits` bits, one fp16 scale per `group` consecutive values) and
stored beside W_q. The loader rebuilds W_q + A B. It pays where the error is concentrated in a few
directions (embeddings, the widest MLP matrices); `top_k` keeps the byte cost to where it pays.
"""
from __future__ import annotations

import torch
from torch import Tensor

from golf.model.quantgrid import dequantize_rows, quantize_rows


def _grouped(x: Tensor, group: int) -> Tensor:
    """x as rows of `group` values (the scale groups); a matrix whose size `group` does not divide
    keeps its own rows."""
    return x.reshape(-1, group) if group > 0 and x.numel() % group == 0 else x.reshape(x.shape[0], -1)


def quantize_factor(x: Tensor, bits: int, group: int) -> tuple[Tensor, Tensor]:
    """-> (int8 integers in x's shape, fp16 scales, one per group)."""
    q, s = quantize_rows(_grouped(x, group), bits, (1.0,))
    return q.reshape(x.shape), s


def dequantize_factor(q: Tensor, s: Tensor, group: int) -> Tensor:
    g = _grouped(q, group)
    return dequantize_rows(g, s, g.shape).reshape(q.shape)


def factors(err: Tensor, rank: int, bits: int, group: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The quantised rank-`rank` factors of `err` [rows, cols]: (qa, sa, qb, sb)."""
    U, S, Vh = torch.linalg.svd(err.to(torch.float32), full_matrices=False)
    r = min(rank, S.numel())
    A = (U[:, :r] * S[:r]).contiguous()
    B = Vh[:r].contiguous()
    qa, sa = quantize_factor(A, bits, group)
    qb, sb = quantize_factor(B, bits, group)
    return qa, sa, qb, sb


def correction(qa: Tensor, sa: Tensor, qb: Tensor, sb: Tensor, group: int) -> Tensor:
    """A B as the loader rebuilds it."""
    return dequantize_factor(qa, sa, group) @ dequantize_factor(qb, sb, group)


def pick(errors: dict[str, float], top_k: int) -> list[str]:
    """The `top_k` tensors with the largest quantisation error (Frobenius norm), largest first."""
    return [n for n, _ in sorted(errors.items(), key=lambda kv: -kv[1])[:max(top_k, 0)]]
