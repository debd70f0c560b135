"""golf/train/schedule.py: schedules are fractions of the budget, so one preset fits 60 s and 600 s."""
import math

import pytest

from golf.core.config import load_config
from golf.core.utils import GolfError
from golf.train import schedule


def preset(**over):
    argv = []
    for k, v in over.items():
        argv += [f"--{k}", str(v)]
    return load_config(["--preset", "record"] + argv, env={})


def run_through(h, step_time_s):
    """Simulate a run with a constant step time; returns per-step schedule values."""
    rows, step, elapsed = [], 0, 0.0
    while elapsed < h.max_wallclock_seconds and step < h.iterations:
        s = schedule.at(step, elapsed, h, step_time_s)
        rows.append(s)
        step += 1
        elapsed += step_time_s
    return rows


@pytest.mark.parametrize("budget", [60.0, 600.0])
def test_same_preset_scales_with_budget(budget):
    h = preset(max_wallclock_seconds=budget)
    rows = run_through(h, step_time_s=0.1)
    n = len(rows)
    assert n == int(budget / 0.1)
    lr = [r.lr_scale for r in rows]
    # flat for the first (1 - WARMDOWN_FRAC) of the run, then linear to ~0 at the end
    flat_end = int((1 - h.warmdown_frac) * n)
    assert all(x == 1.0 for x in lr[: flat_end - 1])
    assert lr[-1] < 2.0 / n / h.warmdown_frac
    assert lr[int(0.75 * n)] == pytest.approx((1 - 0.75) / h.warmdown_frac, abs=2.0 / n)
    # Muon momentum warm-up is over after MUON_MOMENTUM_WARMUP_FRAC of the run, whatever its length
    k = int(h.muon_momentum_warmup_frac * n)
    assert rows[0].muon_momentum == h.muon_momentum_warmup_start
    assert rows[k // 2].muon_momentum == pytest.approx((h.muon_momentum_warmup_start + h.muon_momentum) / 2, abs=0.01)
    assert rows[k + 1].muon_momentum == h.muon_momentum
    # EMA: expected steps estimated from the step time, horizon a fraction of the run
    assert rows[-1].expected_steps == pytest.approx(n, rel=0.01)
    horizon = 1.0 / (1.0 - rows[-1].ema_decay)
    assert horizon == pytest.approx(h.ema_horizon_frac * n, rel=0.01)
    # the exported EMA no longer remembers the initialisation (the public record's 0.997-every-10
    # EMA kept ~0.9 of it in a 277-step run): weight of step-0 weights after the run
    init_weight = math.prod(r.ema_decay for r in rows)
    assert init_weight < 1e-3


def test_60s_and_600s_agree_on_fractions():
    a, b = preset(max_wallclock_seconds=60.0), preset(max_wallclock_seconds=600.0)
    for frac in (0.0, 0.3, 0.55, 0.7, 0.9, 0.99):
        sa = schedule.at(int(frac * 600), frac * 60.0, a, 0.1)
        sb = schedule.at(int(frac * 6000), frac * 600.0, b, 0.1)
        assert sa.lr_scale == pytest.approx(sb.lr_scale)
        assert sa.muon_momentum == pytest.approx(sb.muon_momentum)
        assert sa.progress == pytest.approx(frac)


def test_step_based_without_wallclock():
    h = preset(max_wallclock_seconds=0, iterations=1000, lr_warmup_frac=0.1)
    assert schedule.progress(250, 1e9, h) == 0.25  # elapsed time is ignored
    assert schedule.lr_scale(0.05, h) == pytest.approx(0.5)  # warm-up
    assert schedule.expected_steps(10, 5.0, h) == 1000
    assert 1.0 / (1.0 - schedule.ema_decay(500, 1000, h)) == pytest.approx(h.ema_horizon_frac * 1000)


def test_iterations_cap_the_wallclock_estimate():
    h = preset(max_wallclock_seconds=600, iterations=100)
    assert schedule.expected_steps(10, 1.0, h) == 100  # 0.1 s/step would give 6000
    assert schedule.progress(50, 1.0, h) == 0.5  # whichever ends the run first


def test_ema_early_steps_are_a_running_mean():
    h = preset(max_wallclock_seconds=600)
    assert schedule.ema_decay(0, 6000, h) == 0.0  # first update copies the weights
    assert schedule.ema_decay(1, 6000, h) == 0.5


def test_qat_starts_late_only():
    h = preset()
    assert not schedule.qat_should_start(0.0, 0.01, h)  # LR warm-up is not late
    assert not schedule.qat_should_start(0.5, 0.8, h)
    assert schedule.qat_should_start(h.qat_lr_scale / 2, 0.95, h)
    h.qat = False
    assert not schedule.qat_should_start(0.0, 0.99, h)


def old_lr_scale(p, h):
    """The schedule before MIN_LR (a copy): warm-up, flat, linear warm-down to zero."""
    s = 1.0
    if h.lr_warmup_frac > 0 and p < h.lr_warmup_frac:
        s = min(s, p / h.lr_warmup_frac)
    if h.warmdown_frac > 0 and p > 1.0 - h.warmdown_frac:
        s = min(s, (1.0 - p) / h.warmdown_frac)
    return max(0.0, min(1.0, s))


GRID = [i / 1000 for i in range(1001)]


@pytest.mark.parametrize("warmdown", [0.0, 0.4, 0.85, 1.0])
def test_min_lr_zero_is_the_old_schedule(warmdown):
    h = preset(warmdown_frac=warmdown, lr_warmup_frac=0.05)
    assert h.min_lr == 0.0
    assert [schedule.lr_scale(p, h) for p in GRID] == [old_lr_scale(p, h) for p in GRID]


def test_min_lr_floors_the_warmdown_only():
    h = preset(warmdown_frac=0.85, lr_warmup_frac=0.05, min_lr=0.1)  # the 1.0611 record's warm-down and floor
    scales = [schedule.lr_scale(p, h) for p in GRID]
    for p, s in zip(GRID, scales):
        if p >= h.lr_warmup_frac:
            assert s >= 0.1, (p, s)  # never below the floor once warm-up is over
            assert s == max(old_lr_scale(p, h), 0.1)
    assert schedule.lr_scale(1.0, h) == 0.1  # the end of the run still moves the weights
    assert schedule.lr_scale(0.0, h) == 0.0  # warm-up still starts from zero
    assert max(scales) == 1.0 and schedule.lr_scale(0.5, h) == pytest.approx(0.5 / 0.85)  # above the floor: as before


def test_qat_still_starts_under_a_floor():
    h = preset(warmdown_frac=0.85, min_lr=0.1, qat_lr_scale=0.15)
    rows = run_through(h, 0.1)
    first = next(i for i, s in enumerate(rows) if schedule.qat_should_start(s.lr_scale, s.progress, h))
    assert 0.85 < rows[first].progress < 0.9  # where the ramp crosses 0.15, as without the floor
    assert min(s.lr_scale for s in rows[first:]) == pytest.approx(0.1)


def test_a_floor_that_blocks_qat_is_refused():
    with pytest.raises(GolfError, match="MIN_LR=0.2 keeps the LR scale at or above QAT_LR_SCALE=0.15.*QAT=0"):
        preset(min_lr=0.2, qat_lr_scale=0.15)
    with pytest.raises(GolfError, match="MIN_LR=0.15 .* QAT_LR_SCALE=0.15"):
        preset(min_lr=0.15, qat_lr_scale=0.15)
    assert preset(min_lr=0.2, qat=False).min_lr == 0.2  # no QAT: any floor
    assert preset(min_lr=0.2, qat_lr_scale=0.25).min_lr == 0.2
