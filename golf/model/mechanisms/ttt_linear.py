"""TTT-Linear ("ttt_linear"): a sequence mixer whose hidden state is a linear model trained at test
time (Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with Expressive Hidden States",
arXiv:2407.04620; TTT-Linear with the paper's LayerNorm + residual inner model and mini-batch TTT).

Per head (TTT_LINEAR_HEADS, head dim hd) the inner model is f(z; W, b) = z + LN(z W + b), with W [hd, hd]
and b [hd] starting every sequence from learned values W0, b0 and LN a per-head LayerNorm with learned
weight/bias. Token t has three views of x (projections, as the paper's theta_K, theta_V, theta_Q):
k_t, v_t, q_t. The self-supervised loss of token t is the reconstruction

    l_t(W, b) = 1/2 || f(k_t; W, b) - v_t ||^2 = 1/2 || LN(k_t W + b) - (v_t - k_t) ||^2

Mini-batch TTT (TTT_LINEAR_CHUNK = b tokens, the paper's mini-batch size, default 16): inside a
mini-batch every gradient is taken at the weights W_0 the mini-batch started from, and token t (the
i-th of its mini-batch, i = 1..b) reads with

    W_t = W_0 - (1/i) sum_{s<=t in the mini-batch} eta_s grad_W l_s(W_0)       (the same for b)
    o_t = f(q_t; W_t, b_t) = q_t + LN(q_t W_t + b_t)

and the next mini-batch starts from W_t of its last token. The 1/i averaging is the paper's token_idx
(its fixed part; the learned offset is left out). The inner learning rate is learned per token and head,
as in the paper: eta_t = TTT_LINEAR_LR * sigmoid(w_lr . x_t) / hd.

Fast path (training): the paper's dual form. With G_s = dl_s/dz at z = k_s W_0 + b_0 (the LayerNorm-L2
gradient, written out in closed form), grad_W l_s = k_s^T G_s, so inside a mini-batch

    Z = Q W_0 + b_0 - (tril(Q K^T + 1) * eta_ts) G,   eta_ts = eta_s / i_t

(two batched [b, b] matmuls); W is only materialised at mini-batch ends, in a loop over T / b.
Recurrent form (generation, and the reference `forward_recurrent`): the same rule token by token
(`step`), carrying (W_0, b_0, the running sums of eta_s k_s^T G_s and eta_s G_s, and i).
tests/model/mechanisms/test_ttt_linear.py checks the two agree in values and gradients.

Output: o is RMS-normed per head, gated by SiLU(W_g x) and projected out (zero-initialised: a fresh
layer is the identity), as in deltanet. Left out of the paper's layer for simplicity: the causal
conv before q/k and RoPE inside mini-batches. The inner loop runs in fp32 with autocast off.
Documents: no reset at BOS (memory-token prefixes must stay readable; as for stream/deltanet).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from golf.core.config import GPTConfig
from golf.core.utils import GolfError
from golf.model.layers import CastedLinear, rms_norm
from golf.model.mixer import MixerContext, SequenceMixer, tag

LN_EPS = 1e-6


def inner_ln(z: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """The inner model's per-head LayerNorm over the last dim."""
    mu = z.mean(-1, keepdim=True)
    zc = z - mu
    return zc * torch.rsqrt(zc.square().mean(-1, keepdim=True) + LN_EPS) * w + b


