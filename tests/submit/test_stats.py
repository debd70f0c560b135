"""golf.submit.stats against hand-computed values.

Hand computations use the t distribution with 2 degrees of freedom, whose CDF has the closed form
F(t) = 1/2 + t / (2 sqrt(2 + t^2)), and with 4 degrees of freedom:
F(t) = 1/2 + (3/8) u (1 - t^2 / (12 (1 + t^2/4))), u = t / sqrt(1 + t^2/4).
"""
import math

import pytest

from golf.submit import stats

A = [1.0, 1.1, 1.2]
B = [0.9, 1.05, 1.1]  # differences A - B = 0.10, 0.05, 0.10: mean 1/12, sd 0.028868, se 1/60 -> t = 5


def cdf_t2(t):
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


def test_mean_std():
    assert stats.mean([1, 2, 3, 4]) == 2.5
    assert stats.std([1, 2, 3, 4]) == pytest.approx(math.sqrt(5 / 3))  # ddof=1
    assert stats.std([7.0]) == 0.0


def test_paired_t_two_sided_matches_hand_value():
    r = stats.paired_t(A, B)
    assert r["n"] == 3
    assert r["mean_diff"] == pytest.approx(1 / 12)
    assert r["std_diff"] == pytest.approx(math.sqrt(1 / 1200))
    assert r["t"] == pytest.approx(5.0)
    assert r["p"] == pytest.approx(2 * (1 - cdf_t2(5.0)), rel=1e-9)  # 0.037750
    assert r["p"] == pytest.approx(0.0377496, rel=1e-5)


def test_paired_t_one_sided_and_margin():
    r = stats.paired_t(A, B, alternative="greater")
    assert r["p"] == pytest.approx(1 - cdf_t2(5.0), rel=1e-9)
    # against a 0.005 margin: mean 0.078333 / se 1/60 = 4.7
    m = stats.paired_t(A, B, margin=0.005, alternative="greater")
    assert m["t"] == pytest.approx(4.7)
    assert m["p"] == pytest.approx(1 - cdf_t2(4.7), rel=1e-9)
    assert m["mean_diff"] == pytest.approx(1 / 12)  # reported without the margin


def test_paired_t_degenerate_cases():
    assert math.isnan(stats.paired_t([1.0], [0.5])["p"])  # one seed: no test
    same = stats.paired_t([1.0, 2.0], [0.9, 1.9], alternative="greater")  # identical differences
    assert same["p"] == 0.0
    worse = stats.paired_t([1.0, 2.0], [1.1, 2.1], alternative="greater")
    assert worse["p"] == 1.0
    with pytest.raises(ValueError):
        stats.paired_t([1.0, 2.0], [1.0])


def test_welch_one_sided_matches_hand_value():
    # a = 1,2,3, b = 0,1,2: var 1 each, se sqrt(2/3), t = -1.2247, Welch df = 4
    r = stats.welch_one_sided([1, 2, 3], [0, 1, 2])
    t = -math.sqrt(1.5)
    assert r["t"] == pytest.approx(t)
    u = abs(t) / math.sqrt(1 + t * t / 4)
    p_hand = 0.5 - 0.375 * u * (1 - t * t / (12 * (1 + t * t / 4)))
    assert r["p"] == pytest.approx(p_hand, rel=1e-9)
    assert r["p"] == pytest.approx(0.1439321, rel=1e-6)
    # b worse than a: large p
    assert stats.welch_one_sided([0, 1, 2], [1, 2, 3])["p"] == pytest.approx(1 - p_hand, rel=1e-9)


def test_compare_arms_bars():
    # B better by ~0.083 nats with p(one-sided, margin 0.005) = 0.0212: not below 0.01 -> challenge bar not met
    c = stats.compare_arms(A, B, [1, 2, 3], [0, 1, 2])
    assert c["mean_diff_nats"] == pytest.approx(-1 / 12)  # B - A
    assert c["mean_diff_bpb"] == pytest.approx(-1.0)
    assert c["p_challenge"] == pytest.approx(1 - cdf_t2(4.7), rel=1e-9)
    assert not c["meets_challenge_bar"]
    assert c["meets_practice_bar"]  # 0.144 < 0.25
    # Tight, large improvement over 4 seeds: meets both bars.
    a = [2.00, 2.01, 2.02, 2.03]
    b = [1.98, 1.9899, 2.0001, 2.0102]
    c2 = stats.compare_arms(a, b, a, b)
    assert c2["p_challenge"] < 0.01 and c2["meets_challenge_bar"]
    # Improvement smaller than 0.005 nats never meets the challenge bar, however consistent.
    b3 = [x - 0.004 for x in a]
    assert not stats.compare_arms(a, b3, a, b3)["meets_challenge_bar"]
    # B worse: no bar.
    b4 = [x + 0.01 for x in a]
    c4 = stats.compare_arms(a, [x + 0.001 * i for i, x in enumerate(b4)], a, b4)
    assert not c4["meets_challenge_bar"] and not c4["meets_practice_bar"]
