"""Score-first test-time training: evaluation strategies that adapt the model on validation tokens
they have already scored, and only on those (the rule; the reviewers' conditions in challenge issue
#1017: causal, a normalised distribution, score before any update, one pass).

`ScoreFirstSGD` (TTT=sgd; global SGD, PR #549 / #1413 "legal score-first TTT"): the sliding-window
plan of the whole val stream (golf.eval.score.window_plan) is cut into chunks of about
TTT_CHUNK_SIZE scored tokens. For each chunk in stream order: score its windows with the current
weights (added to the totals), then take TTT_STEPS SGD steps (GLOBAL_TTT_LR, TTT_MOMENTUM) on the
same windows' scored targets (every input and target of those windows is at or before the chunk's
last scored token), then go on.

`PerDocTTT` (TTT=lora, TTT=phased; the 1.0611 record's eval, PR #1610 -> #1626 -> #1736, adapters
as in PR #1767): the stream is split into documents at BOS (golf.eval.lora has the adapters).
Documents are sorted by length into batches of TTT_BATCH_SIZE (longest batch first, as the record
does), each document with its own rank-TTT_LORA_RANK adapters, fresh for every document. A document
is cut into chunks of TTT_CHUNK_SIZE targets; each chunk is scored from a window that ends at the
chunk's end and starts at most EVAL_SEQ_LEN tokens before it, inside the document (the sliding
window within the document), and then the adapters take TTT_STEPS AdamW steps on that chunk
(TTT_LORA_LR, TTT_BETA1/2, TTT_WEIGHT_DECAY). The scoring forward is the first step's forward: the
losses are taken before the step. The last chunk of a document trains nothing (nothing follows).
TTT=phased adds phased global SGD (PR #1626): after the first PHASED_TTT_PREFIX_DOCS documents (in
PHASED_TTT_NUM_PHASES cumulative phases, at batch ends) the whole model takes SGD steps
(GLOBAL_TTT_LR cosine to 0, GLOBAL_TTT_MOMENTUM, GLOBAL_TTT_EPOCHS, GLOBAL_TTT_BATCH_SEQS,
GLOBAL_TTT_GRAD_CLIP) on the documents scored so far, and the rest is scored (with fresh adapters)
by the updated model. TTT=phased TTT_LORA_RANK=0: phased global SGD alone, documents scored plainly.

The one thing a strategy knows up front is the document layout (where the BOS tokens are): the
record batches documents by length, and the legality test keeps the BOS tokens in place.

Time: once TTT_TIME_BUDGET_S has passed, adapting stops (no more SGD/AdamW steps, no more global
phases) and the rest is scored plainly (per-document strategies: the sliding window inside each
document, EVAL_STRIDE), so evaluation stays inside its budget; every result reports its seconds.

torchrun: TTT=sgd splits each chunk's windows over the ranks and all-reduces the gradients of each
step (the same steps as one process); per-document strategies give each rank whole batches of
documents (round robin over the length-sorted batches) and all ranks run the global phases
together (each on a share of every step's sequences, gradients all-reduced). The loss / token /
byte sums are all-reduced, so every rank returns the single-process score (to float rounding).

With `record=True` a result carries `order` (per step, the target ranges [first, last) it scored),
`step_loss` and `target_loss` (each target's loss, NaN where another rank scored it): the legality
test changes every token scored after step k and requires every target scored up to step k to
keep its loss exactly (tests/eval/test_ttt.py). Off by default: a full val split has 40M targets.
The artifact's model is copied: nothing adapted leaks out of a strategy.
"""
from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from golf.core.config import TTT_CHUNK_DEFAULT, check_ttt
from golf.core.utils import GolfError
from golf.data.bpb import token_bytes
from golf.data.shards import BOS_ID
from golf.eval.lora import DocAdapters
from golf.eval.score import _as_long_tensor, _rank_slice, _summarise, window_plan

# ---------------------------------------------------------------------------------------------
# shared pieces: ranks, the clock, per-position sums


def _check_dist(world_size: int, what: str) -> None:
    if world_size > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise GolfError(f"{what}: world_size={world_size} but torch.distributed is not initialised; launch with "
                        f"torchrun (or pass world_size=1)")


