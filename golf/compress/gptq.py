"""GPTQ: round a weight matrix column by column, feeding each column's rounding error forward into
the columns not yet rounded, weighted by the layer's input Hessian (Frantar et al. 2022, "GPTQ";
in parameter golf: PR #1019 / #1060, with SDClip scales from PR #1394).

For a linear layer y = x W^T with inputs x, H = sum x^T x over calibration tokens (training data,
never validation). Rounding column j of W moves the output by err_j * x_j; the optimal correction
of the remaining columns (Optimal Brain Surgeon) is -err_j / Hinv[j, j] * Hinv[j, j+1:], after which
column j is removed from Hinv. GPTQ does those updates with the rows of the upper Cholesky factor
of Hinv (the same numbers, no per-step downdate) and in blocks of columns (lazy batch updates).

The row scales are fixed before the sweep by the group's clip rule (the search or SDClip), so the
artifact format is unchanged: int8-container integers + one fp16 scale per row. Columns are taken
in order of decreasing Hessian diagonal ("act order"); the integers go back to the original order.

`gptq_quantize` is the fast path; `obq_reference` the plain loop it must match (same integers,
tests/compress/test_gptq.py). `collect_hessians` runs the calibration batches through the model.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from golf.model.layers import CastedLinear
from golf.model.quantgrid import Clip, qmax_for, row_scales

DAMP = 0.01  # added to H's diagonal, as a fraction of its mean: keeps the Cholesky well conditioned


def _prepared(w: Tensor, H: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(W in act order, damped H in act order, perm). Dead inputs (zero diagonal) get H=1, W=0."""
    W = w.detach().to(dtype).clone()
    H = H.detach().to(dtype).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H.diagonal().add_(DAMP * torch.diag(H).mean())
    perm = torch.argsort(torch.diag(H), descending=True, stable=True)
    return W[:, perm], H[perm][:, perm], perm


def gptq_quantize(w: Tensor, H: Tensor, bits: int, clip: Clip, block: int = 128,
                  dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """w [rows, cols], H [cols, cols] -> (q int8 [rows, cols], scale fp16 [rows])."""
    qmax = qmax_for(bits)
    s16 = row_scales(w, bits, clip).to(torch.float16)
    s = s16.to(dtype)[:, None]
    W, Hp, perm = _prepared(w, H.to(w.device), dtype)
    s = s.to(w.device)
    rows, cols = W.shape
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(Hp)), upper=True)
    Q = torch.zeros(rows, cols, dtype=dtype, device=w.device)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        Wb, Ub = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        Err = torch.zeros(rows, i2 - i1, dtype=dtype, device=w.device)
        for j in range(i2 - i1):
            q = torch.clamp(torch.round(Wb[:, j:j + 1] / s), -qmax, qmax)
            Q[:, i1 + j] = q[:, 0]
            e = (Wb[:, j:j + 1] - q * s) / Ub[j, j]
            Err[:, j] = e[:, 0]
            Wb[:, j:] -= e * Ub[j:j + 1, j:]
        W[:, i2:] -= Err @ U[i1:i2, i2:]
    out = torch.empty_like(Q)
    out[:, perm] = Q
    return out.to(torch.int8).cpu(), s16.cpu()


def obq_reference(w: Tensor, H: Tensor, bits: int, clip: Clip) -> tuple[Tensor, Tensor]:
    """The slow reference: one column at a time with the explicit inverse Hessian, downdated after
    each column (Optimal Brain Quantisation's loop, no Cholesky, no blocks), in float64."""
    qmax = qmax_for(bits)
    s16 = row_scales(w, bits, clip).to(torch.float16)
    s = s16.to(torch.float64)
    W, Hp, perm = _prepared(w, H, torch.float64)
    Hinv = torch.linalg.inv(Hp)
    rows, cols = W.shape
    Q = torch.zeros(rows, cols, dtype=torch.float64)
    for j in range(cols):
        for r in range(rows):
            Q[r, j] = min(max(round(float(W[r, j] / s[r])), -qmax), qmax)
        err = (W[:, j] - Q[:, j] * s) / Hinv[j, j]
        for k in range(j + 1, cols):
            W[:, k] -= err * Hinv[j, k]
        Hinv = Hinv - torch.outer(Hinv[:, j], Hinv[j, :]) / Hinv[j, j]  # remove column j
    out = torch.empty_like(Q)
    out[:, perm] = Q
    return out.to(torch.int8), s16


@torch.no_grad()
def collect_hessians(model: nn.Module, batches: Iterable[Tensor], names: set[str] | None = None) -> dict[str, Tensor]:
    """{parameter name: H = sum x^T x / tokens} for every CastedLinear weight (in `names`, if given)
    and, for a tied embedding, the LM head's input (the final hidden states) under tok_emb.weight.
    Weight-tied blocks sum the inputs of every use, as the layer sees them all."""
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}

    def add(name: str, x: Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
        if name not in sums:
            sums[name] = torch.zeros(x.shape[1], x.shape[1], device=x.device)
            counts[name] = 0
        sums[name].addmm_(x.T, x)
        counts[name] += x.shape[0]

    hooks = []
    for mname, m in model.named_modules():
        pname = f"{mname}.weight"
        if isinstance(m, CastedLinear) and (names is None or pname in names):
            hooks.append(m.register_forward_pre_hook(lambda mod, args, pname=pname: add(pname, args[0])))
    tied = getattr(model, "lm_head", 1) is None and (names is None or "tok_emb.weight" in names)
    was_training = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        for idx in batches:
            hidden = model.hidden(idx.to(dev))
            if tied:
                add("tok_emb.weight", hidden)
    finally:
        for hk in hooks:
            hk.remove()
        model.train(was_training)
    return {k: v / max(counts[k], 1) for k, v in sums.items()}
