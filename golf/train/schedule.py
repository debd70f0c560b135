"""Budget-aware schedules: everything is a function of *progress* through the run, a number in
[0, 1], never of a fixed step count.

progress = elapsed training seconds / MAX_WALLCLOCK_SECONDS when there is a wall-clock budget, else
step / ITERATIONS. Warm-up, warm-down, Muon momentum warm-up and the QAT start are fractions of it,
and the EMA horizon is a fraction of the *expected* number of steps (estimated from the measured
step time). Why: the public record's fixed step counts (warmdown 3500 steps, EMA 0.997 every 10
steps) assume ~7000 steps; in a 150 s run (277 steps) the whole run was warm-down and the exported
EMA was still mostly the initialisation (val_bpb 2.26 vs 1.67; ../shared/data/README.md). Expressed
as fractions, the same preset behaves the same for 60 s on a laptop GPU and 600 s on 8xH100.
"""
from __future__ import annotations

from dataclasses import dataclass


def progress(step: int, elapsed_s: float, h) -> float:
    """Fraction of the run done after `step` optimizer steps and `elapsed_s` training seconds."""
    if h.max_wallclock_seconds > 0:
        p = elapsed_s / h.max_wallclock_seconds
        if h.iterations > 0:  # ITERATIONS is an upper bound: whichever ends the run first
            p = max(p, step / h.iterations)
        return min(max(p, 0.0), 1.0)
    return min(max(step / max(h.iterations, 1), 0.0), 1.0)


def lr_scale(p: float, h) -> float:
    """Linear warm-up over the first LR_WARMUP_FRAC, flat, linear warm-down over the last
    WARMDOWN_FRAC (the 'trapezoid' of modded-nanogpt / parameter-golf, in fractions) to MIN_LR.

    MIN_LR (PR #1787, 0.1 in the 1.0611 record) floors the warm-down only, as the record's
    max((1 - frac) / warmdown_frac, min_lr): a fraction of every group's peak LR, so the end of the run
    still moves the weights. Warm-up still starts from 0. MIN_LR=0 is the plain decay to zero."""
    s = 1.0
    if h.lr_warmup_frac > 0 and p < h.lr_warmup_frac:
        s = min(s, p / h.lr_warmup_frac)
    if h.warmdown_frac > 0 and p > 1.0 - h.warmdown_frac:
        s = min(s, max((1.0 - p) / h.warmdown_frac, h.min_lr))
    return max(0.0, min(1.0, s))


def muon_momentum(p: float, h) -> float:
    """Momentum ramps from MUON_MOMENTUM_WARMUP_START to MUON_MOMENTUM over MUON_MOMENTUM_WARMUP_FRAC."""
    if h.muon_momentum_warmup_frac <= 0:
        return h.muon_momentum
    f = min(p / h.muon_momentum_warmup_frac, 1.0)
    return (1.0 - f) * h.muon_momentum_warmup_start + f * h.muon_momentum


def expected_steps(step: int, elapsed_s: float, h, step_time_s: float | None = None) -> float:
    """How many optimizer steps the whole run will take. With a wall clock: the budget divided by the
    measured seconds per step (elapsed/step once steps have run, else `step_time_s` measured during
    warm-up), capped by ITERATIONS. Without: ITERATIONS."""
    if h.max_wallclock_seconds <= 0:
        return float(max(h.iterations, 1))
    per_step = elapsed_s / step if step > 0 and elapsed_s > 0 else step_time_s
    if not per_step or per_step <= 0:
        return float(max(h.iterations, 1))
    n = h.max_wallclock_seconds / per_step
    return float(max(1.0, min(n, h.iterations) if h.iterations > 0 else n))


def ema_decay(step: int, total_steps: float, h) -> float:
    """Per-step EMA decay with time constant EMA_HORIZON_FRAC x expected steps. Early steps use
    min(decay, step/(step+1)) (a running mean) so the EMA is never dominated by the initialisation,
    whatever the run length; at the end the init's weight is ~exp(-1/EMA_HORIZON_FRAC)."""
    horizon = max(1.0, h.ema_horizon_frac * total_steps)
    return min(1.0 - 1.0 / horizon, step / (step + 1.0))


def qat_should_start(scale: float, p: float, h) -> bool:
    """Late QAT: fake-quantise once the LR is low (weights settle onto the grid the exporter uses).
    Only in the second half, so a low LR during warm-up does not trigger it. `scale` is the floored
    schedule (MIN_LR): config refuses a floor at or above QAT_LR_SCALE, so QAT always gets its turn."""
    return bool(h.qat) and p >= 0.5 and scale < h.qat_lr_scale


@dataclass
class Sched:
    progress: float
    lr_scale: float
    muon_momentum: float
    ema_decay: float
    expected_steps: float


def at(step: int, elapsed_s: float, h, step_time_s: float | None = None) -> Sched:
    """All schedule values for the step that is about to run (`step` steps done so far)."""
    p = progress(step, elapsed_s, h)
    n = expected_steps(step, elapsed_s, h, step_time_s)
    return Sched(p, lr_scale(p, h), muon_momentum(p, h), ema_decay(step, n, h), n)
