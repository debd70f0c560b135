"""Optimizers: Muon for 2-D weight matrices, AdamW for everything else.

Parameters are routed by their optim tag (golf/model/mixer.py `optim_group_of`), so a new mechanism
picks its optimizer by tagging, never by editing this file:
  "matrix" -> Muon (MATRIX_LR, MUON_WEIGHT_DECAY)
  "embed"  -> AdamW (EMBED_LR, EMBED_WEIGHT_DECAY; by default ADAM_WEIGHT_DECAY)
  "scalar" -> AdamW (SCALAR_LR, SCALAR_WEIGHT_DECAY, by default none: gains and gates are not pulled to zero)
  "memory" -> AdamW (MEMORY_LR, no weight decay: memory tokens are content, not weights)

Every param group remembers its `base_lr`; the trainer multiplies it by the schedule's LR scale.
Under DDP the gradients are already averaged by DDP's all-reduce before `step()`, so every rank holds
the same gradient. Muon then splits its Newton-Schulz work across the ranks (each rank orthogonalises
its share of the matrices and the updates are all-gathered, as in Keller Jordan's modded-nanogpt);
every rank still keeps every momentum buffer, so the optimizer state (and a checkpoint) is the same
on all ranks and independent of the world size.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from golf.model.mixer import optim_group_of

# The classic quintic: one (a, b, c) for every step, from Keller Jordan's modded-nanogpt Muon, chosen to
# push singular values into [~0.7, ~1.2] in 5 steps rather than to converge exactly.
CLASSIC_NS = (3.4445, -4.7750, 2.0315)
# Polar Express (Amsel et al. 2025, "The Polar Express"; parameter-golf PRs #1344 and #1787, used by the
# 1.0611 record): a different minimax-optimal quintic for each of the 5 steps. The first steps are
# aggressive (a ~ 8 lifts tiny singular values fast), the last ones settle them near 1, so 5 steps land
# much closer to an orthogonal matrix than 5 classic ones. The record normalises by the Frobenius norm
# only (no extra safety factor) and runs at most these 5 steps.
POLAR_EXPRESS_NS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
NS_KINDS = ("classic", "polar")


def ns_coefficients(ns: str, steps: int) -> tuple[tuple[float, float, float], ...]:
    """The (a, b, c) of each Newton-Schulz step: MUON_NS=classic repeats one quintic `steps` times;
    polar takes the first `steps` Polar-Express tuples (the record's rule; there are 5)."""
    if ns == "classic":
        return (CLASSIC_NS,) * steps
    if ns == "polar":
        if steps > len(POLAR_EXPRESS_NS):
            raise ValueError(f"Polar-Express Newton-Schulz has {len(POLAR_EXPRESS_NS)} steps, not {steps}")
        return POLAR_EXPRESS_NS[:steps]
    raise ValueError(f"unknown Newton-Schulz kind {ns!r}; use one of {NS_KINDS}")


@torch.no_grad()
def zeropower_via_newtonschulz5(G: Tensor, steps: int = 5, eps: float = 1e-7, ns: str = "classic") -> Tensor:
    """Approximately orthogonalise G (replace its singular values by ~1) with a quintic
    Newton-Schulz iteration, X <- a X + (b A + c A^2) X with A = X X^T, one (a, b, c) per step
    (`ns_coefficients`). bf16 on CUDA (as modded-nanogpt / parameter-golf); fp32 on CPU where bf16
    matmuls are slow."""
    assert G.ndim == 2, G.shape
    X = G.to(torch.bfloat16 if G.is_cuda else torch.float32)
    X = X / (X.norm() + eps)  # spectral norm <= Frobenius norm <= 1
    transposed = G.size(0) > G.size(1)
    if transposed:  # iterate on the wide side: X X^T is the smaller Gram matrix
        X = X.T
    for a, b, c in ns_coefficients(ns, steps):  # plain Python at trace time: compiled as constants
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    if transposed:
        X = X.T
    return X.to(G.dtype)


_COMPILED_NS = None


def _newton_schulz(cuda: bool):
    """On CUDA the NS loop is ~20 small kernels per matrix: compiled into a few (as modded-nanogpt
    and parameter-golf do). Eager on CPU, where compiling costs more than it saves."""
    global _COMPILED_NS
    if not cuda:
        return zeropower_via_newtonschulz5
    if _COMPILED_NS is None:
        _COMPILED_NS = torch.compile(zeropower_via_newtonschulz5)
    return _COMPILED_NS


def shard_plan(keys: list, world: int) -> list[tuple[list[int], list[int]]]:
    """Deterministic, balanced assignment of matrices to ranks for the sharded Muon step.

    keys[i] is (numel, dtype) of matrix i (any hashable tuple whose first item is its size). Matrices with
    the same key form a bucket (so one all_gather moves equal-size tensors); buckets go largest
    first and are dealt round-robin, the deal carrying on from one bucket to the next, so no rank
    gets more than one matrix of any size above another's. Returns [(indices, owners)] per bucket.
    Every rank computes the same plan from the same keys."""
    buckets: dict = {}
    for i, k in enumerate(keys):
        buckets.setdefault(k, []).append(i)
    plan, nxt = [], 0
    for k in sorted(buckets, key=lambda k: (-k[0], buckets[k][0])):
        idx = buckets[k]
        plan.append((idx, [(nxt + j) % world for j in range(len(idx))]))
        nxt = (nxt + len(idx)) % world
    return plan


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz (Keller Jordan, 2024; modded-nanogpt).

    update = NS5(nesterov_momentum(grad)) * sqrt(max(1, rows/cols)); decoupled weight decay
    p <- p * (1 - lr * wd) (as in the parameter-golf records' Muon WD). Tensors with more than two
    dimensions are treated as [shape[0], -1] matrices. `ns` picks the Newton-Schulz coefficients
    (classic | polar); `row_normalize` scales each row of the momentum update to unit norm before NS
    (MuonEq-R). Both are per param group, like lr and weight_decay.

    Sharded under torch.distributed (the idea and its all_gather layout follow Keller Jordan's
    modded-nanogpt Muon): when a process group is initialised with more than one rank (and `shard`
    is on), each rank runs NS5 only for its share of the matrices (`shard_plan`) and the scaled
    updates are all-gathered, one collective per same-size bucket, launched asynchronously so the
    transfers overlap the next bucket's NS5. This needs identical gradients on every rank (DDP's
    all-reduce gives that) and the same set of parameters with a gradient on every rank. Momentum
    is cheap and stays unsharded: every rank updates every buffer, so `state_dict()` is the same on
    all ranks and loads into any world size. A single process runs exactly the unsharded step."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 backend_steps: int = 5, weight_decay: float = 0.0, shard: bool = True, process_group=None,
                 ns: str = "classic", row_normalize: bool = False):
        ns_coefficients(ns, backend_steps)  # an unknown kind or too many polar steps fails here, not at step 1
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, backend_steps=backend_steps,
                        weight_decay=weight_decay, ns=ns, row_normalize=row_normalize)
        super().__init__(params, defaults)
        self.shard = shard
        self.process_group = process_group

    def _world(self) -> tuple[int, int]:
        if not (self.shard and dist.is_available() and dist.is_initialized()):
            return 1, 0
        return dist.get_world_size(self.process_group), dist.get_rank(self.process_group)

    def _update(self, p: Tensor, group: dict) -> Tensor:
        """The scaled orthogonalised update of p (its momentum buffer already stepped)."""
        buf = self.state[p]["momentum_buffer"]
        g = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
        g2 = g.reshape(g.shape[0], -1)
        if group.get("row_normalize"):
            # MuonEq-R (parameter-golf PR #1285, kept by the 1.0611 record as MUON_ROW_NORMALIZE=1): every
            # row of the Nesterov update to unit L2 norm before orthogonalising, so rows with large
            # gradients do not dominate NS's Frobenius normalisation. Norms in fp32, as the record.
            g2 = g2 / g2.float().norm(dim=1, keepdim=True).clamp_min(1e-7).to(g2.dtype)
        update = _newton_schulz(g2.is_cuda)(g2, steps=group["backend_steps"], ns=group.get("ns", "classic"))
        return update * max(1.0, g2.size(0) / g2.size(1)) ** 0.5

    @staticmethod
    def _apply(p: Tensor, update: Tensor, lr: float, wd: float) -> None:
        if wd:
            p.mul_(1.0 - lr * wd)
        p.add_(update.view_as(p).to(p.dtype), alpha=-lr)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        world, rank = self._world()
        todo = []  # (param, its group) for every matrix with a gradient, in group order
        for group in self.param_groups:
            mom = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]  # momentum on every rank for every matrix
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                state["momentum_buffer"].mul_(mom).add_(p.grad)
                todo.append((p, group))
        if world == 1:
            for p, group in todo:
                self._apply(p, self._update(p, group), group["lr"], group["weight_decay"])
            return loss
        pending = []
        for idx, owners in shard_plan([(p.grad.numel(), p.grad.dtype) for p, _ in todo], world):
            p0 = todo[idx[0]][0]
            k = math.ceil(len(idx) / world)  # slots per rank in this bucket
            send = torch.zeros(k, p0.grad.numel(), dtype=p0.grad.dtype, device=p0.device)
            slots, used = [], [0] * world
            for i, r in zip(idx, owners):
                slots.append((i, r, used[r]))
                if r == rank:
                    send[used[r]].copy_(self._update(*todo[i]).reshape(-1))
                used[r] += 1
            recv = torch.empty(world, *send.shape, dtype=send.dtype, device=send.device)
            work = dist.all_gather(list(recv.unbind(0)), send, group=self.process_group, async_op=True)
            pending.append((work, send, recv, slots))  # send kept alive until wait()
        for work, _send, recv, slots in pending:
            work.wait()
            for i, r, s in slots:
                p, group = todo[i]
                self._apply(p, recv[r, s], group["lr"], group["weight_decay"])
        return loss


