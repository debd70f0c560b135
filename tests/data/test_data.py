"""Shards, data folders, the train/val split and `prepare` (golf/data/)."""
import json

import numpy as np
import pytest
import zstandard

from golf.core.utils import GolfError
from golf.data import prepare as prepare_mod
from golf.data.folder import check_tokenizer_matches, load_split, read_manifest, shard_files, tokenizer_path
from golf.data.prepare import doc_hash, prepare, val_hash_threshold
from golf.data.shards import HEADER_BYTES, MAGIC, read_shard, write_shard
from golf.data.tokenizer import ByteTokenizer, load_tokenizer


def test_shard_round_trip_and_header(tmp_path):
    toks = np.array([1, 5, 65535, 0, 42], dtype=np.int64)
    p = write_shard(tmp_path / "x_train_000000.bin", toks)
    raw = np.fromfile(p, dtype="<i4", count=256)
    assert raw[0] == MAGIC and raw[1] == 1 and raw[2] == 5 and not raw[3:].any()
    assert p.stat().st_size == HEADER_BYTES + 2 * 5
    got = read_shard(p)
    assert isinstance(got, np.memmap) and got.dtype == np.uint16
    np.testing.assert_array_equal(got, toks)
    with pytest.raises(ValueError):
        write_shard(tmp_path / "bad.bin", [70000])
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left by the failed write


def _corrupt(path, offset, value):
    a = np.fromfile(path, dtype=np.uint8)
    a[offset:offset + 4] = np.frombuffer(np.int32(value).tobytes(), dtype=np.uint8)
    a.tofile(path)


@pytest.mark.parametrize("kind,match", [
    ("magic", "magic number"), ("version", "format version"), ("truncated", "truncated"),
    ("tiny", "shorter than its 1024-byte header"), ("vocab", "only has 260 ids|has only 260 ids"),
])
def test_bad_shards_are_named(tmp_path, kind, match):
    p = write_shard(tmp_path / "d_val_000000.bin", np.arange(4, 104))
    if kind == "magic":
        _corrupt(p, 0, 12345)
    elif kind == "version":
        _corrupt(p, 4, 2)
    elif kind == "truncated":
        with open(p, "r+b") as f:
            f.truncate(HEADER_BYTES + 50)
    elif kind == "tiny":
        p.write_bytes(b"\0" * 100)
    elif kind == "vocab":
        write_shard(p, [1, 4, 300])
    with pytest.raises(GolfError, match=match) as e:
        read_shard(p, vocab_size=260)
    assert str(p) in str(e.value)


def test_fixture_folders(byte_data_dir, sp_data_dir, wiki_docs):
    for d in (byte_data_dir, sp_data_dir):
        m = read_manifest(d)
        tok = load_tokenizer(tokenizer_path(d))
        check_tokenizer_matches(d, tok)
        assert m["tokenizer"]["sha256"] == tok.sha256 and m["tokenizer"]["vocab_size"] == tok.vocab_size
        for split in ("train", "val"):
            files = shard_files(d, split)
            toks = load_split(d, split)
            assert toks.size == m["splits"][split]["tokens"] == sum(read_shard(f).size for f in files)
            assert toks[0] == 1 and (toks == 1).sum() == m["splits"][split]["docs"]  # BOS before every doc
            assert toks.max() < tok.vocab_size
        assert load_split(d, "train", max_tokens=1000).size == 1000
    assert len(shard_files(byte_data_dir, "train")) > 1  # the multi-shard path is exercised
    # byte shards decode back to the documents exactly
    val = np.asarray(load_split(byte_data_dir, "val"))
    starts = np.flatnonzero(val == 1)
    first = ByteTokenizer().decode(val[starts[0] + 1: starts[1]])
    assert first == wiki_docs[0]


def test_tokenizer_mismatch_is_refused(byte_data_dir, sp_data_dir):
    with pytest.raises(GolfError, match="does not match"):
        check_tokenizer_matches(sp_data_dir, ByteTokenizer())
    sp = load_tokenizer(tokenizer_path(sp_data_dir))
    with pytest.raises(GolfError, match="does not match"):
        check_tokenizer_matches(byte_data_dir, sp)
    with pytest.raises(GolfError, match="has only 260 ids"):
        load_split(sp_data_dir, "val", vocab_size=260)


def test_missing_folder_errors(tmp_path):
    with pytest.raises(GolfError, match="make data"):
        read_manifest(tmp_path)
    with pytest.raises(GolfError, match="no train shards"):
        shard_files(tmp_path, "train")
    with pytest.raises(GolfError, match="no tokenizer"):
        tokenizer_path(tmp_path)


