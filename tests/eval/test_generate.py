"""Generation: incremental decoding with carried recurrent state or attention KV caches equals full
recompute; top-k / top-p filtering; fallback for unsupported mixers; the CLI round-trips an artifact."""
import pytest
import torch
from modelkit import randomize, small_cfg
from torch import nn

from golf.compress import artifact
from golf.core.config import Hyperparameters
from golf.core.utils import GolfError
from golf.data.tokenizer import ByteTokenizer
from golf.eval.generate import IncrementalDecoder, filter_logits, incremental_supported, main, pick, sample
from golf.model.gpt import GPT


def tiny_model(mixers, vocab=64, layers=2, seed=0, **over):
    kw = dict(vocab_size=vocab, num_layers=layers, model_dim=32, num_heads=4, num_kv_heads=2, mixers=mixers,
              num_memory_tokens=0, bigram_vocab_size=0, smear_gate=False, mtp_num_heads=0, stream_chunk=8,
              deltanet_chunk=8, train_seq_len=64)
    kw.update(over)
    torch.manual_seed(seed)
    model = GPT(Hyperparameters(**kw).model_config(), with_mtp=False)
    with torch.no_grad():  # fresh outputs are zero-initialised: make every layer matter
        for name, p in model.named_parameters():
            if name.endswith("out_proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(p, std=0.3)
        model.tok_emb.weight.normal_(std=1.0)
    return model.eval()


@pytest.mark.parametrize("mixers,over", [
    ("stream,deltanet", {}),
    ("hypermix,stream", {}),
    ("ttt_linear,attn", dict(ttt_linear_chunk=4)),  # prompt and steps cross TTT mini-batch ends
    # record-stack features: memory-token prefix, BigramHash, SmearGate, U-Net skips, 3 layers
    ("deltanet,stream,hypermix", dict(num_memory_tokens=4, bigram_vocab_size=128, bigram_dim=16,
                                       smear_gate=True, layers=3)),
])
def test_incremental_matches_full_recompute(mixers, over):
    over = dict(over)
    model = tiny_model(mixers, layers=over.pop("layers", 2), **over)
    assert incremental_supported(model)
    prompt = [1, 5, 9, 3, 17]
    ids_inc, logits_inc = sample(model, prompt, 12, temperature=0, incremental=True, stop_at_bos=False,
                                 return_logits=True)
    ids_full, logits_full = sample(model, prompt, 12, temperature=0, incremental=False, stop_at_bos=False,
                                   return_logits=True)
    assert ids_inc.tolist() == ids_full.tolist()  # greedy decode identical
    torch.testing.assert_close(logits_inc, logits_full, rtol=1e-4, atol=1e-4)
    # and the full-recompute logits are the model's own: token by token through model(idx)
    seq = torch.tensor([prompt + ids_full[0].tolist()])
    ref = model(seq)[0, len(prompt) - 1: -1]
    torch.testing.assert_close(logits_full[0], ref, rtol=1e-5, atol=1e-5)
    # greedy decoding of a random tied-embedding model repeats itself: also compare a sampled run,
    # whose varied tokens exercise the carried state
    runs = []
    for inc in (True, False):
        g = torch.Generator().manual_seed(11)
        runs.append(sample(model, prompt, 12, temperature=5.0, generator=g, incremental=inc, stop_at_bos=False,
                           return_logits=True))
    assert runs[0][0].tolist() == runs[1][0].tolist() and len(set(runs[0][0][0].tolist())) > 3
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=1e-4, atol=1e-4)


def test_sampling_is_seeded_and_same_on_both_paths():
    model = tiny_model("stream,hypermix")
    runs = []
    for inc in (True, False, True):
        g = torch.Generator().manual_seed(7)
        runs.append(sample(model, [1, 2, 3], 10, temperature=1.0, top_k=20, top_p=0.9, generator=g,
                           incremental=inc, stop_at_bos=False)[0].tolist())
    assert runs[0] == runs[1] == runs[2]


def test_unsupported_mixer_falls_back_to_full_recompute():
    model = tiny_model("attn,stream")

    class Opaque(nn.Module):  # a mixer with neither a recurrent step nor a KV cache
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, ctx):
            return self.inner(x, ctx)

    model.blocks[0].mixer = Opaque(model.blocks[0].mixer)
    assert not incremental_supported(model)
    out = sample(model, [1, 4, 4], 5, temperature=0, stop_at_bos=False)  # incremental=None: falls back
    assert out.shape == (1, 5)
    with pytest.raises(GolfError, match="recurrent"):
        sample(model, [1, 4], 3, incremental=True)


