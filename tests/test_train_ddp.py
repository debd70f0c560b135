"""2-process DDP on CPU (gloo, torchrun): ranks stay in sync and split the same global batch."""
import json
import subprocess
import sys


from test_train import REPO, args, history, run_inprocess, sub_env


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