def _all_reduce(t: torch.Tensor, world_size: int, op: str = "sum") -> torch.Tensor:
    if world_size > 1:
        dist = torch.distributed
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MIN)
    return t


def _agree(flag: bool, world_size: int, device: torch.device) -> bool:
    """One decision for all ranks (true only if true on every rank): a collective step (gradient
    all-reduce, a global phase) must never be skipped by one rank alone."""
    if world_size == 1:
        return flag
    return bool(_all_reduce(torch.tensor([float(flag)], device=device), world_size, "min").item())


def _sync_grads(params: list[torch.Tensor], world_size: int) -> None:
    """Sum the ranks' gradients (each rank's loss is already divided by the global token count)."""
    if world_size == 1:
        return
    for p in params:
        if p.grad is None:  # a rank with no share of this step still takes part in the all-reduce
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)


class _Clock:
    def __init__(self, budget_s: float):
        self.t0, self.budget_s = time.perf_counter(), float(budget_s)

    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> bool:
        return self.budget_s <= 0 or self.seconds() < self.budget_s


def _amp(device: torch.device, amp: bool | None):
    use = device.type == "cuda" if amp is None else amp
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use)


class _Tally:
    """Per-window-position loss / token / byte sums, and (record=True) what the legality test reads."""

    def __init__(self, seq_len: int, num_targets: int, device: torch.device, record: bool):
        self.sums = torch.zeros(3, seq_len, dtype=torch.float64, device=device)
        self.record = record
        self.order: list[list[tuple[int, int]]] = []
        self.step_loss: list[float] = []
        self.target_loss = np.full(num_targets, np.nan) if record else None
        self._loss = 0.0

    def add(self, pos: torch.Tensor, nll: torch.Tensor, nbytes: torch.Tensor, mask: torch.Tensor,
            targets: torch.Tensor) -> None:
        """pos: window position of each loss (= its context length), targets: its target index, mask:
        the scored ones; all [b, n]."""
        p = pos[mask]
        self.sums[0].index_add_(0, p, nll.detach()[mask].double())
        self.sums[1].index_add_(0, p, torch.ones_like(p, dtype=torch.float64))
        self.sums[2].index_add_(0, p, nbytes[mask].double())
        if self.record:
            self._loss += float(nll.detach()[mask].double().sum())
            self.target_loss[targets[mask].cpu().numpy()] = nll.detach()[mask].double().cpu().numpy()

    def step(self, ranges: list[tuple[int, int]]) -> None:
        """One scoring step done (record): the target ranges it scored, and their summed loss."""
        if self.record:
            self.order.append(ranges)
            self.step_loss.append(self._loss)
        self._loss = 0.0

    def result(self, world_size: int, windows: int, seconds: float, seq_len: int, stride: int) -> dict[str, Any]:
        sums = _all_reduce(self.sums, world_size).cpu().numpy()
        res = _summarise(sums[0], sums[1], sums[2], windows, seconds, 64, seq_len, stride)
        if self.record:
            res.update(order=self.order, step_loss=self.step_loss, target_loss=self.target_loss.tolist())
        return res


# ---------------------------------------------------------------------------------------------
# TTT=sgd: score-first global SGD over the sliding-window plan


