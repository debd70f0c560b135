"""The val byte sidecar (golf issue 19): per token the original text's UTF-8 bytes it accounts for,
written beside the val shards by `make data CASEOPS=1` (or BYTE_SIDECAR=1), counted by every BPB path
(sliding window, its reference, TTT, training-time val), and required for a CaseOps folder."""
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from golf.core.utils import GolfError
from golf.data.audit import audit_file
from golf.data.bpb import build_luts, data_luts, token_bytes
from golf.data.caseops import OPERATORS, encode
from golf.data.folder import (byte_sidecar_files, load_byte_sidecar, load_data_tokenizer, load_split, read_manifest,
                              split_layout)
from golf.data.prepare import encode_docs, write_data_folder
from golf.data.shards import write_shard
from golf.data.tokenizer import ByteTokenizer, train_sentencepiece

# hostile documents: empty, whitespace only (no token at all), text the normaliser drops or folds,
# the operators themselves, capitals everywhere, emoji and byte-fallback characters
HOSTILE = ["", "   ", "\u200b", "  Leading and trailing  \n\n", "\ue001\ue004 NASA\ue002 iPhone \ue000",
           "ﬁne Ａ 😀 \u0085 x", "ALL CAPS WORDS. Title Case. mIxEd", "x", "\x00nul\x00", "a\u200bb"]


@pytest.fixture(scope="module")
def caseops_tok(wiki_docs):
    """A tiny CaseOps tokenizer: 512 pieces on ~300 KB of transformed wiki text, operators reserved."""
    lines = [line for d in wiki_docs[20:60] for line in encode(d).split("\n")]
    return train_sentencepiece(lines, vocab_size=512, num_threads=1, user_defined_symbols=OPERATORS)


def _uniform(vocab: int):
    class Uniform(nn.Module):  # every token costs ln(vocab) nats: BPB depends on the byte count only
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(vocab, dtype=torch.float64))

        def forward(self, idx, targets=None, reduction="mean"):
            logits = self.bias.expand(*idx.shape, vocab)
            if targets is None:
                return logits
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction=reduction)
            return loss.view(targets.shape) if reduction == "none" else loss

    return Uniform()


@pytest.mark.parametrize("kind", ["sp", "sp_caseops", "byte"])
def test_counts_sum_to_the_original_bytes_on_hostile_docs(kind, sp_tokenizer, caseops_tok):
    tok = {"sp": sp_tokenizer, "sp_caseops": caseops_tok, "byte": ByteTokenizer()}[kind]
    caseops = kind == "sp_caseops"
    for text, (ids, counts, left) in zip(HOSTILE, tok.encode_with_bytes(HOSTILE, caseops=caseops)):
        assert int(counts.sum()) + left == len(text.encode("utf-8")), repr(text)
        assert counts.shape == ids.shape and (counts >= 0).all()
        # the ids are exactly the shards' (the fast line-split path of encode_batch)
        want = tok.encode_batch([encode(text) if caseops else text])[0]
        assert list(ids) == list(want)
    if kind == "byte":
        with pytest.raises(GolfError, match="CaseOps needs a SentencePiece"):
            tok.encode_with_bytes(["x"], caseops=True)


def test_caseops_tokenizer_reserves_the_operators(caseops_tok, sp_tokenizer):
    assert caseops_tok.is_caseops and not sp_tokenizer.is_caseops and not ByteTokenizer().is_caseops
    for op in OPERATORS:
        assert len(caseops_tok.encode("ab" + op + "cd")) >= 3 and caseops_tok.sp.piece_to_id(op) in caseops_tok.encode(op)


@pytest.fixture(scope="module")
def caseops_dir(tmp_path_factory, wiki_docs, caseops_tok):
    # a folder name holding both split names: nothing may be found by pattern
    out = tmp_path_factory.mktemp("data") / "val_train_caseops"
    val = wiki_docs[:12] + HOSTILE[3:]  # several shards of val (small shard size), hostile docs included
    write_data_folder(out, caseops_tok, {"train": wiki_docs[20:40], "val": val}, name="train_val",
                      shard_tokens=1 << 13, workers=1, caseops=True)
    return out


