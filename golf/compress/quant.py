"""Quantisation policy: which bit width each tensor gets (shared by QAT and the exporter), the
model's round trip through the grid (golf/model/quantgrid.py), and the size pre-flight."""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import Tensor

from golf.compress.codesize import bundled_code_bytes
from golf.core.config import BYTES_CAP, parse_clip_ratios, parse_clip_sigmas
from golf.core.utils import GolfError
from golf.model.mixer import quant_group_of
from golf.model.quantgrid import CLIP_RATIOS, FP16, Clip, quantize_dequantize

# Tensors smaller than this (or vectors) stay fp16: they are few bytes in total and the sensitive
# ones (gains, gates, memory tokens); the public records keep tensors <= 65536 elements in fp16.
# Overridable per run with QUANT_MIN_NUMEL (e.g. lower for the tiny CPU preset, whose matrices are
# all smaller than this).
MIN_QUANT_NUMEL = 65536

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
    return parse_clip_ratios(spec)


def clip_for(group: str, h_or_cfg: Any) -> Clip:
    """A group's clip rule: SDClip's k where QUANT_CLIP_SIGMAS names the group, else the search ratios."""
    try:
        sigmas = parse_clip_sigmas(_get(h_or_cfg, "quant_clip_sigmas"))
    except (KeyError, AttributeError):
        sigmas = {}
    return sigmas[group] if group in sigmas else clip_ratios(h_or_cfg)


def clip_plan(model: torch.nn.Module, h_or_cfg: Any) -> dict[str, Clip]:
    """{parameter name: clip rule}, the companion of quant_plan (QAT and the exporter share both)."""
    return {name: clip_for(quant_group_of(p), h_or_cfg) for name, p in model.named_parameters()}