def _window_losses(model: torch.nn.Module, stream: torch.Tensor, starts: np.ndarray, seq_len: int,
                   device: torch.device, amp: bool | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-token nll [B, seq_len], inputs, targets) of the windows starting at `starts`."""
    idx = torch.as_tensor(starts, dtype=torch.long)[:, None] + torch.arange(seq_len)[None]
    x, y = stream[idx].to(device), stream[idx + 1].to(device)
    with _amp(device, amp):
        logits = model(x)
    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
    return nll.view(len(starts), seq_len), x, y


@dataclass
class ScoreFirstSGD:
    seq_len: int
    stride: int
    batch_windows: int
    chunk_tokens: int = 32768  # TTT_CHUNK_SIZE
    lr: float = 1e-4  # GLOBAL_TTT_LR
    momentum: float = 0.9  # TTT_MOMENTUM
    steps: int = 1  # TTT_STEPS: SGD steps on each chunk after it is scored
    time_budget_s: float = 0.0  # TTT_TIME_BUDGET_S: 0 = no limit
    name: str = "score_first_sgd"
    record: bool = False  # keep order / step_loss / target_loss (the legality test)
    train_before_score: bool = False  # ONLY for the legality test: the illegal order it must catch

    def __call__(self, model: torch.nn.Module, tokens: Any, luts: Any, device: Any = "cpu", rank: int = 0,
                 world_size: int = 1, compile: bool = False, progress: bool = False, amp: bool | None = None,
                 **_: Any) -> dict[str, Any]:
        _check_dist(world_size, "TTT=sgd")
        device = torch.device(device)
        stream = _as_long_tensor(tokens)
        starts, n_scored = window_plan(stream.numel(), self.seq_len, self.stride)
        luts = luts.to(device) if hasattr(luts, "to") else luts
        if hasattr(luts, "check_stream"):
            luts.check_stream(stream.numel())
        model = copy.deepcopy(model).to(device).eval()  # the artifact's model stays as loaded
        params = [p for p in model.parameters() if p.is_floating_point()]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)
        per_chunk = max(1, self.chunk_tokens // max(self.stride, 1))
        tally = _Tally(self.seq_len, stream.numel() - 1, device, self.record)
        pos = torch.arange(self.seq_len, device=device)
        clock, adapted_steps, done = _Clock(self.time_budget_s), 0, 0
        for c0 in range(0, len(starts), per_chunk):
            cs, cn = starts[c0:c0 + per_chunk], n_scored[c0:c0 + per_chunk]
            adapt = _agree(clock.left(), world_size, device)
            if adapt and self.train_before_score:
                adapted_steps += self._adapt(model, opt, params, stream, cs, cn, device, rank, world_size, amp)
            mine = _rank_slice(len(cs), rank, world_size)  # this rank's windows of the chunk
            ms, mn = cs[mine], cn[mine]
            first, last = done, done + int(cn.sum())
            with torch.no_grad():
                for b in range(0, len(ms), self.batch_windows):
                    bs, bn = ms[b:b + self.batch_windows], mn[b:b + self.batch_windows]
                    nll, x, y = _window_losses(model, stream, bs, self.seq_len, device, amp)
                    mask = pos[None] >= (self.seq_len - torch.as_tensor(bn, device=device))[:, None]  # last n
                    targets = torch.as_tensor(bs, device=device)[:, None] + pos[None]
                    tally.add(pos.expand_as(nll), nll, token_bytes(x, y, luts, targets + 1), mask, targets)
            tally.step([(first, last)])  # targets [first, last) scored at this step
            done = last
            if adapt and not self.train_before_score:
                adapted_steps += self._adapt(model, opt, params, stream, cs, cn, device, rank, world_size, amp)
        res = tally.result(world_size, len(starts), clock.seconds(), self.seq_len, self.stride)
        res["ttt"] = {"strategy": self.name, "chunk_tokens": self.chunk_tokens, "lr": self.lr,
                      "momentum": self.momentum, "steps": self.steps, "adapted_steps": adapted_steps,
                      "time_budget_s": self.time_budget_s, "seconds": res["seconds"],
                      "budget_spent": not clock.left()}
        return res

    def _adapt(self, model, opt, params, stream, cs, cn, device, rank, world_size, amp) -> int:
        """SGD on the chunk's scored targets only (each window's last n positions). Every step is one
        batch of batch_windows windows shared out over the ranks, the loss divided by the whole
        batch's token count, so the ranks' summed gradients are the one-process gradient."""
        n = 0
        for _ in range(self.steps):
            for b in range(0, len(cs), self.batch_windows):
                bs, bn = cs[b:b + self.batch_windows], cn[b:b + self.batch_windows]
                mine = _rank_slice(len(bs), rank, world_size)
                opt.zero_grad(set_to_none=True)
                if mine.stop > mine.start:
                    nll, _, _ = _window_losses(model, stream, bs[mine], self.seq_len, device, amp)
                    bn_t = torch.as_tensor(bn[mine], device=device)
                    mask = torch.arange(self.seq_len, device=device)[None] >= (self.seq_len - bn_t)[:, None]
                    (torch.where(mask, nll, 0.0).sum() / float(bn.sum())).backward()
                _sync_grads(params, world_size)
                opt.step()
                n += 1
        return n


# ---------------------------------------------------------------------------------------------
# TTT=lora / TTT=phased: per-document adapters, optional phased global SGD


def find_docs(stream: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(start, number of targets) per document. A document runs from its BOS to the next BOS; its
    targets are the tokens after each of its tokens, the next document's BOS included (predicting
    the end of the document), so the documents' targets partition the stream's N - 1 targets.
    Tokens before the first BOS (a cut stream) form one more document."""
    s = stream.cpu().numpy()
    bos = np.flatnonzero(s == BOS_ID)
    starts = bos if bos.size and bos[0] == 0 else np.concatenate([[0], bos]).astype(np.int64)
    n = np.append(starts[1:], len(s) - 1) - starts
    keep = n > 0  # a BOS as the stream's last token has nothing to predict
    return starts[keep].astype(np.int64), n[keep].astype(np.int64)


