"""DOC_ATTENTION=1 (golf issue 23): every mixer sees one document at a time.

Isolation: a row [A, B] (B starts with BOS) gives B the outputs of B run alone (to float tolerance:
rotary positions are the row's, only relative ones matter), and changing any token of A changes
nothing of B's outputs. Off (the default): the model is exactly today's."""
import pytest
import torch
from modelkit import randomize
from modelkit import small_cfg as _small_cfg

from golf.core.config import GPTConfig
from golf.data.shards import BOS_ID
from golf.eval.generate import sample
from golf.model.embed import SmearGate
from golf.model.gpt import GPT
from golf.model.mechanisms import MIXERS
from golf.model.mixer import MixerContext, doc_resets, document_ids

LA, LB, V = 11, 21, 64  # A ends mid-chunk (chunks of 8): resets inside a chunk are exercised


def small_cfg(**kw):
    return _small_cfg(**{"train_seq_len": LA + LB, "attn_window": 5, "stream_chunk": 8, "deltanet_chunk": 8,
                         "ttt_linear_chunk": 8, "doc_attention": True, "smear_gate": True, "bigram_vocab_size": 32,
                         "bigram_dim": 8, **kw})


def _docs(seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randint(2, V, (batch, LA), generator=g), torch.randint(2, V, (batch, LB), generator=g)
    a[:, 0] = b[:, 0] = BOS_ID
    return a, b


def _model(**kw):
    torch.manual_seed(0)
    return randomize(GPT(small_cfg(**kw))).eval()


def _exact_or_close(got, want, exact):
    """Exact where masking makes the other document's terms exact zeros; HyperMixing's running sum
    subtracts the sum before the document (total[t] - total[s-1]), so it is equal to rounding only."""
    if exact:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_document_ids_and_resets():
    idx = torch.tensor([[5, 1, 7, 7, 1, 9], [1, 3, 1, 1, 4, 4]])
    assert document_ids(idx == BOS_ID).tolist() == [[0, 1, 1, 1, 2, 2], [1, 1, 2, 3, 3, 3]]
    ids = document_ids(idx == BOS_ID, 2)  # memory-token prefix: -1, not a document
    assert ids[:, :2].eq(-1).all() and torch.equal(ids[:, 2:], document_ids(idx == BOS_ID))
    r = doc_resets(MixerContext(doc_ids=ids))
    assert r.tolist() == [[False, False, True, True, False, False, True, False],
                          [False, False, True, False, True, True, False, False]]
    assert doc_resets(MixerContext()) is None and doc_resets(None) is None


@pytest.mark.parametrize("mixer", sorted(MIXERS))
def test_every_mixer_sees_one_document(mixer):
    m = _model(mixers=mixer)
    a, b = _docs()
    with torch.no_grad():
        packed, alone = m(torch.cat([a, b], 1)), m(b)
        torch.testing.assert_close(packed[:, LA:], alone, rtol=1e-5, atol=1e-5)
        for t in range(LA):  # any token of A, BOS included
            a2 = a.clone()
            a2[:, t] = (a2[:, t] + 5) % (V - 2) + 2
            other = m(torch.cat([a2, b], 1))
            _exact_or_close(other[:, LA:], packed[:, LA:], exact=mixer != "hypermix")
            assert not torch.equal(other[:, t:LA], packed[:, t:LA])  # A itself did change
        # a row that starts mid-document: its first segment is one document
        tail = torch.cat([a[:, 4:], b], 1)
        torch.testing.assert_close(m(tail)[:, LA - 4:], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mixer", sorted(MIXERS))
def test_off_leaks_across_documents_as_before(mixer):
    """The check above can fail: without DOC_ATTENTION, B does see A."""
    m = _model(mixers=mixer, doc_attention=False)
    a, b = _docs()
    a2 = a.clone()
    a2[:, 3] = (a2[:, 3] + 5) % (V - 2) + 2
    with torch.no_grad():
        assert not torch.allclose(m(torch.cat([a2, b], 1))[:, LA:], m(torch.cat([a, b], 1))[:, LA:])


def test_every_mechanism_with_doc_attention_keeps_documents_apart():
    """Persistent memory (slots without position: every document sees them), weight-tied depth,
    MTP heads, BigramHash, SmearGate, swa + attn: B alone == B packed, A changes nothing."""
    m = _model(persistent_memory=4, unique_layers=2, mixers="swa,attn", mtp_num_heads=2)
    a, b = _docs(1)
    with torch.no_grad():
        packed = m(torch.cat([a, b], 1))
        torch.testing.assert_close(packed[:, LA:], m(b), rtol=1e-5, atol=1e-5)
        a[:, 1:] = (a[:, 1:] + 3) % (V - 2) + 2
        assert torch.equal(m(torch.cat([a, b], 1))[:, LA:], packed[:, LA:])
    # training sees documents too: B's loss and gradients are those of B alone (targets of B only)
    m.train()
    x = torch.cat([a, b], 1)
    loss = m(x, torch.roll(x, -1, 1), reduction="none")[:, LA:-1].sum()
    g_packed = torch.autograd.grad(loss, list(m.parameters()), allow_unused=True)
    loss_b = m(b, torch.roll(b, -1, 1), reduction="none")[:, :-1].sum()
    g_alone = torch.autograd.grad(loss_b, list(m.parameters()), allow_unused=True)
    for gp, ga in zip(g_packed, g_alone):
        if gp is not None and ga is not None:
            torch.testing.assert_close(gp, ga, rtol=1e-4, atol=1e-5)


def _perturb_memory(m):
    with torch.no_grad():
        m.mechanisms["memory_tokens"].tokens.add_(1.0)


def test_memory_tokens_are_seen_by_every_document_through_attention():
    """Memory tokens are learned parameters, not a document: with DOC_ATTENTION every document's
    attention still sees them (changing them changes B), while A's text never reaches B."""
    m = _model(num_memory_tokens=3, mixers="swa,attn")
    a, b = _docs(2)
    with torch.no_grad():
        packed = m(torch.cat([a, b], 1))
        a2 = a.clone()
        a2[:, 2:] = (a2[:, 2:] + 3) % (V - 2) + 2
        assert torch.equal(m(torch.cat([a2, b], 1))[:, LA:], packed[:, LA:])
        _perturb_memory(m)
        assert not torch.allclose(m(torch.cat([a, b], 1))[:, LA:], packed[:, LA:])


@pytest.mark.parametrize("mixer", ["stream", "deltanet", "hypermix"])
def test_recurrent_state_restarts_without_the_memory_prefix(mixer):
    """A recurrent state cannot keep the prefix and drop the previous document, so under
    DOC_ATTENTION it restarts from zero at each document: recurrent layers do not see memory tokens
    (golf.model.mixer.doc_resets) and B alone == B packed exactly as without memory tokens."""
    m = _model(num_memory_tokens=3, mixers=mixer)
    a, b = _docs(3)
    with torch.no_grad():
        packed = m(torch.cat([a, b], 1))
        torch.testing.assert_close(packed[:, LA:], m(b), rtol=1e-5, atol=1e-5)
        _perturb_memory(m)
        _exact_or_close(m(torch.cat([a, b], 1)), packed, exact=mixer != "hypermix")


def test_smear_gate_does_not_cross_bos():
    torch.manual_seed(0)
    sg = SmearGate(8, init=1.0)
    idx = torch.tensor([[1, 5, 6, 1, 7, 8]])
    x = torch.randn(1, 6, 8)
    y = sg(x, idx)
    x2 = x.clone()
    x2[:, :3] += 10.0  # everything of the first document
    y2 = sg(x2, idx)
    assert torch.equal(y2[:, 3:], y[:, 3:]) and not torch.allclose(y2[:, :3], y[:, :3])
    assert torch.equal(y[:, 3], x[:, 3])  # BOS keeps its own embedding


@pytest.mark.parametrize("extra", [{}, dict(rmt_memory=2, rmt_segment=12)])
def test_flex_attention_document_mask_matches_the_bool_mask(extra):
    """FLEX_ATTENTION=on (eager flex_attention on CPU: forward only) with the document mask_mod gives
    the bool-mask path's outputs, memory-token prefix, window and RMT's memory (a prefix with a
    document's id) included."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    ref = _model(num_memory_tokens=2, mixers="swa,attn", flex_attention="off", **extra)
    flex = GPT(small_cfg(num_memory_tokens=2, mixers="swa,attn", flex_attention="on", **extra)).eval()
    flex.load_state_dict(ref.state_dict())
    assert all(b.mixer.flex == "on" for b in flex.blocks)
    idx = torch.randint(2, V, (2, LA + LB))
    idx[0, [0, 5, 20]] = BOS_ID
    idx[1, 9] = BOS_ID
    with torch.no_grad():
        torch.testing.assert_close(flex(idx), ref(idx), rtol=1e-5, atol=1e-5)


def test_off_by_default_and_bit_identical():
    """doc_attention defaults to off and then no document ids reach the mixers: the same weights give
    bit-identical outputs to a model whose context never had the field."""
    assert GPTConfig().doc_attention is False
    m = _model(doc_attention=False, persistent_memory=4, num_memory_tokens=2, mixers="swa,attn,stream,deltanet")
    seen = []
    for blk in m.blocks:
        blk.mixer.register_forward_pre_hook(lambda mod, args: seen.append(args[1].doc_ids))
    idx = torch.randint(2, V, (2, LA + LB))
    idx[:, 7] = BOS_ID
    with torch.no_grad():
        out = m(idx)
    assert seen and all(d is None for d in seen)
    # the same model built twice from one state dict: identical (no hidden state, no randomness)
    m2 = GPT(m.cfg).eval()
    m2.load_state_dict(m.state_dict())
    with torch.no_grad():
        assert torch.equal(m2(idx), out)


@pytest.mark.parametrize("mixers", ["swa,attn", "stream,deltanet,hypermix,stream", "attn,ttt_linear"])
def test_generation_sees_one_document(mixers):
    """Full recompute and incremental decoding agree with DOC_ATTENTION (the decoder re-prefills at
    a boundary), and a prompt of two documents continues B as B alone does."""
    m = _model(mixers=mixers)
    a, b = _docs(4, batch=1)
    prompt = torch.cat([a, b[:, :8]], 1)
    full_ids, full_logits = sample(m, prompt, 6, temperature=0, incremental=False, return_logits=True,
                                   stop_at_bos=False)
    inc_ids, inc_logits = sample(m, prompt, 6, temperature=0, incremental=True, return_logits=True,
                                 stop_at_bos=False)
    torch.testing.assert_close(inc_logits, full_logits, rtol=1e-4, atol=1e-4)
    _, alone_logits = sample(m, b[:, :8], 6, temperature=0, incremental=False, return_logits=True, stop_at_bos=False)
    torch.testing.assert_close(alone_logits[:, :1], full_logits[:, :1], rtol=1e-4, atol=1e-4)
    # generating across a BOS: the new document starts fresh in both paths
    prompt2 = torch.cat([b[:, :6], torch.tensor([[BOS_ID]])], 1)
    _, f2 = sample(m, prompt2, 4, temperature=0, incremental=False, return_logits=True, stop_at_bos=False)
    _, i2 = sample(m, prompt2, 4, temperature=0, incremental=True, return_logits=True, stop_at_bos=False)
    _, fresh = sample(m, [BOS_ID], 4, temperature=0, incremental=False, return_logits=True, stop_at_bos=False)
    torch.testing.assert_close(i2, f2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(f2[:, :1], fresh[:, :1], rtol=1e-4, atol=1e-4)
