"""golf/eval/ttt.py: score-first TTT, and the legality test that must catch an illegal order.

The test: run the whole evaluation, then again with every token scored after step k changed; the
losses of every step up to k must be identical (CPU, deterministic). A strategy that trains on a
chunk before scoring it fails it."""
import numpy as np
import pytest
import torch
from modelkit import randomize, small_cfg

from golf.core.config import load_config
from golf.core.utils import GolfError
from golf.data.bpb import build_luts
from golf.data.tokenizer import ByteTokenizer
from golf.eval.score import SlidingWindow
from golf.eval.ttt import ScoreFirstSGD, strategy_for
from golf.model.gpt import GPT

SEQ, STRIDE = 32, 16


def _setup(mixers=""):
    torch.manual_seed(0)
    model = randomize(GPT(small_cfg(vocab_size=260, mixers=mixers)), std=0.05).eval()
    rng = np.random.default_rng(0)
    stream = rng.integers(4, 260, 400).astype(np.int64)
    stream[::97] = 1  # documents: BOS every 97 tokens
    return model, stream, build_luts(ByteTokenizer(), torch.device("cpu"))


def legality_violations(strategy, model, stream, luts, cuts=(70, 250)) -> list[int]:
    """Cut points t at which changing every token from t on changed the loss of a target before t - 1
    (target j is token j + 1, so target t - 1 may change: it is token t)."""
    ref = np.asarray(strategy(model, stream, luts)["target_loss"])
    bad = []
    for t in cuts:
        changed = stream.copy()
        changed[t:] = (changed[t:] + 7) % 256 + 4
        other = np.asarray(strategy(model, changed, luts)["target_loss"])
        if not np.array_equal(other[: t - 1], ref[: t - 1]):
            bad.append(t)
    return bad


@pytest.mark.parametrize("mixers", ["", "attn,stream,attn,stream", "attn,deltanet,attn,deltanet"])
def test_score_first_sgd_is_legal_and_adapts(mixers):
    model, stream, luts = _setup(mixers)
    ttt = ScoreFirstSGD(SEQ, STRIDE, 4, chunk_tokens=64, lr=0.05)
    assert legality_violations(ttt, model, stream, luts) == []
    res = ttt(model, stream, luts)
    plain = SlidingWindow(SEQ, STRIDE, 4)(model, stream, luts)
    assert res["tokens"] == plain["tokens"] == len(stream) - 1 and res["bytes"] == plain["bytes"]
    assert sum(res["step_loss"]) == pytest.approx(sum(res["target_loss"]), rel=1e-9)  # every target once
    assert res["val_loss"] != pytest.approx(plain["val_loss"], abs=1e-9)  # the weights did move
    # before any update the first chunk is scored exactly as the plain strategy scores it
    first = res["order"][0]
    assert first[0] == 0 and res["ttt"]["adapted_steps"] > 0
    assert all(a[1] == b[0] for a, b in zip(res["order"], res["order"][1:]))  # one pass, in stream order


def test_the_legality_test_catches_training_before_scoring():
    model, stream, luts = _setup()
    cheat = ScoreFirstSGD(SEQ, STRIDE, 4, chunk_tokens=64, lr=0.05, train_before_score=True)
    assert legality_violations(cheat, model, stream, luts) != []


def test_ttt_leaves_the_model_as_loaded_and_respects_the_time_budget():
    model, stream, luts = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = ScoreFirstSGD(SEQ, STRIDE, 4, chunk_tokens=64, lr=0.05, time_budget_s=1e-9)(model, stream, luts)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert res["ttt"]["adapted_steps"] == 0  # budget spent at once: everything scored plainly
    plain = SlidingWindow(SEQ, STRIDE, 4)(model, stream, luts)
    assert res["val_loss"] == pytest.approx(plain["val_loss"], rel=1e-6)
    with pytest.raises(GolfError, match="one process"):
        ScoreFirstSGD(SEQ, STRIDE, 4)(model, stream, luts, world_size=2)


def test_settings_choose_the_strategy():
    assert strategy_for(load_config(env={}), SEQ, STRIDE, 4) is None
    s = strategy_for(load_config(env={"TTT": "sgd", "TTT_CHUNK_SIZE": "128", "GLOBAL_TTT_LR": "0.01"}), SEQ, STRIDE, 4)
    assert isinstance(s, ScoreFirstSGD) and s.chunk_tokens == 128 and s.lr == 0.01
    with pytest.raises(GolfError, match="TTT="):
        load_config(env={"TTT": "lora"})
