"""Causal HyperMixing ("hypermix"): attention-free token mixing with hypernetwork-generated weights
(HyperMixer, Mai et al. 2023, arXiv:2203.03691; multi-head HyperMixing as in idiap/hypermixing).

HyperMixer mixes tokens with a two-layer MLP *across positions* whose weights W1, W2 [N, m] are
generated per token by hypernetworks: Y = W2 sigma(W1^T V). For a language model the sum over all
N positions becomes a cumulative average over positions <= t (MicroMixer-style causal pooling):

    P_t = mean_{i<=t} w1_i (x) v_i   [m, hd] per head      y_t = w2_t^T GELU(P_t)

w1_i, w2_t = hypernetwork MLPs of x (HYPERMIX_HIDDEN units in all, split over NUM_HEADS heads),
v = W_v x. The output is RMS-normed per head (HyperMixer uses LayerNorm here) and projected out
(zero-initialised). Nothing depends on the vocabulary, so byte-level models (vocab 260) work as is.

Fast path: one cumsum over positions (memory O(T * HYPERMIX_HIDDEN * head_dim) per sequence).
Recurrent form: a running sum and a count (`step`); tests check both agree.
Documents: by default no reset at BOS (memory-token prefixes stay in the average of every later
token). With DOC_ATTENTION=1 the average runs over the token's own document only (from its first
position, golf.model.mixer.doc_resets; the memory-token prefix is left out too).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from golf.core.config import GPTConfig
from golf.core.utils import GolfError
from golf.model.layers import CastedLinear, rms_norm
from golf.model.mixer import MixerContext, SequenceMixer, doc_resets, tag


class HyperMixing(SequenceMixer):
    """Causal multi-head HyperMixing; see the module docstring."""

    name = "hypermix"
    recurrent = True  # cumulative average = running sum + count

    def __init__(self, cfg: GPTConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        D, H = int(cfg.model_dim), int(cfg.num_heads)
        hidden = int(cfg.hypermix_hidden or D // 2)
        if D % H or hidden % H:
            raise GolfError(f"hypermix: MODEL_DIM={D} and HYPERMIX_HIDDEN={hidden} must both be divisible "
                            f"by NUM_HEADS={H}")
        self.dim, self.num_heads, self.head_dim, self.hidden = D, H, D // H, hidden
        # one matmul for: hypernet-1 hidden, hypernet-2 hidden, values
        self.in_proj = CastedLinear(D, 2 * hidden + D)
        self.hyper1 = CastedLinear(hidden, hidden)  # second layer of the hypernetworks
        self.hyper2 = CastedLinear(hidden, hidden)
        self.out_proj = CastedLinear(D, D)
        nn.init.zeros_(self.out_proj.weight)  # fresh layer = identity
        for lin in (self.in_proj, self.hyper1, self.hyper2, self.out_proj):
            tag(lin.weight, quant="attn", optim="matrix")

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [..., D] -> w1, w2 [..., H, m], v [..., H, hd] (fp32)."""
        H, m = self.num_heads, self.hidden // self.num_heads
        h1, h2, v = self.in_proj(x).split((self.hidden, self.hidden, self.dim), dim=-1)
        w1 = self.hyper1(F.gelu(h1)).float().reshape(*x.shape[:-1], H, m)
        w2 = self.hyper2(F.gelu(h2)).float().reshape(*x.shape[:-1], H, m)
        return w1, w2, v.float().reshape(*x.shape[:-1], H, self.head_dim)

    def _mix(self, w2: Tensor, pooled: Tensor, x: Tensor) -> Tensor:
        """w2 [..., H, m], pooled [..., H, m, hd] -> y [..., D]."""
        y = torch.einsum("...hm,...hmd->...hd", w2, F.gelu(pooled))
        return self.out_proj(rms_norm(y).reshape(*x.shape[:-1], self.dim).to(x.dtype))

    def forward(self, x: Tensor, ctx: MixerContext | None = None) -> Tensor:
        return self.forward_with_state(x, ctx)[0]

    def forward_with_state(self, x: Tensor, ctx: MixerContext | None = None):
        """The fast path, also returning the running sum and count (generation prefill)."""
        w1, w2, v = self._project(x)
        with torch.autocast(x.device.type, enabled=False):  # a bf16 running sum would lose tokens
            total = torch.einsum("bthm,bthd->bthmd", w1, v).cumsum(dim=1)
        count = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=total.dtype)
        reset = doc_resets(ctx)
        if reset is not None:  # DOC_ATTENTION: sums from the document's first position s: total[t] - total[s-1]
            pos = torch.arange(x.shape[1], device=x.device)
            first = torch.where(reset, pos, 0).cummax(dim=1).values  # [B, T]
            before = F.pad(total, (0, 0, 0, 0, 0, 0, 1, 0))[:, :-1]  # before[:, t] = total[:, t-1], 0 at t = 0
            total = total - before.gather(1, first[:, :, None, None, None].expand_as(total))
            count = (pos - first + 1).to(total.dtype)  # [B, T]
            pooled = total / count[:, :, None, None, None]
            return self._mix(w2, pooled, x), (total[:, -1], count[:, -1, None, None, None])
        pooled = total / count[None, :, None, None, None]  # causal mean over i <= t
        return self._mix(w2, pooled, x), (total[:, -1], x.shape[1])

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, int]:
        m = self.hidden // self.num_heads
        return torch.zeros(batch, self.num_heads, m, self.head_dim, device=device, dtype=torch.float32), 0

    def step(self, x_t: Tensor, state: tuple[Tensor, int]) -> tuple[Tensor, tuple[Tensor, int]]:
        total, count = state
        w1, w2, v = self._project(x_t)
        total = total + torch.einsum("bhm,bhd->bhmd", w1, v)
        count = count + 1
        return self._mix(w2, total / count, x_t), (total, count)
