"""golf.eval.deficit on synthetic numbers with hand-computed expectations: deficit, gain and
closure per bucket, seed spread, the near-zero-deficit floor, the summary beyond the window, and
clear errors for mismatched buckets or seeds."""
import pytest

from golf.core.utils import GolfError
from golf.eval.deficit import ArmBuckets, deficit_table, from_reports

B = [(0, 64), (64, 128), (128, 192), (192, 256)]


def arm(*seeds, buckets=B):
    return ArmBuckets(list(buckets), [list(s) for s in seeds])


ARMS = {
    # global: 2.00 1.90 1.80 1.70 (seed 2 the same + 0.01)
    "base": arm([2.00, 1.90, 1.80, 1.70], [2.01, 1.91, 1.81, 1.71]),
    # local: no worse in bucket 0, +0.002 in bucket 1 (under the floor), +0.10 and +0.20 (+0.12, +0.18) beyond
    "sssl": arm([2.00, 1.902, 1.90, 1.90], [2.01, 1.912, 1.93, 1.89]),
    # mechanism: wins back 0.05 / 0.06 in bucket 2, 0.15 / 0.15 in bucket 3
    "rmt": arm([2.00, 1.902, 1.85, 1.75], [2.01, 1.912, 1.87, 1.74]),
}


def test_deficit_gain_and_closure_by_hand():
    t = deficit_table(ARMS, "sssl", "base", ["rmt"], window=64)
    assert t["beyond_window"] == [False, True, True, True]
    assert t["deficit"]["mean"] == pytest.approx([0.0, 0.002, 0.11, 0.19])
    # sample std of (0.10, 0.12) and (0.20, 0.18): |a - b| / sqrt(2)
    assert t["deficit"]["std"] == pytest.approx([0.0, 0.0, 0.02 / 2 ** 0.5, 0.02 / 2 ** 0.5])
    g = t["mechanisms"]["rmt"]
    assert g["gain"]["mean"] == pytest.approx([0.0, 0.0, 0.055, 0.15])
    assert g["gain"]["std"] == pytest.approx([0.0, 0.0, 0.01 / 2 ** 0.5, 0.0])
    # bucket 0 and 1: deficit < 0.005 -> NA; 0.055 / 0.11 = 0.5; 0.15 / 0.19
    assert g["closure"][:2] == [None, None]
    assert g["closure"][2:] == pytest.approx([0.5, 0.15 / 0.19])
    assert g["summary_closure"] == pytest.approx((0.055 + 0.15) / (0.11 + 0.19)) and g["summary_buckets"] == 2
    assert t["summary_deficit"] == pytest.approx((0.002 + 0.11 + 0.19) / 3)


def test_floor_and_window_are_settings():
    t = deficit_table(ARMS, "sssl", "base", ["rmt"], window=64, floor=0.001)
    assert t["mechanisms"]["rmt"]["closure"][1] == pytest.approx(0.0)  # 0.002 clears a 0.001 floor: gain 0
    t = deficit_table(ARMS, "sssl", "base", ["rmt"], window=192, floor=0.5)
    assert t["mechanisms"]["rmt"]["closure"] == [None] * 4 and t["mechanisms"]["rmt"]["summary_closure"] is None
    t = deficit_table(ARMS, "sssl", "base", ["rmt"], window=192)
    assert t["mechanisms"]["rmt"]["summary_closure"] == pytest.approx(0.15 / 0.19)  # bucket 3 only