def doc_batches(n_targets: np.ndarray, batch_docs: int) -> list[np.ndarray]:
    """Document indices in batches: sorted by length so a batch's documents end together, the
    batch with the longest document first (the record: the long batches start early, the short
    ones fill the ranks' tails)."""
    order = np.argsort(n_targets, kind="stable")
    batches = [order[i:i + batch_docs] for i in range(0, len(order), batch_docs)]
    batches.sort(key=lambda b: -int(n_targets[b].max()))  # stable: equal lengths keep their order
    return batches


def doc_chunks(n: int, first: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the chunks of a document with n targets: [0, first), then `step` at a time."""
    e0 = min(first, n)
    ends = np.minimum(np.concatenate([[e0], np.arange(e0 + step, n + step, step)]), n).astype(np.int64)
    return np.concatenate([[0], ends[:-1]]).astype(np.int64), ends


@dataclass
class PerDocTTT:
    seq_len: int  # EVAL_SEQ_LEN: the longest window (context inside the document only)
    stride: int  # EVAL_STRIDE: the plain per-document sliding window (no adapters / budget spent)
    chunk_tokens: int = 48  # TTT_CHUNK_SIZE
    lora_rank: int = 80  # TTT_LORA_RANK; 0 = no adapters (TTT=phased only)
    lr: float = 1e-4  # TTT_LORA_LR
    alpha: float = 144.0  # TTT_LORA_ALPHA
    batch_docs: int = 64  # TTT_BATCH_SIZE
    weight_decay: float = 0.5  # TTT_WEIGHT_DECAY
    beta1: float = 0.0  # TTT_BETA1
    beta2: float = 0.99  # TTT_BETA2
    k_lora: bool = True  # TTT_K_LORA
    mlp_lora: bool = True  # TTT_MLP_LORA
    o_lora: bool = True  # TTT_O_LORA
    steps: int = 1  # TTT_STEPS: AdamW steps per chunk
    time_budget_s: float = 0.0  # TTT_TIME_BUDGET_S
    prefix_docs: int = 0  # PHASED_TTT_PREFIX_DOCS; 0 = no global phases (TTT=lora)
    num_phases: int = 1  # PHASED_TTT_NUM_PHASES
    global_lr: float = 1e-4  # GLOBAL_TTT_LR
    global_momentum: float = 0.9  # GLOBAL_TTT_MOMENTUM
    global_epochs: int = 1  # GLOBAL_TTT_EPOCHS
    global_batch_seqs: int = 32  # GLOBAL_TTT_BATCH_SEQS
    global_grad_clip: float = 1.0  # GLOBAL_TTT_GRAD_CLIP
    name: str = "ttt_lora"
    record: bool = False
    train_before_score: bool = False  # ONLY for the legality test: the illegal order it must catch
    reset: bool = True  # ONLY for the reset test: False carries one batch's adapters into the next

    def __call__(self, model: torch.nn.Module, tokens: Any, luts: Any, device: Any = "cpu", rank: int = 0,
                 world_size: int = 1, compile: bool = False, progress: bool = False, amp: bool | None = None,
                 **_: Any) -> dict[str, Any]:
        _check_dist(world_size, f"TTT ({self.name})")
        if self.lora_rank > 0 and not 1 <= self.chunk_tokens <= self.seq_len:
            raise GolfError(f"TTT_CHUNK_SIZE={self.chunk_tokens} must be between 1 and the eval window "
                            f"EVAL_SEQ_LEN={self.seq_len}")
        device = torch.device(device)
        stream = _as_long_tensor(tokens)
        luts = luts.to(device) if hasattr(luts, "to") else luts
        if hasattr(luts, "check_stream"):
            luts.check_stream(stream.numel())
        starts, ns = find_docs(stream)
        batches = doc_batches(ns, self.batch_docs)
        phase_ends = self._phase_ends(batches)
        model = copy.deepcopy(model).to(device).eval()  # global phases change it; the caller's stays as loaded
        for p in model.parameters():
            p.requires_grad_(False)  # adapters only: no gradient for the base weights
        tally = _Tally(self.seq_len, stream.numel() - 1, device, self.record)
        clock = _Clock(self.time_budget_s)
        info = {"adapted_steps": 0, "global_steps": 0, "phases_done": 0, "windows": 0, "docs": 0}
        adapters = None
        for bi, batch in enumerate(batches):
            if bi % world_size == rank:
                if not self.reset and adapters is not None and len(batch) != adapters.bsz:
                    adapters = None
                adapters = self._run_batch(model, stream, luts, starts[batch], ns[batch], device, amp, tally,
                                           clock, info, None if self.reset else adapters)
                info["docs"] += len(batch)
            if phase_ends and bi == phase_ends[0]:
                phase_ends.pop(0)
                if _agree(clock.left(), world_size, device):
                    done = np.concatenate(batches[:bi + 1])  # every document scored so far, on any rank
                    info["global_steps"] += self._global_sgd(model, stream, starts[done], ns[done], device, rank,
                                                             world_size, amp)
                    info["phases_done"] += 1
                else:
                    phase_ends = []  # budget spent: no more phases
        counts = _all_reduce(torch.tensor([float(info[k]) for k in ("adapted_steps", "windows", "docs")],
                                          dtype=torch.float64, device=device), world_size)
        info.update(adapted_steps=int(counts[0]), windows=int(counts[1]), docs=int(counts[2]))
        res = tally.result(world_size, info["windows"], clock.seconds(), self.seq_len, self.stride)
        res["ttt"] = {"strategy": self.name, "chunk_tokens": self.chunk_tokens, "lora_rank": self.lora_rank,
                      "lr": self.lr, "batch_docs": self.batch_docs, "steps": self.steps, **info,
                      "prefix_docs": self.prefix_docs, "num_phases": self.num_phases,
                      "time_budget_s": self.time_budget_s, "seconds": res["seconds"], "budget_spent": not clock.left()}
        return res

    def _phase_ends(self, batches: list[np.ndarray]) -> list[int]:
        """Batch indices after which a global phase runs: phase p ends at the first batch end with at
        least prefix * (p + 1) / phases documents scored (cumulative, as the record). A phase after
        the last batch would adapt for nothing."""
        if self.prefix_docs <= 0 or not batches:
            return []
        cum = np.cumsum([len(b) for b in batches])
        prefix = min(self.prefix_docs, int(cum[-1]))
        ends: list[int] = []
        for p in range(self.num_phases):
            bound = prefix * (p + 1) // self.num_phases
            bi = int(np.searchsorted(cum, bound)) if bound > 0 else -1
            if bi >= 0 and bi < len(batches) - 1 and (not ends or bi > ends[-1]):
                ends.append(bi)
        return ends

    def _run_batch(self, model, stream, luts, ds, dn, device, amp, tally, clock, info, adapters):
        """Score (and adapt on) one batch of documents, chunk by chunk."""
        B, L = len(ds), self.seq_len
        adapt = self.lora_rank > 0 and clock.left()
        first, step = (self.chunk_tokens, self.chunk_tokens) if adapt else (L, self.stride)
        plans = [doc_chunks(int(n), first, step) for n in dn]
        opt = head = None
        if adapt:
            if adapters is None:
                adapters = DocAdapters(model, B, self.lora_rank, self.alpha, self.k_lora, self.o_lora,
                                       self.mlp_lora).to(device)
            opt = torch.optim.AdamW(adapters.parameters(), lr=self.lr, betas=(self.beta1, self.beta2), eps=1e-10,
                                    weight_decay=self.weight_decay)
            head = adapters.head_fn(model)
        for ci in range(max(len(p[0]) for p in plans)):
            rows = [b for b in range(B) if ci < len(plans[b][0])]
            a = np.array([plans[b][0][ci] for b in rows])
            e = np.array([plans[b][1][ci] for b in rows])
            w = np.maximum(e - L, 0)  # window [w, e) inside the document, at most L long
            s = ds[rows]
            width = int((e - w).max())
            col = np.arange(width)[None]
            idx = torch.as_tensor(np.where(col < (e - w)[:, None], (s + w)[:, None] + col, (s + w)[:, None]))
            x, y = stream[idx].to(device), stream[idx + 1].to(device)  # padded at the end: causal, never read
            off = torch.as_tensor(a - w, device=device)
            clen = torch.as_tensor(e - a, device=device)
            cmax = int(clen.max())
            cpos = torch.arange(cmax, device=device)
            mask = cpos[None] < clen[:, None]
            more = torch.as_tensor([ci < len(plans[b][0]) - 1 for b in rows], device=device)
            train = adapt and bool(more.any()) and clock.left()  # the last chunk of a document trains nothing
            if adapters is not None:
                adapters.set_rows(None if len(rows) == B else torch.as_tensor(rows, device=device))

            def fwd():
                return self._chunk_nll(model, x, y, off, cmax, adapters if adapt else None, head, device, amp)

            tmask = mask & more[:, None]
            if train and self.train_before_score:  # ILLEGAL (the test's cheat): adapt, then score
                info["adapted_steps"] += self._steps(fwd, opt, tmask, clen, None)
            with torch.set_grad_enabled(train and not self.train_before_score):
                nll, pos = fwd()
            with torch.no_grad():
                xg, yg = x.gather(1, pos), y.gather(1, pos)
                targets = torch.as_tensor(s + a, device=device)[:, None] + cpos[None]
                # a byte sidecar is read by the targets' stream positions; padding (masked) stays in range
                tgt_pos = torch.where(mask, targets + 1, torch.ones_like(targets))
                tally.add(off[:, None] + cpos[None], nll, token_bytes(xg, yg, luts, tgt_pos), mask, targets)
            tally.step([(int(s[i] + a[i]), int(s[i] + e[i])) for i in range(len(rows))] if self.record else [])
            info["windows"] += len(rows)
            if train and not self.train_before_score:
                info["adapted_steps"] += self._steps(fwd, opt, tmask, clen, nll)
        return adapters

    @staticmethod
    def _chunk_nll(model, x, y, off, cmax, adapters, head, device, amp):
        """Per-target loss [b, cmax] of each row's chunk (window positions off .. off + cmax), and
        those positions; the LM head runs on the chunk's positions only."""
        pos = (off[:, None] + torch.arange(cmax, device=device)[None]).clamp(max=x.shape[1] - 1)
        with _amp(device, amp), (adapters.attached(model) if adapters is not None else nullcontext()):
            h = model.hidden(x)
            hs = h.gather(1, pos[..., None].expand(-1, -1, h.shape[-1]))
            logits = model.logits_from_hidden(hs, head)
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.gather(1, pos).reshape(-1),
                              reduction="none")
        return nll.view(x.shape[0], cmax), pos

    def _steps(self, fwd, opt, tmask, clen, nll) -> int:
        """TTT_STEPS AdamW steps on each row's chunk mean (rows summed: their gradients never mix);
        the first may reuse the scoring forward's graph."""
        for k in range(self.steps):
            if nll is None or k > 0:
                nll = fwd()[0]
            loss = (torch.where(tmask, nll, 0.0).sum(1) / clen).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return self.steps

    def _global_sgd(self, model, stream, ds, dn, device, rank, world_size, amp) -> int:
        """Phased global SGD (PR #1626) on the scored documents `ds`: every target of theirs with its
        input, in EVAL_SEQ_LEN sequences (a tail shorter than one is left out), GLOBAL_TTT_BATCH_SEQS
        a step shared out over the ranks, cosine LR from GLOBAL_TTT_LR to 0 over the phase."""
        L, G = self.seq_len, self.global_batch_seqs
        xi = np.concatenate([np.arange(s, s + n) for s, n in zip(ds, dn)]) if len(ds) else np.zeros(0, np.int64)
        nseq = len(xi) // L
        if nseq == 0 or self.global_epochs <= 0:
            return 0
        xi = torch.as_tensor(xi[: nseq * L].reshape(nseq, L))
        params = [p for p in model.parameters() if p.is_floating_point()]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.SGD(params, lr=self.global_lr, momentum=self.global_momentum)
        total, t = -(-nseq // G) * self.global_epochs, 0
        for _ in range(self.global_epochs):
            for b0 in range(0, nseq, G):
                b1 = min(b0 + G, nseq)
                for g in opt.param_groups:
                    g["lr"] = self.global_lr * 0.5 * (1.0 + math.cos(math.pi * t / max(total - 1, 1)))
                mine = _rank_slice(b1 - b0, rank, world_size)
                opt.zero_grad(set_to_none=True)
                if mine.stop > mine.start:
                    ii = xi[b0 + mine.start:b0 + mine.stop]
                    x, y = stream[ii].to(device), stream[ii + 1].to(device)
                    with _amp(device, amp):
                        nll = model(x, y, reduction="none")
                    (nll.float().sum() / float((b1 - b0) * L)).backward()
                _sync_grads(params, world_size)
                if self.global_grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, self.global_grad_clip)
                opt.step()
                t += 1
        for p in params:
            p.requires_grad_(False)
        return t


