"""golf/train/trainer.py end to end on CPU: outputs, exact resume after SIGTERM, NaN stop, size pre-flight."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import golf.train.trainer as T
from golf.core.config import load_config
from golf.core.utils import GolfError, RunLog
from golf.data.folder import read_manifest
from golf.model.gpt import GPT
from golf.train.trainer import batch_layout, preflight, setup_distributed, train

REPO = Path(__file__).resolve().parents[2]

# a 2-layer, dim-64 model with every record-stack part on (memory tokens, BigramHash, SmearGate, EMA)
TINY = dict(num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1, rope_dims=16, mlp_mult=2,
            num_memory_tokens=4, bigram_vocab_size=256, bigram_dim=16, smear_gate=True, vocab_size=260,
            train_seq_len=64, eval_stride=64, train_batch_tokens=1024, max_wallclock_seconds=0,
            val_max_tokens=2048, val_batch_tokens=1024, compile_warmup_steps=2, log_every=1, iterations=30)


def args(data_dir, out_dir, run_id, **over):
    kv = {**TINY, "data_path": data_dir, "out_dir": out_dir, "run_id": run_id, **over}
    return [f"--{k.replace('_', '-')}={v}" for k, v in kv.items()]


def run_inprocess(argv):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same as the subprocesses: bitwise-identical float reductions
    try:
        return train(load_config(argv, env={}))
    finally:
        torch.set_num_threads(threads)


def sub_env():
    env = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def history(run_dir):
    return json.loads((Path(run_dir) / "metrics.json").read_text())["history"]


def test_resume_after_sigterm_is_identical(byte_data_dir, tmp_path):
    out = tmp_path / "runs"
    # the interrupted run starts first (subprocess), the reference runs in-process meanwhile
    proc = subprocess.Popen([sys.executable, "train_gpt.py", *args(byte_data_dir, out, "cut")], cwd=REPO,
                            env=sub_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ref = run_inprocess(args(byte_data_dir, out, "ref"))
    log = out / "cut" / "train.log"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and "step:5 " in log.read_text():
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.01)
    stdout = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, stdout  # stopped by the signal, after writing ckpt.pt
    ck = torch.load(out / "cut" / "ckpt.pt", weights_only=False)
    assert 5 <= ck["step"] < TINY["iterations"], ck["step"]
    assert not (out / "cut" / "final.pt").exists()

    res = subprocess.run([sys.executable, "train_gpt.py", *args(byte_data_dir, out, "cut"), "--resume"], cwd=REPO,
                         env=sub_env(), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"resumed_from_step:{ck['step']}" in (out / "cut" / "train.log").read_text()

    def losses(run):
        return [(r["step"], r["train_loss"]) for r in history(out / run) if "train_loss" in r]

    a, b = losses("ref"), losses("cut")
    assert [s for s, _ in a] == list(range(1, TINY["iterations"] + 1))
    assert a == b  # exactly the same floats at every step
    fa = torch.load(out / "ref" / "final.pt", weights_only=False)
    fb = torch.load(out / "cut" / "final.pt", weights_only=False)
    assert fa["state_dict"].keys() == fb["state_dict"].keys()
    for k in fa["state_dict"]:
        assert torch.equal(fa["state_dict"][k], fb["state_dict"][k]), k
    assert fa["metrics"]["val_bpb"] == fb["metrics"]["val_bpb"]

    # the uninterrupted run's outputs follow the contract
    assert ref["status"] == "finished" and ref["steps"] == TINY["iterations"]
    assert set(fa) >= {"config", "model_config", "state_dict", "tokenizer_sha256", "data_path", "metrics"}
    assert not any(k.startswith("mtp") for k in fa["state_dict"])
    m = json.loads((out / "ref" / "metrics.json").read_text())
    assert 0 < m["val_bpb"] < 8 and m["val_bpb"] == ref["val_bpb"]
    assert m["config"]["run_id"] == "ref" and m["config"]["num_layers"] == TINY["num_layers"]  # what ran, typed
    assert m["history"][0]["train_loss"] > m["history"][TINY["iterations"] - 1]["train_loss"] + 0.5  # it learns
    text = (out / "ref" / "train.log").read_text()
    assert f"train_tokens:{read_manifest(byte_data_dir)['splits']['train']['tokens']} " in text  # the train split only
    for key in ("commit:", "versions:", "device:", "config:", "step:30 train_loss:", "lr_scale:", "ms_step:",
                "tok_s:", "val_loss:", "val_bpb:"):
        assert key in text, key
    # a finished run is never overwritten, an interrupted one is not silently restarted
    with pytest.raises(GolfError, match="finished run"):
        run_inprocess(args(byte_data_dir, out, "ref"))


def test_nan_loss_stops_with_step_and_checkpoint(byte_data_dir, tmp_path, monkeypatch):
    real = T.build_model

    def poisoned(h, device):
        model = real(h, device)
        fwd, calls = model.forward, [0]

        def forward(idx, targets=None, reduction="mean"):
            out = fwd(idx, targets, reduction)
            calls[0] += 1
            if model.training and calls[0] >= 6:  # the 6th training forward = step 6
                out = out * float("nan")
            return out

        model.forward = forward
        return model

    monkeypatch.setattr(T, "build_model", poisoned)
    out = tmp_path / "runs"
    with pytest.raises(GolfError) as e:
        run_inprocess(args(byte_data_dir, out, "nan", compile_warmup_steps=0, checkpoint_every=4))
    msg = str(e.value)
    assert "at step 6" in msg and str(out / "nan" / "ckpt.pt") in msg
    assert torch.load(out / "nan" / "ckpt.pt", weights_only=False)["step"] == 4  # the last good one
    assert json.loads((out / "nan" / "metrics.json").read_text())["status"] == "diverged"


def test_preflight_refuses_oversize(byte_data_dir, tmp_path):
    big = dict(num_layers=2, model_dim=768, num_heads=4, num_kv_heads=2, mlp_mult=4, quant_mlp_bits=16,
               quant_attn_bits=16, quant_embed_bits=16)
    with pytest.raises(GolfError) as e:
        run_inprocess(args(byte_data_dir, tmp_path, "big", **big))
    msg = str(e.value)
    assert "size pre-flight" in msg and "16,000,000" in msg and "ALLOW_OVERSIZE=1" in msg
    assert "mlp" in msg and "attn" in msg  # the per-group breakdown


def test_preflight_allow_oversize_goes_on():

    h = load_config(args("x", "x", "x", num_layers=2, model_dim=768, num_heads=4, num_kv_heads=2, mlp_mult=4,
                         quant_mlp_bits=16, quant_attn_bits=16, allow_oversize=True), env={})
    est = preflight(GPT(h.model_config()), h, RunLog(None, enabled=False))
    assert est["total"] > 16_000_000


@pytest.mark.parametrize("total,warned", [(15_400_000, False), (15_600_000, True), (16_000_000, True)])
def test_preflight_warns_near_the_cap(tmp_path, monkeypatch, total, warned):
    """Within PREFLIGHT_MARGIN of the cap the estimate's own error could tip the artifact over."""

    fake = {"groups": {"mlp": {"params": 1, "bits": 5, "bytes": total - 100}}, "header": 50, "code": 50,
            "params": 1, "bits_per_param": 5.0, "total": total, "cap": 16_000_000}
    monkeypatch.setattr(T, "estimate_artifact_bytes", lambda model, h: fake)
    h = load_config(["--preset", "tiny"], env={})
    preflight(None, h, RunLog(tmp_path / "log", echo=False))
    assert ("within 3% of the cap" in (tmp_path / "log").read_text()) == warned


