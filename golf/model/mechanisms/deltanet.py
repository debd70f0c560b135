"""Gated DeltaNet ("deltanet"): gated delta-rule linear attention (Yang, Kautz, Hatamizadeh 2025,
"Gated Delta Networks: Improving Mamba2 with Delta Rule", arXiv:2412.06464).

Per head, with L2-normalised q, k and a fast-weight state S [dk, dv]:

    S_t = a_t * S_{t-1} + k_t (beta_t * (v_t - a_t * S_{t-1}^T k_t))^T      (= a S (I - b k k^T) + b k v^T)
    o_t = S_t^T q_t

beta = sigmoid(W_b x); a = exp(g), g = -exp(A_log) * softplus(W_a x + dt_bias) (Mamba-2's decay);
q/k/v pass a short causal depthwise conv (kernel 4) + SiLU; the output is RMS-normed per head,
gated by SiLU(W_g x) and projected out (zero-initialised: a fresh layer is the identity).

Fast path: the chunked WY / UT-transform form of fla's chunk_gated_delta_rule, in plain torch.
Inside a chunk of DELTANET_CHUNK positions the delta-rule corrections form a unit lower-triangular
system (I + A) U = beta*V - beta*Gamma*K S0 with A[t,s] = beta_t (Gamma_t/Gamma_s) k_t.k_s (s < t),
solved with one batched triangular solve; chunks are joined by a loop over T / chunk carrying S.
Decay ratios Gamma_t/Gamma_s are exp(G_t - G_s) for s <= t only (never a division), with G summed in
float64. `forward_recurrent` (via `step`) is the reference; tests/memory/test_deltanet.py checks
they agree. fla's Triton kernel is used instead when `fla` is importable, x is on CUDA, and it
reproduced the plain-torch path once (checked on the first batch).

Documents: by default no reset at BOS (memory-token prefixes must stay visible; the decay gate can
forget). With DOC_ATTENTION=1 a document starts from a zero state: the decay is 0 at its first
position (golf.model.mixer.doc_resets) and the short conv's taps stop at that position, so nothing of
the previous document (nor of the memory-token prefix) reaches it; fla's kernel is then not used.
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

CONV_SIZE = 4  # short causal conv, as in the paper / fla


def chunk_gated_delta(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, chunk: int,
                      state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Chunked gated delta rule. q, k [B, H, T, dk] (k L2-normalised, q pre-scaled), v [B, H, T, dv],
    g (log decay, <= 0) and beta [B, H, T]; state [B, H, dk, dv] or None.
    Returns (o [B, H, T, dv], final state)."""
    B, H, T, dk = k.shape
    dv = v.shape[-1]
    C = max(1, min(chunk, T))
    pad = (-T) % C
    if pad:  # trailing zeros (k = 0, beta = 0, g = 0) leave earlier outputs untouched
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        g, beta = F.pad(g, (0, pad)), F.pad(beta, (0, pad))
    n = (T + pad) // C
    q, k, v = (t.reshape(B, H, n, C, -1) for t in (q, k, v))
    g, beta = g.reshape(B, H, n, C), beta.reshape(B, H, n, C)

    G = g.double().cumsum(-1)  # [B, H, n, C] cumulative log decay inside each chunk
    diff = G[..., :, None] - G[..., None, :]  # log(Gamma_t / Gamma_s)
    lower = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay = diff.masked_fill(~lower, float("-inf")).exp().to(q.dtype)  # [B, H, n, C, C], s <= t
    gam = G.exp().to(q.dtype)[..., None]  # Gamma_t: decay from the chunk start
    gam_end = (G[..., -1:] - G).exp().to(q.dtype)[..., None]  # Gamma_C / Gamma_s

    kb = k * beta[..., None]
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    A = torch.tril((kb @ k.transpose(-1, -2)) * decay, diagonal=-1)  # strictly lower
    # UT transform: T = (I + A)^-1 applied to [beta v, beta Gamma k] in one triangular solve
    rhs = torch.cat((v * beta[..., None], kb * gam), dim=-1)
    sol = torch.linalg.solve_triangular(A + eye, rhs, upper=False, unitriangular=True)
    w, kc = sol[..., :dv], sol[..., dv:]  # U = w - kc @ S0
    qk = (q @ k.transpose(-1, -2)) * decay  # intra-chunk scores, s <= t
    qg = q * gam

    S = state if state is not None else q.new_zeros(B, H, dk, dv)
    k_end = (k * gam_end).transpose(-1, -2)  # [B, H, n, dk, C]: k_s * Gamma_C / Gamma_s
    # The loop carries only what is truly sequential (the chunk-start state S and the corrected
    # values u, two small matmuls per chunk); the outputs, which need S and u but feed nothing back,
    # are two batched matmuls over all chunks afterwards: half the kernels in the sequential part.
    # unbind (not x[:, :, i]): the backward of n unbinds is one stack, of n slices n full-size buffers
    per_chunk = zip(*(t.unbind(2) for t in (w, kc, k_end, gam[..., -1:, :])))
    starts, us = [], []
    for w_i, kc_i, kend_i, gl_i in per_chunk:
        starts.append(S)
        u = w_i - kc_i @ S
        us.append(u)
        S = gl_i * S + kend_i @ u
    o = qg @ torch.stack(starts, dim=2) + qk @ torch.stack(us, dim=2)  # [B, H, n, C, dv]
    o = o.reshape(B, H, n * C, dv)[:, :, :T]
    return o, S


