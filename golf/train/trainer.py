"""The training loop: `train(h) -> summary dict`.

One process per device (torchrun sets RANK/WORLD_SIZE/LOCAL_RANK): NCCL on CUDA, gloo on CPU.
CUDA runs use bf16 autocast and torch.compile; CPU runs fp32, uncompiled. Order of events:

  setup -> data, tokenizer, model -> size pre-flight -> optimizers, EMA, loader
  -> compile warm-up steps (both QAT variants; with depth recurrence each looped and plain), then
     weights/optimizers/loader restored, so the warm-up costs no budget and leaves no trace (the
     challenge baseline does the same)
  -> [resume from ckpt.pt] -> loop: schedule, step, EMA, log, val, checkpoint, stop checks
  -> export weights (EMA), final val, final.pt + metrics.json

The wall clock counts training steps only (val pauses it), as the challenge's script does. Under
DDP every rank takes its schedule from the same all-reduced clock so the weights never diverge.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import re
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from golf.compress.codecs import check_compressor
from golf.compress.codesize import in_bundle
from golf.compress.quant import clip_plan, estimate_artifact_bytes, quant_plan
from golf.core.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from golf.core.config import BYTES_CAP
from golf.core.dist import Dist, setup, teardown
from golf.core.utils import (GolfError, RunLog, atomic_path, atomic_write_json, compile_stats, device_description,
                             git_commit, now_stamp, sweep_stale)
from golf.data.bpb import bits_per_byte, data_luts, token_bytes
from golf.data.folder import load_data_tokenizer, load_split
from golf.data.loader import TokenLoader
from golf.model.gpt import GPT, layer_mixers
from golf.train import schedule
from golf.train.optim import apply_schedule, build_optimizers

PREFLIGHT_MARGIN = 0.03  # warn when the estimate is this close to the cap (its measured error: golf.compress.quant)
# per-rank tokens in one micro-batch when MICRO_BATCH_SEQS/GRAD_ACCUM_STEPS are not given (at
# most 48 x 2048 record-preset sequences: they fit an 80 GB H100); on CPU small micro-batches keep
# memory and latency low
MICRO_TOKENS = {"cuda": 98304, "cpu": 8192}


# ---------------------------------------------------------------------------------------------
# setup


def setup_distributed(h) -> Dist:
    if h.device not in ("auto", "cpu", "cuda"):
        raise GolfError(f"DEVICE={h.device!r}: use auto, cpu or cuda")
    on_cpu = h.device == "cpu" or (h.device == "auto" and not torch.cuda.is_available())
    if on_cpu and str(h.flex_attention).lower() == "on" and ("swa" in layer_mixers(h.model_config())
                                                             or h.doc_attention):
        # torch's flex_attention has no CPU backward (2.11 and 2.13 alike): fail before compiling
        raise GolfError("FLEX_ATTENTION=on trains only on CUDA (flex_attention has no CPU backward); "
                        "use FLEX_ATTENTION=auto or off on CPU")
    return setup(h.device, "DEVICE", tf32=True)


def batch_layout(h, world_size: int, device_type: str) -> tuple[int, int]:
    """(sequences per micro-batch per rank, grad-accumulation steps) for TRAIN_BATCH_TOKENS."""
    T = h.train_seq_len
    if h.train_batch_tokens % (world_size * T):
        raise GolfError(f"TRAIN_BATCH_TOKENS={h.train_batch_tokens} is not a multiple of "
                        f"{world_size} processes x TRAIN_SEQ_LEN={T}; pick a multiple of {world_size * T}")
    seqs = h.train_batch_tokens // (world_size * T)
    if h.grad_accum_steps > 0:
        if seqs % h.grad_accum_steps:
            raise GolfError(f"GRAD_ACCUM_STEPS={h.grad_accum_steps} does not divide the {seqs} sequences per "
                            f"process and step; pick a divisor of {seqs}")
        return seqs // h.grad_accum_steps, h.grad_accum_steps
    micro = h.micro_batch_seqs or max(1, MICRO_TOKENS[device_type] // T)
    micro = max(1, min(micro, seqs))
    while seqs % micro:  # largest micro-batch <= the cap that divides the per-rank batch
        micro -= 1
    return micro, seqs // micro


def build_model(h, device: torch.device) -> nn.Module:
    return GPT(h.model_config()).to(device)


def set_qat(model: nn.Module, plan: dict[str, int] | int) -> int:
    """Turn late QAT on (plan from golf.compress.quant.quant_plan) or off (0) on every CastedLinear."""
    return int(model.set_qat_bits(plan))


def preflight(model: nn.Module, h, log: RunLog) -> dict[str, Any]:
    """Refuse a config whose artifact cannot fit the 16,000,000-byte cap (unless ALLOW_OVERSIZE=1), or
    whose exporter cannot run here (a compressor that is not installed), before any training."""
    check_compressor(h.compressor)
    est = estimate_artifact_bytes(model, h)
    lines = [f"  {g:<12} params:{e['params']:>11,} bits:{e['bits']:>2} bytes:{e['bytes']:>11,}"
             for g, e in sorted(est["groups"].items())]
    lines += [f"  {'header':<12} bytes:{est['header']:,}", f"  {'code':<12} bytes:{est['code']:,}"]
    total, cap = int(est["total"]), int(est.get("cap", BYTES_CAP))
    log.kv(preflight_bytes=total, cap=cap, params=int(est["params"]), bits_per_param=float(est["bits_per_param"]))
    for line in lines:
        log.write("preflight" + line)
    if total > cap:
        msg = (f"size pre-flight: this config's artifact is estimated at {total:,} bytes, over the "
               f"{cap:,}-byte cap:\n" + "\n".join(lines) +
               "\nshrink the model (NUM_LAYERS, MODEL_DIM, MLP_MULT, BIGRAM_VOCAB_SIZE) or lower QUANT_*_BITS; "
               "or set ALLOW_OVERSIZE=1 to train anyway")
        if not h.allow_oversize:
            raise GolfError(msg)
        log.write("warning: " + msg.replace("\n", "\n# "))
    elif total > cap * (1 - PREFLIGHT_MARGIN):
        log.write(f"warning: size pre-flight: the estimate, {total:,} bytes, is within {PREFLIGHT_MARGIN:.0%} of "
                  f"the cap, and the estimate is not exact (it ran about 2% low on record-preset weights after "
                  f"277 steps); quantize.py measures the real size after training. Leave more room, e.g. "
                  f"lower BIGRAM_VOCAB_SIZE or a QUANT_*_BITS")
    return est


class EMA:
    """Exponential moving average of the parameters (fp32), exported instead of the raw weights.
    The decay comes from golf.train.schedule (a fraction of the run), not a fixed constant."""

    def __init__(self, model: nn.Module):
        self.names = [n for n, _ in model.named_parameters()]
        self.params = [p for _, p in model.named_parameters()]
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self, decay: float) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for p, s in zip(self.params, self.shadow):
            p.copy_(s.to(p.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.shadow))

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for i, n in enumerate(self.names):
            self.shadow[i].copy_(state[n])


# ---------------------------------------------------------------------------------------------
# the step and val


def train_step(fwd: nn.Module, optimizers, params, batches: Iterator, accum: int, amp, clip: float,
               ddp: bool) -> torch.Tensor:
    """One optimizer step over `accum` micro-batches; returns the mean loss (a detached tensor)."""
    total = None
    for i in range(accum):
        x, y = next(batches)
        if ddp:  # all-reduce gradients only on the last micro-batch (as the challenge baseline)
            fwd.require_backward_grad_sync = i == accum - 1
        with amp():
            loss = fwd(x, y)
        (loss / accum).backward()
        total = loss.detach() if total is None else total + loss.detach()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(params, clip)
    for opt in optimizers:
        opt.step()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    return total / accum


@torch.no_grad()
def evaluate_val(model: nn.Module, val: np.ndarray, luts, seq_len: int, batch_seqs: int, d: Dist,
                 amp) -> tuple[float, float]:
    """Training-time val: non-overlapping windows over the val prefix, tokenizer-agnostic BPB
    (golf.data.bpb). Windows are split across ranks, sums all-reduced. Returns (val_loss, val_bpb)."""
    n_windows = (len(val) - 1) // seq_len
    if n_windows < 1:
        raise GolfError(f"the val split has {len(val)} tokens, fewer than one TRAIN_SEQ_LEN={seq_len} window; "
                        "use more val data or a shorter TRAIN_SEQ_LEN")
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=d.device)  # loss nats, tokens, bytes
    mine = list(range(d.rank, n_windows, d.world_size))
    for i in range(0, len(mine), batch_seqs):
        idx = np.asarray(mine[i:i + batch_seqs], dtype=np.int64)
        offs = (idx * seq_len)[:, None] + np.arange(seq_len + 1)[None]
        chunk = torch.from_numpy(val[offs].astype(np.int64)).to(d.device, non_blocking=True)
        x, y = chunk[:, :-1], chunk[:, 1:]
        with amp():
            ce = model(x, y, reduction="none").float()
        sums[0] += ce.sum().double()
        sums[1] += ce.numel()
        tgt_pos = torch.from_numpy(offs[:, 1:]).to(d.device)  # stream positions: a byte sidecar's index
        sums[2] += token_bytes(x, y, luts, tgt_pos).sum().double()
    if d.on:
        dist.all_reduce(sums)
    model.train(was_training)
    loss_sum, toks, nbytes = sums.tolist()
    return loss_sum / toks, bits_per_byte(loss_sum, int(toks), int(nbytes))


# ---------------------------------------------------------------------------------------------
# run folder, resume, signals


_AUTO_ID = re.compile(r"^(?P<preset>.+)_\d{8}_\d{6}_s(?P<seed>-?\d+)$")
# settings that may differ between a run and its resumption (they do not change the trajectory
# on CPU, or only the stopping point)
_RESUME_FREE = {"run_id", "resume", "iterations", "max_wallclock_seconds", "checkpoint_every", "checkpoint_minutes",
                "log_every",
                "val_every", "allow_oversize", "device", "compile", "compile_backend", "out_dir"}


def resolve_run_dir(h) -> Path:
    """runs/<RUN_ID>. With RESUME=1 and no RUN_ID given (an auto-generated id with no folder yet), the
    most recent run under OUT_DIR with a ckpt.pt for the same preset and seed."""
    out = Path(h.out_dir)
    run_dir = out / h.run_id
    if h.resume and not (run_dir / "ckpt.pt").exists() and _AUTO_ID.match(h.run_id) and not run_dir.exists():
        cands = sorted(out.glob(f"{h.preset}_*_s{h.seed}/ckpt.pt"), key=lambda p: p.stat().st_mtime)
        if not cands:
            raise GolfError(f"RESUME=1 but no checkpoint under {out}/ for preset {h.preset} seed {h.seed}; "
                            "pass RUN_ID=<id> of the run to continue")
        run_dir = cands[-1].parent
        h.run_id = run_dir.name
    return run_dir


class StopFlag:
    """SIGTERM/SIGINT -> finish the current step, write ckpt.pt, exit. A second signal stops at once."""

    def __init__(self):
        self.signum = 0
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.signum:  # second signal: give up on the clean stop
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading_main():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# ---------------------------------------------------------------------------------------------
# train


def train(h) -> dict[str, Any]:
    """The training stage alone (its own process group): runs/<RUN_ID>/final.pt and the summary."""
    t_start = time.time()
    d = setup_distributed(h)
    try:
        return run_training(h, d, t_start)
    finally:
        teardown(d)


@dataclass
class Progress:
    """Where a run stands: what a checkpoint saves and a resume restores."""

    step: int = 0
    elapsed: float = 0.0  # training seconds (warm-up and validation excluded)
    qat_on: bool = False
    history: list = field(default_factory=list)
    last_ckpt: Path | None = None


def budget_left(h, prog: Progress) -> bool:
    if prog.step >= h.iterations:
        return False
    return not (h.max_wallclock_seconds > 0 and prog.elapsed >= h.max_wallclock_seconds)


def warm_up(h, model, optimizers, fwd, params, stream, accum, amp, qat_plan, d: Dist, loader, log,
            warm_loop: bool = False) -> float | None:
    """Compile warm-up steps before the clock starts, then restore weights, optimizers, RNG and the
    loader, so the run is the same as without them. Returns the last warm step's seconds.
    warm_loop (depth recurrence, compiled): each warm step runs looped, then plain, so both graphs exist
    before the clock and the last step timed is the plain one the run starts with."""
    if h.compile_warmup_steps <= 0:
        return None
    init = (copy.deepcopy(model.state_dict()), [copy.deepcopy(o.state_dict()) for o in optimizers], rng_state())
    n_warm, warm_step_s = h.compile_warmup_steps, None
    for i in range(n_warm):
        # compile the QAT variant too (second half), so the switch later costs no recompile
        set_qat(model, qat_plan if (qat_plan and i >= max(1, n_warm // 2)) else 0)
        for frac in ((1.0, 0.0) if warm_loop else (None,)):
            if frac is not None:
                model.set_training_fraction(frac)
            t = time.perf_counter()
            train_step(fwd, optimizers, params, stream, accum, amp, h.grad_clip_norm, d.on)
            if d.device.type == "cuda":
                torch.cuda.synchronize()
            warm_step_s = time.perf_counter() - t
    set_qat(model, 0)
    model.load_state_dict(init[0])
    for o, s in zip(optimizers, init[1]):
        o.load_state_dict(s)
    set_rng_state(init[2])
    loader.seek(0)
    log.kv(warmup_steps=n_warm, warmup_last_step_ms=1000 * warm_step_s)
    return warm_step_s


def resume(h, ckpt_path: Path, d: Dist, log, model, optimizers, ema, loader, plan) -> Progress:
    """Restore everything ckpt.pt holds; refuse another architecture, warn on changed settings."""
    ck = load_checkpoint(ckpt_path, map_location=d.device)
    now = asdict(h.model_config())
    if ck["model_config"] != now:
        diff = {k: (ck["model_config"].get(k), v) for k, v in now.items() if ck["model_config"].get(k) != v}
        raise GolfError(f"{ckpt_path} was trained with a different architecture {diff} (checkpoint, now); "
                        "resume with the run's own settings")
    changed = {k: v for k, v in h.to_dict().items() if k not in _RESUME_FREE and ck["config"].get(k) != v}
    if changed:
        log.write(f"warning: resuming with changed settings {json.dumps(changed, default=str)}")
    model.load_state_dict(ck["model"])
    for o, s in zip(optimizers, ck["optimizers"]):
        o.load_state_dict(s)
    if ema is not None and ck.get("ema") is not None:
        ema.load_state_dict(ck["ema"])
    loader.load_state_dict(ck["loader"])
    set_rng_state(ck["rng"])
    prog = Progress(ck["step"], ck["elapsed"], ck["qat_on"], ck["history"], ckpt_path)
    if prog.qat_on:
        set_qat(model, plan)
    log.kv(resumed_from_step=prog.step, elapsed_s=prog.elapsed)
    return prog


def save_run(ckpt_path: Path, h, d: Dist, log, model, optimizers, ema, loader, prog: Progress, reason: str) -> Path:
    """ckpt.pt: everything resume() restores (rank 0 writes, every rank waits)."""
    state = {"model": model.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
             "ema": ema.state_dict() if ema is not None else None, "loader": loader.state_dict(),
             "rng": rng_state(), "step": prog.step, "elapsed": prog.elapsed, "qat_on": prog.qat_on,
             "history": prog.history, "config": h.to_dict(), "model_config": asdict(h.model_config()),
             "run_id": h.run_id}
    if d.master:
        save_checkpoint(ckpt_path, state)
        log.kv(checkpoint=str(ckpt_path), step=prog.step, reason=reason)
    if d.on:
        dist.barrier()
    return ckpt_path


def submission_log(h) -> Path | None:
    """Run as a submission's single-file train_gpt.py, the log also goes where the challenge's
    scripts write theirs: logs/<RUN_ID>.txt in the working folder."""
    return Path("logs") / f"{h.run_id}.txt" if in_bundle() else None


def run_training(h, d: Dist, t_start: float) -> dict[str, Any]:
    """Train on an already set-up device / process group (golf.train.run keeps it for scoring)."""

    if d.on:  # every rank must use rank 0's run id (auto ids embed a timestamp)
        obj = [h.run_id]
        dist.broadcast_object_list(obj, src=0)
        h.run_id = obj[0]
    run_dir = resolve_run_dir(h)
    ckpt_path = run_dir / "ckpt.pt"
    if h.resume and not ckpt_path.exists():
        raise GolfError(f"RESUME=1 but {ckpt_path} does not exist; pass RUN_ID=<id> of a run that wrote a checkpoint")
    if not h.resume and (run_dir / "final.pt").exists():
        raise GolfError(f"{run_dir} already holds a finished run; choose another RUN_ID (runs are never overwritten)")
    if not h.resume and ckpt_path.exists():
        raise GolfError(f"{run_dir} holds an interrupted run ({ckpt_path}); continue it with RESUME=1 "
                        f"RUN_ID={h.run_id} or choose another RUN_ID")
    if d.master:
        sweep_stale(run_dir)  # ckpt.pt / final.pt / model.ptz temporaries of a killed earlier attempt
    stale_log = None
    if not h.resume and (run_dir / "train.log").exists() and d.master:
        # a run killed before its first checkpoint: keep its log aside rather than append a second run to it
        stale_log = run_dir / f"train.log.killed-{now_stamp()}"
        (run_dir / "train.log").rename(stale_log)
    log = RunLog(run_dir / "train.log", enabled=d.master, mirror=submission_log(h))
    log.header(h.to_dict())
    if stale_log is not None:
        log.write(f"# the log of an earlier attempt with this RUN_ID (stopped before any checkpoint) is {stale_log.name}")
    is_cuda = d.device.type == "cuda"
    use_compile = h.compile == "on" or (h.compile == "auto" and is_cuda)
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if is_cuda else contextlib.nullcontext
    log.kv(device=str(d.device), world_size=d.world_size, compile=use_compile, amp="bf16" if is_cuda else "fp32",
           run_dir=str(run_dir))

    # --- data ----------------------------------------------------------------------------------
    tokenizer = load_data_tokenizer(h.data_path, h.tokenizer_path or None)
    if tokenizer.vocab_size > h.vocab_size:
        raise GolfError(f"tokenizer {h.tokenizer_path or h.data_path} has {tokenizer.vocab_size} tokens but "
                        f"VOCAB_SIZE={h.vocab_size}; set VOCAB_SIZE={tokenizer.vocab_size}")
    luts = data_luts(h.data_path, tokenizer, d.device, h.val_max_tokens)  # + the val byte sidecar, if any
    val = load_split(h.data_path, "val", h.vocab_size, max_tokens=h.val_max_tokens)  # uint16, memory-mapped
    micro_seqs, accum = batch_layout(h, d.world_size, d.device.type)
    loader = TokenLoader.from_data_path(h.data_path, h.vocab_size, seq_len=h.train_seq_len,
                                        local_batch_seqs=micro_seqs, rank=d.rank, world_size=d.world_size,
                                        seed=h.seed, doc_packing=bool(h.doc_packing))
    # tokens_per_step (and tok_s below) count row positions, padding included (DOC_PACKING=1): the
    # compute per step; doc_stats' padded_share gives the part of it that trains nothing
    log.kv(train_tokens=loader.total, val_tokens=len(val), micro_batch_seqs=micro_seqs, grad_accum_steps=accum,
           tokens_per_step=h.train_batch_tokens)
    if h.doc_attention:  # attention within documents: how many rows it changes (golf issue 23)
        log.kv(doc_attention=1, doc_packing=int(h.doc_packing), **loader.doc_stats())

    # --- model, pre-flight, optimizers ---------------------------------------------------------
    torch.manual_seed(h.seed)
    np.random.seed(h.seed)
    model = build_model(h, d.device)
    n_params = sum(p.numel() for p in model.parameters())
    log.kv(params=n_params)
    parts = {f"params_{k}": v for k, v in model.part_params().items() if v}  # issue-17 switches that are on
    if parts:
        log.kv(**parts, run_order=",".join(map(str, model.run_order())))
    loops = model.loop_order is not None  # depth recurrence: plain until ENABLE_LOOPING_AT, then looped
    est = preflight(model, h, log)
    optimizers = build_optimizers(model, h)
    for opt in optimizers:
        for g in opt.param_groups:
            log.kv(optim=type(opt).__name__, group=g["name"], tensors=len(g["params"]), lr=g["base_lr"],
                   weight_decay=g.get("weight_decay", 0.0))
    params = [p for p in model.parameters() if p.requires_grad]
    plan = quant_plan(model, h) if h.qat else {}
    model.set_qat_bits(0, clip_plan(model, h))  # QAT, when it starts, uses the exporter's clip rules too
    fwd: nn.Module = torch.compile(model, dynamic=False, backend=h.compile_backend) if use_compile else model
    if d.on:
        from torch.nn.parallel import DistributedDataParallel as DDP

        fwd = DDP(fwd, device_ids=[d.local_rank] if is_cuda else None, broadcast_buffers=False)
    model.train()

    stream = iter(functools.partial(loader.next_batch, d.device), None)  # endless: next_batch never returns None

    # --- warm-up (compile) steps, then restore everything ---------------------------------------
    graphs0 = compile_stats()  # process-wide counters: report this run's own graphs as differences
    warm_step_s = warm_up(h, model, optimizers, fwd, params, stream, accum, amp, plan if use_compile else {}, d, loader,
                          log, warm_loop=loops and use_compile)
    graphs_warm = compile_stats() if use_compile else {}
    if graphs_warm:
        log.kv(compile_graphs=graphs_warm["graphs"] - graphs0.get("graphs", 0),
               compile_graph_breaks=graphs_warm["graph_breaks"] - graphs0.get("graph_breaks", 0))
    ema = EMA(model) if h.ema else None

    # --- resume ----------------------------------------------------------------------------------
    prog = resume(h, ckpt_path, d, log, model, optimizers, ema, loader, plan) if h.resume else Progress()

    ckpt = functools.partial(save_run, ckpt_path, h, d, log, model, optimizers, ema, loader, prog)  # ckpt(reason)
    # --- the loop ----------------------------------------------------------------------------------
    bar = None
    if d.master and sys.stderr.isatty():
        from tqdm import tqdm

        bar = (tqdm(total=round(h.max_wallclock_seconds), unit="s", desc="train", leave=False)
               if h.max_wallclock_seconds > 0 else tqdm(total=h.iterations, unit="step", desc="train", leave=False))
        bar.n = round(prog.elapsed) if h.max_wallclock_seconds > 0 else prog.step

    def emit(**kv):
        with (bar.external_write_mode() if bar is not None else contextlib.nullcontext()):
            log.kv(**kv)

    status, val_loss, val_bpb = "finished", None, None
    interval_t, interval_steps, last_loss = 0.0, 0, float("nan")
    last_ckpt_wall = time.time()  # CHECKPOINT_MINUTES: a kill -9 loses at most that much work
    if loops:  # plain until ENABLE_LOOPING_AT (a resumed run may already be past it)
        model.set_training_fraction(schedule.progress(prog.step, prog.elapsed, h))
        log.kv(step=prog.step, looping="on" if model.looping else "off", enable_looping_at=h.enable_looping_at)
    with StopFlag() as stop:
        t0 = time.perf_counter()
        while budget_left(h, prog):
            sched = schedule.at(prog.step, prog.elapsed, h, warm_step_s)
            if not prog.qat_on and plan and schedule.qat_should_start(sched.lr_scale, sched.progress, h):
                prog.qat_on = True
                n = set_qat(model, plan)
                emit(step=prog.step, qat="on", layers=n, lr_scale=sched.lr_scale)
            if loops and not model.looping and model.set_training_fraction(sched.progress):
                emit(step=prog.step, looping="on", progress=sched.progress,
                     run_order=",".join(map(str, model.run_order())))
            apply_schedule(optimizers, sched.lr_scale, sched.muon_momentum)
            t_step = time.perf_counter()
            loss = train_step(fwd, optimizers, params, stream, accum, amp, h.grad_clip_norm, d.on)
            if ema is not None:
                ema.update(sched.ema_decay)
            prog.step += 1
            # one sync per prog.step: the loss for the NaN check, the clock, and stop requests
            if is_cuda:
                torch.cuda.synchronize()
            now = time.perf_counter()
            elapsed_local = prog.elapsed + (now - t0)
            t0 = now
            since_ckpt = time.time() - last_ckpt_wall
            if d.on:
                red = torch.tensor([loss.item(), 0.0], dtype=torch.float64, device=d.device)
                mx = torch.tensor([elapsed_local, float(stop.signum), since_ckpt], dtype=torch.float64, device=d.device)
                dist.all_reduce(red)
                dist.all_reduce(mx, op=dist.ReduceOp.MAX)
                last_loss = red[0].item() / d.world_size
                prog.elapsed, stop_req, since_ckpt = mx[0].item(), int(mx[1].item()), mx[2].item()
            else:
                last_loss, prog.elapsed, stop_req = loss.item(), elapsed_local, stop.signum
            interval_t += now - t_step
            interval_steps += 1
            if bar is not None:
                bar.update((round(prog.elapsed) - bar.n) if h.max_wallclock_seconds > 0 else 1)
            if not math.isfinite(last_loss):
                where = str(prog.last_ckpt) if prog.last_ckpt else "none (CHECKPOINT_MINUTES / CHECKPOINT_EVERY keep periodic ones)"
                log.kv(step=prog.step, train_loss=last_loss, status="diverged")
                if d.master:
                    _write_metrics(run_dir, h, d, prog.history, {"status": "diverged", "steps": prog.step})
                again = (f", or resume from that checkpoint with RESUME=1 RUN_ID={h.run_id}" if prog.last_ckpt
                         else "; no checkpoint was written, so start again")
                raise GolfError(f"train loss is {last_loss} at step {prog.step}: the run diverged and was stopped. "
                                f"Last good checkpoint: {where}. Lower MATRIX_LR/EMBED_LR/SCALAR_LR or "
                                f"GRAD_CLIP_NORM{again}")
            if (h.log_every > 0 and prog.step % h.log_every == 0) or prog.step == 1 or not budget_left(h, prog):
                ms = 1000 * interval_t / max(interval_steps, 1)
                row = dict(step=prog.step, train_loss=last_loss, lr_scale=sched.lr_scale, ms_step=ms,
                           tok_s=h.train_batch_tokens / (ms / 1000) if ms > 0 else 0.0, elapsed_s=prog.elapsed,
                           ema_decay=sched.ema_decay, muon_momentum=sched.muon_momentum)
                prog.history.append(row)
                emit(**row)
                interval_t, interval_steps = 0.0, 0
            if h.val_every > 0 and prog.step % h.val_every == 0 and budget_left(h, prog):
                val_loss, val_bpb = evaluate_val(model, val, luts, h.train_seq_len,
                                                 max(1, h.val_batch_tokens // h.train_seq_len), d, amp)
                prog.history.append(dict(step=prog.step, val_loss=val_loss, val_bpb=val_bpb, elapsed_s=prog.elapsed))
                emit(step=prog.step, val_loss=val_loss, val_bpb=val_bpb)
                t0 = time.perf_counter()  # val does not count against the training budget
            if stop_req:
                prog.last_ckpt = ckpt(f"signal {stop_req}")
                status = "interrupted"
                break
            by_steps = h.checkpoint_every > 0 and prog.step % h.checkpoint_every == 0
            by_clock = h.checkpoint_minutes > 0 and since_ckpt >= 60 * h.checkpoint_minutes
            if (by_steps or by_clock) and budget_left(h, prog):
                prog.last_ckpt = ckpt("periodic" if by_steps else f"every {h.checkpoint_minutes:g} min")
                last_ckpt_wall = time.time()
                t0 = time.perf_counter()  # writing it does not count against the training budget
    if bar is not None:
        bar.close()
    recompiles = None
    if graphs_warm:  # graphs first compiled inside the timed loop: each one cost budget
        recompiles = compile_stats()["graphs"] - graphs_warm["graphs"]
        emit(recompiles_in_loop=recompiles)
        if recompiles and h.compile_warmup_steps > 0:
            log.write(f"warning: {recompiles} graph(s) were compiled inside the timed loop; the warm-up "
                      "should have compiled every variant (see compile_graphs above)")
    if status == "interrupted":
        emit(status=status, step=prog.step, resume=f"RESUME=1 RUN_ID={h.run_id}")
        return {"status": status, "steps": prog.step, "checkpoint": str(prog.last_ckpt), "run_dir": str(run_dir)}

    ckpt("end")
    train_seconds = prog.elapsed
    # --- export and final val ----------------------------------------------------------------
    val_bs = max(1, h.val_batch_tokens // h.train_seq_len)
    set_qat(model, 0)  # val and export see the float weights; quantize.py does the real rounding
    if loops:
        model.set_training_fraction(1.0)  # depth recurrence: the final val runs looped, as the artifact does
    extra = {}
    if ema is not None:
        vl_raw, vb_raw = evaluate_val(model, val, luts, h.train_seq_len, val_bs, d, amp)
        extra = {"val_loss_raw": vl_raw, "val_bpb_raw": vb_raw}
        emit(step=prog.step, val_loss_raw=vl_raw, val_bpb_raw=vb_raw)
        ema.copy_to(model)
    in_sync = ranks_in_sync(model, d)
    if not in_sync:
        log.write("warning: the ranks' final weights differ (DDP desynchronised); rank 0's are exported")
    t_val = time.perf_counter()
    val_loss, val_bpb = evaluate_val(model, val, luts, h.train_seq_len, val_bs, d, amp)
    val_seconds = time.perf_counter() - t_val
    emit(step=prog.step, val_loss=val_loss, val_bpb=val_bpb, weights="ema" if ema is not None else "raw")
    prog.history.append(dict(step=prog.step, val_loss=val_loss, val_bpb=val_bpb, elapsed_s=train_seconds))
    train_rows = [r for r in prog.history if "train_loss" in r]
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if is_cuda else _cpu_peak_mb())
    summary = {
        "status": status, "run_id": h.run_id, "steps": prog.step, "train_seconds": train_seconds,
        "ms_per_step": 1000 * train_seconds / max(prog.step, 1),
        "tokens_per_s": h.train_batch_tokens * prog.step / train_seconds if train_seconds > 0 else 0.0,
        "train_loss": train_rows[-1]["train_loss"] if train_rows else None,
        "val_loss": val_loss, "val_bpb": val_bpb, **extra, "val_seconds": val_seconds, "val_tokens": len(val),
        "params": n_params, "preflight_bytes": int(est["total"]), "peak_mem_mb": peak_mb,
        "recompiles_in_loop": recompiles,
        "device": device_description(), "world_size": d.world_size, "ranks_in_sync": in_sync, "commit": git_commit(),
        "wall_seconds": time.time() - t_start,
    }
    if d.master:
        final = {"config": h.to_dict(), "model_config": asdict(h.model_config()),
                 "state_dict": {k: v.detach().cpu() for k, v in _export_state(model).items()},
                 "tokenizer_sha256": tokenizer.sha256, "data_path": str(h.data_path), "metrics": summary}
        with atomic_path(run_dir / "final.pt") as tmp:
            torch.save(final, tmp)
        _write_metrics(run_dir, h, d, prog.history, summary)
    emit(status=status, steps=prog.step, train_seconds=train_seconds, val_bpb=val_bpb,
         wall_seconds=time.time() - t_start, final=str(run_dir / "final.pt"))
    log.close()
    return {**summary, "run_dir": str(run_dir)}


@torch.no_grad()
def ranks_in_sync(model: nn.Module, d: Dist) -> bool:
    """True when every rank holds the same weights (two float64 checksums, compared by all-reduce)."""
    if not d.on:
        return True
    ps = [p.detach().double() for p in model.parameters()]
    c = torch.stack([sum(p.sum() for p in ps), sum((p * p).sum() for p in ps)])
    lo, hi = c.clone(), c.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(torch.equal(lo, hi))


def _export_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return model.export_state_dict() if hasattr(model, "export_state_dict") else model.state_dict()


def _write_metrics(run_dir: Path, h, d: Dist, history: list, summary: dict) -> None:
    # the config the run actually used: the pipeline records it from here (typed, not parsed from the log)
    atomic_write_json(run_dir / "metrics.json", {**summary, "run_id": h.run_id, "config": h.to_dict(),
                                                 "history": history})


def _cpu_peak_mb() -> float:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except Exception:
        return float("nan")
