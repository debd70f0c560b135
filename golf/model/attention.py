"""Causal self-attention, registered as the sequence mixer "attn" (the backbone's default).

GQA (NUM_HEADS query heads share NUM_KV_HEADS key/value heads), q/k RMS norm with a learned
per-head query gain (QK_GAIN_INIT), partial RoPE (ROPE_DIMS of the head dim), all as in the public
parameter-golf records; optional XSA (XSA_LAST_N) and per-head output gates (ATTN_OUT_GATE_ENABLED,
SPARSE_ATTN_GATE_ENABLED) of the April records. Attention runs through F.scaled_dot_product_attention (no FlashAttention
dependency); compiled sliding-window layers on CUDA use flex_attention with a block-sparse mask.
Memory-token prefix positions come first in the sequence, so the causal mask already makes them
visible to every real token; a sliding window (golf/model/mechanisms/sliding_window.py) keeps them visible
explicitly.

Incremental decoding (golf/eval/generate.py): `forward_cached` runs new positions against a KVCache of
the keys/values already computed (after q/k norm and RoPE at their absolute positions, prefix
first), so generating a token costs one position per layer; sliding-window layers keep only the
prefix and the keys still inside the window.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from golf.core.config import GPTConfig
from golf.core.utils import GolfError
from golf.model.layers import CastedLinear, apply_rotary, rms_norm
from golf.model.mixer import MixerContext, SequenceMixer, tag


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool | None = None) -> Tensor:
    """q [B, H, T, hd], k/v [B, Hkv, S, hd]; a bool mask [T, S], or with mask None causal (default)
    or, causal=False, every query sees every key (a decoding step over a trimmed KV cache)."""
    causal = mask is None if causal is None else causal
    if k.shape[1] != q.shape[1]:
        try:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
        except TypeError:  # torch < 2.5 has no enable_gqa
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)


# ---------------------------------------------------------------------------------------------
# Sliding-window attention through FlexAttention (CUDA). A bool mask rules out SDPA's flash kernel,
# so a window layer would pay for the full T x T scores; flex_attention with a BlockMask skips the
# 128x128 tiles that are entirely masked, so its cost follows the window. Idea credit: PyTorch's
# FlexAttention (Dong et al. 2024, and the sliding-window example of pytorch-labs/attention-gym);
# the modded-nanogpt speedruns train their sliding-window layers this way.
# FLEX_ATTENTION: "auto" (default: on CUDA inside torch.compile, when torch has flex_attention),
# "on" (always, eager and CPU included: eager flex_attention is an unfused reference, slow, and
# forward-only on CPU; for tests), "off" (never: the bool-mask SDPA path, the reference). Read when
# a layer is built. "auto" stays off in eager code: there flex_attention is the unfused fallback and
# compiling it behind the caller's back would add graphs (and a first-call stall) to uncompiled
# evaluation and generation; training and compiled evaluation trace it into their own graph.

_FLEX: dict[str, Any] = {}  # imported lazily: no work at import time
_BLOCK_MASKS: dict[tuple, Any] = {}  # (T, window, num_prefix, device) -> BlockMask; a few shapes a run


def flex_setting(cfg: GPTConfig) -> str:
    """The model config's flex_attention: "auto" | "on" | "off" (artifacts without it: "auto")."""
    v = str(cfg.flex_attention or "auto").strip().lower()
    if v not in ("auto", "on", "off"):
        raise GolfError(f"FLEX_ATTENTION={v!r}: use auto (compiled CUDA code), on (always) or off (never)")
    return v


def flex_available() -> bool:
    if "flex_attention" not in _FLEX:
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        except ImportError:  # torch without FlexAttention: the mask path serves
            _FLEX["flex_attention"] = None
        else:
            _FLEX["flex_attention"], _FLEX["create_block_mask"] = flex_attention, create_block_mask
    return _FLEX["flex_attention"] is not None


def window_block_mask(seq_len: int, window: int, num_prefix: int, device: torch.device):
    """The BlockMask of window_mask(): causal & (within `window` | prefix position). Built once
    per shape in eager code; inside torch.compile it is traced into the graph instead (a Python
    cache filled during tracing would not be part of the graph)."""

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & ((q_idx - kv_idx < window) | (kv_idx < num_prefix))

    def build():
        return _FLEX["create_block_mask"](mask_mod, B=None, H=None, Q_LEN=seq_len, KV_LEN=seq_len, device=device)

    if torch.compiler.is_compiling():
        return build()
    key = (seq_len, window, num_prefix, str(device))
    if key not in _BLOCK_MASKS:
        _BLOCK_MASKS[key] = build()
    return _BLOCK_MASKS[key]


