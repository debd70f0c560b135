"""The integer grid weights are rounded to: per-row symmetric integers q in [-qmax, qmax]
(qmax = 2**(bits-1) - 1; int5 -> +-15, int6 -> +-31, int8 -> +-127) times one fp16 scale per row.

Each row's clip is searched over a few ratios of its abs-max and the one with the smallest squared
reconstruction error wins: clipping a few outliers buys a finer grid for the bulk of the row (the
public records' "GPTQ-lite" clip search; per-row fp16 scales as in the parameter-golf int6/int5
entries). The scale is rounded to fp16 *before* the integers are computed, so dequantisation with
the stored scale reproduces exactly what the search scored.

Two clip rules, chosen per tensor group (golf/compress/quant.py, `clip_for`):
  search  a tuple of ratios of the row abs-max: the one with the smallest squared error wins;
  sdclip  a float k: the row's clip is k x its standard deviation (PR #1394's SDClip), so the grid
          step is k*std/qmax whatever the row's outliers; with GPTQ's error feedback a coarse grid
          (k = 11.5..14 at int6) costs little error and its integers compress far better.

It lives with the model because late QAT (golf/model/layers.py, CastedLinear) trains against the
same grid the exporter (golf/compress/) writes.
"""
from __future__ import annotations

import torch
from torch import Tensor

# Clip ratios of the row abs-max tried per row; the first one wins ties (so 1.0 = plain abs-max).
# QUANT_CLIP_RATIOS overrides them per run. The search trades bytes for error: a clipped row has a
# finer grid, so its integers spread wider and compress worse (measured with golf.bench.quant on
# 1536x512 rows, zstd-22, int5: Gaussian 4.46 vs 4.32 bits/value with "1.0" alone, student-t(4)
# 3.62 vs 3.43). QUANT_CLIP_RATIOS=1.0 is the public records' plain abs-max scaling.
CLIP_RATIOS: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8)

FP16 = 16  # "bits" value meaning: keep the tensor in fp16, no integer quantisation

Clip = "tuple[float, ...] | float"  # search ratios, or SDClip's k (see the module doc)


def qmax_for(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def _rows(w: Tensor) -> Tensor:
    return w.reshape(w.shape[0], -1) if w.ndim >= 2 else w.reshape(1, -1)


def _scale_for(absmax: Tensor, ratio: float, qmax: int) -> Tensor:
    """fp16-representable scale (kept as fp32) for a clip of ratio * absmax. Zero rows get scale 1
    (any positive scale maps them to 0). Very small rows get fp16 subnormal scales (coarser but
    exact); the floor at the smallest subnormal, 2**-24, keeps a scale from underflowing to zero."""
    s = (absmax * ratio / qmax).to(torch.float16).to(torch.float32)
    s = torch.where(absmax > 0, s, torch.ones_like(s))
    return s.clamp_min(2.0**-24)


def _round_clamp(x: Tensor, scale: Tensor, qmax: int) -> Tensor:
    return torch.clamp(torch.round(x / scale), -qmax, qmax)


def sd_scales(w: Tensor, bits: int, sigmas: float) -> Tensor:
    """SDClip: per-row fp16-representable scales sigmas * std(row) / qmax (fp32 tensor [rows])."""
    x = _rows(w.detach()).to(torch.float32)
    std = x.std(dim=1, unbiased=False) if x.shape[1] > 1 else x.abs().reshape(-1)
    return _scale_for(std, float(sigmas), qmax_for(bits))


def row_scales(w: Tensor, bits: int, clip: Clip = CLIP_RATIOS) -> Tensor:
    """The scales quantize_rows would pick for w under `clip` (GPTQ fixes them before its sweep)."""
    if isinstance(clip, (int, float)):
        return sd_scales(w, bits, float(clip))
    return quantize_rows(w, bits, clip)[1].to(torch.float32)


def quantize_rows(w: Tensor, bits: int, ratios: Clip = CLIP_RATIOS) -> tuple[Tensor, Tensor]:
    """Fast (vectorised) per-row quantiser. w: [rows, ...] float -> (q int8 [rows, cols], scale fp16 [rows]).

    `ratios` a tuple (search): for every row and every clip ratio the row is rounded to the grid and
    its squared error summed (in fp64, so near-ties are decided the same way as the row-by-row
    reference); the ratio with the smallest error wins, the first on ties. A float: SDClip's k."""
    qmax = qmax_for(bits)
    x = _rows(w.detach()).to(torch.float32)
    if isinstance(ratios, (int, float)):
        s = sd_scales(x, bits, float(ratios))
        return _round_clamp(x, s[:, None], qmax).to(torch.int8), s.to(torch.float16)
    absmax = x.abs().amax(dim=1)
    best_err = best_q = best_s = None
    for ratio in ratios:
        s = _scale_for(absmax, ratio, qmax)
        q = _round_clamp(x, s[:, None], qmax)
        err = ((q * s[:, None] - x).to(torch.float64) ** 2).sum(dim=1)
        if best_err is None:
            best_err, best_q, best_s = err, q, s
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_q = torch.where(better[:, None], q, best_q)
            best_s = torch.where(better, s, best_s)
    return best_q.to(torch.int8), best_s.to(torch.float16)


def quantize_rows_reference(w: Tensor, bits: int, ratios: tuple[float, ...] = CLIP_RATIOS) -> tuple[Tensor, Tensor]:
    """Slow reference: the same rule written as plain Python loops over rows and ratios."""
    qmax = qmax_for(bits)
    x = _rows(w.detach()).to(torch.float32)
    qs, ss = [], []
    for r in range(x.shape[0]):
        row = x[r]
        amax = row.abs().max()
        best = None
        for ratio in ratios:
            s = _scale_for(amax.reshape(1), ratio, qmax)[0]
            q = torch.clamp(torch.round(row / s), -qmax, qmax)
            err = float(((q * s - row).double() ** 2).sum())
            if best is None or err < best[0]:
                best = (err, q, s)
        qs.append(best[1])
        ss.append(best[2])
    return torch.stack(qs).to(torch.int8), torch.stack(ss).to(torch.float16)


def dequantize_rows(q: Tensor, scale: Tensor, shape: tuple[int, ...] | torch.Size, dtype=torch.float32) -> Tensor:
    return (q.to(torch.float32) * scale.to(torch.float32)[:, None]).reshape(shape).to(dtype)


def quantize_dequantize(w: Tensor, bits: int, ratios: Clip = CLIP_RATIOS) -> Tensor:
    """What the artifact will hold for w (same shape and dtype); bits >= 16 -> fp16 round-trip."""
    if bits >= FP16:
        return w.detach().to(torch.float16).to(w.dtype)
    q, s = quantize_rows(w, bits, ratios)
    return dequantize_rows(q, s, w.shape, w.dtype)


def fake_quantize(w: Tensor, bits: int, ratios: Clip = CLIP_RATIOS) -> Tensor:
    """Differentiable fake quantisation for QAT: the SAME grid and per-row clip search as the exporter
    (no cheaper approximation: the search is 5 elementwise passes over a weight, small next to the
    matmuls). bits <= 0 or >= 16 returns w unchanged. The straight-through estimator (Bengio et al.
    2013; the parameter-golf late-QAT entries) is written as w + (wq - w).detach(): the forward sees
    wq, the gradient passes to w unchanged, and it traces under torch.compile without a graph break."""
    if bits <= 0 or bits >= FP16 or w.ndim < 2:
        return w
    wq = quantize_dequantize(w, bits, ratios)
    return w + (wq - w).detach()
