"""Recurrent Memory Transformer: off by default, parameters and tags, segment carry (a 2-segment
sequence = segment 1, then segment 2 from the memory segment 1 wrote), the read memory stays visible
to sliding-window layers, truncated BPTT cuts gradients where RMT_BPTT says, bad settings,
generation by full recompute, and with DOC_ATTENTION=1 the memory reset at documents (no information
crosses a BOS; a document at a segment boundary is as alone). (Full-model causality: test_causality.py.)"""
import pytest
import torch
from modelkit import randomize
from modelkit import small_cfg as _small_cfg

from golf.compress.quant import bits_for_group, quant_plan
from golf.core.config import Hyperparameters
from golf.core.utils import GolfError
from golf.data.shards import BOS_ID
from golf.eval.generate import incremental_supported, sample
from golf.model.gpt import GPT, count_params
from golf.model.layers import rms_norm
from golf.model.mechanisms.rmt import RecurrentMemory
from golf.model.mixer import optim_group_of, quant_group_of

M, S = 3, 8


def small_cfg(**kw):
    return _small_cfg(**{"train_seq_len": 24, "rmt_memory": M, "rmt_segment": S, **kw})


def model(seed=0, **kw):
    torch.manual_seed(seed)
    return randomize(GPT(small_cfg(**kw)), seed=seed).eval()


def test_off_by_default_params_tags_and_quant_group():
    assert "rmt" not in GPT(_small_cfg()).mechanisms and Hyperparameters().rmt_memory == 0
    m = GPT(small_cfg())
    mem = m.mechanisms["rmt"].memory
    assert mem.shape == (M, 32)
    assert count_params(m) == count_params(GPT(_small_cfg(train_seq_len=24))) + M * 32
    assert (quant_group_of(mem), optim_group_of(mem)) == ("control", "memory")  # fp16, no weight decay
    h = Hyperparameters(**{**small_cfg().__dict__, "quant_min_numel": 0})
    assert bits_for_group("control", h) == 16 and quant_plan(m, h)["mechanisms.rmt.memory"] == 16
    assert "3 memory tokens, segments of 8" in RecurrentMemory.technique(small_cfg())


@pytest.mark.parametrize("mixers", ["", "swa"])
def test_two_segments_equal_segment_one_then_two_with_carried_memory(mixers):
    m = model(1, mixers=mixers, attn_window=2, smear_gate=False, bigram_vocab_size=0)
    rmt = m.mechanisms["rmt"]
    idx = torch.randint(2, 64, (2, 2 * S))
    idx[:, 3] = BOS_ID
    full = m.hidden(idx)
    x, ds = rms_norm(m.tok_emb(idx)), idx == BOS_ID
    with torch.no_grad():
        y1, mem1 = rmt.segments(x[:, :S], ds[:, :S], m.stack)
        y2, _ = rmt.segments(x[:, S:], ds[:, S:], m.stack, memory=mem1)
        fresh, _ = rmt.segments(x[:, S:], ds[:, S:], m.stack)  # segment 2 alone, from the learned memory
    torch.testing.assert_close(full, rms_norm(torch.cat([y1, y2], dim=1)))
    torch.testing.assert_close(full[:, :S], m.hidden(idx[:, :S]))  # segment 1 never sees segment 2
    assert mem1.shape == (2, M, 32)
    # the carried memory matters, down to segment 2's last token: with 4 layers of window-2 attention
    # it is out of reach unless the read memory is visible to every position (a prefix)
    assert (rms_norm(fresh) - full[:, S:]).abs().amax(dim=-1).min() > 1e-4


@pytest.mark.parametrize("bptt,reach", [(-1, {0, 1, 2}), (2, {0, 1, 2}), (1, {1, 2}), (0, {2})])
def test_truncated_bptt_depth(bptt, reach):
    """3 segments, loss on the last one: the embeddings of segment j get a gradient only when the
    gradient may cross the 2 - j transitions between them (the last RMT_BPTT of the sequence)."""
    m = model(2, rmt_bptt=bptt)
    rmt = m.mechanisms["rmt"]
    x = torch.randn(2, 3 * S, 32, requires_grad=True)
    y, _ = rmt.segments(x, torch.zeros(2, 3 * S, dtype=torch.bool), m.stack)
    y[:, 2 * S:].square().sum().backward()
    for j in range(3):
        got = float(x.grad[:, j * S:(j + 1) * S].abs().max())
        assert (got > 0) == (j in reach), (bptt, j, got)
    # the learned initial memory feeds segment 0: reached by the last segment's loss only through 2 transitions
    assert (float(rmt.memory.grad.abs().max()) > 0) == (0 in reach)
    # truncation changes gradients, never values
    with torch.no_grad():
        full_bptt = model(2, rmt_bptt=-1).mechanisms["rmt"].segments(x, torch.zeros(2, 3 * S, dtype=torch.bool),
                                                                     model(2, rmt_bptt=-1).stack)[0]
    torch.testing.assert_close(y.detach(), full_bptt)


def test_training_loss_backward_and_partial_last_segment():
    m = model(3, rmt_bptt=1)
    m.train()
    idx = torch.randint(2, 64, (2, 21))  # 8 + 8 + 5: the last segment is short
    loss = m(idx, torch.roll(idx, -1, dims=1))
    loss.backward()
    assert torch.isfinite(loss) and float(m.mechanisms["rmt"].memory.grad.abs().max()) > 0
    m.eval()
    # scoring only the last positions (the sliding-window eval) runs every segment in order all the same
    torch.testing.assert_close(m(idx, last=5), m(idx)[:, -5:])


