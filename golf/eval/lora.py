"""Batched per-document LoRA adapters for test-time training (golf/eval/ttt.py, TTT=lora / phased).

A batch of B documents is adapted side by side, each with its own rank-r adapters: one adapter is a
pair A [B, r, in], B [B, out, r] and adds (x A_b^T) B_b^T * alpha / r to its layer's output for
batch row b (a bmm, so the rows never mix). Which layers (the 1.0611 record's set, PR #1610 /
#1626 / #1767): in attention layers Q and V (K with TTT_K_LORA, the output projection with
TTT_O_LORA), every block's MLP as a whole (TTT_MLP_LORA; input -> output like the record's MLP
adapter), and the LM head. Recurrent mixers (stream, deltanet, ...) have no q/k/v: they get the MLP
and head adapters only.

`DocAdapters.attached(model)` hooks the adapters onto the model's modules (forward hooks) for the
`with` block and removes them after, so the model itself is never changed. The head adapter is
passed as the `head` of GPT.logits_from_hidden (the logit softcap then applies to base + adapter).

Reset at each document: B starts at zero (a fresh adapter is the identity) and A at one fixed
draw, the same for every row and every batch, so a document's adapters start the same wherever it
lands in the batch order (the record keeps A warm across documents, TTT_WARM_START_A; golf resets
both, so a document's score depends on that document alone).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from golf.model.attention import CausalSelfAttention


class BatchedLoRA(nn.Module):
    """Per-row low-rank adapter: x [b, T, in] -> [b, T, out]; `rows` (set by DocAdapters) picks the
    batch rows the current forward carries (documents that still have chunks to score)."""

    def __init__(self, bsz: int, in_features: int, out_features: int, rank: int, alpha: float, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(in_features)
        a0 = torch.empty(rank, in_features).uniform_(-bound, bound, generator=g)
        self.A = nn.Parameter(a0.expand(bsz, rank, in_features).clone())
        self.B = nn.Parameter(torch.zeros(bsz, out_features, rank))
        self.scale = float(alpha) / rank  # PR #1767: the LR's effect does not change with the rank
        self.rows: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        a, b = (self.A, self.B) if self.rows is None else (self.A[self.rows], self.B[self.rows])
        return (x @ a.transpose(1, 2).to(x.dtype)) @ b.transpose(1, 2).to(x.dtype) * self.scale


class DocAdapters(nn.Module):
    """The adapters of one batch of documents for `model` (a golf GPT)."""

    def __init__(self, model: nn.Module, bsz: int, rank: int, alpha: float = 144.0, k: bool = True,
                 o: bool = True, mlp: bool = True):
        super().__init__()
        self.bsz = bsz
        self.adapters = nn.ModuleDict()
        self._targets: list[tuple[str, str]] = []  # (module path in the model, adapter key)
        D, V = int(model.model_dim), int(model.vocab_size)

        def add(path: str, module: nn.Module, fin: int, fout: int) -> None:
            key = path.replace(".", "_")
            self.adapters[key] = BatchedLoRA(bsz, fin, fout, rank, alpha, seed=len(self._targets))
            self._targets.append((path, key))

        for i, block in enumerate(model.blocks):
            mixer = block.mixer
            if isinstance(mixer, CausalSelfAttention):
                for name, on in (("c_q", True), ("c_k", k), ("c_v", True), ("proj", o)):
                    lin = getattr(mixer, name)
                    if on:
                        add(f"blocks.{i}.mixer.{name}", lin, lin.in_features, lin.out_features)
            if mlp:
                add(f"blocks.{i}.mlp", block.mlp, D, D)
        self.head = BatchedLoRA(bsz, D, V, rank, alpha, seed=len(self._targets))

    def set_rows(self, rows: Tensor | None) -> None:
        """The batch rows of the next forwards (None: all of them, in order)."""
        for m in self.modules():
            if isinstance(m, BatchedLoRA):
                m.rows = rows

    def head_fn(self, model: nn.Module):
        """The LM head plus its adapter, for GPT.logits_from_hidden(x, head=...)."""
        def head(x: Tensor) -> Tensor:
            base = model.lm_head(x) if model.lm_head is not None else F.linear(x, model.tok_emb.qweight().to(x.dtype))
            return base + self.head(x).to(base.dtype)
        return head

    @contextmanager
    def attached(self, model: nn.Module) -> Iterator[None]:
        """Forward hooks that add each adapter to its module's output, removed on exit."""
        modules = dict(model.named_modules())
        handles = []
        try:
            for path, key in self._targets:
                lora = self.adapters[key]
                handles.append(modules[path].register_forward_hook(
                    lambda mod, args, out, lora=lora: out + lora(args[0]).to(out.dtype)))
            yield
        finally:
            for hd in handles:
                hd.remove()