def _fla_chunk(q, k, v, g, beta):  # pragma: no cover - needs CUDA + fla
    """fla's Triton kernel (github.com/fla-org/flash-linear-attention), [B, T, H, d] layout."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    o, _ = chunk_gated_delta_rule(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), g.transpose(1, 2),
                                  beta.transpose(1, 2), scale=1.0, output_final_state=False)
    return o.transpose(1, 2)


_FLA_OK: bool | None = None  # None = not checked yet


def _fla_usable(q, k, v, g, beta, chunk) -> bool:  # pragma: no cover - needs CUDA + fla
    """fla is used only after it reproduced the plain-torch path once on a real batch: its API has
    changed between releases, and a silent layout mismatch would train a different model."""
    global _FLA_OK
    if _FLA_OK is None:
        try:
            import fla.ops.gated_delta_rule  # noqa: F401

            with torch.no_grad():
                sl = slice(0, min(256, q.shape[2]))
                args = [t[:1, :, sl] for t in (q, k, v, g, beta)]
                ref, _ = chunk_gated_delta(*args, chunk)
                got = _fla_chunk(*args).float()
                _FLA_OK = bool((got - ref).abs().max() <= 2e-2 * ref.abs().max() + 1e-3)
            if not _FLA_OK:
                import warnings

                warnings.warn("deltanet: fla's chunk_gated_delta_rule disagrees with the reference; not using it")
        except Exception:
            _FLA_OK = False
    return _FLA_OK


class GatedDeltaNet(SequenceMixer):
    """Gated DeltaNet layer; see the module docstring."""

    name = "deltanet"
    recurrent = True
    use_fla = True  # set False to force the plain-torch chunked path on CUDA

    def __init__(self, cfg: GPTConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        D = int(cfg.model_dim)
        H = int(cfg.deltanet_heads or cfg.num_heads)
        if D % H:
            raise GolfError(f"deltanet: MODEL_DIM={D} is not divisible by DELTANET_HEADS={H}; pick a divisor")
        self.dim, self.num_heads, self.head_dim = D, H, D // H
        self.chunk = int(cfg.deltanet_chunk or 64)
        self.qkv_proj = CastedLinear(D, 3 * D)
        self.gate_proj = CastedLinear(D, D)
        self.out_proj = CastedLinear(D, D)
        nn.init.zeros_(self.out_proj.weight)  # fresh layer = identity
        for lin in (self.qkv_proj, self.gate_proj, self.out_proj):
            tag(lin.weight, quant="attn", optim="matrix")
        self.ba_proj = CastedLinear(D, 2 * H)  # beta and decay logits
        nn.init.normal_(self.ba_proj.weight, std=0.02)
        tag(self.ba_proj.weight, quant="control", optim="scalar")
        # depthwise causal conv over q/k/v, stored 2-D [channels, taps] (so not a Muon matrix)
        w = torch.empty(3 * D, CONV_SIZE).uniform_(-1 / math.sqrt(CONV_SIZE), 1 / math.sqrt(CONV_SIZE))
        self.conv_weight = tag(nn.Parameter(w), quant="control", optim="scalar")
        # Mamba-2 / GDN decay init: A in [1, 16], dt in [1e-3, 1e-1] through an inverse softplus
        self.A_log = tag(nn.Parameter(torch.empty(H).uniform_(1, 16).log()), quant="control", optim="scalar")
        dt = torch.exp(torch.empty(H).uniform_(math.log(1e-3), math.log(1e-1)))
        self.dt_bias = tag(nn.Parameter(dt + torch.log(-torch.expm1(-dt))), quant="control", optim="scalar")

    # --- shared pieces ---------------------------------------------------------------------
    def _heads(self, qkv: Tensor, ba: Tensor) -> tuple[Tensor, ...]:
        """Post-conv qkv [..., 3D] and ba [..., 2H] -> q, k, v [..., H, hd], g, beta [..., H] (fp32)."""
        H, hd = self.num_heads, self.head_dim
        q, k, v = F.silu(qkv.float()).chunk(3, dim=-1)
        q = F.normalize(q.reshape(*q.shape[:-1], H, hd), dim=-1) / math.sqrt(hd)
        k = F.normalize(k.reshape(*k.shape[:-1], H, hd), dim=-1)
        v = v.reshape(*v.shape[:-1], H, hd)
        b, a = ba.float().chunk(2, dim=-1)
        g = -self.A_log.float().exp() * F.softplus(a + self.dt_bias.float())
        return q, k, v, g, torch.sigmoid(b)

    def _out(self, o: Tensor, x: Tensor) -> Tensor:
        """o [..., H, hd] (fp32) -> gated, normed, projected [..., D]."""
        o = rms_norm(o).reshape(*o.shape[:-2], self.dim).to(x.dtype)
        return self.out_proj(o * F.silu(self.gate_proj(x)))

    # --- fast path ---------------------------------------------------------------------------
    def forward(self, x: Tensor, ctx: MixerContext | None = None) -> Tensor:
        return self.forward_with_state(x, ctx, need_state=False)[0]

    def forward_with_state(self, x: Tensor, ctx: MixerContext | None = None, need_state: bool = True):
        """The fast path, also returning the state after the last position (generation prefill)."""
        B, T, D = x.shape
        pre = F.pad(self.qkv_proj(x).transpose(1, 2), (CONV_SIZE - 1, 0))  # [B, 3D, K-1+T]
        reset = doc_resets(ctx)
        if reset is None:
            qkv = F.conv1d(pre, self.conv_weight.to(pre.dtype)[:, None, :], groups=3 * D).transpose(1, 2)
        else:  # DOC_ATTENTION: the same conv, each tap masked to the output's own document
            doc = F.pad(ctx.doc_ids, (CONV_SIZE - 1, 0), value=-2)  # [B, K-1+T], padding = no document
            w = self.conv_weight.to(pre.dtype)
            qkv = sum(pre[..., j:j + T] * w[:, j, None] * (doc[:, None, j:j + T] == doc[:, None, CONV_SIZE - 1:])
                      for j in range(CONV_SIZE)).transpose(1, 2)
            if need_state:  # the conv state carried on (generation): the last document's taps only
                pre = pre * (doc == doc[:, -1:])[:, None]
        q, k, v, g, beta = self._heads(qkv, self.ba_proj(x))
        if reset is not None:  # decay 0 at a document's first position: the state restarts from zero
            g = g.masked_fill(reset[..., None], RESET_LOG_DECAY)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, hd]
        g, beta = g.transpose(1, 2), beta.transpose(1, 2)
        if (self.use_fla and x.is_cuda and not need_state and reset is None
                and _fla_usable(q, k, v, g, beta, self.chunk)):
            o, S = _fla_chunk(q, k, v, g, beta).float(), None  # pragma: no cover
        else:
            with torch.autocast(x.device.type, enabled=False):  # the state accumulates: keep it fp32
                o, S = chunk_gated_delta(q, k, v, g, beta, self.chunk)
        return self._out(o.transpose(1, 2), x), (pre[..., pre.shape[-1] - (CONV_SIZE - 1):], S)

    # --- recurrent form ------------------------------------------------------------------------
    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        conv = torch.zeros(batch, 3 * self.dim, CONV_SIZE - 1, device=device, dtype=dtype)
        S = torch.zeros(batch, self.num_heads, self.head_dim, self.head_dim, device=device, dtype=torch.float32)
        return conv, S

    def step(self, x_t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        conv, S = state
        window = torch.cat((conv, self.qkv_proj(x_t)[..., None]), dim=-1)  # [B, 3D, K]
        qkv = (window * self.conv_weight.to(window.dtype)).sum(-1)
        q, k, v, g, beta = self._heads(qkv, self.ba_proj(x_t))  # [B, H, hd], [B, H]
        S = g.exp()[..., None, None] * S
        u = beta[..., None] * (v - torch.einsum("bhkv,bhk->bhv", S, k))
        S = S + k[..., :, None] * u[..., None, :]
        o = torch.einsum("bhkv,bhk->bhv", S, q)
        return self._out(o, x_t), (window[..., 1:], S)