# ---------------------------------------------------------------------------------------------
# settings -> strategy


def strategy_for(h: Any, seq_len: int, stride: int, batch_windows: int):
    """The evaluation strategy a config asks for (TTT=sgd | lora | phased), or None for the plain
    sliding window. TTT itself is checked with the other settings (config.finalize); the window
    checks run here too, for a window that comes from an artifact (eval_bpb.py --ttt)."""
    kind = getattr(h, "ttt", "")
    if not kind:
        return None
    check_ttt(h, seq_len)
    chunk = int(h.ttt_chunk_size) or TTT_CHUNK_DEFAULT[kind]
    common = dict(steps=int(h.ttt_steps), time_budget_s=float(h.ttt_time_budget_s))
    if kind == "sgd":
        return ScoreFirstSGD(seq_len, stride, batch_windows, chunk_tokens=chunk, lr=float(h.global_ttt_lr),
                             momentum=float(h.ttt_momentum), **common)
    phased = kind == "phased"
    return PerDocTTT(seq_len, stride, chunk_tokens=chunk, lora_rank=int(h.ttt_lora_rank), lr=float(h.ttt_lora_lr),
                     alpha=float(h.ttt_lora_alpha), batch_docs=int(h.ttt_batch_size),
                     weight_decay=float(h.ttt_weight_decay), beta1=float(h.ttt_beta1), beta2=float(h.ttt_beta2),
                     k_lora=bool(h.ttt_k_lora), mlp_lora=bool(h.ttt_mlp_lora), o_lora=bool(h.ttt_o_lora),
                     prefix_docs=int(h.phased_ttt_prefix_docs) if phased else 0,
                     num_phases=int(h.phased_ttt_num_phases), global_lr=float(h.global_ttt_lr),
                     global_momentum=float(h.global_ttt_momentum), global_epochs=int(h.global_ttt_epochs),
                     global_batch_seqs=int(h.global_ttt_batch_seqs), global_grad_clip=float(h.global_ttt_grad_clip),
                     name=f"ttt_{kind}", **common)


@dataclass
class FromSettings:
    """A strategy named by settings, built once golf.eval.score.score knows the artifact's window
    (eval_bpb.py --ttt: EVAL_SEQ_LEN / EVAL_STRIDE come from the artifact unless given)."""
    h: Any

    def resolve(self, seq_len: int, stride: int, batch_windows: int):
        return strategy_for(self.h, seq_len, stride, batch_windows)
