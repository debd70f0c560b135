"""Distributed eval: 2 gloo processes (what torchrun launches) give the single-process result, both
through evaluate_bpb and through the eval_bpb.py CLI on an artifact."""
from __future__ import annotations

import json
import os
import textwrap
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from datakit import token_folder
from distkit import free_port, start_ranks, wait_ranks

from golf.compress.artifact import load_artifact, save_artifact
from golf.core.config import load_config
from golf.data.bpb import build_luts
from golf.data.tokenizer import ByteTokenizer
from golf.eval.score import evaluate_bpb
from golf.model.gpt import GPT

ROOT = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent('''
    import json, os, sys
    import numpy as np, torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    from golf.data.bpb import build_luts
    from golf.eval.score import evaluate_bpb
    from golf.core.config import GPTConfig
    from golf.model.gpt import GPT
    from golf.data.tokenizer import ByteTokenizer
    import eval_bpb

    out, cfg_json, toks_path, art, data = sys.argv[1:6]
    # 1. the CLI under torchrun's environment: it initialises gloo itself and tears it down
    eval_bpb.main(["--artifact", art, "--data-path", data, "--device", "cpu", "--contexts", "32",
                   "--out", out + ".cli.json"])
    # 2. evaluate_bpb with explicit rank / world_size. A fresh port: reusing the CLI's one races
    # with rank 0 tearing down its store (a rank can rendezvous with the dying store and hang).
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + os.environ["SECOND_PORT"],
                            rank=rank, world_size=world)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_dict(json.loads(cfg_json)))
    toks = np.load(toks_path)
    luts = build_luts(ByteTokenizer())
    res = [evaluate_bpb(model, toks, luts, 32, s, 3, rank=rank, world_size=world) for s in (8, 32, 5)]
    if rank == 0:
        json.dump(res, open(out, "w"))
    dist.destroy_process_group()
''')


def test_two_gloo_ranks_equal_one_process(tmp_path):

    tok = ByteTokenizer()
    h = load_config(["--num-layers", "1", "--model-dim", "32", "--num-heads", "2", "--num-kv-heads", "1",
                     "--vocab-size", "260", "--train-seq-len", "32", "--eval-stride", "8",
                     "--eval-batch-windows", "4", "--num-memory-tokens", "2", "--mtp-num-heads", "0"], env={})
    cfg = h.model_config()
    rng = np.random.default_rng(0)
    toks = rng.integers(4, 260, size=203).astype(np.uint16)  # 202 targets: not a multiple of any stride
    toks[::37] = tok.bos_id
    np.save(tmp_path / "toks.npy", toks)
    data = token_folder(tmp_path / "data", tok, val=toks)
    torch.manual_seed(0)
    art = tmp_path / "model.ptz"
    save_artifact(art, GPT(cfg), h, tok.sha256)
    (tmp_path / "worker.py").write_text(WORKER)

    port, second_port = free_port(), free_port()
    while second_port == port:
        second_port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "LOCAL_WORLD_SIZE": "2",
           "SECOND_PORT": str(second_port)}
    out = tmp_path / "res.json"
    wait_ranks(start_ranks([str(tmp_path / "worker.py"), str(out), json.dumps(asdict(cfg)), str(tmp_path / "toks.npy"),
                            str(art), str(data)], env, ROOT), timeout=120)

    luts = build_luts(tok)
    torch.manual_seed(0)
    model = GPT(cfg)
    dist_res = json.loads(out.read_text())
    for s, d in zip((8, 32, 5), dist_res):
        single = evaluate_bpb(model, toks, luts, 32, s, 3)
        assert d["tokens"] == single["tokens"] == len(toks) - 1
        assert (d["bytes"], d["windows"]) == (single["bytes"], single["windows"])
        assert d["position_bpb"]["tokens"] == single["position_bpb"]["tokens"]
        assert d["val_loss"] == pytest.approx(single["val_loss"], rel=1e-6)
        assert d["val_bpb"] == pytest.approx(single["val_bpb"], rel=1e-6)

    cli = json.loads(Path(str(out) + ".cli.json").read_text())
    assert cli["world_size"] == 2
    qmodel, _ = load_artifact(art, "cpu")
    single = evaluate_bpb(qmodel, toks, luts, 32, 8, 4)
    assert cli["tokens"] == single["tokens"] and cli["bytes"] == single["bytes"]
    assert cli["val_bpb"] == pytest.approx(single["val_bpb"], rel=1e-6)
    assert cli["contexts"]["32"]["tokens"] == single["tokens"]