def test_stops_at_bos():
    model = tiny_model("stream,stream")
    with torch.no_grad():
        model.tok_emb.weight[1].mul_(50)  # tied head: BOS becomes by far the likeliest next token
    out = sample(model, [1, 1, 1], 10, temperature=0)
    assert out[0, -1].item() == 1 and out.shape[1] < 10


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5]])
    f = filter_logits(logits, top_k=2)
    assert torch.isfinite(f).tolist() == [[False, True, False, True, False]]
    assert torch.equal(f[torch.isfinite(f)], torch.tensor([3.0, 2.0]))
    assert torch.equal(filter_logits(logits, top_k=0), logits)


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15]])
    logits = probs.log()
    keep = lambda p: torch.isfinite(filter_logits(logits, top_p=p))[0].tolist()  # noqa: E731
    assert keep(0.5) == [True, False, False, False]  # 0.5 alone reaches 0.5
    assert keep(0.6) == [True, False, True, False]
    assert keep(0.8) == [True, False, True, False]  # 0.5 + 0.3 = 0.8 reaches it
    assert keep(0.81) == [True, False, True, True]
    assert keep(0.01) == [True, False, False, False]  # the top token always survives
    assert keep(1.0) == [True, True, True, True]


def test_sampled_tokens_respect_filters():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[2.0, 1.9, 1.8, -5.0, 0.0]]).repeat(500, 1)
    picked = pick(logits, 1.0, top_k=2, top_p=1.0, generator=g)
    assert set(picked.tolist()) == {0, 1}
    assert pick(logits[:1], 0.0, 0, 1.0, None).item() == 0


def test_cli_generates_from_artifact(tmp_path, capsys):

    h = Hyperparameters(vocab_size=260, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2,
                        mixers="stream,deltanet", num_memory_tokens=0, bigram_vocab_size=0, mtp_num_heads=0)
    torch.manual_seed(0)
    model = GPT(h.model_config(), with_mtp=False)
    tok = ByteTokenizer()
    tok_path = tok.save(tmp_path / "tokenizer.json")
    art = tmp_path / "model.ptz"
    artifact.save_artifact(art, model, h, tok.sha256)
    main(["--artifact", str(art), "--prompt", "Hello", "--max-new-tokens", "8", "--tokenizer", str(tok_path),
          "--seed", "3"])
    out = capsys.readouterr().out
    assert out.startswith("Hello")


def test_self_check_falls_back_when_steps_disagree(monkeypatch, capsys):
    """A mixer whose step() is wrong is caught by the one-time check against full recompute."""
    model = tiny_model("stream,stream")
    mixer = model.blocks[1].mixer
    real_step = mixer.step
    monkeypatch.setattr(mixer, "step", lambda x_t, s: (lambda y, s2: (y + 1.0, s2))(*real_step(x_t, s)))
    full = sample(model, [1, 3, 5, 7], 6, temperature=0, incremental=False, stop_at_bos=False)
    assert sample(model, [1, 3, 5, 7], 6, temperature=0, stop_at_bos=False).tolist() == full.tolist()
    assert "disagrees" in capsys.readouterr().err
    with pytest.raises(GolfError, match="disagrees"):
        sample(model, [1, 3, 5, 7], 6, temperature=0, incremental=True)


# ---------------------------------------------------------------------------------------------
# attention KV caches


def kv_model(**kw):
    """A small randomised model (no zero-initialised projection makes a check trivial); contexts
    stay within train_seq_len unless a test shortens it."""
    torch.manual_seed(0)
    cfg = small_cfg(**{"train_seq_len": 64, "mtp_num_heads": 0, **kw})
    return randomize(GPT(cfg, with_mtp=False), std=0.3).eval()


KV_MODELS = {
    "attn": {},
    # local layers with a window shorter than the context, a global one, memory tokens in every window
    "swa": dict(num_layers=4, mixers="swa,swa,swa,attn", attn_window=5, num_memory_tokens=2),
    "persistent": dict(persistent_memory=4, num_layers=3, mixers="attn,swa,attn", attn_window=6),
    "memtok_bigram_smear": dict(num_memory_tokens=3, bigram_vocab_size=64, bigram_dim=8, smear_gate=True),
    # 6 logical layers on 2 blocks (swa, attn): each block runs 3 times with separate caches
    "weight_tied": dict(num_layers=6, unique_layers=2, mixers="swa,attn", attn_window=4, persistent_memory=2),
    "mixed": dict(num_layers=4, mixers="attn,stream,swa,deltanet", attn_window=4, num_memory_tokens=2,
                  stream_chunk=8, deltanet_chunk=8),
}


def _both_paths(model, prompt, n, **kw):
    out = []
    for inc in (True, False):
        g = torch.Generator().manual_seed(5)
        out.append(sample(model, prompt, n, generator=g, incremental=inc, stop_at_bos=False, return_logits=True, **kw))
    return out