def test_split_is_deterministic_disjoint_and_keeps_duplicates_together():
    docs = [f"document number {i} " * (1 + i % 7) for i in range(300)] + ["dup"] * 5
    thr = val_hash_threshold(docs, 0.1)
    val = [d for d in docs if doc_hash(d) <= thr]
    train = [d for d in docs if doc_hash(d) > thr]
    assert len(val) + len(train) == len(docs) and not set(val) & set(train)
    frac = sum(map(len, val)) / sum(map(len, docs))
    assert 0.1 <= frac < 0.2
    assert val_hash_threshold(list(reversed(docs)), 0.1) == thr  # order does not matter
    assert val_hash_threshold(docs[:3], 0.05) is not None  # tiny corpora still get a val doc
    with pytest.raises(GolfError, match="empty corpus"):
        val_hash_threshold([], 0.1)


def _write_jsonl_zst(path, docs):
    raw = "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(docs)).encode()
    path.write_bytes(zstandard.ZstdCompressor().compress(raw))
    return path


def test_prepare_end_to_end(tmp_path, wiki_docs, monkeypatch):
    src = _write_jsonl_zst(tmp_path / "mini.jsonl.zst", wiki_docs[:60])
    monkeypatch.chdir(tmp_path)
    m1 = prepare(str(src), tokenizer="byte", workers=1, shard_tokens=1 << 16, val_frac=0.1)
    out = tmp_path / "data" / "datasets" / "mini_byte"
    assert read_manifest(out) == m1
    assert m1["corpus"]["sources"][0]["sha256"] and m1["split"]["method"] == "hash"
    assert m1["splits"]["train"]["docs"] + m1["splits"]["val"]["docs"] == 60
    # two worker processes write byte-identical shards
    m2 = prepare(str(src), tokenizer="byte", workers=2, shard_tokens=1 << 16, val_frac=0.1,
                 out=tmp_path / "w2")
    for split in ("train", "val"):
        np.testing.assert_array_equal(load_split(out, split), load_split(tmp_path / "w2", split))
    assert m2["splits"] == m1["splits"]
    # val docs and train docs are disjoint: decode val, none of its documents is in train
    tok = ByteTokenizer()
    val = np.asarray(load_split(out, "val"))
    val_docs = set(tok.decode(val[s + 1:e]) for s, e in zip(np.flatnonzero(val == 1), list(np.flatnonzero(val == 1)[1:]) + [val.size]))
    train = np.asarray(load_split(out, "train"))
    train_docs = set(tok.decode(train[s + 1:e]) for s, e in zip(np.flatnonzero(train == 1), list(np.flatnonzero(train == 1)[1:]) + [train.size]))
    assert val_docs and train_docs and not val_docs & train_docs and len(val_docs | train_docs) == 60
    # an up-to-date folder is not rebuilt
    mtime = (out / "manifest.json").stat().st_mtime_ns
    prepare(str(src), tokenizer="byte", workers=1, shard_tokens=1 << 16, val_frac=0.1)
    assert (out / "manifest.json").stat().st_mtime_ns == mtime


def test_prepare_with_val_file_and_sp(tmp_path, wiki_docs):
    train = _write_jsonl_zst(tmp_path / "tr.jsonl.zst", wiki_docs[20:80])
    val = _write_jsonl_zst(tmp_path / "va.jsonl.zst", wiki_docs[:20])
    m = prepare(str(train), val=str(val), tokenizer="sp", vocab_size=512, workers=1, out=tmp_path / "o",
                tokenizer_sample_bytes=300_000)
    assert m["split"]["method"] == "files" and m["splits"]["val"]["docs"] == 20
    assert m["tokenizer"]["kind"] == "sp" and (tmp_path / "o" / "tokenizer.model").is_file()
    assert m["tokenizer_training"]["sample_chars"] >= 300_000


def test_prepare_bad_inputs_write_nothing(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(GolfError, match="empty corpus|no documents"):
        prepare(str(empty), tokenizer="byte", workers=1, out=tmp_path / "o1")
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"body": "hello"}\n')
    with pytest.raises(GolfError, match="--text-field"):
        prepare(str(nofield), tokenizer="byte", workers=1, out=tmp_path / "o2")
    binary = tmp_path / "latin1.jsonl"
    binary.write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(GolfError, match="UTF-8"):
        prepare(str(binary), tokenizer="byte", workers=1, out=tmp_path / "o3")
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))
    assert not list(tmp_path.glob(".o*"))


def test_cli_prepare(tmp_path, wiki_docs):
    src = _write_jsonl_zst(tmp_path / "c.jsonl.zst", wiki_docs[:30])
    prepare_mod.main(["--corpus", str(src), "--tokenizer", "byte", "--out", str(tmp_path / "o"), "--workers", "1"])
    assert read_manifest(tmp_path / "o")["splits"]["val"]["docs"] >= 1
    with pytest.raises(SystemExit) as e:
        prepare_mod.main(["--corpus", str(tmp_path / "missing.jsonl"), "--tokenizer", "byte"])
    assert e.value.code == 2
