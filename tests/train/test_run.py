"""golf/train/run.py: `python train_gpt.py` trains, exports and scores in one process; its score is
the artifact's, equal to scoring that artifact alone (eval_bpb.py's stage); export's calibration
batches come from the training split (tests/compress/test_gptq.py)."""
import json
import subprocess
import sys

import pytest
from train.test_train import REPO, args, sub_env

from golf.data.folder import load_split
from golf.eval.score import score


def test_train_gpt_trains_exports_and_scores_in_one_process(byte_data_dir, tmp_path):
    out = tmp_path / "runs"
    res = subprocess.run([sys.executable, "train_gpt.py", *args(byte_data_dir, out, "one", iterations=8,
                                                                 eval_contexts="128")],
                         cwd=REPO, env=sub_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    run_dir = out / "one"
    for f in ("final.pt", "model.ptz", "size.json", "eval.json", "metrics.json"):
        assert (run_dir / f).is_file(), f
    size = json.loads((run_dir / "size.json").read_text())
    ev = json.loads((run_dir / "eval.json").read_text())
    log = (run_dir / "train.log").read_text()
    assert f"Total submission size: {size['bytes_total']} bytes" in log
    assert f"final_sliding_window_exact val_loss:{ev['val_loss']:.8f} val_bpb:{ev['val_bpb']:.8f}" in log
    plain = ev["contexts"]["64"]  # non-overlapping windows at the eval length: the plain round trip
    assert f"final_int_zstd_roundtrip_exact val_loss:{plain['val_loss']:.8f}" in log
    assert sorted(ev["contexts"]) == ["128", "64"] and ev["strategy"] == "sliding_window"
    # the score is the artifact's: scoring it alone gives the same numbers
    alone = score(run_dir / "model.ptz", byte_data_dir, device="cpu")
    assert alone["val_bpb"] == pytest.approx(ev["val_bpb"], rel=1e-9, abs=1e-9)
    assert alone["tokens"] == ev["tokens"] == load_split(byte_data_dir, "val").size - 1  # the whole val split


def test_score_takes_an_evaluation_strategy(byte_data_dir, tmp_path):
    """The seam test-time training plugs into: score() calls the strategy on the artifact's model."""
    out = tmp_path / "runs"
    r = subprocess.run([sys.executable, "train_gpt.py", *args(byte_data_dir, out, "s", iterations=2)],
                       cwd=REPO, env=sub_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    seen = {}

    class Constant:
        name = "constant"

        def __call__(self, model, tokens, luts, **kw):
            seen.update(model=type(model).__name__, tokens=len(tokens), **kw)
            return {"val_loss": 1.0, "val_bpb": 2.0, "tokens": len(tokens) - 1}

    rep = score(out / "s" / "model.ptz", byte_data_dir, device="cpu", contexts="", strategy=Constant())
    assert rep["val_bpb"] == 2.0 and rep["strategy"] == "constant"
    assert seen["model"] == "GPT" and seen["tokens"] == load_split(byte_data_dir, "val").size and seen["rank"] == 0