def param_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """{optim group: [(name, param), ...]} for every trainable parameter (tied weights once)."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {"matrix": [], "embed": [], "scalar": [], "memory": []}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        g = optim_group_of(p)
        if g == "matrix" and p.ndim < 2:  # a mis-tagged vector cannot be orthogonalised
            g = "scalar"
        groups[g].append((name, p))
    return groups


def build_optimizers(model: nn.Module, h) -> list[torch.optim.Optimizer]:
    """[AdamW (embed/scalar/memory groups), Muon (matrix group)]; empty ones are left out.

    Each param group carries `name` and `base_lr` so the trainer can apply the LR schedule."""
    groups = param_groups(model)
    fused = next(model.parameters()).is_cuda
    adam_groups = []
    for gname, lr, wd in (("embed", h.embed_lr, embed_weight_decay(h)), ("scalar", h.scalar_lr, h.scalar_weight_decay),
                          ("memory", h.memory_lr, 0.0)):
        if groups[gname]:
            adam_groups.append(dict(params=[p for _, p in groups[gname]], lr=lr, base_lr=lr,
                                    weight_decay=wd, name=gname))
    opts: list[torch.optim.Optimizer] = []
    if adam_groups:
        opts.append(torch.optim.AdamW(adam_groups, betas=(h.beta1, h.beta2), eps=h.adam_eps,
                                      fused=fused or None))
    if groups["matrix"]:
        opts.append(Muon([dict(params=[p for _, p in groups["matrix"]], lr=h.matrix_lr, base_lr=h.matrix_lr,
                               name="matrix")],
                         momentum=h.muon_momentum, backend_steps=h.muon_backend_steps,
                         weight_decay=h.muon_weight_decay, ns=h.muon_ns, row_normalize=h.muon_row_normalize))
    return opts


def embed_weight_decay(h) -> float:
    """The embedding group's AdamW weight decay: EMBED_WEIGHT_DECAY, or ADAM_WEIGHT_DECAY while that is
    -1: golf's embedding group took ADAM_WEIGHT_DECAY before the per-group decays of the challenge's
    records (EMBED_WD / ADAM_WD / MUON_WD, PR #1218), and old configs still do."""
    return h.adam_weight_decay if h.embed_weight_decay < 0 else h.embed_weight_decay


def apply_schedule(optimizers: list[torch.optim.Optimizer], lr_scale: float, muon_momentum: float) -> None:
    """Set every group's lr to base_lr * lr_scale and Muon's momentum."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * lr_scale
            if isinstance(opt, Muon):
                group["momentum"] = muon_momentum
