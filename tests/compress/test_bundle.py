"""golf/compress/bundle.py: the single-file train_gpt.py runs from an empty folder without optional deps."""
import json
import os
import subprocess
import sys

import pytest

from golf.compress.bundle import (OPTIONAL_DEPS, bundle_bytes, collect_modules, heavy_top_level_imports, minify,
                                  record_defaults, write_bundle)
from golf.core.config import load_config
from golf.core.utils import GolfError


def test_closure_holds_the_three_stages_and_no_corpus_preparation():
    mods = collect_modules()
    stages = ("golf.train.trainer", "golf.compress.export", "golf.eval.score", "golf.train.run")  # train -> export -> score
    for m in ("__main__", "golf", "golf.model.gpt", "golf.compress.quant", "golf.model.mixer", "golf.core.config",
              "golf.compress.artifact", *stages):
        assert m in mods, m
    assert "golf.model.mechanisms.stream" in mods  # every registered mechanism
    assert not any(m.startswith(("golf.bench", "golf.compress.bundle", "golf.submit")) for m in mods)
    assert not {"golf.data.prepare", "golf.data.corpus", "golf.data.fineweb", "golf.data.audit"} & set(mods)
    assert mods["golf.model.mechanisms"][0] and not mods["golf.model.gpt"][0]  # package flags
    assert heavy_top_level_imports(mods) == {}, "these golf modules import optional deps at top level"


def test_heavy_import_detector_and_minify():
    mods = {"golf.x": (False, "import scipy.stats\nfrom tqdm import tqdm\ndef f():\n    import matplotlib\n")}
    assert heavy_top_level_imports(mods) == {"golf.x": ["scipy.stats", "tqdm"]}
    src = '"""doc"""\nimport os  # comment\ndef f(x):\n    """doc"""\n    return x + 1\n'
    out = minify(src)
    assert "doc" not in out and "comment" not in out
    ns = {}
    exec(out, ns)
    assert ns["f"](1) == 2


def test_record_defaults_are_baked(tmp_path):
    rec = tmp_path / "rec"
    rec.mkdir()
    cfg = {"preset": "tiny", "num_layers": 3, "run_id": "x", "seed": 7, "smear_gate": False, "bigram_dim": 32,
           "data_path": "/abs/data"}
    (rec / "submission.json").write_text(json.dumps({"config": cfg}))
    d = record_defaults(rec)
    # the preset and what differs from it; never the run's id, seed or an absolute path; tiny's own
    # BIGRAM_DIM=32 needs no entry; a boolean is written as the challenge writes them (0/1)
    assert d == {"PRESET": "tiny", "NUM_LAYERS": "3", "SMEAR_GATE": "0"}
    assert b"'NUM_LAYERS': '3'" in bundle_bytes(record=rec)
    rebuilt = load_config(env={**d, "RUN_ID": "r"}).to_dict()
    assert rebuilt == {**load_config(env={"RUN_ID": "r"}, preset="tiny").to_dict(), "num_layers": 3, "smear_gate": False}
    (rec / "submission.json").write_text(json.dumps({"config": {"num_layerz": 3}}))
    with pytest.raises(GolfError, match="num_layerz"):
        record_defaults(rec)
    with pytest.raises(GolfError, match="submission.json"):
        record_defaults(tmp_path)


@pytest.mark.slow
def test_bundle_trains_from_an_empty_folder(tmp_path, byte_data_dir):
    out = tmp_path / "dist" / "train_gpt.py"
    report = write_bundle(out)
    assert report["bytes"] == out.stat().st_size < report["source_bytes"]
    run = tmp_path / "empty"
    run.mkdir()
    (run / "train_gpt.py").write_bytes(out.read_bytes())
    # stub packages that shadow the optional dependencies: importing any of them fails
    stubs = tmp_path / "stubs"
    for name in OPTIONAL_DEPS:
        (stubs / name).mkdir(parents=True)
        (stubs / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    env = {k: v for k, v in os.environ.items() if k.isupper() and k.startswith(("PATH", "HOME", "LANG", "LC_"))}
    env.update(PYTHONPATH=str(stubs), OMP_NUM_THREADS="1", PRESET="tiny", DATA_PATH=str(byte_data_dir),
               VOCAB_SIZE="260", RUN_ID="bundled", OUT_DIR=str(run / "runs"), ITERATIONS="3",
               MAX_WALLCLOCK_SECONDS="0", NUM_LAYERS="2", MODEL_DIM="64", NUM_HEADS="2", NUM_KV_HEADS="1",
               TRAIN_SEQ_LEN="64", TRAIN_BATCH_TOKENS="512", VAL_MAX_TOKENS="2048", VAL_BATCH_TOKENS="1024",
               EVAL_STRIDE="64", COMPILE_WARMUP_STEPS="1", BIGRAM_VOCAB_SIZE="256", COMPILE="off", DEVICE="cpu")
    p = subprocess.run([sys.executable, "train_gpt.py"], cwd=run, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    final = run / "runs" / "bundled" / "final.pt"
    assert final.is_file()
    import torch

    ck = torch.load(final, map_location="cpu", weights_only=False)
    assert ck["model_config"]["num_layers"] == 2 and ck["state_dict"]
    # the one process also exported and scored: the artifact's round-trip score is its last word
    ev = json.loads((run / "runs" / "bundled" / "eval.json").read_text())
    assert (run / "runs" / "bundled" / "model.ptz").is_file()
    assert f"final_sliding_window_exact val_loss:{ev['val_loss']:.8f} val_bpb:{ev['val_bpb']:.8f}" in p.stdout
    assert not (run / "golf").exists()  # nothing was unpacked next to it
