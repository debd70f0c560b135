"""Statistics for records and A/B ablations: paired t-tests, one-sided Welch, nats <-> bits per byte.

Conventions: lower is better (val_loss in nats per token, val_bpb in bits per byte). An ablation
compares arm A (the reference) with arm B (the change) on the same seeds, so `improvement = A - B`
is positive when B is better.

The two bars (OpenAI Parameter Golf README; modded-nanogpt records):
- challenge bar: a new record must show *at p < 0.01* that it beats the leader by >= 0.005 nats.
  We test exactly that claim: one-sided paired t-test of H1: mean(A - B) > 0.005 nats.
- practice bar: the looser screen people use to keep an idea alive: one-sided Welch t-test
  (unpaired, unequal variances) of H1: mean(B) < mean(A), p < 0.25.
"""
from __future__ import annotations

import math
from typing import Sequence

CHALLENGE_MIN_NATS = 0.005
CHALLENGE_P = 0.01
PRACTICE_P = 0.25


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def std(xs: Sequence[float]) -> float:
    """Sample standard deviation (ddof=1); 0 for a single value."""
    n = len(xs)
    if n < 2:
        return 0.0
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))


def _degenerate_p(mean_diff: float) -> float:
    # Zero spread: scipy returns nan; the honest answer is "certain" if every difference points the
    # tested way and "no evidence" otherwise.
    return 0.0 if mean_diff > 0 else 1.0


def paired_t(a: Sequence[float], b: Sequence[float], margin: float = 0.0, alternative: str = "two-sided") -> dict:
    """Paired t-test on d = a - b - margin (scipy.stats.ttest_rel).

    alternative="greater" tests H1: mean(a - b) > margin (i.e. b is better than a by more than margin).
    Returns n, mean_diff (mean of a - b, without the margin), std_diff, t, p (nan when n < 2)."""
    if len(a) != len(b):
        raise ValueError(f"paired test needs equal lengths, got {len(a)} and {len(b)}")
    n = len(a)
    d = [x - y for x, y in zip(a, b)]
    out = {"n": n, "mean_diff": mean(d) if n else float("nan"), "std_diff": std(d) if n else float("nan")}
    if n < 2:
        return {**out, "t": float("nan"), "p": float("nan")}
    if out["std_diff"] <= 1e-12 * max(1.0, abs(out["mean_diff"])):  # equal up to float rounding
        shifted = out["mean_diff"] - margin
        p = _degenerate_p(shifted) if alternative == "greater" else (0.0 if shifted != 0 else 1.0)
        return {**out, "t": math.copysign(math.inf, shifted) if shifted else 0.0, "p": p}
    from scipy import stats

    r = stats.ttest_rel([x - margin for x in a], list(b), alternative=alternative)
    return {**out, "t": float(r.statistic), "p": float(r.pvalue)}


def welch_one_sided(a: Sequence[float], b: Sequence[float]) -> dict:
    """One-sided Welch t-test of H1: mean(b) < mean(a) (b better). p is nan with < 2 values per arm."""
    out = {"mean_a": mean(a), "mean_b": mean(b)}
    if len(a) < 2 or len(b) < 2:
        return {**out, "t": float("nan"), "p": float("nan")}
    if max(std(a), std(b)) <= 1e-12 * max(1.0, abs(out["mean_a"])):
        return {**out, "t": float("nan"), "p": _degenerate_p(out["mean_a"] - out["mean_b"])}
    from scipy import stats

    r = stats.ttest_ind(list(b), list(a), equal_var=False, alternative="less")
    return {**out, "t": float(r.statistic), "p": float(r.pvalue)}


def compare_arms(
    loss_a: Sequence[float], loss_b: Sequence[float], bpb_a: Sequence[float], bpb_b: Sequence[float]
) -> dict:
    """Everything an ablation record reports, from per-seed (paired, same order) results."""
    two_sided = paired_t(loss_a, loss_b)
    better = paired_t(loss_a, loss_b, alternative="greater")
    bar = paired_t(loss_a, loss_b, margin=CHALLENGE_MIN_NATS, alternative="greater")
    welch = welch_one_sided(bpb_a, bpb_b)
    bpb = paired_t(bpb_a, bpb_b)
    ok = lambda p, lim: bool(not math.isnan(p) and p < lim)  # noqa: E731
    return {
        "n": two_sided["n"],
        # B - A: negative means B is better.
        "mean_diff_nats": -two_sided["mean_diff"],
        "mean_diff_bpb": -bpb["mean_diff"],
        "std_diff_nats": two_sided["std_diff"],
        "std_diff_bpb": bpb["std_diff"],
        "p_paired": two_sided["p"],  # scipy.stats.ttest_rel, two-sided, on val_loss
        "p_paired_b_better": better["p"],  # one-sided, H1: B < A
        "p_paired_bpb": bpb["p"],
        "p_challenge": bar["p"],  # one-sided, H1: A - B > 0.005 nats
        "p_welch_b_better": welch["p"],  # one-sided Welch on val_bpb, H1: B < A
        "meets_challenge_bar": bool(
            -two_sided["mean_diff"] <= -CHALLENGE_MIN_NATS and ok(bar["p"], CHALLENGE_P)
        ),
        "meets_practice_bar": ok(welch["p"], PRACTICE_P),
    }
