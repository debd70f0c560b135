"""Stream Mixer ("stream"): M parallel content-routed memory streams per layer (after Mnemo).

Each stream m keeps a running state, written with a data-dependent decay and a content routing weight:

    s_m[t] = a_m[t] * s_m[t-1] + r_m[t] * u[t]        a = sigmoid(.) in (0, 1), r = softmax over m

where u = [k_in, v] is a projection of x. Token t reads the M stream states with a multi-head
softmax over streams (QK-norm: RMS-normed queries and stream keys, learned per-head gain), the read
is RMS-normed per head (stream states grow with t when a ~ 1; the norm keeps the output bounded),
gated by sigmoid(W_g x) and projected out (zero-initialised: a fresh layer is the identity).

Fast path: a chunked parallel scan. Within a chunk of STREAM_CHUNK positions the decay products are
exp(cumlog[t] - cumlog[s]) for s <= t only (masked to -inf before the exp, so nothing ever divides
by a tiny cumulative product); the cumulative log-decays are summed in float64 (they are [B, T, M]
scalars, so this is cheap) so slow and fast decays mixed in one chunk lose no precision. Chunks are
joined by a short loop that carries the [B, M, 2D] state. `forward_recurrent` (base class, via
`step`) is the naive reference; tests/memory/test_stream.py checks they agree in values and grads.

Documents: the state is *not* reset at BOS. Memory-token prefix positions must stay visible to every
later token (a reset would cut them off), and the decay gate sees the BOS embedding, so the layer
can learn to forget at a document boundary by itself.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from golf.layers import CastedLinear, rms_norm
from golf.memory.base import MixerContext, SequenceMixer, register, tag


def stream_scan(log_a: Tensor, r: Tensor, u: Tensor, chunk: int, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """All stream states of s[t] = exp(log_a[t]) * s[t-1] + r[t] * u[t].

    log_a, r: [B, T, M]; u: [B, T, E]; state: [B, M, E] or None (zeros).
    Returns (states [B, T, M, E], last state [B, M, E]). Work is O(T * chunk * M * E).
    """
    B, T, M = log_a.shape
    E = u.shape[-1]
    C = max(1, min(chunk, T))
    pad = (-T) % C
    if pad:  # trailing padding (a = 1, r = 0) cannot affect earlier positions
        log_a = F.pad(log_a, (0, 0, 0, pad))
        r = F.pad(r, (0, 0, 0, pad))
        u = F.pad(u, (0, 0, 0, pad))
    n = (T + pad) // C
    la = log_a.reshape(B, n, C, M)
    cum = la.double().cumsum(dim=2)  # float64: differences of large sums stay exact enough
    cum_t = cum.permute(0, 1, 3, 2)  # [B, n, M, C]
    diff = cum_t[..., :, None] - cum_t[..., None, :]  # [B, n, M, t, s] = log prod_{s<i<=t} a_i
    causal = torch.ones(C, C, dtype=torch.bool, device=u.device).tril()
    decay = diff.masked_fill(~causal, float("-inf")).exp().to(u.dtype)
    w = decay * r.reshape(B, n, C, M).permute(0, 1, 3, 2)[..., None, :]  # weight of u[s] in s_m[t]
    uc = u.reshape(B, n, C, E)
    intra = torch.einsum("bnmts,bnse->bntme", w, uc)  # states if each chunk started from zero
    carry_decay = cum.exp().to(u.dtype)  # [B, n, C, M]: prod of a from the chunk start to t
    s = state if state is not None else u.new_zeros(B, M, E)
    outs = []
    # join chunks: n = T / chunk short steps (unbind: its backward is one stack, not n full buffers)
    for intra_i, decay_i in zip(intra.unbind(1), carry_decay.unbind(1)):
        outs.append(intra_i + decay_i[..., None] * s[:, None])
        s = outs[-1][:, -1]
    states = torch.stack(outs, dim=1).reshape(B, n * C, M, E)[:, :T]
    return states, s


@register
class StreamMixer(SequenceMixer):
    """Mnemo-style stream mixer; see the module docstring."""

    name = "stream"
    recurrent = True

    def __init__(self, cfg: dict[str, Any], layer_idx: int):
        super().__init__(cfg, layer_idx)
        D, H = int(cfg["model_dim"]), int(cfg["num_heads"])
        M = int(cfg.get("stream_num_streams", 4) or 4)
        if D % H:
            from golf.utils import GolfError

            raise GolfError(f"stream mixer: MODEL_DIM={D} is not divisible by NUM_HEADS={H}")
        self.dim, self.num_heads, self.head_dim, self.num_streams = D, H, D // H, M
        self.chunk = int(cfg.get("stream_chunk", 64) or 64)
        # q, k_in, v, gate from one matmul
        self.in_proj = CastedLinear(D, 4 * D)
        self.out_proj = CastedLinear(D, D)
        nn.init.zeros_(self.out_proj.weight)  # fresh layer = identity (backbone convention)
        tag(self.in_proj.weight, quant="attn", optim="matrix")
        tag(self.out_proj.weight, quant="attn", optim="matrix")
        # decay and routing logits: tiny, kept in fp16 and trained with Adam
        self.ctrl_proj = CastedLinear(D, 2 * M)
        nn.init.normal_(self.ctrl_proj.weight, std=0.02)
        tag(self.ctrl_proj.weight, quant="control", optim="scalar")
        # decay bias: streams start with geometrically spaced time constants 2..1024 tokens, so
        # some track the last few tokens and some the whole context (as in RetNet/Mamba inits)
        tau = torch.logspace(math.log10(2.0), math.log10(1024.0), M)
        a0 = 1.0 - 1.0 / tau
        self.decay_bias = tag(nn.Parameter(torch.log(a0) - torch.log1p(-a0)), quant="control", optim="scalar")
        self.qk_gain = tag(nn.Parameter(torch.full((H,), float(cfg.get("qk_gain_init", 1.5)))),
                           quant="control", optim="scalar")

    # --- shared pieces ---------------------------------------------------------------------
    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """x [..., D] -> q [..., D], gate [..., D], u [..., 2D], log_a [..., M], r [..., M]."""
        q, k_in, v, g = self.in_proj(x).chunk(4, dim=-1)
        ctrl = self.ctrl_proj(x).float()
        dec, route = ctrl.split(self.num_streams, dim=-1)
        log_a = F.logsigmoid(dec + self.decay_bias.float())
        r = route.softmax(dim=-1)
        return q, g, torch.cat((k_in, v), dim=-1), log_a, r

    def _read(self, q: Tensor, g: Tensor, s: Tensor) -> Tensor:
        """q, g [..., D]; s [..., M, 2D] (stream states) -> y [..., D]."""
        H, hd = self.num_heads, self.head_dim
        lead = q.shape[:-1]
        k, v = s.split(self.dim, dim=-1)
        qh = rms_norm(q.reshape(*lead, H, hd).float()) * self.qk_gain.float()[:, None]
        kh = rms_norm(k.reshape(*lead, self.num_streams, H, hd).float())
        vh = v.reshape(*lead, self.num_streams, H, hd).float()
        att = torch.einsum("...hd,...mhd->...hm", qh, kh) / math.sqrt(hd)
        y = torch.einsum("...hm,...mhd->...hd", att.softmax(dim=-1), vh)
        y = rms_norm(y).reshape(*lead, self.dim)  # bounded whatever the stream magnitudes
        y = y.to(q.dtype) * torch.sigmoid(g)
        return self.out_proj(y)

    # --- fast path ---------------------------------------------------------------------------
    def forward(self, x: Tensor, ctx: MixerContext | None = None) -> Tensor:
        return self.forward_with_state(x, ctx)[0]

    def forward_with_state(self, x: Tensor, ctx: MixerContext | None = None) -> tuple[Tensor, Tensor]:
        """The fast path, also returning the state after the last position (generation prefill)."""
        q, g, u, log_a, r = self._project(x)
        with torch.autocast(x.device.type, enabled=False):  # the scan accumulates: keep it fp32
            states, last = stream_scan(log_a, r, u.float(), self.chunk)
        return self._read(q, g, states), last

    # --- recurrent form ------------------------------------------------------------------------
    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        return torch.zeros(batch, self.num_streams, 2 * self.dim, device=device, dtype=torch.float32)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        q, g, u, log_a, r = self._project(x_t)
        state = log_a.exp()[..., None] * state + r[..., None] * u.float()[:, None, :]
        return self._read(q, g, state), state