def test_caseops_folder_layout_and_manifest(caseops_dir, wiki_docs, caseops_tok):
    m = read_manifest(caseops_dir)
    assert m["text_transform"] == "lossless_caps_caseops_v1" and m["byte_accounting"] == "sidecar"
    val_files = split_layout(caseops_dir)["val"]
    side_files = byte_sidecar_files(caseops_dir)
    assert len(val_files) >= 2 and [f.name for f in side_files] == [f.name.replace("val_", "val_bytes_") for f in val_files]
    assert not any("bytes" in f.name for f in val_files + split_layout(caseops_dir)["train"])
    side = load_byte_sidecar(caseops_dir)
    val = np.asarray(load_split(caseops_dir, "val"))
    original = sum(len(t.encode("utf-8")) for t in wiki_docs[:12] + HOSTILE[3:])
    assert side.shape == val.shape and int(side.sum()) == original == m["splits"]["val"]["text_bytes"]
    assert m["splits"]["val"]["byte_sidecar"]["bytes"] == original
    # the tokens are the CaseOps text's; train has no sidecar
    assert val.tolist()[: 1 + len(caseops_tok.encode(encode(wiki_docs[0])))] == \
        encode_docs(caseops_tok, [encode(wiki_docs[0])]).tolist()
    assert load_byte_sidecar(caseops_dir, max_tokens=100).tolist() == side[:100].tolist()


def test_caseops_folder_without_sidecar_is_refused(caseops_dir, tmp_path):
    # golf's layout, its first sidecar file gone: named with the fix
    d = tmp_path / "golf_layout"
    shutil.copytree(caseops_dir, d)
    (d / "fineweb_val_bytes_000000.bin").unlink()
    with pytest.raises(GolfError, match=r"fineweb_val_bytes_000000\.bin not found.*make data CASEOPS=1"):
        load_byte_sidecar(d)
    # the challenge's layout (no manifest: a CaseOps download), without any sidecar: the tokenizer says CaseOps
    c = tmp_path / "challenge_layout"
    c.mkdir()
    for f in split_layout(caseops_dir)["val"]:
        shutil.copy(f, c / f.name)
    shutil.copy(caseops_dir / "tokenizer.model", c / "tokenizer.model")
    tok = load_data_tokenizer(c)
    with pytest.raises(GolfError, match=r"fineweb_val_bytes_000000\.bin not found.*lossless_caps_caseops_v1"):
        data_luts(c, tok)
    # with its sidecar files beside the shards it loads, aligned with the val tokens
    for f in byte_sidecar_files(caseops_dir):
        shutil.copy(f, c / f.name)
    assert load_byte_sidecar(c, tok).tolist() == load_byte_sidecar(caseops_dir).tolist()
    # a sidecar of the wrong length is named
    write_shard(c / "fineweb_val_bytes_000000.bin", np.zeros(3, dtype=np.uint16))
    with pytest.raises(GolfError, match="fineweb_val_bytes_000000.bin holds 3 entries"):
        load_byte_sidecar(c, tok)


def test_plain_folder_counts_luts_and_byte_sidecar_is_optional(sp_data_dir, sp_tokenizer, wiki_docs, tmp_path):
    assert load_byte_sidecar(sp_data_dir, sp_tokenizer) is None and data_luts(sp_data_dir, sp_tokenizer).sidecar is None
    out = tmp_path / "plain_sidecar"
    write_data_folder(out, sp_tokenizer, {"train": wiki_docs[20:30], "val": wiki_docs[:5]}, name="w", workers=1,
                      byte_sidecar=True)
    m = read_manifest(out)
    assert m["text_transform"] == "identity" and int(load_byte_sidecar(out).sum()) == m["splits"]["val"]["text_bytes"]
    # same tokens as without the sidecar
    assert np.array_equal(np.asarray(load_split(out, "val")), encode_docs(sp_tokenizer, wiki_docs[:5]))
    with pytest.raises(GolfError, match="reserves its four operators"):
        write_data_folder(tmp_path / "x", sp_tokenizer, {"train": ["a"], "val": ["b"]}, name="x", caseops=True)


