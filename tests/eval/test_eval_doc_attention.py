"""DOC_ATTENTION=1 through both evaluation strategies (golf issue 23): in a val stream [A, B] the
targets of B get the losses they get when B is the whole stream (A's length a multiple of the
stride, so B's windows line up), and changing any token of A changes no loss of B. TTT (global SGD)
is checked on its first chunk, scored before any update: once it has adapted, what it learned on A
is in the weights by design (TTT=lora resets its adapters per document: tests/eval/test_ttt.py)."""
import numpy as np
import pytest
import torch
from modelkit import randomize, small_cfg

from golf.data.bpb import build_luts
from golf.data.shards import BOS_ID
from golf.data.tokenizer import ByteTokenizer
from golf.eval.score import SlidingWindow, evaluate_bpb
from golf.eval.ttt import ScoreFirstSGD
from golf.model.gpt import GPT

SEQ, STRIDE, LA, LB = 32, 8, 40, 70  # LA % STRIDE == 0


def _setup(mixers, doc_attention=True):
    torch.manual_seed(0)
    cfg = small_cfg(vocab_size=260, mixers=mixers, doc_attention=doc_attention, attn_window=6, stream_chunk=8,
                    deltanet_chunk=8, smear_gate=True, bigram_vocab_size=32, bigram_dim=8, train_seq_len=SEQ)
    model = randomize(GPT(cfg), std=0.05).eval()
    rng = np.random.default_rng(0)
    a, b = rng.integers(4, 260, LA), rng.integers(4, 260, LB)
    a[0] = b[0] = BOS_ID
    return model, a, b, build_luts(ByteTokenizer(), torch.device("cpu"))


STRATEGIES = {
    "sliding_window": lambda: (lambda m, s, luts: evaluate_bpb(m, s, luts, SEQ, STRIDE, 4, per_target=True)),
    "score_first_sgd": lambda: ScoreFirstSGD(SEQ, STRIDE, 4, chunk_tokens=4096, lr=0.05, record=True),  # one chunk
}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("mixers", ["", "swa,attn", "attn,stream,attn,deltanet", "hypermix,attn"])
def test_strategies_score_each_document_alone(strategy, mixers):
    model, a, b, luts = _setup(mixers)
    run = STRATEGIES[strategy]()
    packed = np.asarray(run(model, np.concatenate([a, b]), luts)["target_loss"])
    alone = np.asarray(run(model, b, luts)["target_loss"])
    assert not np.isnan(packed).any() and len(packed) == LA + LB - 1
    np.testing.assert_allclose(packed[LA:], alone, rtol=1e-5, atol=1e-5)  # targets B[1:] from B only
    for t in (0, LA - 10, LA - 1):  # any token of A (BOS included; the last two are in windows of B)
        a2 = a.copy()
        a2[t] = (a2[t] + 7) % 256 + 4
        other = np.asarray(run(model, np.concatenate([a2, b]), luts)["target_loss"])
        np.testing.assert_allclose(other[LA:], packed[LA:], rtol=1e-6, atol=1e-6)
        assert not np.array_equal(other[:LA], packed[:LA])


def test_without_doc_attention_b_sees_a():
    """The check above can fail: with plain causal attention, A's tokens reach B's losses."""
    model, a, b, luts = _setup("", doc_attention=False)
    packed = np.asarray(evaluate_bpb(model, np.concatenate([a, b]), luts, SEQ, STRIDE, 4,
                                     per_target=True)["target_loss"])
    a[LA - 2] = (a[LA - 2] + 7) % 256 + 4  # inside the windows that score B's first targets
    other = np.asarray(evaluate_bpb(model, np.concatenate([a, b]), luts, SEQ, STRIDE, 4,
                                    per_target=True)["target_loss"])
    assert not np.allclose(other[LA:LA + SEQ], packed[LA:LA + SEQ])


def test_per_target_losses_add_up_to_the_sliding_window_score():
    model, a, b, luts = _setup("swa,attn")
    stream = np.concatenate([a, b])
    res = evaluate_bpb(model, stream, luts, SEQ, STRIDE, 3, per_target=True)
    assert sum(res["target_loss"]) == pytest.approx(res["loss_sum"], rel=1e-9)
    assert "target_loss" not in SlidingWindow(SEQ, STRIDE, 3)(model, stream, luts)  # off by default
