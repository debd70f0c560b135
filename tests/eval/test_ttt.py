"""golf/eval/ttt.py: score-first TTT (sgd, per-document LoRA, phased), and the legality test that
must catch an illegal order.

The test: every strategy reports its scoring order (per step, the target ranges it scored). Run
the whole evaluation, then again with every token scored after step k changed (and, the finer cut,
also the second half of each of step k's ranges); every target scored up to that point must keep
its loss exactly (CPU, deterministic). A strategy that trains on a chunk before scoring it fails
the finer cut. BOS tokens stay where they are: the document layout is the one thing a strategy may
know up front (the record batches documents by length)."""
import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from modelkit import randomize, small_cfg

from golf.core.config import load_config
from golf.core.utils import GolfError
from golf.data.bpb import build_luts
from golf.data.tokenizer import ByteTokenizer
from golf.eval.score import SlidingWindow
from golf.eval.ttt import FromSettings, PerDocTTT, ScoreFirstSGD, doc_batches, find_docs, strategy_for
from golf.model.gpt import GPT

SEQ, STRIDE = 32, 16
MIXERS = ["", "attn,stream,attn,stream", "attn,deltanet,attn,deltanet"]


def _setup(mixers=""):
    torch.manual_seed(0)
    model = randomize(GPT(small_cfg(vocab_size=260, mixers=mixers)), std=0.05).eval()
    rng = np.random.default_rng(0)
    stream = rng.integers(4, 260, 400).astype(np.int64)
    stream[[0, 97, 150, 170, 290]] = 1  # documents of 97, 53, 20, 120 and 109 tokens
    return model, stream, build_luts(ByteTokenizer(), torch.device("cpu"))


def lora(**kw):
    return PerDocTTT(SEQ, STRIDE, **{**dict(chunk_tokens=8, lora_rank=4, lr=0.01, batch_docs=2), **kw})


def phased(**kw):
    return lora(**{**dict(prefix_docs=3, num_phases=2, global_lr=0.05, global_batch_seqs=2, name="ttt_phased"), **kw})


STRATEGIES = {"sgd": lambda **kw: ScoreFirstSGD(SEQ, STRIDE, 4, chunk_tokens=64, lr=0.05, **kw),
              "lora": lora, "phased": phased,
              "phased_sgd_only": lambda **kw: phased(lora_rank=0, **kw)}


def _change(stream, tokens):
    out = stream.copy()
    tokens = np.asarray(sorted(tokens), dtype=np.int64)
    tokens = tokens[(tokens < len(out)) & (stream[tokens] != 1)]  # BOS stays (the layout)
    out[tokens] = (out[tokens] + 7) % 256 + 4  # never 1: no new document starts
    return out