def test_generation_uses_full_recompute_with_the_memory_carried():
    m = model(4)
    assert not incremental_supported(m)
    prompt = [1, 5, 9, 3, 17, 4, 8, 2, 6, 11]  # longer than a segment
    ids, logits = sample(m, prompt, 8, temperature=0, stop_at_bos=False, return_logits=True)
    seq = torch.tensor([prompt + ids[0].tolist()])
    torch.testing.assert_close(logits[0], m(seq)[0, len(prompt) - 1:-1])
    with pytest.raises(GolfError, match="incremental"):
        sample(m, prompt, 2, incremental=True)


@pytest.mark.parametrize("over,name", [(dict(rmt_segment=0), "RMT_SEGMENT"), (dict(rmt_bptt=-2), "RMT_BPTT")])
def test_bad_settings_are_clear_errors(over, name):
    with pytest.raises(GolfError, match=name):
        GPT(small_cfg(**over))
    with pytest.raises(GolfError, match=name):
        Hyperparameters(rmt_memory=4, **over).finalize()
    with pytest.raises(GolfError, match="RMT_MEMORY"):
        Hyperparameters(rmt_memory=-1).finalize()


def _with_docs(T, bos, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(2, 64, (len(bos), T), generator=g)
    for row, ts in enumerate(bos):
        idx[row, list(ts)] = BOS_ID
    return idx


# segments of 8: a document from mid-segment 0 to mid-segment 2 (3 -> 19); BOS at a segment's first
# token (8, 16), at its last (15), consecutive (9, 10), two in one segment (19, 22); a row with none
DOCS = [(0, 3, 19, 22), (8, 9, 10, 15), (16,), ()]


@pytest.mark.parametrize("mixers", ["", "swa,stream"])
def test_doc_attention_no_information_crosses_a_bos(mixers):
    """DOC_ATTENTION=1: changing any token before a BOS (of any earlier document) changes nothing from
    that BOS on, through the memory carried from segment to segment included."""
    m = model(5, doc_attention=True, mixers=mixers, attn_window=3)
    T = 3 * S
    idx = _with_docs(T, DOCS)
    with torch.no_grad():
        out = m(idx)
        for row, bos in enumerate(DOCS):
            for b in bos:
                for t in range(b):
                    idx2 = idx.clone()
                    idx2[row, t] = (idx2[row, t] + 7) % 62 + 2
                    assert torch.equal(m(idx2)[row, b:], out[row, b:]), (row, b, t)


def test_doc_attention_documents_at_segment_boundaries_are_as_alone():
    """A document that starts at a segment boundary reads the initial memory, then its own: its outputs
    are those of the document run alone; and a BOS only in a later segment leaves every earlier
    output as it was (the memory is reset only where a document starts)."""
    m = model(6, doc_attention=True)
    a, b = _with_docs(S, [(0,)], 1), _with_docs(2 * S + 3, [(0,)], 2)
    with torch.no_grad():
        packed = m(torch.cat([a, b], 1))
        torch.testing.assert_close(packed[:, S:], m(b), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(packed[:, :S], m(a), rtol=1e-5, atol=1e-5)
        # without DOC_ATTENTION, the same row: b reads a's memory
        off = model(6)
        assert not torch.allclose(off(torch.cat([a, b], 1))[:, S:], off(b))


def test_doc_attention_memory_belongs_to_the_open_document():
    """The document open at a segment's start keeps reading its carried memory after another document
    begins in that segment; a document that begins inside a segment reads no memory there, and from
    the next segment on the memory it wrote itself, starting from the initial memory's vectors."""
    m = model(7, doc_attention=True)
    rmt = m.mechanisms["rmt"]
    idx = _with_docs(3 * S, [(0, S + 5)])  # document 1: 0 .. S+4, document 2: S+5 .. end
    with torch.no_grad():
        out = m(idx)
        idx2 = idx.clone()
        idx2[0, 2] = (idx2[0, 2] + 7) % 62 + 2  # segment 0 of document 1 ...
        out2 = m(idx2)
        assert not torch.allclose(out2[0, S:S + 5], out[0, S:S + 5])  # ... reaches its tokens in segment 1
        assert torch.equal(out2[0, S + 5:], out[0, S + 5:])
        rmt.memory.add_(1.0)
        out3 = m(idx)
        assert not torch.allclose(out3[0, :S + 5], out[0, :S + 5])
        assert torch.equal(out3[0, S + 5:2 * S], out[0, S + 5:2 * S])
        assert not torch.allclose(out3[0, 2 * S:], out[0, 2 * S:])


def test_doc_attention_generation_continues_a_document_as_alone():
    """Generation (full recompute): a prompt [A, start of B] with B at a segment boundary continues B
    as B alone does."""
    m = model(8, doc_attention=True)
    a, b = _with_docs(S, [(0,)], 3), _with_docs(S + 2, [(0,)], 4)
    kw = dict(temperature=0, stop_at_bos=False, return_logits=True)
    ids, logits = sample(m, torch.cat([a, b], 1), 5, **kw)
    ids_alone, logits_alone = sample(m, b, 5, **kw)
    assert torch.equal(ids, ids_alone)
    torch.testing.assert_close(logits, logits_alone, rtol=1e-4, atol=1e-4)