def test_flex_attention_on_is_refused_on_cpu_before_any_work():
    h = load_config(["--preset", "tiny", "--device", "cpu", "--mixers", "swa,attn", "--flex-attention", "on"], env={})
    with pytest.raises(GolfError, match="FLEX_ATTENTION=on trains only on CUDA"):
        setup_distributed(h)
    h.mixers = "attn"  # no window layer: the setting is moot and the run goes on
    assert setup_distributed(h).device.type == "cpu"


def test_batch_layout():
    h = load_config(["--preset", "record"], env={})
    assert batch_layout(h, 8, "cuda") == (32, 1)  # the record: 524288 / 8 GPUs = 32 x 2048
    assert batch_layout(h, 1, "cuda") == (32, 8)  # one GPU: 8 accumulation steps, as the public script
    h.train_batch_tokens = 786432
    assert batch_layout(h, 1, "cuda") == (48, 8)
    h.grad_accum_steps = 4
    assert batch_layout(h, 2, "cuda") == (48, 4)
    h.train_batch_tokens = 1000
    with pytest.raises(GolfError, match="TRAIN_BATCH_TOKENS"):
        batch_layout(h, 2, "cuda")


def test_compiled_loop_switches_qat_without_recompiling(byte_data_dir, tmp_path):
    """The CUDA path on CPU: COMPILE=on with dynamo's eager backend (no C++ build, same graphs and
    guards as inductor). The warm-up must compile both QAT variants so the late-QAT switch inside
    the timed loop costs no recompile; the log reports it and metrics.json records it."""
    torch._dynamo.reset()
    out = tmp_path / "runs"
    res = run_inprocess(args(byte_data_dir, out, "compiled", compile="on", compile_backend="eager",
                             compile_warmup_steps=4, iterations=12, qat_lr_scale=0.5))
    torch._dynamo.reset()
    log = (out / "compiled" / "train.log").read_text()
    assert "compile:True" in log and "qat:on" in log
    assert "compile_graphs:2 " in log or "compile_graphs:2\n" in log  # QAT off + QAT on, both in warm-up
    assert res["recompiles_in_loop"] == 0 and "recompiles_in_loop:0" in log
    assert math.isfinite(res["val_bpb"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mixers", ["", "swa,stream", "deltanet,hypermix"])
def test_cuda_compiled_bf16_training_run(byte_data_dir, tmp_path, mixers):
    """The CUDA training path end to end (inductor, bf16 autocast, fused AdamW, compiled Muon NS,
    late QAT, flex_attention for window layers): finishes, no recompile in the timed loop, finite."""
    torch._dynamo.reset()
    out = tmp_path / "runs"
    res = run_inprocess(args(byte_data_dir, out, "cuda", device="cuda", compile="on", compile_warmup_steps=4,
                             iterations=12, qat_lr_scale=0.5, mixers=mixers, attn_window=16))
    torch._dynamo.reset()
    log = (out / "cuda" / "train.log").read_text()
    assert "amp:bf16" in log and "qat:on" in log and "compile_graph_breaks:0" in log
    assert res["recompiles_in_loop"] == 0 and math.isfinite(res["val_bpb"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("extra", [dict(mixers="ttt_linear,attn"), dict(rmt_memory=4, rmt_segment=16, rmt_bptt=1)])
def test_cuda_compiled_bf16_training_run_ttt_linear_and_rmt(byte_data_dir, tmp_path, extra):
    """As above for the issue-20 mechanisms: TTT-Linear layers, RMT segments with truncated BPTT."""
    torch._dynamo.reset()
    out = tmp_path / "runs"
    res = run_inprocess(args(byte_data_dir, out, "cuda", device="cuda", compile="on", compile_warmup_steps=4,
                             iterations=12, qat_lr_scale=0.5, **extra))
    torch._dynamo.reset()
    log = (out / "cuda" / "train.log").read_text()
    assert "amp:bf16" in log and "qat:on" in log and "compile_graph_breaks:0" in log
    assert res["recompiles_in_loop"] == 0 and math.isfinite(res["val_bpb"])


def test_checkpoints_by_the_wall_clock_and_a_killed_runs_log_is_kept_aside(byte_data_dir, tmp_path):
    """CHECKPOINT_MINUTES (default 5) writes ckpt.pt by the clock, so kill -9 loses minutes; a run
    started again under the RUN_ID of one killed before any checkpoint gets a fresh log, the old
    one kept beside it (not a second header appended)."""
    out = tmp_path / "runs"
    assert load_config(env={}).checkpoint_minutes == 5.0
    run_dir = out / "clock"
    run_dir.mkdir(parents=True)
    (run_dir / "train.log").write_text("# golf run log, killed at step 3\n")
    run_inprocess(args(byte_data_dir, out, "clock", iterations=4, checkpoint_minutes=1e-9))
    log = (run_dir / "train.log").read_text()
    assert log.count("# golf run log") == 1 and "killed at step 3" not in log
    assert [p.read_text() for p in run_dir.glob("train.log.killed-*")] == ["# golf run log, killed at step 3\n"]
    periodic = [line for line in log.splitlines() if line.startswith("checkpoint:") and "reason:every" in line]
    assert len(periodic) == 3  # after steps 1-3 (step 4 ends the run: the end checkpoint)


def test_record_optimizer_settings_train_end_to_end(byte_data_dir, tmp_path):
    """Polar-Express NS, MuonEq-R, per-group weight decays and a MIN_LR floor through the real loop:
    the LR scale bottoms out at the floor, late QAT still starts, the run finishes."""
    out = tmp_path / "runs"
    res = run_inprocess(args(byte_data_dir, out, "opt", muon_ns="polar", muon_row_normalize=True, min_lr=0.2,
                             qat_lr_scale=0.5, warmdown_frac=0.6, embed_weight_decay=0.085, scalar_weight_decay=0.02,
                             muon_weight_decay=0.095, iterations=20))
    scales = [r["lr_scale"] for r in history(out / "opt") if "lr_scale" in r]
    assert min(scales) == 0.2 and scales[-1] == 0.2 and max(scales) == 1.0
    assert "qat:on" in (out / "opt" / "train.log").read_text()
    assert math.isfinite(res["val_bpb"])
