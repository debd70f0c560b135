"""DOC_PACKING=1 through the real training loop on a tiny token folder: finite losses, the start-up
log line, and a loss that is the mean over the non-padded targets only."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datakit import token_folder

from golf.core.config import load_config
from golf.data.loader import TokenLoader
from golf.data.tokenizer import ByteTokenizer
from golf.train.trainer import build_model, train

SMALL = dict(num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, rope_dims=8, mlp_mult=2, vocab_size=260,
             num_memory_tokens=2, bigram_vocab_size=64, bigram_dim=8, smear_gate=True, mtp_num_heads=1,
             train_seq_len=32, eval_stride=32, train_batch_tokens=256, max_wallclock_seconds=0, iterations=3,
             val_max_tokens=512, val_batch_tokens=256, compile_warmup_steps=1, log_every=1, device="cpu",
             doc_attention=1, doc_packing=1)


def docs(n: int, seed: int) -> np.ndarray:
    """n byte documents of 1..80 tokens (BOS first): some longer than a 32-token row."""
    rng = np.random.default_rng(seed)
    return np.concatenate([np.concatenate([[1], rng.integers(4, 260, L - 1)])
                           for L in rng.integers(1, 81, n)]).astype(np.uint16)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return token_folder(tmp_path_factory.mktemp("pack") / "d", ByteTokenizer(), shard_tokens=2048,
                        train=[docs(60, 0), docs(40, 1)], val=docs(30, 2))


def config(data, out, **over):
    kv = {**SMALL, "data_path": data, "out_dir": out, "run_id": "packed", **over}
    return load_config([f"--{k.replace('_', '-')}={v}" for k, v in kv.items()], env={})


def test_training_steps_with_doc_packing(data, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = train(config(data, tmp_path))
    finally:
        torch.set_num_threads(threads)
    hist = json.loads((tmp_path / "packed" / "metrics.json").read_text())["history"]
    losses = [r["train_loss"] for r in hist if "train_loss" in r]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses) and math.isfinite(res["val_bpb"])
    log = (tmp_path / "packed" / "train.log").read_text()
    assert "doc_packing:1" in log and "padded_share:" in log


def test_the_loss_ignores_padded_targets(data, tmp_path):
    h = config(data, tmp_path)
    torch.manual_seed(0)
    model = build_model(h, torch.device("cpu"))
    ld = TokenLoader.from_data_path(data, h.vocab_size, seq_len=h.train_seq_len, local_batch_seqs=4, seed=1,
                                    doc_packing=True)
    x, y = ld.next_batch()
    pad = y == -100
    assert pad.any() and (x[pad] == 0).all()
    model.eval()  # (the MTP head's auxiliary loss is training-only)
    with torch.no_grad():
        loss = model(x, y)
        logits = model(x)
        by_hand = F.cross_entropy(logits[~pad], y[~pad])  # the mean over real targets only
        garbage = y.clone()
        garbage[pad] = 5  # whatever a padded target were, it would change the loss if it counted
        assert torch.allclose(loss, by_hand, atol=1e-5) and not torch.allclose(model(x, garbage), loss)
    model.train()
    assert math.isfinite(model(x, y).item())  # with the MTP head's shifted targets too
