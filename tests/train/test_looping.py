"""Depth recurrence in the trainer (issue 17): plain until ENABLE_LOOPING_AT, then looped, with both
graphs compiled in the warm-up so the switch costs no recompile; the final val runs looped."""
import math
import re

import torch

from golf.core.config import load_config
from golf.train.trainer import train

# a tiny 4-layer model with all three switches: layers 1..2 twice, lanes from layer 3, gated skips
TINY = dict(num_layers=4, model_dim=64, num_heads=2, num_kv_heads=1, rope_dims=16, mlp_mult=2, vocab_size=260,
            num_memory_tokens=0, bigram_vocab_size=0, smear_gate=True, train_seq_len=64, eval_stride=64,
            train_batch_tokens=1024, max_wallclock_seconds=0, val_max_tokens=2048, val_batch_tokens=1024,
            log_every=1, num_loops=1, loop_start=1, loop_end=2, enable_looping_at=0.5, parallel_start_layer=3,
            skip_gates=True)


def test_compiled_run_switches_looping_on_at_the_fraction_without_recompiling(byte_data_dir, tmp_path):
    torch._dynamo.reset()
    out = tmp_path / "runs"
    kv = {**TINY, "data_path": byte_data_dir, "out_dir": out, "run_id": "loop", "compile": "on",
          "compile_backend": "eager", "compile_warmup_steps": 2, "iterations": 8, "qat_lr_scale": 0.5}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = train(load_config([f"--{k.replace('_', '-')}={v}" for k, v in kv.items()], env={}))
    finally:
        torch.set_num_threads(threads)
        torch._dynamo.reset()
    log = (out / "loop" / "train.log").read_text()
    for part in ("params_parallel_lanes:6 ", "params_depth_recurrence:64 ", "params_skip_gates:192 "):
        assert part in log, part
    assert "looping:off" in log  # from step 0
    on = re.search(r"step:(\d+) looping:on progress:(\S+) run_order:0,1,2,1,2,3", log)
    assert on and int(on.group(1)) == 4 and float(on.group(2)) == 0.5  # 4 of 8 steps = ENABLE_LOOPING_AT
    assert "qat:on" in log
    # looped/plain x QAT off/on: four graphs, all in the warm-up; none compiled in the timed loop
    assert re.search(r"compile_graphs:4\b", log)
    assert res["recompiles_in_loop"] == 0 and math.isfinite(res["val_bpb"])
    state = torch.load(out / "loop" / "final.pt", map_location="cpu", weights_only=False)
    assert state["model_config"]["num_loops"] == 1 and "skip_gates" in state["state_dict"]
