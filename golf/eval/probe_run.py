"""Run probe trials through a model: each answer greedy-decoded from its prompt alone, and the
accuracy of every heat-map cell.

Prompts end before their answer and the model only ever sees the prompt plus its own greedy tokens
(never the answer: no teacher forcing, so even a model that peeks at later positions gains
nothing). Trials of one length are decoded together (golf.eval.generate.sample: carried state or a
KV cache when the model supports it), the whole prompt fed (max_ctx=0), as the multi-context score
feeds its windows whole.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from golf.eval.generate import sample
from golf.eval.probe_tasks import ProbeSet, Trial


@torch.no_grad()
def greedy(model: nn.Module, prompts: Tensor, n: int) -> Tensor:
    """prompts [B, T] -> the n greedy tokens after each [B, n]."""
    if n == 1:  # one forward; sample() would also self-check its incremental path
        was_training = model.training
        model.eval()
        out = model(prompts)[:, -1].float().argmax(dim=-1)[:, None]
        model.train(was_training)
        return out
    return sample(model, prompts, n, temperature=0.0, stop_at_bos=False, max_ctx=0)


def run_trials(model: nn.Module, trials: Sequence[Trial], batch_tokens: int = 16384) -> list[tuple[bool, int]]:
    """(exact match, answer tokens right) per trial, in order."""
    device = next(model.parameters()).device
    groups: dict[tuple[int, int], list[int]] = {}
    for i, t in enumerate(trials):
        groups.setdefault((len(t.prompt), len(t.answer)), []).append(i)
    out: list[Any] = [None] * len(trials)
    for (length, n), members in sorted(groups.items()):
        per = max(1, batch_tokens // (length + n))
        for b in range(0, len(members), per):
            chunk = members[b:b + per]
            prompts = torch.tensor([trials[i].prompt for i in chunk], dtype=torch.long, device=device)
            got = greedy(model, prompts, n).cpu().tolist()
            for i, g in zip(chunk, got):
                hits = sum(int(a == b) for a, b in zip(trials[i].answer, g))
                out[i] = (hits == n, hits)
    return out


def cell_table(ps: ProbeSet, outcomes: Sequence[tuple[bool, int]]) -> dict[str, Any]:
    """Accuracy grids rows (contexts) x cols; None where no trial fits the cell."""
    sums: dict[tuple, list[float]] = {}
    for t, (exact, hits) in zip(ps.trials, outcomes):
        s = sums.setdefault(t.cell, [0, 0.0, 0.0])
        s[0] += 1
        s[1] += float(exact)
        s[2] += hits / len(t.answer)
    acc, tok, cells = [], [], []
    for r in ps.rows:
        acc.append([]), tok.append([])
        for c in ps.cols:
            s = sums.get((r, c))
            acc[-1].append(s[1] / s[0] if s else None)
            tok[-1].append(s[2] / s[0] if s else None)
            if s:
                cells.append({"context": r, "col": c, "trials": s[0], "accuracy": s[1] / s[0],
                              "token_accuracy": s[2] / s[0]})
    flat = [c["accuracy"] for c in cells]
    return {"accuracy": acc, "token_accuracy": tok, "cells": cells,
            "mean_accuracy": sum(flat) / len(flat) if flat else None}
