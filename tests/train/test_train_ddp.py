"""2-process DDP on CPU (gloo, torchrun): ranks stay in sync and split the same global batch."""
import json
import subprocess
import sys

from train.test_train import REPO, args, history, run_inprocess, sub_env


def test_two_process_gloo_matches_single_process(byte_data_dir, tmp_path):
    out = tmp_path / "runs"
    over = dict(iterations=6, compile_warmup_steps=1, val_every=3)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train_gpt.py",
           *args(byte_data_dir, out, "ddp", **over)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=sub_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    single = run_inprocess(args(byte_data_dir, out, "single", **over))
    stdout = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, stdout[-4000:]
    m = json.loads((out / "ddp" / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["status"] == "finished" and m["steps"] == 6
    assert m["ranks_in_sync"] is True  # both ranks hold identical final weights
    # rank 1 logs nothing: one header, one line per step
    log = (out / "ddp" / "train.log").read_text()
    assert log.count("# golf run log") == 1 and log.count("step:6 train_loss:") == 1
    # the two ranks together see exactly the single process's global batch: same first loss
    a = [r["train_loss"] for r in history(out / "ddp") if "train_loss" in r]
    b = [r["train_loss"] for r in history(out / "single") if "train_loss" in r]
    assert abs(a[0] - b[0]) < 1e-5, (a[0], b[0])
    assert max(abs(x - y) for x, y in zip(a, b)) < 0.05  # and the trajectories stay close
    assert abs(m["val_bpb"] - single["val_bpb"]) < 0.05


def test_two_process_compiled_ddp_switches_qat_in_sync(byte_data_dir, tmp_path):
    """The 8xH100 shape of a run on 2 CPU ranks: torch.compile (dynamo + AOT autograd, no inductor
    build) inside DDP, gradient sync, sharded Muon, late QAT switched on mid-run: the ranks finish
    in sync with no recompile in the timed loop."""
    out = tmp_path / "runs"
    over = dict(iterations=8, compile_warmup_steps=4, qat_lr_scale=0.5, compile="on", compile_backend="aot_eager")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train_gpt.py",
           *args(byte_data_dir, out, "ddpc", **over)]
    proc = subprocess.run(cmd, cwd=REPO, env=sub_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    m = json.loads((out / "ddpc" / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["ranks_in_sync"] is True and m["recompiles_in_loop"] == 0
    log = (out / "ddpc" / "train.log").read_text()
    assert "compile:True" in log and "qat:on" in log and "compile_graph_breaks:0" in log
