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

Documents: by default no reset at BOS (memory-token prefixes must stay readable; as for stream and
deltanet). With DOC_ATTENTION=1 every document runs exactly as it would alone: at its first position
(golf.model.mixer.doc_resets: every BOS, and the first token after a memory-token prefix) the fast
weights restart from the learned W0, b0 and a fresh mini-batch starts, so its mini-batches are counted
from its own first token. No gradient step on an earlier document's tokens reaches it, and no
within-mini-batch term either: in the dual form every document starts a new mini-batch of C slots
(ttt_linear_documents spreads the tokens into that padded layout, at most C - 1 padding slots per
document, and gathers them back). The number of mini-batches then depends on the data: one host sync
and a graph break per layer under torch.compile, the count rounded up to a few sizes so graphs are
reused. Generation: the carried state holds a token count per row; golf/eval/generate.py re-prefills
(an exact masked forward) when it reads a BOS, which restarts the state. The step-by-step reference
`forward_recurrent` restarts the state at the same positions; the tests check the two agree.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from golf.core.config import GPTConfig
from golf.core.utils import GolfError
from golf.model.layers import CastedLinear, rms_norm
from golf.model.mixer import MixerContext, SequenceMixer, doc_resets, tag

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


def _minibatches(q: Tensor, k: Tensor, v: Tensor, eta: Tensor, W0: Tensor, b0: Tensor, lw: Tensor, lb: Tensor,
                 restart: Tensor | None = None) -> tuple[Tensor, tuple]:
    """The dual form over n mini-batches of C tokens: q, k, v [B, H, n, C, hd], eta [B, H, n, C];
    restart [B, n] (or None): mini-batch j starts from (W0, b0), not from the previous one's end (a
    document's first). Returns z [B, H, n, C, hd] and the last mini-batch's (start W, start b
    [B, H, 1, hd], un-averaged sums GW, Gb, end W, end b)."""
    B, H, n, C, hd = q.shape
    inv_i = 1.0 / torch.arange(1, C + 1, device=q.device, dtype=q.dtype)  # token_idx: 1 / (position in mini-batch)
    lower = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    # A[t, s] = (q_t . k_s + 1) * eta_s / i_t for s <= t: the "+1" is the bias's share of the update
    A = ((q @ k.transpose(-1, -2) + 1) * (eta[..., None, :] * inv_i[:, None])).masked_fill(~lower, 0)
    target = v - k
    W = W0[None].expand(B, -1, -1, -1)
    b = b0[None, :, None, :].expand(B, -1, -1, -1)  # [B, H, 1, hd]
    zs = []
    W_start, b_start, GW, Gb = W, b, None, None
    restarts = restart.unbind(1) if restart is not None else [None] * n
    for q_i, k_i, t_i, A_i, e_i, r in zip(q.unbind(2), k.unbind(2), target.unbind(2), A.unbind(2), eta.unbind(2),
                                          restarts):
        if r is not None:  # a new document: its fast weights restart from the learned initial ones
            r = r[:, None, None, None]
            W, b = torch.where(r, W0, W), torch.where(r, b0[:, None, :], b)
        G = inner_ln_l2_grad(k_i @ W + b, t_i, lw, lb)  # [B, H, C, hd], all at the mini-batch's W_0
        zs.append(q_i @ W + b - A_i @ G)
        Ge = G * e_i[..., None]
        W_start, b_start = W, b
        GW, Gb = k_i.transpose(-1, -2) @ Ge, Ge.sum(-2, keepdim=True)  # un-averaged sums of the mini-batch
        W, b = W - GW / C, b - Gb / C
    return torch.stack(zs, dim=2), (W_start, b_start, GW, Gb, W, b)


def ttt_linear_dual(q: Tensor, k: Tensor, v: Tensor, eta: Tensor, W0: Tensor, b0: Tensor, ln_w: Tensor,
                    ln_b: Tensor, chunk: int, reset: Tensor | None = None) -> tuple[Tensor, tuple]:
    """Mini-batch TTT-Linear in the dual form. q, k, v [B, H, T, hd]; eta [B, H, T] (inner LR per token);
    W0 [H, hd, hd], b0, ln_w, ln_b [H, hd]; reset [B, T] or None: True where a document starts (DOC_ATTENTION,
    see ttt_linear_documents). Returns (inner outputs z_t = q_t W_t + b_t [B, H, T, hd], the recurrent
    state after the last position, see TTTLinear.step)."""
    if reset is not None:
        return ttt_linear_documents(q, k, v, eta, W0, b0, ln_w, ln_b, chunk, reset)
    B, H, T, hd = q.shape
    C = chunk
    pad = (-T) % C
    if pad:  # trailing zeros (k = q = v = 0, eta = 0) leave earlier outputs untouched
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        eta = F.pad(eta, (0, pad))
    n = (T + pad) // C
    q, k, v = (t.reshape(B, H, n, C, hd) for t in (q, k, v))
    z, (W_start, b_start, GW, Gb, W, b) = _minibatches(q, k, v, eta.reshape(B, H, n, C), W0, b0,
                                                        ln_w[:, None, :], ln_b[:, None, :])
    z = z.reshape(B, H, n * C, hd)[:, :, :T]
    r = T - (n - 1) * C  # real tokens in the last mini-batch
    if r == C:  # it is complete: the next token starts a fresh mini-batch from its end weights
        state = (W, b[:, :, 0], torch.zeros_like(GW), torch.zeros_like(Gb[:, :, 0]), 0)
    else:
        state = (W_start, b_start[:, :, 0], GW, Gb[:, :, 0], r)
    return z, state


