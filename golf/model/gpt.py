"""The GPT backbone: the public parameter-golf record stack, with pluggable memory.

tokens -> embedding (+ BigramHash) -> RMSNorm -> SmearGate -> [mechanism prefix, e.g. memory tokens]
       -> N blocks (pre-norm sequence mixer + relu^2 MLP, learned residual mixing with the input
          embedding x0, U-Net skips from the first half to the second, LN scale 1/sqrt(layer+1))
       -> drop the prefix -> RMSNorm -> tied lm head -> logit softcap.

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
from golf.model.embed import BigramHash, SmearGate
from golf.model.layers import BOS_ID, MLP, CastedLinear, QATEmbedding, Rotary, rms_norm
from golf.model.mechanisms import build_mechanisms, build_mixer
from golf.model.mixer import MixerContext, tag

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
        # U-Net: the first half's outputs feed the second half in reverse order, with learned weights
        self.num_encoder = L // 2
        num_skip = min(self.num_encoder, L - self.num_encoder) if cfg.unet_skips else 0
        self.skip_weights = (tag(nn.Parameter(torch.ones(num_skip, D)), quant="control", optim="scalar")
                             if num_skip else None)

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
        num_memory positions of x are memory, visible to every position like a prefix."""
        B, T = doc_start.shape
        mechs = tuple(self.mechanisms.values())
        for m in mechs:
            x = m.prefix(x)
        P = x.shape[1] - T
        if P:
            doc_start = torch.cat([doc_start.new_zeros(B, P), doc_start], dim=1)
        cos, sin = self.rotary(P + T, x.device)
        ctx = MixerContext(cos=cos, sin=sin, num_prefix=P + num_memory, doc_start=doc_start, mechanisms=mechs)

        x0, skips = x, []
        for i, b in enumerate(self.schedule):
            for m in mechs:
                x = m.layer_input(x, i)
            if self.skip_weights is not None and i >= self.num_encoder and skips:
                x = x + self.skip_weights[i - self.num_encoder].to(x.dtype) * skips.pop()
            x = self.blocks[b](x, x0, ctx, 1.0 / math.sqrt(i + 1) if self.ln_scale else 1.0)
            if self.skip_weights is not None and i < self.num_encoder:
                skips.append(x)
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
        loss = F.cross_entropy(logits.reshape(-1, self.vocab_size), targets.reshape(-1), reduction=reduction)
        if reduction == "none":
            return loss.view(B, T)
        if self.training and reduction == "mean":
            for k, (head, w) in enumerate(zip(self.mtp_heads, self.mtp_weights), start=1):
                if T - k <= 0:
                    break
                aux = self.logits_from_hidden(x[:, : T - k], head)
                loss = loss + w * F.cross_entropy(aux.reshape(-1, self.vocab_size), targets[:, k:].reshape(-1))
        return loss

    # ------------------------------------------------------------------------------------------
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


def count_params(model: nn.Module, exported_only: bool = True) -> int:
    """Parameters that end up in the artifact (training-only ones excluded unless asked)."""
    return sum(p.numel() for n, p in model.named_parameters()
               if not (exported_only and n.startswith(TRAINING_ONLY_PREFIXES)))
