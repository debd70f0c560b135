"""A split is the manifest's list of files (golf issue 13): hostile corpus names, both directions,
and the load-time guard (disjoint splits, token counts as the manifest says)."""
import json
import os

import numpy as np
import pytest
import zstandard
from datakit import token_folder

from golf.core.utils import GolfError
from golf.data.folder import load_split, read_manifest, shard_files, split_layout
from golf.data.loader import TokenLoader
from golf.data.prepare import prepare, write_data_folder
from golf.data.shards import write_shard
from golf.data.tokenizer import ByteTokenizer


def _jsonl(path, docs):
    raw = "".join(json.dumps({"text": t}) + "\n" for t in docs).encode()
    path.write_bytes(zstandard.ZstdCompressor().compress(raw))
    return path


def _docs(tag, n):
    return [f"{tag} document {i}: " + "lorem ipsum " * (3 + i % 5) for i in range(n)]


def _check_split_tokens(out, train_docs, val_docs):
    """Each split decodes to exactly its own documents, and reads the manifest's token count."""
    m = read_manifest(out)
    tok = ByteTokenizer()
    for split, want in (("train", train_docs), ("val", val_docs)):
        toks = np.asarray(load_split(out, split))
        assert toks.size == m["splits"][split]["tokens"]
        starts = list(np.flatnonzero(toks == 1)) + [toks.size]
        got = [tok.decode(toks[a + 1:b]) for a, b in zip(starts, starts[1:])]
        assert sorted(got) == sorted(want), split
    assert not set(shard_files(out, "train")) & set(shard_files(out, "val"))
    ld = TokenLoader.from_data_path(out, None, seq_len=8, local_batch_seqs=1)
    assert ld.total == m["splits"]["train"]["tokens"]


@pytest.mark.parametrize("corpus_name,val_name", [
    ("wiki_train_00.jsonl.zst", "fineweb_val.jsonl.zst"),  # the leak of issue 13: `*_train_*` matched val
    ("my_val_set.jsonl.zst", "the_train_docs.jsonl.zst"),  # the other direction
    ("train.jsonl.zst", "val.jsonl.zst"),
    ("val_train_val.jsonl.zst", "train_val_train.jsonl.zst"),
])
def test_prepare_with_hostile_names_keeps_splits_apart(tmp_path, corpus_name, val_name):
    train_docs, val_docs = _docs("train", 30), _docs("val", 7)
    src, val = _jsonl(tmp_path / corpus_name, train_docs), _jsonl(tmp_path / val_name, val_docs)
    out = tmp_path / "out_train_val_"
    prepare(str(src), val=str(val), tokenizer="byte", workers=1, out=out, shard_tokens=256)
    assert len(shard_files(out, "train")) > 1 and len(shard_files(out, "val")) > 1
    _check_split_tokens(out, train_docs, val_docs)


def test_prepare_with_a_glob_and_no_val_keeps_splits_apart(tmp_path, monkeypatch):
    docs = _docs("a", 40)
    _jsonl(tmp_path / "wiki_val_00.jsonl.zst", docs[:20])
    _jsonl(tmp_path / "wiki_val_01.jsonl.zst", docs[20:])
    monkeypatch.chdir(tmp_path)  # default out: data/datasets/<stem>_byte, a stem with `_val_` in it
    m = prepare(str(tmp_path / "wiki_val_0*.jsonl.zst"), tokenizer="byte", workers=1, shard_tokens=256, val_frac=0.2)
    out = tmp_path / "data" / "datasets" / "wiki_val_0_etc_byte"
    assert m["splits"]["val"]["docs"] < m["splits"]["train"]["docs"]
    tok = ByteTokenizer()
    val = np.asarray(load_split(out, "val"))
    assert val.size == m["splits"]["val"]["tokens"]
    train = np.asarray(load_split(out, "train"))
    assert train.size == m["splits"]["train"]["tokens"]
    assert tok.decode(val).count("document") + tok.decode(train).count("document") == 40


@pytest.mark.parametrize("name", ["org/train_val-mix", "fineweb_val", "*_train_*", "x_val_000000"])
def test_write_data_folder_names_do_not_leak_into_file_names(tmp_path, name):
    """A Hub dataset name, a glob or a shard-like name as the folder's name changes no file name."""
    train_docs, val_docs = _docs("t", 12), _docs("v", 3)
    out = tmp_path / "o"
    write_data_folder(out, ByteTokenizer(), {"train": train_docs, "val": val_docs}, name=name, shard_tokens=128)
    assert all(f.name.startswith("fineweb_train_") for f in shard_files(out, "train"))
    assert all(f.name.startswith("fineweb_val_") for f in shard_files(out, "val"))
    _check_split_tokens(out, train_docs, val_docs)