def _flex_inputs(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """flex_attention's inputs: refused without it; cast as autocast would cast SDPA's (it does not cast flex)."""
    if not flex_available():
        raise GolfError("flex attention needs torch.nn.attention.flex_attention (torch >= 2.5); "
                        "set FLEX_ATTENTION=off")
    if torch.is_autocast_enabled(q.device.type):
        dt = torch.get_autocast_dtype(q.device.type)
        q, k, v = q.to(dt), k.to(dt), v.to(dt)
    return q, k, v


def flex_window_attention(q: Tensor, k: Tensor, v: Tensor, window: int, num_prefix: int) -> Tensor:
    """Same as _sdpa(q, k, v, window_mask(T, window, num_prefix)) through flex_attention.
    q [B, H, T, hd], k/v [B, Hkv, T, hd] (GQA when Hkv < H)."""
    q, k, v = _flex_inputs(q, k, v)
    bm = window_block_mask(q.shape[2], window, num_prefix, q.device)
    return _FLEX["flex_attention"](q, k, v, block_mask=bm, enable_gqa=k.shape[1] != q.shape[1])


# ---------------------------------------------------------------------------------------------
# Attention within documents (DOC_ATTENTION=1, golf issue 23): a query sees the keys of its own
# document only (ctx.doc_ids, from the BOS positions), block-diagonal on top of the causal (and
# window) mask. Memory-token prefix positions (doc id -1) stay visible to every document: they are
# learned parameters, not another document's text; persistent-memory slots (attention_extra) have
# no position and are likewise seen by every document. RMT's memory, a summary of earlier segments,
# is a prefix with a document's id (golf/model/mechanisms/rmt.py): only that document sees it (and,
# being a prefix, beyond a sliding window too). Positions stay those of the row (as in the
# record), so a document's distance to the prefix depends on where it starts. Credit: the
# challenge's VarLen attention record (openai/parameter-golf PR #1354 / #1529: cu_seqlens from BOS
# with flash_attn_varlen_func); here a bool mask (the reference, CPU) or a flex_attention
# BlockMask with a document mask_mod (compiled CUDA), which skips the tiles between documents.


def doc_mask(ctx: MixerContext, window: int) -> Tensor:
    """bool [B, 1, T, T], True = may attend: causal, same document or a key of no document (id -1:
    memory tokens), and within `window` (0 = no window) or a prefix key. Built once per forward and
    shape (ctx.memo)."""
    key = ("doc_mask", window)
    if key not in ctx.memo:
        d, P = ctx.doc_ids, ctx.num_prefix
        i = torch.arange(d.shape[1], device=d.device)[:, None]
        j = torch.arange(d.shape[1], device=d.device)[None, :]
        keep = (j <= i) & ((d[:, :, None] == d[:, None, :]) | (d[:, None, :] < 0))
        if window:
            keep &= (i - j < window) | (j < P)
        ctx.memo[key] = keep[:, None]
    return ctx.memo[key]


def flex_doc_attention(q: Tensor, k: Tensor, v: Tensor, ctx: MixerContext, window: int) -> Tensor:
    """Same as _sdpa(q, k, v, doc_mask(ctx, window)) through flex_attention (one BlockMask per
    forward, shared by the layers; traced into the graph under torch.compile)."""
    q, k, v = _flex_inputs(q, k, v)
    key = ("doc_block_mask", window)
    if key not in ctx.memo:
        d, P = ctx.doc_ids, ctx.num_prefix

        def mask_mod(b, h, q_idx, kv_idx):
            keep = (kv_idx <= q_idx) & ((d[b, q_idx] == d[b, kv_idx]) | (d[b, kv_idx] < 0))
            if window:
                keep = keep & ((q_idx - kv_idx < window) | (kv_idx < P))
            return keep

        T = d.shape[1]
        ctx.memo[key] = _FLEX["create_block_mask"](mask_mod, B=d.shape[0], H=None, Q_LEN=T, KV_LEN=T,
                                                   device=d.device)
    return _FLEX["flex_attention"](q, k, v, block_mask=ctx.memo[key], enable_gqa=k.shape[1] != q.shape[1])


def window_mask(seq_len: int, window: int, num_prefix: int, device: torch.device) -> Tensor:
    """bool [T, T], True = may attend: causal, within `window` tokens back, or a prefix position
    (memory tokens stay visible to every layer, local ones included)."""
    i = torch.arange(seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    return (j <= i) & ((i - j < window) | (j < num_prefix))


@dataclass
class KVCache:
    """Keys/values of the positions an attention layer has already seen, for incremental decoding.

    k, v: [B, Hkv, S, hd], keys after q/k norm and RoPE. The cached positions are the prefix
    [0, num_prefix) followed by the contiguous run [start, length): a sliding-window layer drops
    the keys no later query can see, so its cache stays at num_prefix + window - 1 positions."""

    k: Tensor
    v: Tensor
    num_prefix: int
    start: int
    length: int  # the absolute position of the next token


class CausalSelfAttention(SequenceMixer):
    name = "attn"

    def __init__(self, cfg: GPTConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        dim, h, hkv = int(cfg.model_dim), int(cfg.num_heads), int(cfg.num_kv_heads)
        self.num_heads, self.num_kv_heads, self.head_dim = h, hkv, dim // h
        self.c_q = CastedLinear(dim, dim)
        self.c_k = CastedLinear(dim, hkv * self.head_dim)
        self.c_v = CastedLinear(dim, hkv * self.head_dim)
        self.proj = CastedLinear(dim, dim)
        nn.init.zeros_(self.proj.weight)  # fresh block = identity (public records)
        for lin in (self.c_q, self.c_k, self.c_v, self.proj):
            tag(lin.weight, quant="attn", optim="matrix")
        self.q_gain = tag(nn.Parameter(torch.full((h,), float(cfg.qk_gain_init))),
                          quant="control", optim="scalar")
        self.window = self.window_size(cfg)  # 0 = full causal attention
        flex = flex_setting(cfg) if self.window or cfg.doc_attention else "off"
        if flex != "off" and not flex_available():
            if flex == "on":
                raise GolfError("FLEX_ATTENTION=on but this torch has no torch.nn.attention.flex_attention; "
                                "set FLEX_ATTENTION=auto or use torch >= 2.5")
            flex = "off"
        self.flex = flex  # when window layers use flex_window_attention (see above)
        # XSA (PR #198, #478) in the last XSA_LAST_N layers, counted over the distinct blocks
        n_blocks = int(cfg.unique_layers) or int(cfg.num_layers)
        self.xsa = int(cfg.xsa_last_n) > 0 and layer_idx >= n_blocks - int(cfg.xsa_last_n)
        # Output gates read the first GATE_WINDOW dims of the layer input, one scalar per head. The
        # out gate (PR #1667) is 2*sigmoid(W x), zero-init so it starts transparent; the sparse gate
        # (PR #1787) is sigmoid(s * W x), zero-init so it starts at one half.
        self.gate = "out" if cfg.attn_out_gate_enabled else "sparse" if cfg.sparse_attn_gate_enabled else ""
        self.gate_window = int(cfg.gate_window)
        self.gate_scale = float(cfg.sparse_attn_gate_scale)
        if self.gate:
            self.gate_w = tag(nn.Parameter(torch.zeros(h, self.gate_window)), quant="control", optim="scalar")

    def window_size(self, cfg: GPTConfig) -> int:
        return 0

    def _qkv(self, x: Tensor, ctx: MixerContext) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x [B, T, D] -> q, k (rotated with ctx.cos/sin), v, and the un-rotated queries."""
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        # q/k RMS norm then a learned per-head gain: stable logits without a softmax temperature
        q = rms_norm(q) * self.q_gain.to(q.dtype)[None, :, None, None]
        k = rms_norm(k)
        q_free = q  # position-free queries for mechanisms whose keys have no position
        if ctx.cos is not None:
            q, k = apply_rotary(q, ctx.cos, ctx.sin), apply_rotary(k, ctx.cos, ctx.sin)
        return q, k, v, q_free

    def _heads(self, y: Tensor, v: Tensor, x: Tensor) -> Tensor:
        """XSA and the output gate on the attention output y [B, H, T, hd]; v [B, Hkv, T, hd] are the
        values of the same positions, x [B, T, D] the layer input there."""
        if self.xsa:
            # remove each head's component along its own (normalised) value vector, so attention
            # carries context the token does not already have (the residual stream has its own)
            B, H, T, hd = y.shape
            vn = F.normalize(v, dim=-1).unsqueeze(2)  # [B, Hkv, 1, T, hd]
            yg = y.view(B, v.shape[1], H // v.shape[1], T, hd)
            y = (yg - (yg * vn).sum(-1, keepdim=True) * vn).view(B, H, T, hd)
        if self.gate:
            g = F.linear(x[..., : self.gate_window], self.gate_w.to(x.dtype))  # [B, T, H]
            g = 2.0 * torch.sigmoid(g) if self.gate == "out" else torch.sigmoid(self.gate_scale * g)
            y = y * g.transpose(1, 2).unsqueeze(-1).to(y.dtype)
        return y

    def _out(self, y: Tensor, q_free: Tensor, ctx: MixerContext) -> Tensor:
        extra = ctx.attention_extra(self.layer_idx, q_free)
        if extra is not None:
            y = y + extra.to(y.dtype)
        B, _, T, _ = y.shape
        return self.proj(y.transpose(1, 2).reshape(B, T, -1))

    def forward(self, x: Tensor, ctx: MixerContext) -> Tensor:
        return self._forward(x, ctx)[0]

    def _forward(self, x: Tensor, ctx: MixerContext) -> tuple[Tensor, Tensor, Tensor]:
        T = x.shape[1]
        q, k, v, q_free = self._qkv(x, ctx)
        if ctx.doc_ids is not None:  # DOC_ATTENTION=1: within documents (see doc_mask)
            window = self.window if self.window < T else 0
            if self.flex == "on" or (self.flex == "auto" and x.is_cuda and torch.compiler.is_compiling()):
                y = flex_doc_attention(q, k, v, ctx, window)
            else:
                y = _sdpa(q, k, v, doc_mask(ctx, window))
        elif self.window and self.window < T:
            if self.flex == "on" or (self.flex == "auto" and x.is_cuda and torch.compiler.is_compiling()):
                y = flex_window_attention(q, k, v, self.window, ctx.num_prefix)
            else:
                y = _sdpa(q, k, v, window_mask(T, self.window, ctx.num_prefix, x.device))
        else:
            y = _sdpa(q, k, v, None)
        return self._out(self._heads(y, v, x), q_free, ctx), k, v

    def forward_cached(self, x: Tensor, ctx: MixerContext, cache: KVCache | None) -> tuple[Tensor, KVCache]:
        """Incremental attention. cache None: x is the whole sequence (prefix first) and ctx is the
        backbone's, exactly as in forward(); returns (y, the cache of its keys/values). Otherwise x
        [B, Tn, D] are the Tn positions right after the cached ones, ctx.cos/sin are the rotary
        tables of those absolute positions (cache.length, ...) and ctx.num_prefix is ignored (the
        cache knows it); returns (y for the new positions, the grown cache). With document ids
        (DOC_ATTENTION=1) the prefill is masked by document, but a step attends to the whole cache:
        the decoder (golf/eval/generate.py) re-prefills while the context holds a document boundary."""
        if cache is None:
            y, k, v = self._forward(x, ctx)
            return y, self._trimmed(k, v, ctx.num_prefix, ctx.num_prefix, x.shape[1])
        Tn = x.shape[1]
        if ctx.cos is not None and ctx.cos.shape[-2] != Tn:
            raise GolfError(f"attention forward_cached: rotary tables cover {ctx.cos.shape[-2]} positions but "
                            f"{Tn} new positions came; pass the tables of the new absolute positions only")
        q, k_new, v_new, q_free = self._qkv(x, ctx)
        first, P = cache.length, cache.num_prefix  # absolute position of the first new query
        k = torch.cat([cache.k, k_new.to(cache.k.dtype)], 2)
        v = torch.cat([cache.v, v_new.to(cache.v.dtype)], 2)
        if Tn == 1:  # the cache holds exactly what the next query may see, plus its own key
            att = _sdpa(q, k, v, None, causal=False)
        else:
            i = torch.arange(first, first + Tn, device=x.device)[:, None]
            j = torch.cat([torch.arange(P, device=x.device),
                           torch.arange(cache.start, first + Tn, device=x.device)])[None, :]
            mask = j <= i
            if self.window:
                mask &= (i - j < self.window) | (j < P)
            att = _sdpa(q, k, v, mask)
        att = self._heads(att, v_new.to(att.dtype), x)
        return self._out(att, q_free, ctx), self._trimmed(k, v, P, cache.start, first + Tn)

    def _trimmed(self, k: Tensor, v: Tensor, P: int, start: int, length: int) -> KVCache:
        """The cache of positions [0, P) + [start, length), less the keys no later query can see
        (those more than window - 1 back from the next position `length`, the prefix excepted)."""
        lo = max(start, length - self.window + 1) if self.window else start
        if lo > start:
            cut = P + lo - start  # cache index of position lo
            k, v = torch.cat([k[:, :, :P], k[:, :, cut:]], 2), torch.cat([v[:, :, :P], v[:, :, cut:]], 2)
        return KVCache(k, v, P, lo, length)


def attend_slots(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Softmax attention of every query to a fixed set of slots (no mask): q [B, H, T, hd],
    k/v [Hkv, S, hd] -> [B, H, T, hd]. Used by persistent memory."""
    h, hkv = q.shape[1], k.shape[0]
    if h != hkv:
        k, v = k.repeat_interleave(h // hkv, dim=0), v.repeat_interleave(h // hkv, dim=0)
    att = torch.einsum("bhtd,hsd->bhts", q, k.to(q.dtype)) / math.sqrt(q.shape[-1])
    return torch.einsum("bhts,hsd->bhtd", att.softmax(dim=-1), v.to(q.dtype))