def ttt_linear_documents(q: Tensor, k: Tensor, v: Tensor, eta: Tensor, W0: Tensor, b0: Tensor, ln_w: Tensor,
                         ln_b: Tensor, chunk: int, reset: Tensor) -> tuple[Tensor, tuple]:
    """ttt_linear_dual with a restart wherever reset [B, T] is True: every document runs exactly as it
    would alone (its mini-batches counted from its first token, its fast weights from W0, b0).
    Mini-batches are then not at fixed offsets, so the tokens are spread into a padded layout where
    each document starts a fresh mini-batch of C slots (padding slots have k = q = v = 0 and eta = 0:
    no update, and no within-mini-batch term reaches them or comes from them), rows right-aligned so
    every row's last token sits in the last mini-batch (the carried state), then gathered back. The
    state's token count is then a tensor [B] (rows differ)."""
    B, H, T, hd = q.shape
    C = chunk
    pos = torch.arange(T, device=q.device)
    first = reset.clone()
    first[:, 0] = True  # the row's first token starts a document (or a fragment of one)
    rel = pos - torch.where(first, pos, 0).cummax(1).values  # position inside the document
    mb = (rel % C == 0).long().cumsum(1) - 1  # each token's mini-batch, counted over the row
    count = mb[:, -1] + 1
    # how many mini-batches the longest row needs: data-dependent (a graph break under torch.compile),
    # rounded up to a few sizes so compiled graphs are reused; extra leading mini-batches hold padding only
    grid = -(-T // C)
    step = -(-grid // 8)
    n = -(-int(count.max()) // step) * step
    mb = mb + (n - count)[:, None]
    slot = (mb * C + rel % C)[:, None, :]  # [B, 1, T]
    restart = torch.zeros(B, n, dtype=torch.long, device=q.device).scatter_add(1, mb, first.long()) > 0

    def spread(t: Tensor) -> Tensor:  # [B, H, T, ...] -> [B, H, n * C, ...]
        idx = slot.reshape(B, 1, T, *[1] * (t.ndim - 3)).expand_as(t)
        return t.new_zeros(B, H, n * C, *t.shape[3:]).scatter(2, idx, t)

    q, k, v = (spread(t).reshape(B, H, n, C, hd) for t in (q, k, v))
    z, (W_start, b_start, GW, Gb, W, b) = _minibatches(q, k, v, spread(eta).reshape(B, H, n, C), W0, b0,
                                                        ln_w[:, None, :], ln_b[:, None, :], restart)
    z = z.reshape(B, H, n * C, hd).gather(2, slot[..., None].expand(B, H, T, hd))
    fill = rel[:, -1] % C + 1  # real tokens in each row's last mini-batch
    full = fill == C  # complete: the next token starts a fresh mini-batch from its end weights
    f4 = full[:, None, None, None]
    state = (torch.where(f4, W, W_start), torch.where(f4, b, b_start)[:, :, 0], GW.masked_fill(f4, 0),
             Gb.masked_fill(f4, 0)[:, :, 0], fill.masked_fill(full, 0))
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
                                       *self._inner_params(), self.chunk, doc_resets(ctx))
            y = self._out(q, z.transpose(1, 2), x)
        return y, state

    # --- recurrent form ------------------------------------------------------------------------
    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> tuple:
        """(W_0 [B, H, hd, hd], b_0 [B, H, hd] of the current mini-batch, the sums of eta_s k_s^T G_s and
        eta_s G_s over its tokens so far, and how many it has seen: a Python int, or a long tensor [B]
        when rows differ (after documents: forward_with_state / forward_recurrent with DOC_ATTENTION))."""
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
            if isinstance(i, int):
                W, b = W0 - GW / i, b0 - Gb / i
            else:  # a count per row
                n = i.to(GW.dtype)[:, None, None]
                W, b = W0 - GW / n[..., None], b0 - Gb / n
            z = torch.einsum("bhk,bhkv->bhv", q, W) + b
            y = self._out(q, z, x_t)
        if isinstance(i, Tensor):  # rows at different places in their mini-batches
            full = i == self.chunk
            f3, f4 = full[:, None, None], full[:, None, None, None]
            return y, (torch.where(f4, W, W0), torch.where(f3, b, b0), GW.masked_fill(f4, 0), Gb.masked_fill(f3, 0),
                       i.masked_fill(full, 0))
        if i == self.chunk:  # mini-batch complete: its end weights start the next one
            return y, (W, b, torch.zeros_like(GW), torch.zeros_like(Gb), 0)
        return y, (W0, b0, GW, Gb, i)

    def forward_recurrent(self, x: Tensor, ctx: MixerContext | None = None) -> Tensor:
        """Reference: `step` over the sequence; with DOC_ATTENTION a row's state goes back to the
        start (W0, b0, nothing accumulated, a fresh mini-batch) at every document's first position."""
        reset = doc_resets(ctx)
        if reset is None:
            return super().forward_recurrent(x, ctx)
        *init, _ = self.init_state(x.shape[0], x.device, x.dtype)
        state = (*init, torch.zeros(x.shape[0], dtype=torch.long, device=x.device))
        init = (*init, state[-1])
        ys = []
        for t in range(x.shape[1]):
            r = reset[:, t]
            state = tuple(torch.where(r.reshape(-1, *[1] * (s.ndim - 1)), s0, s) for s0, s in zip(init, state))
            y, state = self.step(x[:, t], state)
            ys.append(y)
        return torch.stack(ys, dim=1)