@pytest.mark.parametrize("name", list(KV_MODELS))
def test_kv_cache_matches_full_recompute(name):
    model = kv_model(**KV_MODELS[name])
    assert incremental_supported(model)
    prompt = [1, 5, 9, 3, 17, 4, 4, 30]
    (ids_inc, logits_inc), (ids_full, logits_full) = _both_paths(model, prompt, 20, temperature=0)
    assert ids_inc.tolist() == ids_full.tolist()
    torch.testing.assert_close(logits_inc, logits_full, rtol=1e-4, atol=1e-4)
    seq = torch.tensor([prompt + ids_full[0].tolist()])  # full recompute is the model's own logits
    torch.testing.assert_close(logits_full[0], model(seq)[0, len(prompt) - 1: -1], rtol=1e-5, atol=1e-5)
    # sampled: varied tokens exercise the caches more than greedy repetition does
    (ids_inc, logits_inc), (ids_full, logits_full) = _both_paths(model, prompt, 20, temperature=3.0)
    assert ids_inc.tolist() == ids_full.tolist() and len(set(ids_inc[0].tolist())) > 3
    torch.testing.assert_close(logits_inc, logits_full, rtol=1e-4, atol=1e-4)


def test_kv_cache_is_used_not_the_fallback(monkeypatch, capsys):
    """Only the one-time self-check runs the full model; every new token is one cached step, and
    attention layers then see exactly one new position."""
    model = kv_model(**KV_MODELS["mixed"])
    calls = {"forward": 0, "step_positions": []}
    real_forward = model.forward

    def counting_forward(*a, **k):
        calls["forward"] += 1
        return real_forward(*a, **k)

    monkeypatch.setattr(model, "forward", counting_forward)
    attn = model.blocks[0].mixer
    real_cached = attn.forward_cached

    def spy(x, ctx, cache):
        if cache is not None:
            calls["step_positions"].append(x.shape[1])
        return real_cached(x, ctx, cache)

    monkeypatch.setattr(attn, "forward_cached", spy)
    sample(model, [1, 2, 3, 4], 15, temperature=0, stop_at_bos=False)
    assert calls["forward"] == 1  # the self-check's full recompute, nothing else
    assert calls["step_positions"] == [1] * 15  # the checked last prompt token + 14 generated ones
    assert "disagrees" not in capsys.readouterr().err


def test_kv_caches_stay_bounded_and_match_beyond_train_seq_len():
    """Past TRAIN_SEQ_LEN the caches re-prefill from the last TRAIN_SEQ_LEN tokens, as full recompute
    slides its context: same logits, bounded memory; a window layer keeps prefix + window - 1 keys."""
    kw = dict(num_layers=4, mixers="swa,attn,stream,swa", attn_window=3, num_memory_tokens=2, train_seq_len=12)
    model = kv_model(**kw)
    prompt = [1, 5, 9, 3, 17, 4, 8, 2, 11, 7, 13, 6, 22, 19]  # longer than train_seq_len already
    (ids_inc, logits_inc), (ids_full, logits_full) = _both_paths(model, prompt, 20, temperature=3.0)
    assert ids_inc.tolist() == ids_full.tolist()
    torch.testing.assert_close(logits_inc, logits_full, rtol=1e-4, atol=1e-4)

    dec = IncrementalDecoder(model)
    assert dec.max_ctx == 12 and dec.has_cache
    with torch.no_grad():
        idx = torch.tensor([[1, 5, 9, 3]])
        dec.prefill(idx)
        for t in range(14):
            idx = torch.cat([idx, torch.tensor([[7 + t]])], dim=1)
            dec.step(idx)
            caches = {i: w.states[0] for i, w in enumerate(dec._wrappers) if w.kind == "kv"}
            assert caches[0].k.shape[2] == caches[3].k.shape[2] == 2 + 2  # swa: prefix + window - 1
            assert caches[1].k.shape[2] == 2 + min(idx.shape[1], 12)  # attn: prefix + bounded context
    assert dec.steps == 8 and dec.prefills == 1 + 6  # 4 + 8 = 12 tokens stepped, then re-prefills


def test_weight_tied_blocks_keep_one_cache_per_logical_layer():
    model = kv_model(**KV_MODELS["weight_tied"])
    dec = IncrementalDecoder(model)
    with torch.no_grad():
        idx = torch.tensor([[1, 5, 9, 3, 8]])
        dec.prefill(idx)
        dec.step(torch.cat([idx, torch.tensor([[2]])], dim=1))
    assert [len(w.states) for w in dec._wrappers] == [3, 3]  # 2 blocks, each run as 3 logical layers
    full_attn = dec._wrappers[1].states
    assert all(c.length == 6 for c in full_attn)
    assert not torch.allclose(full_attn[0].k, full_attn[1].k)  # different layer inputs, own keys


def test_self_check_catches_a_wrong_kv_cache(monkeypatch, capsys):
    model = kv_model(mixers="attn,swa", num_layers=2, attn_window=3)
    mixer = model.blocks[1].mixer
    real = mixer.forward_cached

    def wrong_step(x, ctx, cache):  # a cached step that disagrees with forward()
        y, new = real(x, ctx, cache)
        return (y + 1.0 if cache is not None else y), new

    monkeypatch.setattr(mixer, "forward_cached", wrong_step)
    full = sample(model, [1, 3, 5, 7], 6, temperature=0, incremental=False, stop_at_bos=False)
    assert sample(model, [1, 3, 5, 7], 6, temperature=0, stop_at_bos=False).tolist() == full.tolist()
    assert "disagrees" in capsys.readouterr().err
