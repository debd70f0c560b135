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
joined by a short loop that carries the [B, M, 2D] state. The training read never materialises the
[B, T, M, 2D] states (they would dominate a GPU step's memory traffic): values are read through a
per-chunk [C, C] mixing matrix, only the key half is built (see StreamMixer._read_chunked).
`forward_recurrent` (base class, via `step`) is the naive reference; tests/memory/test_stream.py
checks they agree in values and grads.

Documents: by default the state is *not* reset at BOS. Memory-token prefix positions must stay visible
to every later token (a reset would cut them off), and the decay gate sees the BOS embedding, so the
layer can learn to forget at a document boundary by itself. With DOC_ATTENTION=1 the state restarts
from zero at every document's first position (decay a = 0 there, golf.model.mixer.doc_resets), so a
document sees nothing of the one before it, nor of the memory-token prefix.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from golf.core.config import GPTConfig
from golf.core.utils import GolfError
from golf.model.layers import CastedLinear, rms_norm
from golf.model.mixer import RESET_LOG_DECAY, MixerContext, SequenceMixer, doc_resets, tag


def _chunk_weights(log_a: Tensor, r: Tensor, C: int) -> tuple[Tensor, Tensor]:
    """Per-chunk scan weights for log_a, r [B, n*C, M] (already padded to whole chunks).

    Returns w [B, n, M, C, C], the weight of u[s] in s_m[t] for s <= t inside a chunk (the chunk
    starting from zero), and carry [B, n, C, M], the decay of the chunk's start state up to t.
    """
    B, T, M = log_a.shape
    n = T // C
    cum = log_a.reshape(B, n, C, M).double().cumsum(dim=2)  # float64: differences of large sums stay exact
    cum_t = cum.permute(0, 1, 3, 2)  # [B, n, M, C]
    diff = cum_t[..., :, None] - cum_t[..., None, :]  # [B, n, M, t, s] = log prod_{s<i<=t} a_i
    causal = torch.ones(C, C, dtype=torch.bool, device=log_a.device).tril()
    decay = diff.masked_fill(~causal, float("-inf")).exp().to(r.dtype)
    w = decay * r.reshape(B, n, C, M).permute(0, 1, 3, 2)[..., None, :]
    return w, cum.exp().to(r.dtype)


def _chunk_starts(w: Tensor, carry: Tensor, uc: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
    """Stream states at the start of every chunk [B, n, M, E] and after the last one [B, M, E].

    Only each chunk's last row of w is needed, so the join loop (n = T / chunk short steps) moves
    [B, M, E] states, never whole chunks.
    """
    B, M = w.shape[0], w.shape[2]
    own = torch.einsum("bnms,bnse->bnme", w[..., -1, :], uc)  # each chunk's own part of its last state
    s = state if state is not None else uc.new_zeros(B, M, uc.shape[-1])
    starts = []
    for own_i, decay_i in zip(own.unbind(1), carry[:, :, -1].unbind(1)):
        starts.append(s)
        s = own_i + decay_i[..., None] * s
    return torch.stack(starts, dim=1), s


def _pad_to_chunks(t: Tensor, C: int) -> Tensor:
    """Zero-pad dim 1 to a multiple of C (padding with log_a = 0, r = 0: a = 1, nothing written, so
    it cannot affect earlier positions or the final state)."""
    pad = (-t.shape[1]) % C
    return F.pad(t, (0, 0, 0, pad)) if pad else t


def stream_scan(log_a: Tensor, r: Tensor, u: Tensor, chunk: int, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """All stream states of s[t] = exp(log_a[t]) * s[t-1] + r[t] * u[t].

    log_a, r: [B, T, M]; u: [B, T, E]; state: [B, M, E] or None (zeros).
    Returns (states [B, T, M, E], last state [B, M, E]). Work is O(T * chunk * M * E).
    (The mixer's training path does not materialise these; see StreamMixer._read_chunked.)
    """
    B, T, M = log_a.shape
    E = u.shape[-1]
    C = max(1, min(chunk, T))
    log_a, r, u = (_pad_to_chunks(t, C) for t in (log_a, r, u))
    n = u.shape[1] // C
    w, carry = _chunk_weights(log_a, r, C)
    uc = u.reshape(B, n, C, E)
    starts, last = _chunk_starts(w, carry, uc, state)
    intra = torch.einsum("bnmts,bnse->bntme", w, uc)  # states if each chunk started from zero
    states = intra + carry[..., None] * starts[:, :, None]
    return states.reshape(B, n * C, M, E)[:, :T], last


class StreamMixer(SequenceMixer):
    """Mnemo-style stream mixer; see the module docstring."""

    name = "stream"
    recurrent = True

    def __init__(self, cfg: GPTConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        D, H = int(cfg.model_dim), int(cfg.num_heads)
        M = int(cfg.stream_num_streams or 4)
        if D % H:
            raise GolfError(f"stream mixer: MODEL_DIM={D} is not divisible by NUM_HEADS={H}")
        self.dim, self.num_heads, self.head_dim, self.num_streams = D, H, D // H, M
        self.chunk = int(cfg.stream_chunk or 64)
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
        self.qk_gain = tag(nn.Parameter(torch.full((H,), float(cfg.qk_gain_init))),
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

    def _queries(self, q: Tensor) -> Tensor:
        """q [..., D] -> RMS-normed, gained per-head queries [..., H, hd] (fp32)."""
        qh = rms_norm(q.reshape(*q.shape[:-1], self.num_heads, self.head_dim).float())
        return qh * self.qk_gain.float()[:, None]

    def _output(self, y: Tensor, g: Tensor) -> Tensor:
        """Per-head read y [..., H, hd] -> RMS norm (bounded whatever the stream magnitudes), gate, out."""
        y = rms_norm(y).reshape(*g.shape)
        return self.out_proj(y.to(g.dtype) * torch.sigmoid(g))

    def _read(self, q: Tensor, g: Tensor, s: Tensor) -> Tensor:
        """q, g [..., D]; s [..., M, 2D] (stream states) -> y [..., D]. The step-by-step read."""
        H, hd = self.num_heads, self.head_dim
        lead = q.shape[:-1]
        k, v = s.split(self.dim, dim=-1)
        qh = self._queries(q)
        kh = rms_norm(k.reshape(*lead, self.num_streams, H, hd).float())
        vh = v.reshape(*lead, self.num_streams, H, hd).float()
        att = torch.einsum("...hd,...mhd->...hm", qh, kh) / math.sqrt(hd)
        y = torch.einsum("...hm,...mhd->...hd", att.softmax(dim=-1), vh)
        return self._output(y, g)

    def _read_chunked(self, q: Tensor, u: Tensor, log_a: Tensor, r: Tensor,
                      state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The fast path's scan + read: the per-head read y [B, T, H, hd] that _read would compute
        from stream_scan(log_a, r, u) (before _output), and the last state [B, M, 2D], without ever
        holding the [B, T, M, 2D] states.

        The value half of the states is only read linearly: y[t] = sum_m p_m[t] v_m[t] with
        v_m[t] = sum_{s<=t} w_m[t, s] v[s] + carry_m[t] v_m(chunk start), so inside a chunk
        y = (sum_m p_m w_m) @ v, a [C, C] mixing matrix per head (the chunk form of linear
        attention, applied to Mnemo's streams). Only the key half, whose per-head RMS
        norm is not linear, is materialised ([B, T, M, D] instead of 2x that, plus intra). Runs in
        fp32 with autocast off: it is part of the scan's accumulation.
        """
        B, T, _ = u.shape
        D, H, hd, M = self.dim, self.num_heads, self.head_dim, self.num_streams
        C = max(1, min(self.chunk, T))
        q, u, log_a, r = (_pad_to_chunks(t, C) for t in (q, u, log_a, r))
        n = u.shape[1] // C
        w, carry = _chunk_weights(log_a, r, C)  # [B, n, M, C, C], [B, n, C, M]
        uc = u.reshape(B, n, C, 2 * D)
        starts, last = _chunk_starts(w, carry, uc, state)  # [B, n, M, 2D]
        kc, vc = uc.split(D, dim=-1)
        k_start, v_start = starts.split(D, dim=-1)
        # key states -> attention over streams, QK-norm written out so k is saved for backward once
        # (start-state term first, then the intra-chunk matmul accumulated into it in place: one
        # [B, n, M, C, D] buffer instead of two)
        k = (carry.transpose(2, 3)[..., None] * k_start[:, :, :, None]).reshape(B * n, M * C, D)
        k = k.baddbmm_(w.reshape(B * n, M * C, C), kc.reshape(B * n, C, D))
        kh = k.reshape(B, n, M, C, H, hd)
        ms = torch.linalg.vector_norm(kh, dim=-1).square() / hd  # = F.rms_norm's mean square
        rstd = torch.rsqrt(ms + torch.finfo(kh.dtype).eps)
        qh = self._queries(q).reshape(B, n, 1, C, H, hd)
        p = ((qh * kh).sum(dim=-1) * rstd / math.sqrt(hd)).softmax(dim=2)  # [B, n, M, C(t), H]
        # value read: intra-chunk mixing matrix per head, plus each stream's decayed start state
        mix = torch.einsum("bnmth,bnmts->bnhts", p, w)  # [B, n, H, C(t), C(s)]
        y = torch.einsum("bnhts,bnshd->bnthd", mix, vc.reshape(B, n, C, H, hd))
        y = y + torch.einsum("bnmth,bnmhd->bnthd", p * carry.transpose(2, 3)[..., None],
                             v_start.reshape(B, n, M, H, hd))
        return y.reshape(B, n * C, H, hd)[:, :T], last

    # --- fast path ---------------------------------------------------------------------------
    def forward(self, x: Tensor, ctx: MixerContext | None = None) -> Tensor:
        return self.forward_with_state(x, ctx)[0]

    def forward_with_state(self, x: Tensor, ctx: MixerContext | None = None) -> tuple[Tensor, Tensor]:
        """The fast path, also returning the state after the last position (generation prefill)."""
        q, g, u, log_a, r = self._project(x)
        reset = doc_resets(ctx)
        if reset is not None:  # DOC_ATTENTION: a = exp(-1e4) = 0 exactly; finite, so cumsum differences stay finite
            log_a = log_a.masked_fill(reset[..., None], RESET_LOG_DECAY)
        with torch.autocast(x.device.type, enabled=False):  # the scan accumulates: keep it fp32
            y, last = self._read_chunked(q, u.float(), log_a, r)
        return self._output(y, g), last

    # --- recurrent form ------------------------------------------------------------------------
    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        return torch.zeros(batch, self.num_streams, 2 * self.dim, device=device, dtype=torch.float32)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        q, g, u, log_a, r = self._project(x_t)
        state = log_a.exp()[..., None] * state + r[..., None] * u.float()[:, None, :]
        return self._read(q, g, state), state
