"""The GPT backbone: the public parameter-golf record stack, with pluggable memory.

tokens -> embedding (+ BigramHash) -> RMSNorm -> SmearGate -> [mechanism prefix, e.g. memory tokens]
       -> N blocks (pre-norm sequence mixer + relu^2 MLP, learned residual mixing with the input
          embedding x0, U-Net skips from the first half to the second, LN scale 1/sqrt(layer+1))
       -> drop the prefix -> RMSNorm -> tied lm head -> logit softcap.

Switches from the April 2026 record (issue 17), each off by default: depth recurrence (NUM_LOOPS, a
run order that repeats logical layers LOOP_START..LOOP_END; the trainer turns it on at ENABLE_LOOPING_AT
through set_training_fraction), parallel residual lanes from PARALLEL_START_LAYER (Block.parallel) and
U-Net skip gates (SKIP_GATES). part_params() says how many parameters each adds.

Per-layer sequence mixers come from the registry in golf/model/mechanisms/__init__.py (MIXERS=attn,swa,stream,...);
model-level mechanisms (memory tokens, persistent memory, weight-tied depth) are ModelMechanism
plug-ins whose hooks the backbone calls; there is no mechanism-specific code here.

Artifact loading: build with `GPT(cfg, with_mtp=False)` (training-only MTP heads are not built) and
load `export_state_dict()` weights with the default strict=True.
QAT: the trainer calls `model.set_qat_bits(golf.compress.quant.quant_plan(model, h))` when late QAT starts
(it only flips a Python int on each CastedLinear, so no re-initialisation of anything).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from golf.core.config import GPTConfig, layer_mixers
from golf.core.utils import GolfError
from golf.data.shards import BOS_ID
from golf.model.embed import BigramHash, SmearGate
from golf.model.layers import MLP, CastedLinear, QATEmbedding, Rotary, rms_norm
from golf.model.mechanisms import build_mechanisms, build_mixer
from golf.model.mixer import MixerContext, document_ids, tag

TRAINING_ONLY_PREFIXES = ("mtp_heads.",)  # parameters never exported into the artifact


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer_idx: int, mixer: str):
        super().__init__()
        dim = int(cfg.model_dim)
        self.mixer = build_mixer(mixer, cfg, layer_idx)
        self.mlp = MLP(dim, float(cfg.mlp_mult), float(cfg.mlp_leaky_slope))
        # learned residual scales and the x/x0 mix of the public records
        self.attn_scale = tag(nn.Parameter(torch.ones(dim)), quant="control", optim="scalar")
        self.mlp_scale = tag(nn.Parameter(torch.ones(dim)), quant="control", optim="scalar")
        self.resid_mix = tag(nn.Parameter(torch.stack([torch.ones(dim), torch.zeros(dim)])),
                             quant="control", optim="scalar")

    def forward(self, x: Tensor, x0: Tensor, ctx: MixerContext, ln_scale: float) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.mixer(rms_norm(x) * ln_scale, ctx)
        return x + self.mlp_scale.to(x.dtype) * self.mlp(rms_norm(x) * ln_scale)

    def parallel(self, a: Tensor, m: Tensor, x0: Tensor, ctx: MixerContext, ln_scale: float, post: Tensor,
                 resid: Tensor) -> tuple[Tensor, Tensor]:
        """Parallel residual lanes (PR #1204, #1530, as in the 2026-04-27 record): the mixer reads the
        attention lane `a` (mixed with x0 by resid_mix), the MLP reads the MLP lane `m` (not the mixer's
        output), so both see the layer's input. Each output is written to both lanes: post [2 (mixer,
        MLP), 2 (lane a, lane m)]; each lane keeps resid[lane] of itself. Returns the new (a, m)."""
        mix = self.resid_mix.to(a.dtype)
        y_attn = self.attn_scale.to(a.dtype) * self.mixer(rms_norm(mix[0] * a + mix[1] * x0) * ln_scale, ctx)
        y_mlp = self.mlp_scale.to(m.dtype) * self.mlp(rms_norm(m) * ln_scale)
        post, resid = post.to(a.dtype), resid.to(a.dtype)
        return (resid[0] * a + post[0, 0] * y_attn + post[1, 0] * y_mlp,
                resid[1] * m + post[0, 1] * y_attn + post[1, 1] * y_mlp)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig, with_mtp: bool = True):
        super().__init__()
        self.cfg = cfg
        V, D, L = int(cfg.vocab_size), int(cfg.model_dim), int(cfg.num_layers)
        self.vocab_size, self.model_dim, self.num_layers = V, D, L
        self.softcap = float(cfg.logit_softcap)
        self.ln_scale = bool(cfg.ln_scale)

        self.tok_emb = QATEmbedding(V, D)
        tag(self.tok_emb.weight, quant="embed", optim="embed")
        self.tie_embeddings = bool(cfg.tie_embeddings)
        if self.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, std=float(cfg.tied_embed_init_std))  # tied: small init (public records)
            self.lm_head = None
        else:
            self.lm_head = CastedLinear(D, V)
            nn.init.zeros_(self.lm_head.weight)
            tag(self.lm_head.weight, quant="embed", optim="embed")
        nb = int(cfg.bigram_vocab_size)
        self.bigram = BigramHash(nb, int(cfg.bigram_dim), D) if nb > 0 else None
        self.smear = SmearGate(D) if cfg.smear_gate else None

        # keyed by name so parameter names read "mechanisms.memory_tokens.tokens"
        self.mechanisms = nn.ModuleDict({m.name: m for m in build_mechanisms(self.cfg)})
        self.num_prefix = sum(m.num_prefix for m in self.mechanisms.values())
        schedules = [s for s in (m.block_schedule(L) for m in self.mechanisms.values()) if s is not None]
        if len(schedules) > 1:
            raise GolfError("two mechanisms both schedule the blocks; switch one off")
        self.schedule = list(schedules[0]) if schedules else list(range(L))
        if len(self.schedule) != L or min(self.schedule) < 0:
            raise GolfError(f"block schedule {self.schedule} does not cover NUM_LAYERS={L}")
        mixers = layer_mixers(self.cfg)
        blocks = []
        for j in range(max(self.schedule) + 1):
            names = {mixers[i] for i, b in enumerate(self.schedule) if b == j}
            if len(names) != 1:
                raise GolfError(f"weight-tied block {j} runs as layers with different MIXERS {sorted(names)}; "
                                "give tied layers the same mixer")
            blocks.append(Block(self.cfg, j, names.pop()))
        self.blocks = nn.ModuleList(blocks)

        head_dim = D // int(cfg.num_heads)
        # YaRN stretches RoPE only for a window longer than training saw (memory-token prefix included)
        yarn_len = int(cfg.train_seq_len) + self.num_prefix if cfg.rope_yarn else 0
        self.rotary = Rotary(int(cfg.rope_dims) or head_dim, float(cfg.rope_base), yarn_len)
        # depth recurrence (PR #1344): the logical layers in run order, plain and looped (None = no loop).
        # `looping` is a plain Python flag like CastedLinear.qat_bits: torch.compile keeps one graph per
        # value (the trainer compiles both before the clock). A fresh or rebuilt model runs looped; the
        # trainer runs it plain until ENABLE_LOOPING_AT (set_training_fraction).
        self.plain_order = list(range(L))
        self.loop_order = loop_order(cfg)
        self.looping = self.loop_order is not None
        orders = [self.plain_order] + ([self.loop_order] if self.loop_order is not None else [])
        # U-Net: the first half's outputs feed the second half in reverse order, with learned weights
        # (halves of the run order: a looped run has more skips, so the weights cover the longest)
        self.num_encoder = L // 2
        num_skip = max(min(len(o) // 2, len(o) - len(o) // 2) for o in orders) if cfg.unet_skips else 0
        self.skip_weights = (tag(nn.Parameter(torch.ones(num_skip, D)), quant="control", optim="scalar")
                             if num_skip else None)
        # U-Net skip gates (PR #289): x <- lerp(w * skip, x, sigmoid(g)) per channel; zero init = an even mix
        if cfg.skip_gates and not num_skip:
            raise GolfError("SKIP_GATES=1 gates the U-Net skips, but UNET_SKIPS=0; "
                            "turn UNET_SKIPS on or SKIP_GATES off")
        self.skip_gates = (tag(nn.Parameter(torch.zeros(num_skip, D)), quant="control", optim="scalar")
                           if cfg.skip_gates else None)
        # parallel residual lanes (PR #1204, #1530) from logical layer K on, one row of lane weights per such
        # layer: post (mixer/MLP output -> lane a/m) init 1, resid (each lane's self weight) init 1.1
        self.parallel_start = check_parallel_lanes(cfg, orders, bool(num_skip))
        self.parallel_final_lane = str(cfg.parallel_final_lane)
        n_par = L - self.parallel_start if self.parallel_start else 0
        self.parallel_post_lambdas = (tag(nn.Parameter(torch.ones(n_par, 2, 2)), quant="control", optim="scalar")
                                      if n_par else None)
        self.parallel_resid_lambdas = (tag(nn.Parameter(torch.full((n_par, 2), 1.1)), quant="control", optim="scalar")
                                       if n_par else None)

        # multi-token prediction: head k (1..K) predicts token t+1+k from the last hidden state;
        # a training-only auxiliary loss, never exported (public record "Int6 MLP3x MTP")
        k = int(cfg.mtp_num_heads) if with_mtp else 0
        self.mtp_heads = nn.ModuleList([CastedLinear(D, V) for _ in range(k)])
        for h in self.mtp_heads:
            nn.init.zeros_(h.weight)
            tag(h.weight, quant="other", optim="matrix")
        self.mtp_weights = [float(cfg.mtp_loss_weight) * float(cfg.mtp_decay) ** i
                            for i in range(k)]

    # ------------------------------------------------------------------------------------------
    def hidden(self, idx: Tensor) -> Tensor:
        """idx [B, T] -> final-normed hidden states of the real tokens [B, T, D]."""
        x = self.tok_emb(idx)
        if self.bigram is not None:
            x = x + self.bigram(idx)
        x = rms_norm(x)
        if self.smear is not None:
            x = self.smear(x, idx)
        for m in self.mechanisms.values():  # a mechanism may run the stack itself (RMT: segment by segment)
            out = m.run_stack(x, idx == BOS_ID, self.stack)
            if out is not None:
                return rms_norm(out)
        return rms_norm(self.stack(x, idx == BOS_ID))

    def stack(self, x: Tensor, doc_start: Tensor, num_memory: int = 0) -> Tensor:
        """The blocks: embeddings x [B, T, D] -> the last block's output [B, T, D] (not normed; the
        mechanisms' prefix added and dropped here). doc_start [B, T] is True at BOS; the first
        num_memory positions of x are memory, visible to every position like a prefix (with
        DOC_ATTENTION: to the positions of the document open at the first real position)."""
        B, T = doc_start.shape
        mechs = tuple(self.mechanisms.values())
        for m in mechs:
            x = m.prefix(x)
        P = x.shape[1] - T
        if P:
            doc_start = torch.cat([doc_start.new_zeros(B, P), doc_start], dim=1)
        cos, sin = self.rotary(P + T, x.device)
        doc_ids = None
        if self.cfg.doc_attention:  # the mechanisms' prefix is no document (id -1, seen by all); RMT's
            # memory belongs to the document open at the segment's first token (golf/model/mechanisms/rmt.py)
            doc_ids = document_ids(doc_start[:, P + num_memory:], P)
            doc_ids = torch.cat([doc_ids[:, :P], doc_ids[:, P:P + 1].expand(-1, num_memory), doc_ids[:, P:]], dim=1)
        ctx = MixerContext(cos=cos, sin=sin, num_prefix=P + num_memory, doc_start=doc_start, mechanisms=mechs,
                           doc_ids=doc_ids)

        # s: position in the run order, i: its logical layer (ln scale, lane weights, mechanisms, block via schedule).
        # From layer K on (parallel lanes) x is the attention lane, which the skips feed, and lane_m the MLP lane.
        order = self.loop_order if self.looping else self.plain_order
        num_encoder = len(order) // 2
        x0, skips, lane_m = x, [], None
        for s, i in enumerate(order):
            for m in mechs:
                x = m.layer_input(x, i)
                lane_m = m.layer_input(lane_m, i) if lane_m is not None else None
            if lane_m is None and self.parallel_post_lambdas is not None and i >= self.parallel_start:
                lane_m = x  # both lanes start from the residual stream, before the skip
            if self.skip_weights is not None and s >= num_encoder and skips:
                w_skip = self.skip_weights[s - num_encoder].to(x.dtype) * skips.pop()
                if self.skip_gates is None:
                    x = x + w_skip
                else:
                    x = torch.lerp(w_skip, x, torch.sigmoid(self.skip_gates[s - num_encoder].to(x.dtype)))
            block, ln = self.blocks[self.schedule[i]], 1.0 / math.sqrt(i + 1) if self.ln_scale else 1.0
            if lane_m is None:
                x = block(x, x0, ctx, ln)
            else:
                k = i - self.parallel_start
                x, lane_m = block.parallel(x, lane_m, x0, ctx, ln, self.parallel_post_lambdas[k],
                                           self.parallel_resid_lambdas[k])
            if self.skip_weights is not None and s < num_encoder:
                skips.append(x)
        if lane_m is not None:
            x = lane_m if self.parallel_final_lane == "mlp" else x if self.parallel_final_lane == "attn" else \
                0.5 * (x + lane_m)
        return x[:, P:]

    def logits_from_hidden(self, x: Tensor, head: nn.Module | None = None) -> Tensor:
        if head is not None:
            logits = head(x)
        elif self.lm_head is not None:
            logits = self.lm_head(x)
        else:
            logits = F.linear(x, self.tok_emb.qweight().to(x.dtype))
        logits = logits.float()
        if self.softcap > 0:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits

    def forward(self, idx: Tensor, targets: Tensor | None = None, reduction: str = "mean", last: int = 0) -> Tensor:
        """Logits [B, T, V], or the loss with targets. last > 0 (evaluation): only the last `last`
        positions get logits / loss, so a sliding window that scores its final `stride` tokens
        skips the LM head and cross-entropy for the context positions."""
        x = self.hidden(idx)
        if last:
            x = x[:, -last:]
            targets = targets[:, -last:] if targets is not None else None
        logits = self.logits_from_hidden(x)
        if targets is None:
            return logits
        B, T = targets.shape
        # target -100 (DOC_PACKING's padding, golf/data/packing.py) is ignored: the mean is over the rest
        loss = F.cross_entropy(logits.reshape(-1, self.vocab_size), targets.reshape(-1), reduction=reduction,
                               ignore_index=-100)
        if reduction == "none":
            return loss.view(B, T)
        if self.training and reduction == "mean":
            for k, (head, w) in enumerate(zip(self.mtp_heads, self.mtp_weights), start=1):
                if T - k <= 0:
                    break
                aux = self.logits_from_hidden(x[:, : T - k], head)
                loss = loss + w * F.cross_entropy(aux.reshape(-1, self.vocab_size), targets[:, k:].reshape(-1),
                                                  ignore_index=-100)
        return loss

    # ------------------------------------------------------------------------------------------
    def set_training_fraction(self, frac: float) -> bool:
        """The trainer's progress through the run, in [0, 1]: depth recurrence runs looped from
        ENABLE_LOOPING_AT on (only flips the plain Python `looping` flag). Returns whether it loops."""
        self.looping = self.loop_order is not None and frac >= float(self.cfg.enable_looping_at)
        return self.looping

    def run_order(self) -> list[int]:
        """The blocks the next forward runs, in order (logical layers mapped through weight tying)."""
        return [self.schedule[i] for i in (self.loop_order if self.looping else self.plain_order)]

    def part_params(self) -> dict[str, int]:
        """Parameters the issue-17 switches add: parallel lanes 6 per layer from K on; depth recurrence the
        extra U-Net skip weights its longer looped run needs; skip gates one per skip weight."""
        L, D = self.num_layers, self.model_dim
        plain_skips = min(L // 2, L - L // 2) if self.skip_weights is not None else 0
        numel = lambda p: p.numel() if p is not None else 0  # noqa: E731
        return {"parallel_lanes": numel(self.parallel_post_lambdas) + numel(self.parallel_resid_lambdas),
                "depth_recurrence": numel(self.skip_weights) - plain_skips * D,
                "skip_gates": numel(self.skip_gates)}

    def export_state_dict(self) -> dict[str, Tensor]:
        """Weights that go into the artifact: everything but training-only parts (MTP heads)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(TRAINING_ONLY_PREFIXES)}

    def set_qat_bits(self, plan: dict[str, int] | int, clips: Any = None) -> int:
        """Late QAT on/off. plan maps parameter names ("blocks.0.mlp.fc.weight") to bit widths (as
        golf.compress.quant.quant_plan returns), or one int for every CastedLinear and QATEmbedding (the embedding tables); 0 or >= 16 = off.
        clips: the exporter's clip rule, one for all layers (search ratios or SDClip's k) or a dict
        by parameter name (golf.compress.quant.clip_plan); None keeps the layers'.
        Returns how many layers now fake-quantise."""
        n = 0
        for name, m in self.named_modules():
            if isinstance(m, (CastedLinear, QATEmbedding)):
                bits = plan if isinstance(plan, int) else int(plan.get(f"{name}.weight", 0))
                m.qat_bits = bits if 0 < bits < 16 else 0
                if isinstance(clips, dict):
                    m.qat_ratios = clips.get(f"{name}.weight", m.qat_ratios)
                elif clips is not None:
                    m.qat_ratios = clips
                n += m.qat_bits > 0
        return n


