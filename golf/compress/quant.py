"""Quantisation: the one bit-width policy (shared by QAT and the exporter) and the per-row quantiser.

Scheme: per-row symmetric integers q in [-qmax, qmax] (qmax = 2**(bits-1) - 1; int5 -> +-15,
int6 -> +-31, int8 -> +-127) times one fp16 scale per row. Each row's clip is searched over a few
ratios of its abs-max and the one with the smallest squared reconstruction error wins: clipping a
few outliers buys a finer grid for the bulk of the row (the public records' "GPTQ-lite" clip
search; per-row fp16 scales as in the parameter-golf int6/int5 entries).

The scale is rounded to fp16 *before* the integers are computed, so dequantisation with the stored
scale reproduces exactly what the search scored, and `fake_quantize` (QAT) sees the same grid.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import torch
from torch import Tensor

# Clip ratios of the row abs-max tried per row; the first one wins ties (so 1.0 = plain abs-max).
# QUANT_CLIP_RATIOS overrides them per run. The search trades bytes for error: a clipped row has a
# finer grid, so its integers spread wider and compress worse (measured with golf.bench.quant on
# 1536x512 rows, zstd-22, int5: Gaussian 4.46 vs 4.32 bits/value with "1.0" alone, student-t(4)
# 3.62 vs 3.43). QUANT_CLIP_RATIOS=1.0 is the public records' plain abs-max scaling.
CLIP_RATIOS: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8)

# Tensors smaller than this (or vectors) stay fp16: they are few bytes in total and the sensitive
# ones (gains, gates, memory tokens); the public records keep tensors <= 65536 elements in fp16.
# Overridable per run with QUANT_MIN_NUMEL (e.g. lower for the tiny CPU preset, whose matrices are
# all smaller than this).
MIN_QUANT_NUMEL = 65536

FP16 = 16  # "bits" value meaning: keep the tensor in fp16, no integer quantisation

# zstd-22 size of int8-container integers after the clip search, in bits per value, used only by
# the size pre-flight (the real artifact is measured, never estimated). Measured with
# `python -m golf.compress.pack` (table in golf/compress/pack.py): Gaussian rows give 4.46 / 5.41 / 7.39 bits for
# int5 / int6 / int8, heavier-tailed student-t(4) rows 3.65 / 4.53 / 6.52. Trained weights sit in
# between (the public record: 4.65 bits/param over the whole artifact), so the table is the midpoint.
# Checked on record-preset weights after 277 CPU training steps (README, quantisation): int5 4.17,
# int6 4.93 (attention) but 5.7 (the BigramHash table, still near its init), int8 7.5, so the
# pre-flight came out 2.1% low there (14,442,515 vs 14,759,299 bytes with code); train.py warns
# within PREFLIGHT_MARGIN of the cap.
COMPRESSED_BITS_PER_VALUE: dict[int, float] = {2: 1.7, 3: 2.5, 4: 3.3, 5: 4.06, 6: 4.97, 7: 6.0, 8: 6.96}
FP16_COMPRESSION = 0.93  # fp16 tensors compress a little (sign/exponent redundancy)


# ---------------------------------------------------------------------------------------------
# policy


def _get(h_or_cfg: Any, name: str) -> Any:
    if isinstance(h_or_cfg, Mapping):
        return h_or_cfg[name]
    return getattr(h_or_cfg, name)


def bits_for_group(group: str, h_or_cfg: Any) -> int:
    """THE policy table: quant group -> bit width (16 = keep fp16). `h_or_cfg` is a Hyperparameters
    or a dict with the quant_* fields (e.g. `h.to_dict()`)."""
    if group == "mlp":
        bits = int(_get(h_or_cfg, "quant_mlp_bits"))
    elif group == "attn":
        bits = int(_get(h_or_cfg, "quant_attn_bits"))
    elif group == "embed":
        bits = int(_get(h_or_cfg, "quant_embed_bits"))
    elif group == "other":
        bits = int(_get(h_or_cfg, "quant_other_bits"))
    elif group == "control":
        return FP16
    else:
        raise ValueError(f"unknown quant group {group!r} (see golf/model/mixer.py QUANT_GROUPS)")
    if bits >= FP16 or bits <= 0:
        return FP16
    if not 2 <= bits <= 8:
        from golf.core.utils import GolfError

        raise GolfError(f"QUANT_{group.upper()}_BITS={bits}: supported widths are 2..8 (or 16 = fp16)")
    return bits


def bits_for_tensor(t: Tensor, group: str, h_or_cfg: Any) -> int:
    """Policy for one tensor: small tensors and vectors stay fp16 whatever their group."""
    try:
        min_numel = int(_get(h_or_cfg, "quant_min_numel"))
    except (KeyError, AttributeError):
        min_numel = MIN_QUANT_NUMEL
    if t.ndim < 2 or t.numel() < min_numel:
        return FP16
    return bits_for_group(group, h_or_cfg)


def quant_plan(model: torch.nn.Module, h_or_cfg: Any) -> dict[str, int]:
    """{parameter name: bits} for every parameter (16 = fp16). The trainer sets QAT bit widths from
    this and the exporter quantises with it, so both always agree."""
    from golf.model.mixer import quant_group_of

    return {name: bits_for_tensor(p, quant_group_of(p), h_or_cfg) for name, p in model.named_parameters()}


# ---------------------------------------------------------------------------------------------
# the quantiser


def clip_ratios(h_or_cfg: Any) -> tuple[float, ...]:
    """QUANT_CLIP_RATIOS of a Hyperparameters / config dict as a tuple (default CLIP_RATIOS, also
    for configs written before the setting existed)."""
    try:
        spec = _get(h_or_cfg, "quant_clip_ratios")
    except (KeyError, AttributeError):
        return CLIP_RATIOS
    if isinstance(spec, (tuple, list)):
        spec = ",".join(str(r) for r in spec)
    try:
        ratios = tuple(float(r) for r in str(spec).split(",") if r.strip())
    except ValueError:
        ratios = ()
    if not ratios or not all(0.0 < r <= 1.0 for r in ratios):
        from golf.core.utils import GolfError

        raise GolfError(f"QUANT_CLIP_RATIOS={spec!r}: give comma-separated ratios of the row abs-max in (0, 1], "
                        "e.g. 1.0,0.95,0.9 (1.0 alone = plain abs-max scaling)")
    return ratios


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


def quantize_rows(w: Tensor, bits: int, ratios: tuple[float, ...] = CLIP_RATIOS) -> tuple[Tensor, Tensor]:
    """Fast (vectorised) per-row quantiser. w: [rows, ...] float -> (q int8 [rows, cols], scale fp16 [rows]).

    For every row and every clip ratio in `ratios` the row is rounded to the grid and its squared error summed
    (in fp64, so near-ties are decided the same way as the row-by-row reference); the ratio with the
    smallest error wins, the first on ties."""
    qmax = qmax_for(bits)
    x = _rows(w.detach()).to(torch.float32)
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


def quantize_dequantize(w: Tensor, bits: int, ratios: tuple[float, ...] = CLIP_RATIOS) -> Tensor:
    """What the artifact will hold for w (same shape and dtype); bits >= 16 -> fp16 round-trip."""
    if bits >= FP16:
        return w.detach().to(torch.float16).to(w.dtype)
    q, s = quantize_rows(w, bits, ratios)
    return dequantize_rows(q, s, w.shape, w.dtype)


def fake_quantize(w: Tensor, bits: int, ratios: tuple[float, ...] = CLIP_RATIOS) -> Tensor:
    """Differentiable fake quantisation for QAT: the SAME grid and per-row clip search as the exporter
    (no cheaper approximation: the search is 5 elementwise passes over a weight, small next to the
    matmuls). bits <= 0 or >= 16 returns w unchanged. The straight-through estimator (Bengio et al.
    2013; the parameter-golf late-QAT entries) is written as w + (wq - w).detach(): the forward sees
    wq, the gradient passes to w unchanged, and it traces under torch.compile without a graph break."""
    if bits <= 0 or bits >= FP16 or w.ndim < 2:
        return w
    wq = quantize_dequantize(w, bits, ratios)
    return w + (wq - w).detach()


def quantize_model_(model: torch.nn.Module, h_or_cfg: Any) -> dict[str, int]:
    """Replace every parameter in place by its quantise->dequantise round trip (the model the
    artifact will rebuild). Returns the plan used."""
    plan, ratios = quant_plan(model, h_or_cfg), clip_ratios(h_or_cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(quantize_dequantize(p, plan[name], ratios))
    return plan


# ---------------------------------------------------------------------------------------------
# size pre-flight


def estimate_artifact_bytes(model: torch.nn.Module, h_or_cfg: Any, code_bytes: int | None = None) -> dict[str, Any]:
    """Estimate the artifact + code size before training (the trainer's pre-flight).

    Integers: params x measured zstd bits/value; scales: 2 bytes per row; fp16 tensors: 2 bytes x
    a measured ratio; + header; + code (the bundled train_gpt.py, measured when golf.compress.bundle can
    build it, else a typical figure). Returns {"groups": {group: {params, bits, bytes}}, "header",
    "code", "total", "cap", "fits"}."""
    from golf.model.mixer import quant_group_of

    groups: dict[str, dict[str, Any]] = {}
    seen: set[int] = set()
    n_tensors = 0
    # training-only tensors (MTP heads) never reach the artifact: count only what export keeps
    keep = set(model.export_state_dict()) if hasattr(model, "export_state_dict") else None
    for name, p in model.named_parameters():
        if keep is not None and name not in keep:
            continue
        if id(p) in seen:
            continue
        seen.add(id(p))
        n_tensors += 1
        g = quant_group_of(p)
        bits = bits_for_tensor(p, g, h_or_cfg)
        key = g if bits < FP16 else (g if g == "control" else f"{g}_fp16")
        e = groups.setdefault(key, {"params": 0, "bits": bits, "bytes": 0.0})
        if bits >= FP16:
            e["bytes"] += p.numel() * 2 * FP16_COMPRESSION
        else:
            e["bytes"] += p.numel() * COMPRESSED_BITS_PER_VALUE[bits] / 8 + _rows(p).shape[0] * 2
        e["params"] += p.numel()
    for e in groups.values():
        e["bytes"] = int(math.ceil(e["bytes"]))
    header = 2048 + 120 * n_tensors  # compressed JSON manifest + config
    if code_bytes is None:
        code_bytes = _code_bytes()
    total = sum(e["bytes"] for e in groups.values()) + header + code_bytes
    params = sum(e["params"] for e in groups.values())
    return {
        "groups": groups, "params": params, "header": header, "code": code_bytes, "total": total,
        "bits_per_param": 8 * (total - code_bytes) / max(params, 1), "cap": 16_000_000, "fits": total <= 16_000_000,
    }


@functools.lru_cache(maxsize=1)  # building the bundle costs ~2 s of lzma; once per process is enough
def _code_bytes() -> int:
    """Bytes of the submitted train_gpt.py: this very file when running from a bundle, else the
    bundle golf.compress.bundle would build now; a typical figure if neither can be measured."""
    import os
    import sys

    import golf

    if str(getattr(golf, "__file__", "")).startswith("<golf>"):  # running inside the bundle
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if main_file and os.path.isfile(main_file):
            return os.path.getsize(main_file)
    try:
        from golf.compress.bundle import bundle_bytes

        return len(bundle_bytes())
    except Exception:  # no repo checkout around (e.g. an installed package): a typical bundle size
        return 60_000