def test_every_bpb_path_counts_the_sidecar(caseops_dir, caseops_tok):
    from golf.eval.score import evaluate_bpb, evaluate_bpb_reference
    from golf.eval.ttt import PerDocTTT, ScoreFirstSGD
    from golf.train.trainer import evaluate_val

    val = np.asarray(load_split(caseops_dir, "val"))[:700]
    luts = data_luts(caseops_dir, caseops_tok, max_tokens=700)
    side = luts.sidecar.numpy().astype(np.int64)
    V = caseops_tok.vocab_size
    model = _uniform(V)
    want = int(side[1:].sum())  # every target once: tokens 1..N-1
    for res in (evaluate_bpb(model, val, luts, 64, 16, 8), evaluate_bpb_reference(model, val, luts, 64, 16),
                ScoreFirstSGD(64, 16, 8, chunk_tokens=64, lr=0.0)(model, val, luts)):
        assert res["bytes"] == want
        assert math.isclose(res["val_bpb"], (len(val) - 1) * math.log(V) / (math.log(2) * want), rel_tol=1e-6)  # TTT: float32 loss
    # per-document LoRA TTT (padded batches of documents) needs a GPT; its bytes do not depend on the model
    from modelkit import small_cfg

    from golf.model.gpt import GPT
    torch.manual_seed(0)
    gpt = GPT(small_cfg(vocab_size=V, train_seq_len=64)).eval()
    assert PerDocTTT(64, 16, chunk_tokens=16, lora_rank=2, batch_docs=3)(gpt, val, luts)["bytes"] == want
    # training-time val: non-overlapping windows over the prefix
    d = SimpleNamespace(device=torch.device("cpu"), rank=0, world_size=1, on=False)
    import contextlib

    loss, bpb = evaluate_val(model, val, luts, 64, 4, d, contextlib.nullcontext)
    n_win = (len(val) - 1) // 64
    got = int(side[1: n_win * 64 + 1].sum())
    assert math.isclose(bpb, n_win * 64 * math.log(V) / (math.log(2) * got), rel_tol=1e-6)
    # the LUTs alone would count the transformed text (operators as 3 bytes): a different number
    assert int(token_bytes(torch.as_tensor(val[:-1]), torch.as_tensor(val[1:]), build_luts(caseops_tok)).sum()) != want
    with pytest.raises(GolfError, match="tgt_pos"):
        token_bytes(torch.as_tensor(val[:-1]), torch.as_tensor(val[1:]), luts)
    with pytest.raises(GolfError, match="byte sidecar holds 700"):
        evaluate_bpb(model, np.asarray(load_split(caseops_dir, "val"))[:800], luts, 64, 16, 8)


def test_audit_proves_every_kind(caseops_dir, caseops_tok, sp_data_dir, tmp_path, shared_data, capsys):
    docs = tmp_path / "docs.jsonl"
    import json

    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in HOSTILE), encoding="utf-8")
    caseops_tok.save(tmp_path / "c.model")
    r = audit_file(tmp_path / "c.model", docs, max_docs=0, data_path=str(caseops_dir))
    assert r["ok"] and r["caseops"] and r["sidecar_bytes"] == sum(len(t.encode()) for t in HOSTILE)
    assert r["folder"]["ok"] and r["folder"]["sidecar_bytes"] == r["folder"]["manifest_text_bytes"]
    r = audit_file(sp_data_dir / "tokenizer.model", shared_data / "fineweb_val.jsonl.zst", max_docs=30)
    assert r["ok"] and not r["caseops"] and r["lut_bytes"] == r["decoded_bytes"] and r["sidecar_bytes"] == r["text_bytes"]
    ByteTokenizer().save(tmp_path / "b.json")
    r = audit_file(tmp_path / "b.json", docs, max_docs=0)
    assert r["ok"] and r["sidecar_bytes"] == r["text_bytes"] == r["lut_bytes"]
    assert "EXACT" in capsys.readouterr().out