def test_no_closure_where_the_local_arm_is_the_better_one():
    """A negative deficit (local beats global, as SSSL did against global attention in the first tiny
    study) has no gap to close: a mechanism worse than the local arm there must not read as a large
    positive closure (-0.012 / -0.008 = 1.5 did before this rule)."""
    arms = {"glob": arm([2.008, 2.008, 2.008, 2.008], [2.010, 2.010, 2.010, 2.010]),
            "loc": arm([2.000, 2.000, 2.000, 2.100], [2.002, 2.002, 2.002, 2.102]),
            "worse": arm([2.012, 2.012, 2.012, 2.050], [2.014, 2.014, 2.014, 2.052])}
    t = deficit_table(arms, "loc", "glob", ["worse"], window=64)
    assert t["deficit"]["mean"] == pytest.approx([-0.008, -0.008, -0.008, 0.092])
    m = t["mechanisms"]["worse"]
    assert m["gain"]["mean"] == pytest.approx([-0.012, -0.012, -0.012, 0.05])
    assert m["closure"][:3] == [None, None, None] and m["closure"][3] == pytest.approx(0.05 / 0.092)
    assert m["summary_closure"] == pytest.approx(0.05 / 0.092) and m["summary_buckets"] == 1
    # every bucket negative: no closure at all, whatever the floor (0 included)
    t = deficit_table({**arms, "loc": arm([2.0] * 4, [2.002] * 4)}, "loc", "glob", ["worse"], floor=0)
    assert t["mechanisms"]["worse"]["closure"] == [None] * 4 and t["mechanisms"]["worse"]["summary_closure"] is None


def test_mismatched_inputs_are_clear_errors():
    bad = {**ARMS, "rmt": arm([2.0, 1.9, 1.8], [2.0, 1.9, 1.8], buckets=B[:3])}
    with pytest.raises(GolfError, match="rmt's position buckets .* differ .* same context"):
        deficit_table(bad, "sssl", "base", ["rmt"])
    with pytest.raises(GolfError, match="1 seeds.*same seeds"):
        deficit_table({**ARMS, "base": arm([2.0, 1.9, 1.8, 1.7])}, "sssl", "base")
    with pytest.raises(GolfError, match=r"no per-bucket BPB for arm\(s\) \['mem'\]"):
        deficit_table(ARMS, "sssl", "base", ["mem"])
    with pytest.raises(GolfError, match="the same"):
        deficit_table(ARMS, "base", "base")


def test_buckets_from_score_reports():
    rep = {"contexts": {"256": {"position_bpb": {"start": [0, 128], "end": [128, 256], "bpb": [2.0, None]}}}}
    a = from_reports([rep, rep], 256, "arm base")
    assert a.buckets == [(0, 128), (128, 256)] and a.bpb == [[2.0, None], [2.0, None]]
    t = deficit_table({"l": a, "g": a, "m": a}, "l", "g", ["m"])
    assert t["deficit"]["mean"] == [0.0, None] and t["mechanisms"]["m"]["closure"] == [None, None]
    with pytest.raises(GolfError, match="arm base seed #1: .* no position buckets at context 512; score it with --contexts 512"):
        from_reports([rep], 512, "arm base")


def test_buckets_from_a_real_score_report(tmp_path):
    """The deficit reads what the score stage writes: an artifact scored at two contexts."""
    import numpy as np
    import torch
    from datakit import token_folder

    from golf.compress import artifact
    from golf.core.config import Hyperparameters
    from golf.data.tokenizer import ByteTokenizer
    from golf.eval.score import score
    from golf.model.gpt import GPT

    tok = ByteTokenizer()
    data = token_folder(tmp_path / "data", tok, train=np.arange(4, 260), val=np.tile(np.arange(4, 260), 2))
    h = Hyperparameters(vocab_size=260, num_layers=1, model_dim=32, num_heads=4, num_kv_heads=2, num_memory_tokens=0,
                        bigram_vocab_size=0, mtp_num_heads=0, train_seq_len=64)
    torch.manual_seed(0)
    artifact.save_artifact(tmp_path / "m.ptz", GPT(h.model_config(), with_mtp=False), h, tok.sha256)
    rep = score(tmp_path / "m.ptz", data, seq_len=64, stride=64, contexts="128,256", device="cpu", compile=False)
    a = from_reports([rep], 256, "arm x")
    assert a.buckets == [(0, 64), (64, 128), (128, 192), (192, 256)] and all(v > 0 for v in a.bpb[0])
    assert from_reports([rep], 128, "arm x").buckets == [(0, 64), (64, 128)]
