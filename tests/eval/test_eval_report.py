"""eval_bpb.py end to end: artifact + data folder -> JSON report, summary, plot; the artifact-vs-data
checks and bad settings give clear errors; the byte audit passes on real text."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datakit import token_folder

import eval_bpb
from golf.compress.artifact import load_artifact, save_artifact
from golf.core.config import load_config
from golf.data.bpb import build_luts
from golf.data.folder import shard_files
from golf.data.tokenizer import ByteTokenizer
from golf.eval.report import build_report, plot_bpb_vs_position, summary
from golf.eval.score import evaluate_bpb
from golf.model.gpt import GPT

torch.set_num_threads(1)
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
TEXT = ("It was the best of times, it was the worst of times. Ça m'est égal — naïve café. " * 4)


def _data_folder(root: Path, n_docs: int = 12, sha: str | None = None, vocab: int | None = None) -> Path:
    tok = ByteTokenizer()
    val = []
    for i in range(n_docs):
        val += [tok.bos_id] + tok.encode(f"{i}: " + TEXT[i:])
    return token_folder(root / "data", tok, tokenizer_sha=sha, vocab_size=vocab,
                        val=np.asarray(val), train=np.asarray(val[:100]))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):

    root = tmp_path_factory.mktemp("ev")
    data = _data_folder(root)
    h = load_config(["--num-layers", "2", "--model-dim", "32", "--num-heads", "2", "--num-kv-heads", "1",
                     "--vocab-size", "260", "--train-seq-len", "64", "--eval-stride", "16",
                     "--eval-batch-windows", "8", "--num-memory-tokens", "4", "--mtp-num-heads", "0"], env={})
    torch.manual_seed(0)
    model = GPT(h.model_config())
    art = root / "model.ptz"
    save_artifact(art, model, h, ByteTokenizer().sha256)
    return root, data, art


def test_cli_end_to_end_report_and_plot(setup):
    root, data, art = setup
    out, plot = root / "eval.json", root / "pos.png"
    eval_bpb.main(["--artifact", str(art), "--data-path", str(data), "--contexts", "32,64",
                   "--out", str(out), "--plot", str(plot), "--device", "cpu"])
    rep = json.loads(out.read_text())
    # defaults come from the artifact's config: EVAL_SEQ_LEN = TRAIN_SEQ_LEN, EVAL_STRIDE, EVAL_BATCH_WINDOWS
    assert (rep["seq_len"], rep["stride"], rep["batch_windows"]) == (64, 16, 8)
    val = np.fromfile(shard_files(data, "val")[0], dtype=np.uint16, offset=1024)
    assert rep["tokens"] == len(val) - 1
    # The CLI scores the *artifact's* model: same numbers as evaluating the loaded artifact directly.
    model, _ = load_artifact(art, "cpu")
    direct = evaluate_bpb(model, val, build_luts(ByteTokenizer()), 64, 16, 8)
    assert rep["val_bpb"] == pytest.approx(direct["val_bpb"], rel=1e-6)
    assert rep["bytes"] == direct["bytes"]
    assert 0 < rep["val_bpb"] < 20 and rep["tokens_per_s"] > 0
    assert sorted(rep["contexts"]) == ["32", "64"]
    assert rep["contexts"]["32"]["tokens"] == rep["tokens"]
    assert len(rep["position_bpb"]["bpb"]) == 1  # 64 tokens = one 64-token bucket
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = summary(rep)
    assert "val_bpb:" in text and any(line.split()[:1] == ["32"] for line in text.splitlines())


def test_report_without_contexts_plots_the_headline_buckets(tmp_path):
    res = {"val_loss": 2.0, "val_bpb": 2.9, "tokens": 100, "bytes": 95, "windows": 3, "seq_len": 128,
           "stride": 64, "seconds": 1.0, "tokens_per_s": 100.0, "position_bucket": 64, "loss_sum": 200.0,
           "position_bpb": {"start": [0, 64], "end": [64, 128], "tokens": [60, 40], "bytes": [60, 35],
                            "loss": [2.0, 2.0], "bpb": [2.88, None]}}
    rep = build_report(res, None, artifact="x.ptz")
    assert rep["contexts"] == {} and rep["artifact"] == "x.ptz" and "commit" in rep
    assert plot_bpb_vs_position(rep, tmp_path / "p.png").is_file()
    rep["position_bpb"]["bpb"] = [None, None]
    assert plot_bpb_vs_position(rep, tmp_path / "q.png") is None


def _err(argv):
    """The CLI fails cleanly: a GolfError message on stderr and exit code 2, no traceback."""
    with pytest.raises(SystemExit) as e:
        eval_bpb.main(argv)
    assert e.value.code == 2


@pytest.mark.parametrize("extra,match", [
    (["--stride", "65"], "stride"),
    (["--seq-len", "100000"], "fewer than one"),
    (["--max-tokens", "40"], "fewer than one"),
])
def test_bad_settings(setup, capsys, extra, match):
    _, data, art = setup
    _err(["--artifact", str(art), "--data-path", str(data), "--device", "cpu", *extra])
    assert match in capsys.readouterr().err


def test_artifact_data_mismatches_name_both_files(setup, tmp_path, capsys):
    _, _, art = setup
    bad_sha = _data_folder(tmp_path / "a", sha="0" * 64)
    _err(["--artifact", str(art), "--data-path", str(bad_sha)])
    err = capsys.readouterr().err
    assert "tokenizer mismatch" in err and str(art) in err and "manifest.json" in err
    bad_vocab = _data_folder(tmp_path / "b", vocab=1024)
    _err(["--artifact", str(art), "--data-path", str(bad_vocab)])
    assert "vocab mismatch" in capsys.readouterr().err
    _err(["--artifact", str(tmp_path / "missing.ptz"), "--data-path", str(bad_vocab)])
    assert "missing.ptz" in capsys.readouterr().err
    _err(["--artifact", str(art), "--data-path", str(tmp_path / "nodata")])
    assert "make data" in capsys.readouterr().err
    _err(["--data-path", str(bad_vocab)])
    assert "--artifact" in capsys.readouterr().err


def test_audit_bytes_cli(tmp_path, capsys):
    tok = tmp_path / "tokenizer.json"
    ByteTokenizer().save(tok)
    text = tmp_path / "docs.txt"
    text.write_text("héllo wörld\n\nsecond doc — ünïcode\n", encoding="utf-8")
    src = SHARED / "fineweb_val.jsonl.zst"
    with pytest.raises(SystemExit) as e:
        eval_bpb.main(["--audit-bytes", "--tokenizer", str(tok), "--text", str(src if src.is_file() else text),
                       "--max-docs", "50"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    lut = int(out.split("lut_bytes:")[1].split()[0])
    dec = int(out.split("decoded_bytes:")[1].split()[0])
    assert lut == dec > 0 and "ok:True" in out
    _err(["--audit-bytes", "--tokenizer", str(tok)])