def quantize_model_(model: torch.nn.Module, h_or_cfg: Any) -> dict[str, int]:
    """Replace every parameter in place by its quantise->dequantise round trip (the model the
    artifact will rebuild with the RTN scheme). Returns the plan used."""
    plan, clips = quant_plan(model, h_or_cfg), clip_plan(model, h_or_cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(quantize_dequantize(p, plan[name], clips[name]))
    return plan


# ---------------------------------------------------------------------------------------------
# size pre-flight


# Calibrated on golf.bench.quant --cross rows of two checkpoints (records/benches/2026-12-04_quant_cross_record_wiki):
# the record preset (26.6M params, 250 steps on wiki) and the tiny preset (0.8M). Serialisers against
# zstd-22 on the same integers: brotli 0.982-0.994, lzma 1.001. SDClip's integers from trained rows carry ~3%
# less entropy than the Gaussian model at the same k (heavier tails), and GPTQ's error feedback takes
# ~1.5% more off them (RTN vs GPTQ at k=4); with the clip search GPTQ changes nothing measurable.
# sorted_t (an L1 row order, stored by column) saves 3.4-4.5% with brotli on the record preset's
# 256-2048-row matrices (0.4% on the tiny preset's: the estimate is then ~3% low there).
COMPRESSOR_FACTOR = {"zstd": 1.0, "brotli": 0.988, "lzma": 1.0, "lrzip": 0.97}
LAYOUT_FACTOR = {"rows": 1.0, "sorted": 1.0, "sorted_t": 0.965}
GPTQ_FACTOR = {"search": 1.0, "sdclip": 0.985}
SDCLIP_TAIL_FACTOR = 0.97
ZSTD_OVER_ENTROPY = 1.03  # zstd-22 on byte containers sits ~3% over the values' entropy (golf/compress/pack.py)


def _get_or(h_or_cfg: Any, name: str, default: Any) -> Any:
    try:
        return _get(h_or_cfg, name)
    except (KeyError, AttributeError):
        return default


def sdclip_entropy(bits: int, sigmas: float) -> float:
    """Entropy in bits of round(N(0, qmax/k)) clamped to [-qmax, qmax]: SDClip's integers when the
    rows are Gaussian (k = sigmas). Trained rows are heavier-tailed: the pre-flight is then a little high."""
    qmax = (1 << (bits - 1)) - 1
    sd = qmax / max(float(sigmas), 1e-6)
    edges = [(i - 0.5) / sd for i in range(-qmax, qmax + 2)]
    cdf = [0.5 * (1 + math.erf(x / math.sqrt(2))) for x in edges]
    probs = [cdf[i + 1] - cdf[i] for i in range(len(cdf) - 1)]
    probs[0] += cdf[0]
    probs[-1] += 1 - cdf[-1]
    return -sum(p * math.log2(p) for p in probs if p > 0)


def bits_per_value(bits: int, clip: Any, h_or_cfg: Any) -> float:
    """Compressed bits per integer for the size pre-flight: the measured table for the clip search,
    the Gaussian entropy for SDClip; times the serialiser's and the scheme's factors."""
    sdclip = isinstance(clip, (int, float))
    if sdclip:
        base = sdclip_entropy(bits, float(clip)) * ZSTD_OVER_ENTROPY * SDCLIP_TAIL_FACTOR
    else:
        base = COMPRESSED_BITS_PER_VALUE[bits]
    base *= COMPRESSOR_FACTOR.get(str(_get_or(h_or_cfg, "compressor", "zstd")), 1.0)
    base *= LAYOUT_FACTOR.get(str(_get_or(h_or_cfg, "quant_layout", "rows")), 1.0)
    if str(_get_or(h_or_cfg, "quant_scheme", "rtn")) == "gptq":
        base *= GPTQ_FACTOR["sdclip" if sdclip else "search"]
    return base


def estimate_artifact_bytes(model: torch.nn.Module, h_or_cfg: Any, code_bytes: int | None = None) -> dict[str, Any]:
    """Estimate the artifact + code size before training (the trainer's pre-flight).

    Integers: params x measured zstd bits/value; scales: 2 bytes per row; fp16 tensors: 2 bytes x
    a measured ratio; + header; + code (the bundled train_gpt.py, measured when golf.compress.bundle can
    build it, else a typical figure). Returns {"groups": {group: {params, bits, bytes}}, "header",
    "code", "total", "cap", "fits"}."""
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
        per_value = bits_per_value(bits, clip_for(g, h_or_cfg), h_or_cfg) if bits < FP16 else 0.0
        key = g if bits < FP16 else (g if g == "control" else f"{g}_fp16")
        e = groups.setdefault(key, {"params": 0, "bits": bits, "bytes": 0.0})
        if bits >= FP16:
            e["bytes"] += p.numel() * 2 * FP16_COMPRESSION
        else:
            e["bytes"] += p.numel() * per_value / 8 + (p.shape[0] if p.ndim >= 2 else 1) * 2
        e["params"] += p.numel()
    for e in groups.values():
        e["bytes"] = int(math.ceil(e["bytes"]))
    header = 2048 + 120 * n_tensors  # compressed JSON manifest + config
    rank = int(_get_or(h_or_cfg, "lqer_rank", 0))
    if rank > 0:  # LQER's factors on the top-k tensors: taken as the k largest, rank x (rows + cols) values each
        mats = sorted((p for n, p in model.named_parameters() if p.ndim == 2 and (keep is None or n in keep)),
                      key=lambda p: -p.numel())[:int(_get_or(h_or_cfg, "lqer_top_k", 3))]
        group, lbits = max(int(_get_or(h_or_cfg, "lqer_group", 64)), 1), int(_get_or(h_or_cfg, "lqer_bits", 4))
        vals = sum(rank * (p.shape[0] + p.shape[1]) for p in mats)
        groups["lqer"] = {"params": 0, "bits": lbits, "bytes": int(vals * (lbits / 8 + 2 / group))}
    if code_bytes is None:
        code_bytes = bundled_code_bytes(h_or_cfg.to_dict() if hasattr(h_or_cfg, "to_dict") else None)
    total = sum(e["bytes"] for e in groups.values()) + header + code_bytes
    params = sum(e["params"] for e in groups.values())
    return {
        "groups": groups, "params": params, "header": header, "code": code_bytes, "total": total,
        "bits_per_param": 8 * (total - code_bytes) / max(params, 1), "cap": BYTES_CAP, "fits": total <= BYTES_CAP,
    }
