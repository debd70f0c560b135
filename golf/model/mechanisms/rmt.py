"""Recurrent Memory Transformer ("rmt"): segment-level recurrence through memory tokens (Bulatov,
Kuratov, Burtsev 2022, "Recurrent Memory Transformer", arXiv:2207.06881; its decoder-only form).

The sequence runs through the whole block stack in segments of RMT_SEGMENT tokens (the last one may
be shorter). Each segment's input is

    [read memory (RMT_MEMORY vectors), the segment's token embeddings, write memory (the same vectors)]

and the stack's output at the write positions, RMS-normed to the embeddings' scale (our addition: the
paper feeds the raw outputs back), is the next segment's memory. The first segment's memory is
learned (RMT_MEMORY x MODEL_DIM, fp16 in the artifact, trained without weight decay).
Causality: under the causal mask a segment's tokens see its read memory and the earlier tokens of the
segment, never the write memory (it comes after them); the memory written by segment s has read only
segments <= s, so every token sees only the past.

Truncated BPTT (RMT_BPTT = k): gradients flow back through at most k segment transitions. As in the
authors' code (their k2), the memory keeps its graph across the last k transitions of the sequence
and is detached before those; k = -1 is full BPTT, k = 0 never differentiates through the memory
carried from an earlier segment (the learned initial memory still trains from the first segment).

Evaluation: a window of any length runs its segments in order with the memory carried (each window
starts from the learned memory). Generation: full recompute over the context (which carries the
memory the same way); the incremental decoder is switched off for RMT models (`incremental = False`).
Segments are cut at fixed offsets, not at BOS; other mechanisms (memory-token prefix, weight-tied
depth, persistent memory) apply inside each segment as usual.

Documents (DOC_ATTENTION=1): the memory belongs to one document. The memory a segment reads belongs
to the document open at its first token: it is the memory the previous segment wrote, or the learned
initial memory when the segment starts with BOS (and for the first segment). It carries that
document's id (golf/model/gpt.py GPT.stack), so that document's tokens see it (attention, and
recurrent layers, whose state of that document starts at the memory) and a document that begins
later in the segment does not. The write positions come after the segment's tokens and carry the
id of its last document; their inputs are the read memory's vectors when that document is the one
the read memory belongs to, else the initial memory's (as for the document alone): the memory
written is that document's alone, and it is the document open at the next segment's first token
unless that token is BOS. So no information crosses a BOS: changing a document changes nothing of
any other (tests/model/mechanisms/test_rmt.py). Difference from running a document alone: a document that starts at a segment boundary is exactly
as alone (it reads the initial memory, then its own). One that starts inside a segment sees no memory
until the next segment (alone, it would read the initial memory there), and its segments are cut at
the row's offsets, not at multiples of RMT_SEGMENT from its start.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from golf.core.config import GPTConfig
from golf.core.utils import GolfError
from golf.model.layers import rms_norm
from golf.model.mixer import ModelMechanism, tag


class RecurrentMemory(ModelMechanism):
    name = "rmt"
    incremental = False

    @classmethod
    def enabled(cls, cfg: GPTConfig) -> bool:
        return int(cfg.rmt_memory) > 0

    @classmethod
    def technique(cls, cfg: GPTConfig) -> str:
        bptt = "full BPTT" if int(cfg.rmt_bptt) < 0 else f"BPTT over {cfg.rmt_bptt} segments"
        return f"recurrent memory transformer: {cfg.rmt_memory} memory tokens, segments of {cfg.rmt_segment}, {bptt}"

    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg)
        self.num_memory, self.segment, self.bptt = int(cfg.rmt_memory), int(cfg.rmt_segment), int(cfg.rmt_bptt)
        self.doc_attention = bool(cfg.doc_attention)
        if self.segment < 1:
            raise GolfError(f"RMT_SEGMENT={self.segment} must be >= 1 (tokens per segment) with RMT_MEMORY > 0")
        if self.bptt < -1:
            raise GolfError(f"RMT_BPTT={self.bptt} must be >= 0 (segment transitions to backpropagate through) "
                            "or -1 (full BPTT)")
        # unit scale, like the RMS-normed embeddings the memory sits next to
        self.memory = tag(nn.Parameter(torch.randn(self.num_memory, int(cfg.model_dim))),
                          quant="control", optim="memory")

    def initial_memory(self, batch: int, dtype: torch.dtype) -> Tensor:
        return self.memory.to(dtype)[None].expand(batch, -1, -1)

    def segments(self, x: Tensor, doc_start: Tensor, stack: Callable[..., Tensor],
                 memory: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x [B, T, D] embeddings -> (last block's output [B, T, D], memory written by the last segment
        [B, M, D]), starting from `memory` (None = the learned initial memory)."""
        B, T, _ = x.shape
        M, S = self.num_memory, self.segment
        mem = self.initial_memory(B, x.dtype) if memory is None else memory
        no_doc = doc_start.new_zeros(B, M)
        n = -(-T // S)
        outs = []
        for s in range(n):
            if s and 0 <= self.bptt and s < n - self.bptt:  # transition s -> outside the last k: cut
                mem = mem.detach()
            seg = x[:, s * S:(s + 1) * S]
            L = seg.shape[1]
            write = mem
            if self.doc_attention:  # see the module docstring
                init = self.initial_memory(B, x.dtype)
                mem = torch.where(doc_start[:, s * S, None, None], init, mem)  # a segment starting a document
                # the write positions' inputs: the read memory only if its document is still open at the end
                write = torch.where(doc_start[:, s * S + 1:(s + 1) * S].any(1)[:, None, None], init, mem)
            out = stack(torch.cat([mem, seg, write], dim=1),
                        torch.cat([no_doc, doc_start[:, s * S:(s + 1) * S], no_doc], dim=1), M)
            outs.append(out[:, M:M + L])
            mem = rms_norm(out[:, M + L:])
        return torch.cat(outs, dim=1), mem

    def run_stack(self, x: Tensor, doc_start: Tensor, stack: Callable[..., Tensor]) -> Tensor:
        return self.segments(x, doc_start, stack)[0]
