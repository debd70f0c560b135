"""Every `make bench*` entry point runs on CPU at toy sizes and writes the JSON fields the issue
notes quote. The figures themselves are not asserted (speed goals are judged on the GPU); this
keeps the benches from rotting between GPU sessions, where a broken bench costs device time."""
import json

import pytest


def _run(module, argv):
    import importlib

    importlib.import_module(f"golf.bench.{module}").main(argv)


def test_bench_train_cpu(tmp_path):
    out = tmp_path / "train.json"
    _run("train", ["--preset", "tiny", "--steps", "1", "--warmup", "0", "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["preset"] == "tiny" and r["steps"] == 1 and r["compile"] is False
    assert r["tokens_per_s"] > 0 and r["ms_per_step"] > 0 and r["mfu"] is None  # no CPU peak to compare with


def test_bench_eval_cpu(tmp_path):
    out = tmp_path / "eval.json"
    _run("eval", ["--preset", "tiny", "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["stride"] == 64 and r["windows"] >= 2 and r["tokens_per_s"] > 0
    assert r["meets_limit"] is None and "not an H100" in r["note"]  # a CPU figure judges nothing


def test_bench_mixers_cpu(tmp_path):
    out = tmp_path / "mixers.json"
    _run("mixers", ["--seq-len", "64", "--iters", "1", "--dim", "32", "--heads", "2", "--out", str(out)])
    r = json.loads(out.read_text())
    assert set(r["results"]) == {"attn", "stream", "deltanet", "hypermix"}
    assert r["results"]["attn"]["ratio_vs_attn"] == 1.0 and r["compile"] is False
    assert r["cpu_figures"] is True and r["goal_met"] is None


def test_bench_quant_size_only(tmp_path):
    out = tmp_path / "quant.json"
    _run("quant", ["--preset", "tiny", "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["preset"]["preset"] == "tiny" and "no checkpoint" in r["note"]
    runs = {x["weights"]: x for x in r["preset"]["runs"]}
    assert set(runs) == {"init", "gaussian", "student_t4"} and all(x["bits_per_param"] > 0 for x in runs.values())
    assert all(x["public_format"]["params"] == x["params"] for x in runs.values())
    assert runs["student_t4"]["bytes"] < runs["gaussian"]["bytes"]  # heavy tails compress better


def test_bench_data(tmp_path, shared_data):
    out = tmp_path / "data.json"
    _run("data", ["--mb", "0.3", "--workers", "2", "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["sp1024_parallel"]["workers"] == 2 and r["sp1024_parallel"]["tokens_per_s"] > 0


def test_bench_mixers_rejects_cuda_without_gpu(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(SystemExit) as e:
        _run("mixers", ["--device", "cuda", "--out", str(tmp_path / "x.json")])
    assert e.value.code == 2 and "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