def loop_order(cfg: GPTConfig) -> list[int] | None:
    """Depth recurrence (PR #1344): the logical layers in run order when looping, i.e. layers
    LOOP_START..LOOP_END (inclusive) 1 + NUM_LOOPS times in a row; None when NUM_LOOPS=0. The record:
    11 layers, 3..5, NUM_LOOPS=2 -> 0,1,2, 3,4,5, 3,4,5, 3,4,5, 6,...,10 (17 layer runs)."""
    n, a, b, L = int(cfg.num_loops), int(cfg.loop_start), int(cfg.loop_end), int(cfg.num_layers)
    if n < 0:
        raise GolfError(f"NUM_LOOPS={n} must be >= 0 (0 = no depth recurrence)")
    if n == 0:
        return None
    if not 0 <= a <= b < L:
        raise GolfError(f"LOOP_START={a}, LOOP_END={b}: need 0 <= LOOP_START <= LOOP_END < NUM_LAYERS={L} "
                        "(both inclusive)")
    if not 0.0 <= float(cfg.enable_looping_at) <= 1.0:
        raise GolfError(f"ENABLE_LOOPING_AT={cfg.enable_looping_at} is a training fraction in [0, 1]")
    return list(range(a)) + list(range(a, b + 1)) * (n + 1) + list(range(b + 1, L))