def inner_ln_l2_grad(z: Tensor, target: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """d/dz of 1/2 ||LN(z) - target||^2 (LayerNorm's backward, in closed form)."""
    zc = z - z.mean(-1, keepdim=True)
    rstd = torch.rsqrt(zc.square().mean(-1, keepdim=True) + LN_EPS)
    xhat = zc * rstd
    gx = (xhat * w + b - target) * w
    return (gx - gx.mean(-1, keepdim=True) - xhat * (gx * xhat).mean(-1, keepdim=True)) * rstd


def ttt_linear_dual(q: Tensor, k: Tensor, v: Tensor, eta: Tensor, W0: Tensor, b0: Tensor, ln_w: Tensor,
                    ln_b: Tensor, chunk: int) -> tuple[Tensor, tuple]:
    """Mini-batch TTT-Linear in the dual form. q, k, v [B, H, T, hd]; eta [B, H, T] (inner LR per token);
    W0 [H, hd, hd], b0, ln_w, ln_b [H, hd]. Returns (inner outputs z_t = q_t W_t + b_t [B, H, T, hd],
    the recurrent state after the last position, see TTTLinear.step)."""
    B, H, T, hd = q.shape
    C = chunk
    pad = (-T) % C
    if pad:  # trailing zeros (k = q = v = 0, eta = 0) leave earlier outputs untouched
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        eta = F.pad(eta, (0, pad))
    n = (T + pad) // C
    q, k, v = (t.reshape(B, H, n, C, hd) for t in (q, k, v))
    eta = eta.reshape(B, H, n, C)
    lw, lb = ln_w[:, None, :], ln_b[:, None, :]  # [H, 1, hd]
    inv_i = 1.0 / torch.arange(1, C + 1, device=q.device, dtype=q.dtype)  # token_idx: 1 / (position in mini-batch)
    lower = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    # A[t, s] = (q_t . k_s + 1) * eta_s / i_t for s <= t: the "+1" is the bias's share of the update
    A = ((q @ k.transpose(-1, -2) + 1) * (eta[..., None, :] * inv_i[:, None])).masked_fill(~lower, 0)
    target = v - k
    W = W0[None].expand(B, -1, -1, -1)
    b = b0[None, :, None, :].expand(B, -1, -1, -1)  # [B, H, 1, hd]
    zs = []
    W_start, b_start, GW, Gb = W, b, None, None
    for q_i, k_i, t_i, A_i, e_i in zip(q.unbind(2), k.unbind(2), target.unbind(2), A.unbind(2), eta.unbind(2)):
        G = inner_ln_l2_grad(k_i @ W + b, t_i, lw, lb)  # [B, H, C, hd], all at the mini-batch's W_0
        zs.append(q_i @ W + b - A_i @ G)
        Ge = G * e_i[..., None]
        W_start, b_start = W, b
        GW, Gb = k_i.transpose(-1, -2) @ Ge, Ge.sum(-2, keepdim=True)  # un-averaged sums of the mini-batch
        W, b = W - GW / C, b - Gb / C
    z = torch.stack(zs, dim=2).reshape(B, H, n * C, hd)[:, :, :T]
    r = T - (n - 1) * C  # real tokens in the last mini-batch
    if r == C:  # it is complete: the next token starts a fresh mini-batch from its end weights
        state = (W, b[:, :, 0], torch.zeros_like(GW), torch.zeros_like(Gb[:, :, 0]), 0)
    else:
        state = (W_start, b_start[:, :, 0], GW, Gb[:, :, 0], r)
    return z, state


class TTTLinear(SequenceMixer):
    """TTT-Linear layer; see the module docstring."""

    name = "ttt_linear"
    recurrent = True

    def __init__(self, cfg: GPTConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        D = int(cfg.model_dim)
        H = int(cfg.ttt_linear_heads or cfg.num_heads)
        if H < 1 or D % H:
            raise GolfError(f"ttt_linear: MODEL_DIM={D} is not divisible by TTT_LINEAR_HEADS={H}; pick a divisor")
        if int(cfg.ttt_linear_chunk) < 1:
            raise GolfError(f"TTT_LINEAR_CHUNK={cfg.ttt_linear_chunk} must be >= 1 (the TTT mini-batch size)")
        if not float(cfg.ttt_linear_lr) >= 0:
            raise GolfError(f"TTT_LINEAR_LR={cfg.ttt_linear_lr} must be >= 0 (the inner learning rate)")
        if cfg.doc_attention:  # its fast weights are trained through every earlier token, across documents
            raise GolfError("MIXERS=ttt_linear carries its fast weights across document boundaries, which "
                            "DOC_ATTENTION=1 forbids; set DOC_ATTENTION=0 with ttt_linear (a reset at BOS is not built yet)")
        hd = D // H
        self.dim, self.num_heads, self.head_dim = D, H, hd
        self.chunk = int(cfg.ttt_linear_chunk)
        self.base_lr = float(cfg.ttt_linear_lr)
        self.qkv_proj = CastedLinear(D, 3 * D)
        self.gate_proj = CastedLinear(D, D)
        self.out_proj = CastedLinear(D, D)
        nn.init.zeros_(self.out_proj.weight)  # fresh layer = identity
        for lin in (self.qkv_proj, self.gate_proj, self.out_proj):
            tag(lin.weight, quant="attn", optim="matrix")
        self.lr_proj = CastedLinear(D, H)  # per-token inner learning-rate logits
        nn.init.normal_(self.lr_proj.weight, std=0.02)
        tag(self.lr_proj.weight, quant="control", optim="scalar")
        # the inner model's starting weights (the paper's W1 ~ N(0, 0.02), b1 = 0) and its LayerNorm
        self.W0 = tag(nn.Parameter(torch.randn(H, hd, hd) * 0.02), quant="control", optim="scalar")
        self.b0 = tag(nn.Parameter(torch.zeros(H, hd)), quant="control", optim="scalar")
        self.ln_weight = tag(nn.Parameter(torch.ones(H, hd)), quant="control", optim="scalar")
        self.ln_bias = tag(nn.Parameter(torch.zeros(H, hd)), quant="control", optim="scalar")

    # --- shared pieces ---------------------------------------------------------------------
    def _views(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x [..., D] -> q, k, v [..., H, hd] and the inner LR eta [..., H] (fp32)."""
        H, hd = self.num_heads, self.head_dim
        q, k, v = (t.reshape(*t.shape[:-1], H, hd) for t in self.qkv_proj(x).float().chunk(3, dim=-1))
        eta = self.base_lr * torch.sigmoid(self.lr_proj(x).float()) / hd
        return q, k, v, eta

    def _out(self, q: Tensor, z: Tensor, x: Tensor) -> Tensor:
        """Inner outputs z [..., H, hd] -> f(q) = q + LN(z), normed, gated, projected [..., D]."""
        o = q + inner_ln(z, self.ln_weight.float(), self.ln_bias.float())
        o = rms_norm(o).reshape(*o.shape[:-2], self.dim).to(x.dtype)
        return self.out_proj(o * F.silu(self.gate_proj(x)))

    def _inner_params(self) -> tuple[Tensor, ...]:
        return tuple(p.float() for p in (self.W0, self.b0, self.ln_weight, self.ln_bias))

    # --- fast path ---------------------------------------------------------------------------
    def forward(self, x: Tensor, ctx: MixerContext | None = None) -> Tensor:
        return self.forward_with_state(x, ctx)[0]

    def forward_with_state(self, x: Tensor, ctx: MixerContext | None = None) -> tuple[Tensor, tuple]:
        """The dual-form fast path, also returning the state after the last position (generation prefill)."""
        q, k, v, eta = self._views(x)
        with torch.autocast(x.device.type, enabled=False):  # the inner model trains: keep it fp32
            z, state = ttt_linear_dual(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), eta.transpose(1, 2),
                                       *self._inner_params(), self.chunk)
            y = self._out(q, z.transpose(1, 2), x)
        return y, state

    # --- recurrent form ------------------------------------------------------------------------
    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> tuple:
        """(W_0 [B, H, hd, hd], b_0 [B, H, hd] of the current mini-batch, the sums of eta_s k_s^T G_s and
        eta_s G_s over its tokens so far, and how many it has seen (a Python int))."""
        W0, b0 = self.W0.float().to(device), self.b0.float().to(device)
        W = W0[None].expand(batch, -1, -1, -1)
        b = b0[None].expand(batch, -1, -1)
        return W, b, torch.zeros_like(W), torch.zeros_like(b), 0

    def step(self, x_t: Tensor, state: tuple) -> tuple[Tensor, tuple]:
        W0, b0, GW, Gb, i = state
        q, k, v, eta = self._views(x_t)  # [B, H, hd], [B, H]
        _, _, lw, lb = self._inner_params()
        with torch.autocast(x_t.device.type, enabled=False):
            G = inner_ln_l2_grad(torch.einsum("bhk,bhkv->bhv", k, W0) + b0, v - k, lw, lb)
            Ge = G * eta[..., None]
            GW = GW + k[..., :, None] * Ge[..., None, :]
            Gb = Gb + Ge
            i = i + 1
            W, b = W0 - GW / i, b0 - Gb / i
            z = torch.einsum("bhk,bhkv->bhv", q, W) + b
            y = self._out(q, z, x_t)
        if i == self.chunk:  # mini-batch complete: its end weights start the next one
            return y, (W, b, torch.zeros_like(GW), torch.zeros_like(Gb), 0)
        return y, (W0, b0, GW, Gb, i)
