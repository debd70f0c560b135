"""BPB byte accounting (golf/data/bpb.py): the LUT rule against real decoded bytes on FineWeb documents."""
import itertools
import math

import numpy as np
import pytest
import torch

from golf.data.audit import audit_file
from golf.data.bpb import audit_bytes, bits_per_byte, build_luts, token_bytes
from golf.data.corpus import iter_jsonl_fast
from golf.data.folder import tokenizer_path
from golf.data.tokenizer import ByteTokenizer, train_sentencepiece

N_DOCS = 300


@pytest.fixture(scope="module")
def fineweb_docs(shared_data):
    return list(itertools.islice(iter_jsonl_fast(shared_data / "fineweb_val.jsonl.zst"), N_DOCS))


@pytest.fixture(scope="module")
def sp1024(shared_data):
    """The challenge's default size: a 1024-piece BPE trained on ~2 MB of wiki text."""
    lines, size = [], 0
    for doc in iter_jsonl_fast(shared_data / "wiki_train_00.jsonl.zst"):
        lines += doc.split("\n")
        size += len(doc)
        if size > 2_000_000:
            break
    return train_sentencepiece(lines, vocab_size=1024, num_threads=2)


def test_audit_exact_sentencepiece(sp1024, fineweb_docs):
    r = audit_bytes(sp1024, fineweb_docs)
    assert r["docs"] == N_DOCS and r["mismatches"] == [] and r["ok"]
    assert r["lut_bytes"] == r["decoded_bytes"] > 0
    # nmt_nfkc rewrites the text (whitespace runs collapse, NFKC), so the decoded text is what counts
    assert r["decoded_bytes"] <= r["text_bytes"]
    assert 2.0 < r["bytes_per_token"] < 3.0


def test_audit_exact_sentencepiece_small(sp_tokenizer, fineweb_docs):
    assert audit_bytes(sp_tokenizer, fineweb_docs[:100])["ok"]


def test_audit_exact_bytes(fineweb_docs):
    r = audit_bytes(ByteTokenizer(), fineweb_docs)
    assert r["ok"] and r["lut_bytes"] == r["text_bytes"] == sum(len(d.encode()) for d in fineweb_docs)


class _RawPieceLuts:
    """A tokenizer whose LUT counts each piece's raw UTF-8 length ('▁' = 3 bytes, '<0xNN>' = 6): a
    bug public entries shipped. The audit must catch it."""

    def __init__(self, tok):
        self.tok, self.kind, self.sha256, self.bos_id = tok, tok.kind, tok.sha256, tok.bos_id
        self.encode, self.decode = tok.encode, tok.decode

    def bpb_luts(self):
        base, space, boundary = self.tok.bpb_luts()
        raw = np.array([len(self.tok.sp.id_to_piece(i).encode()) for i in range(self.tok.vocab_size)], dtype=np.int16)
        return np.where(boundary, 0, raw).astype(np.int16), np.zeros_like(space), boundary


def test_audit_catches_a_wrong_rule(sp1024, fineweb_docs):
    r = audit_bytes(_RawPieceLuts(sp1024), fineweb_docs[:20])
    assert not r["ok"] and r["mismatches"] and r["lut_bytes"] > r["decoded_bytes"]


def test_leading_space_counts_only_after_a_non_boundary(sp1024):
    base, space, boundary = sp1024.bpb_luts()
    word = next(i for i in range(sp1024.vocab_size) if space[i] and base[i] > 0)
    plain = sp1024.encode("x")[0]
    got = token_bytes(torch.tensor([1, plain, 0]), torch.tensor([word, word, word]), build_luts(sp1024))
    assert got.tolist() == [base[word], base[word] + 1, base[word]]  # after BOS / a piece / PAD
    assert got.dtype == torch.int32


def test_token_bytes_matches_per_doc_count(sp_tokenizer, wiki_docs):
    """token_bytes over a BOS-separated stream (as eval sees it) == per-document LUT counts == real bytes."""
    luts = build_luts(sp_tokenizer)
    docs = wiki_docs[:30]
    stream = []
    for d in docs:
        stream += [1] + sp_tokenizer.encode(d)
    stream = torch.tensor(stream)
    total = int(token_bytes(stream[:-1], stream[1:], luts).sum())
    real = sum(len(sp_tokenizer.decode(sp_tokenizer.encode(d)).encode()) for d in docs)
    assert total == real


def test_bits_per_byte():
    # mean loss ln(2) nats/token = 1 bit/token; 2 bytes per token -> 0.5 bits per byte
    assert math.isclose(bits_per_byte(100 * math.log(2), 100, 200), 0.5)
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 1, 0)


def test_audit_file_cli_helper(sp_data_dir, shared_data, capsys):

    r = audit_file(tokenizer_path(sp_data_dir), shared_data / "fineweb_val.jsonl.zst", max_docs=20)
    assert r["ok"] and r["docs"] == 20
    assert "EXACT" in capsys.readouterr().out