def check_parallel_lanes(cfg: GPTConfig, orders: list[list[int]], unet: bool) -> int:
    """PARALLEL_START_LAYER, checked: 0 (off) or a logical layer K in 1..NUM_LAYERS-1. Lanes run from
    the first layer >= K to the end, so the layers after it must all be >= K (a loop may not straddle
    K), and with U-Net skips they start in the second half (the skips read one stream)."""
    K, L = int(cfg.parallel_start_layer), int(cfg.num_layers)
    if cfg.parallel_final_lane not in ("mean", "attn", "mlp"):
        raise GolfError(f"PARALLEL_FINAL_LANE={cfg.parallel_final_lane!r}: use mean, attn or mlp")
    if K == 0:
        return 0
    if not 0 < K < L:
        raise GolfError(f"PARALLEL_START_LAYER={K}: 0 (off) or a layer in 1..{L - 1} (NUM_LAYERS={L})")
    for o in orders:
        first = next(s for s, i in enumerate(o) if i >= K)
        if min(o[first:]) < K:
            raise GolfError(f"PARALLEL_START_LAYER={K} falls inside the loop LOOP_START={cfg.loop_start}.."
                            f"LOOP_END={cfg.loop_end}; start the lanes after the loop or loop after the lanes start")
        if unet and first < len(o) // 2:
            raise GolfError(f"PARALLEL_START_LAYER={K} starts the lanes in the U-Net's first half (layer run "
                            f"{first} of {len(o)}); use a later layer or UNET_SKIPS=0")
    return K


def count_params(model: nn.Module, exported_only: bool = True) -> int:
    """Parameters that end up in the artifact (training-only ones excluded unless asked)."""
    return sum(p.numel() for n, p in model.named_parameters()
               if not (exported_only and n.startswith(TRAINING_ONLY_PREFIXES)))
