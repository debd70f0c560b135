"""golf/compress/bundle.py: the single-file train_gpt.py runs from an empty folder without optional deps."""
import json
import os
import re
import shutil
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
    assert {"golf.eval.ttt", "golf.eval.lora"} <= set(mods)  # TTT=sgd|lora|phased (golf.train.run scores with them)
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
def test_submission_file_reproduces_the_score_from_an_empty_folder(tmp_path, sp_data_dir, capsys):
    """The challenge's way: the generated train_gpt.py alone in a folder holding the challenge's data
    layout, golf not importable, the optional dependencies missing, only the challenge's variables
    set (the recipe is baked in). It trains, exports, round-trips and prints the final lines, logs
    to logs/<RUN_ID>.txt, counts its own bytes, and scores what eval_bpb.py scores on its artifact."""
    small = dict(PRESET="tiny", ITERATIONS="3", MAX_WALLCLOCK_SECONDS="0", NUM_LAYERS="2", MODEL_DIM="64",
                 NUM_HEADS="2", NUM_KV_HEADS="1", TRAIN_SEQ_LEN="64", TRAIN_BATCH_TOKENS="512", VAL_MAX_TOKENS="2048",
                 VAL_BATCH_TOKENS="1024", EVAL_STRIDE="32", COMPILE_WARMUP_STEPS="1", BIGRAM_VOCAB_SIZE="256",
                 NUM_MEMORY_TOKENS="2", COMPILE="off", VOCAB_SIZE="512", DATA_PATH="./data/datasets/fineweb10B_sp512")
    cfg = load_config(env=small).to_dict()
    run = tmp_path / "submission"
    report = write_bundle(run / "train_gpt.py", config=cfg)
    assert report["bytes"] == (run / "train_gpt.py").stat().st_size < report["source_bytes"]
    assert "NUM_LAYERS" in report["baked"] and "SEED" not in report["baked"]
    # the challenge's layout (data/cached_challenge_fineweb.py): shards by name, tokenizer beside them
    ds = run / "data" / "datasets" / "fineweb10B_sp512"
    ds.mkdir(parents=True)
    for f in sp_data_dir.glob("fineweb_*.bin"):
        shutil.copyfile(f, ds / f.name)
    (run / "data" / "tokenizers").mkdir()
    shutil.copyfile(sp_data_dir / "tokenizer.model", run / "data" / "tokenizers" / "fineweb_512_bpe.model")
    # stub packages that shadow the optional dependencies: importing any of them fails
    stubs = tmp_path / "stubs"
    for name in OPTIONAL_DEPS:
        (stubs / name).mkdir(parents=True)
        (stubs / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    env = {k: v for k, v in os.environ.items() if k.isupper() and k.startswith(("PATH", "HOME", "LANG", "LC_"))}
    env.update(PYTHONPATH=str(stubs), OMP_NUM_THREADS="1", RUN_ID="seed1", SEED="1",
               DATA_PATH="./data/datasets/fineweb10B_sp512/", TOKENIZER_PATH="./data/tokenizers/fineweb_512_bpe.model",
               VOCAB_SIZE="512")
    assert subprocess.run([sys.executable, "-c", "import golf"], cwd=run, env=env, capture_output=True).returncode != 0
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                        "train_gpt.py"], cwd=run, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    size = int(re.search(r"^Code size: (\d+) bytes", out, re.M).group(1))
    assert size == (run / "train_gpt.py").stat().st_size  # its own bytes are the code bytes it reports
    assert re.search(r"^Total submission size: \d+ bytes", out, re.M)
    assert re.search(r"^final_int_zstd_roundtrip_exact val_loss:[\d.]+ val_bpb:[\d.]+$", out, re.M)
    final = re.search(r"^final_sliding_window_exact val_loss:([\d.]+) val_bpb:([\d.]+) ", out, re.M)
    assert final, out[-2000:]
    log = (run / "logs" / "seed1.txt").read_text()  # where the challenge's scripts write theirs
    assert final.group(0) in log and "Total submission size" in log
    assert not (run / "golf").exists()  # nothing was unpacked next to it
    # the artifact it wrote, scored by the repo's eval_bpb.py on the same folder: the same number
    import eval_bpb

    artifact = run / "runs" / "seed1" / "model.ptz"
    eval_bpb.main(["--artifact", str(artifact), "--data-path", str(ds), "--device", "cpu",
                   "--out", str(tmp_path / "eval.json")])
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert abs(ev["val_bpb"] - float(final.group(2))) < 1e-7 and abs(ev["val_loss"] - float(final.group(1))) < 1e-7
    # pre-quantisation figure on the same tokens as the plain round trip
    run_ev = json.loads((run / "runs" / "seed1" / "eval.json").read_text())
    assert run_ev["prequant"]["tokens"] == run_ev["contexts"]["64"]["tokens"] == ev["tokens"]