def _folder(tmp_path):
    return token_folder(tmp_path / "d", ByteTokenizer(), train=[np.arange(4, 200), np.arange(4, 100)],
                        val=np.arange(4, 60))


def _edit_manifest(d, fn):
    m = json.loads((d / "manifest.json").read_text())
    fn(m)
    (d / "manifest.json").write_text(json.dumps(m))


def test_guard_refuses_a_shard_listed_in_both_splits(tmp_path):
    d = _folder(tmp_path)
    _edit_manifest(d, lambda m: m["splits"]["train"]["files"].append(m["splits"]["val"]["files"][0]))
    with pytest.raises(GolfError, match="tokens but .*manifest.json says|must not share") as e:
        shard_files(d, "train")
    assert str(d) in str(e.value)


def test_guard_refuses_a_link_from_train_to_val(tmp_path):
    d = _folder(tmp_path)
    val_file = shard_files(d, "val")[0]
    train_file = shard_files(d, "train")[1]
    train_file.unlink()
    os.link(val_file, train_file)  # same inode under a train name, counts patched to match
    n = int(np.fromfile(val_file, dtype="<i4", count=3)[2])

    def patch(m):
        m["splits"]["train"]["files"][1]["tokens"] = n
        m["splits"]["train"]["tokens"] = m["splits"]["train"]["files"][0]["tokens"] + n
    _edit_manifest(d, patch)
    with pytest.raises(GolfError, match="must not share shards"):
        TokenLoader.from_data_path(d, None, seq_len=8, local_batch_seqs=1)


@pytest.mark.parametrize("edit,match", [
    (lambda m: m["splits"]["train"].update(tokens=1), "manifest.json says 1"),
    (lambda m: m["splits"]["val"]["files"][0].update(tokens=0), "holds 56 tokens"),
    (lambda m: m["splits"]["train"]["files"][0].update(name="../d/fineweb_val_000000.bin"), "not a plain file name"),
    (lambda m: m["splits"]["train"]["files"][0].update(name=""), "not a plain file name"),
    (lambda m: m["splits"]["train"].update(files=[]), "lists no shard files"),
    (lambda m: m["splits"]["train"]["files"][0].update(name="gone.bin"), "gone.bin not found"),
])
def test_guard_refuses_a_manifest_that_does_not_match_the_folder(tmp_path, edit, match):
    d = _folder(tmp_path)
    _edit_manifest(d, edit)
    with pytest.raises(GolfError, match=match):
        split_layout(d)


def test_guard_refuses_a_shard_rewritten_after_the_manifest(tmp_path):
    d = _folder(tmp_path)
    write_shard(shard_files(d, "train")[0], np.zeros(0, dtype=np.uint16))  # empty, header intact
    with pytest.raises(GolfError, match="holds 0 tokens"):
        load_split(d, "train")


def test_old_manifests_list_bare_names_and_are_read_by_their_lists(tmp_path):
    """A golf-data-1 folder whose corpus was called `wiki_train_00`: its val shard matches the old glob,
    but the manifest's lists keep it out of training."""
    d = tmp_path / "old"
    d.mkdir()
    ByteTokenizer().save(d / "tokenizer.json")
    write_shard(d / "wiki_train_00_train_000000.bin", np.arange(4, 100))
    write_shard(d / "wiki_train_00_val_000000.bin", np.arange(4, 30))
    (d / "manifest.json").write_text(json.dumps({
        "format": "golf-data-1", "tokenizer": {"kind": "byte", "file": "tokenizer.json", "vocab_size": 260},
        "splits": {"train": {"files": ["wiki_train_00_train_000000.bin"], "tokens": 96},
                   "val": {"files": ["wiki_train_00_val_000000.bin"], "tokens": 26}}}))
    assert [f.name for f in shard_files(d, "train")] == ["wiki_train_00_train_000000.bin"]
    assert TokenLoader.from_data_path(d, None, seq_len=8, local_batch_seqs=1).total == 96


def test_challenge_folder_without_manifest_reads_its_exact_names(tmp_path):
    write_shard(tmp_path / "fineweb_train_000000.bin", np.arange(4, 100))
    write_shard(tmp_path / "fineweb_val_000000.bin", np.arange(4, 30))
    write_shard(tmp_path / "fineweb_train_val_000000.bin", np.arange(4, 8))  # hostile: the numbered names only
    assert [f.name for f in shard_files(tmp_path, "train")] == ["fineweb_train_000000.bin"]
    assert [f.name for f in shard_files(tmp_path, "val")] == ["fineweb_val_000000.bin"]
    assert load_split(tmp_path, "val").size == 26
    empty = tmp_path / "e"
    empty.mkdir()
    write_shard(empty / "wiki_train_00_val_000000.bin", np.arange(4, 30))
    with pytest.raises(GolfError, match="no val shards in .*no manifest.json"):
        shard_files(empty, "val")