def legality_violations(strategy, model, stream, luts, ks=None) -> list[tuple[int, bool]]:
    """(k, finer) cuts at which a target scored up to step k (finer: up to the middle of each of
    step k's ranges) changed its loss when every token scored after that point changed."""
    strategy = dataclasses.replace(strategy, record=True)
    ref = strategy(model, stream, luts)
    order, ref_loss = ref["order"], np.asarray(ref["target_loss"])
    assert not np.isnan(ref_loss).any()  # every target scored once ...
    flat = sorted(r for step in order for r in step)
    assert flat[0][0] == 0 and flat[-1][1] == len(stream) - 1 and all(a[1] == b[0] for a, b in zip(flat, flat[1:]))
    n = len(order)
    bad = []
    for k in ks or sorted({n // 4, n // 2, 3 * n // 4}):
        for finer in (False, True):
            later = [j for step in order[k + 1:] for a, b in step for j in range(a, b)]
            early = [j for step in order[:k] for a, b in step for j in range(a, b)]
            for a, b in order[k]:
                cut = (a + b) // 2 if finer else b
                later += range(cut, b)
                early += range(a, cut)
            other = strategy(model, _change(stream, [j + 1 for j in later]), luts)  # target j is token j + 1
            assert other["order"] == order
            if not np.array_equal(np.asarray(other["target_loss"])[early], ref_loss[early]):
                bad.append((k, finer))
    return bad


@pytest.mark.parametrize("kind", list(STRATEGIES))
@pytest.mark.parametrize("mixers", MIXERS)
def test_every_strategy_is_legal_and_adapts(kind, mixers):
    model, stream, luts = _setup(mixers)
    ttt = STRATEGIES[kind]()
    assert legality_violations(ttt, model, stream, luts) == []
    res = ttt(model, stream, luts)
    plain = SlidingWindow(SEQ, STRIDE, 4)(model, stream, luts)
    assert res["tokens"] == plain["tokens"] == len(stream) - 1 and res["bytes"] == plain["bytes"]
    assert res["val_loss"] != pytest.approx(plain["val_loss"], abs=1e-6)  # the weights / adapters did move
    assert res["ttt"]["adapted_steps"] + res["ttt"].get("global_steps", 0) > 0 and res["ttt"]["seconds"] > 0
    if kind.startswith("phased"):
        assert res["ttt"]["phases_done"] == 2 and res["ttt"]["global_steps"] > 0


@pytest.mark.parametrize("kind", ["sgd", "lora"])
def test_the_legality_test_catches_training_before_scoring(kind):
    model, stream, luts = _setup()
    cheat = STRATEGIES[kind](train_before_score=True)
    assert legality_violations(cheat, model, stream, luts) != []


def test_sgd_steps_are_one_pass_in_stream_order():
    model, stream, luts = _setup()
    res = STRATEGIES["sgd"](record=True)(model, stream, luts)
    assert sum(res["step_loss"]) == pytest.approx(sum(res["target_loss"]), rel=1e-9)  # every target once
    assert res["order"][0][0][0] == 0
    assert all(a[0][1] == b[0][0] for a, b in zip(res["order"], res["order"][1:]))  # one pass, in stream order


def test_documents_partition_the_targets_and_batch_by_length():
    _, stream, _ = _setup()
    starts, n = find_docs(torch.as_tensor(stream))
    assert starts.tolist() == [0, 97, 150, 170, 290] and n.tolist() == [97, 53, 20, 120, 109]
    assert n.sum() == len(stream) - 1
    starts, n = find_docs(torch.as_tensor(stream[5:]))  # a cut stream: the tokens before the first BOS too
    assert starts.tolist() == [0, 92, 145, 165, 285] and n.sum() == len(stream) - 6
    assert [b.tolist() for b in doc_batches(np.array([97, 53, 20, 120, 109]), 2)] == [[3], [0, 4], [2, 1]]


def test_adapters_reset_at_each_document():
    """A document's losses do not depend on the documents adapted before it: with TTT_BATCH_SIZE=1
    the second document equals that document scored alone (exactly), and without the reset not."""
    model, stream, luts = _setup()
    starts, n = find_docs(torch.as_tensor(stream))
    second = doc_batches(n, 1)[1][0]  # the second document adapted
    s, m = int(starts[second]), int(n[second])
    alone = np.asarray(lora(batch_docs=1, record=True)(model, stream[s:s + m + 1], luts)["target_loss"])
    with_reset = np.asarray(lora(batch_docs=1, record=True)(model, stream, luts)["target_loss"])[s:s + m]
    no_reset = np.asarray(lora(batch_docs=1, record=True, reset=False)(model, stream, luts)["target_loss"])[s:s + m]
    assert np.array_equal(with_reset, alone)
    assert not np.allclose(no_reset, alone, rtol=1e-4)
    # documents side by side never mix: a batch of two is each document alone (to float rounding)
    batched = lora(batch_docs=2, record=True)(model, stream, luts)["target_loss"]
    single = lora(batch_docs=1, record=True)(model, stream, luts)["target_loss"]
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)


def test_per_document_windows():
    """Without adapters a single document is scored exactly as the sliding window scores the stream;
    LoRA with lr 0 scores as the plain per-document window when the chunk is the stride."""
    model, stream, luts = _setup()
    one = stream.copy()
    one[1:][one[1:] == 1] = 5  # one document
    plain = SlidingWindow(SEQ, STRIDE, 4)(model, one, luts)
    perdoc = PerDocTTT(SEQ, STRIDE, lora_rank=0, record=True)(model, one, luts)
    assert perdoc["windows"] == plain["windows"] and perdoc["tokens"] == plain["tokens"]
    assert perdoc["val_loss"] == pytest.approx(plain["val_loss"], rel=1e-6)
    assert perdoc["position_bpb"]["tokens"] == plain["position_bpb"]["tokens"]
    frozen = lora(chunk_tokens=STRIDE, lr=0.0, weight_decay=0.0)(model, stream, luts)
    base = PerDocTTT(SEQ, STRIDE, lora_rank=0)(model, stream, luts)
    assert frozen["val_loss"] == pytest.approx(base["val_loss"], rel=1e-6) and frozen["ttt"]["adapted_steps"] > 0


@pytest.mark.parametrize("kind", list(STRATEGIES))
def test_ttt_leaves_the_model_as_loaded_and_respects_the_time_budget(kind):
    model, stream, luts = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = STRATEGIES[kind](time_budget_s=1e-9)(model, stream, luts)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert res["ttt"]["adapted_steps"] == 0 and res["ttt"].get("global_steps", 0) == 0  # everything scored plainly
    assert res["ttt"]["budget_spent"] and res["ttt"]["seconds"] == res["seconds"] > 0
    plain = (SlidingWindow(SEQ, STRIDE, 4) if kind == "sgd" else
             dataclasses.replace(STRATEGIES[kind](), lora_rank=0, prefix_docs=0))(model, stream, luts)
    assert res["val_loss"] == pytest.approx(plain["val_loss"], rel=1e-6)
    STRATEGIES[kind]()(model, stream, luts)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(GolfError, match="torchrun"):
        STRATEGIES[kind]()(model, stream, luts, world_size=2)


def test_settings_choose_the_strategy():
    assert strategy_for(load_config(env={}), SEQ, STRIDE, 4) is None
    s = strategy_for(load_config(env={"TTT": "sgd", "TTT_CHUNK_SIZE": "128", "GLOBAL_TTT_LR": "0.01"}), SEQ, STRIDE, 4)
    assert isinstance(s, ScoreFirstSGD) and s.chunk_tokens == 128 and s.lr == 0.01
    assert strategy_for(load_config(env={"TTT": "sgd"}), SEQ, STRIDE, 4).chunk_tokens == 32768
    s = strategy_for(load_config(env={"TTT": "lora", "TTT_LORA_RANK": "8", "TTT_K_LORA": "0"}), 64, STRIDE, 4)
    assert isinstance(s, PerDocTTT) and (s.chunk_tokens, s.lora_rank, s.k_lora, s.prefix_docs) == (48, 8, False, 0)
    assert (s.lr, s.beta1, s.beta2, s.weight_decay, s.batch_docs, s.name) == (1e-4, 0.0, 0.99, 0.5, 64, "ttt_lora")
    s = strategy_for(load_config(env={"TTT": "phased", "PHASED_TTT_PREFIX_DOCS": "10", "TTT_LORA_RANK": "0"}),
                     64, STRIDE, 4)
    assert (s.prefix_docs, s.num_phases, s.lora_rank, s.global_momentum, s.name) == (10, 3, 0, 0.9, "ttt_phased")
    assert FromSettings(load_config(env={"TTT": "lora"})).resolve(64, STRIDE, 4).seq_len == 64
    for env, match in (({"TTT": "bogus"}, "TTT="), ({"TTT": "lora", "TTT_LORA_RANK": "0"}, "TTT_LORA_RANK"),
                       ({"TTT": "lora", "TTT_CHUNK_SIZE": "4096"}, "TTT_CHUNK_SIZE"),
                       ({"TTT_BETA2": "1"}, "TTT_BETA2"), ({"PHASED_TTT_NUM_PHASES": "0"}, "PHASED_TTT_NUM_PHASES")):
        with pytest.raises(GolfError, match=match):
            load_config(env=env)
    with pytest.raises(GolfError, match="TTT_CHUNK_SIZE=48 is longer"):  # an artifact's short window
        FromSettings(load_config(env={"TTT": "lora"})).resolve(16, 8, 4)


def test_eval_bpb_scores_an_artifact_with_ttt(tmp_path, monkeypatch):
    import json

    from datakit import token_folder

    import eval_bpb
    from golf.compress.artifact import load_artifact, save_artifact

    tok = ByteTokenizer()
    h = load_config(["--num-layers", "2", "--model-dim", "32", "--num-heads", "2", "--num-kv-heads", "1",
                     "--vocab-size", "260", "--train-seq-len", "32", "--eval-stride", "16"], env={})
    _, stream, luts = _setup()
    data = token_folder(tmp_path / "data", tok, val=stream.astype(np.uint16))
    torch.manual_seed(0)
    art = tmp_path / "model.ptz"
    save_artifact(art, randomize(GPT(h.model_config()), std=0.05), h, tok.sha256)
    for k in [k for k in os.environ if "TTT" in k]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("TTT_CHUNK_SIZE", "8")
    monkeypatch.setenv("TTT_LORA_RANK", "4")
    out = Path(tmp_path / "eval.json")
    eval_bpb.main(["--artifact", str(art), "--data-path", str(data), "--device", "cpu", "--ttt", "lora",
                   "--contexts", "", "--out", str(out)])
    rep = json.loads(out.read_text())
    model, _ = load_artifact(art, "cpu")
    want = lora(lr=1e-4, weight_decay=0.5, beta2=0.99, lora_rank=4, batch_docs=64)(model, stream, luts)
    assert rep["strategy"] == "ttt_lora" and rep["tokens"] == len(stream) - 1
    assert rep["val_bpb"] == pytest.approx(want["val_bpb"], rel=1e-9)
