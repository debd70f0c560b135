"""Shared test fixtures: small real data folders built once per session from ../shared/data.

    shared_data     Path of ../shared/data, or $GOLF_SHARED_DATA (skips the test when it is absent)
    wiki_docs       the first 200 documents of wiki_val.jsonl.zst (list[str])
    byte_data_dir   data folder: byte tokenizer (tokenizer.json), train/val shards, manifest.json
    sp_data_dir     data folder: SentencePiece BPE vocab 512 (tokenizer.model) trained on ~1.5 MB

Both folders hold several shards per split (small shard size) so multi-shard code paths run.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# GOLF_SHARED_DATA: a copy elsewhere (e.g. a folder carried to a GPU machine with the CUDA tests)
SHARED_DATA = Path(os.environ.get("GOLF_SHARED_DATA") or REPO.parent / "shared" / "data")
FIXTURE_DOCS = 200
FIXTURE_VAL_DOCS = 20
FIXTURE_SHARD_TOKENS = 1 << 18


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "wiki_val.jsonl.zst").is_file():
        pytest.skip(f"shared research data not found at {SHARED_DATA} (the research corpora: see README.md, 'Tests')")
    return SHARED_DATA


@pytest.fixture(scope="session")
def wiki_docs(shared_data) -> list[str]:
    from golf.data.corpus import iter_jsonl_fast

    docs = []
    for text in iter_jsonl_fast(shared_data / "wiki_val.jsonl.zst"):
        docs.append(text)
        if len(docs) >= FIXTURE_DOCS:
            break
    return docs


def _build(out: Path, tokenizer, docs: list[str]) -> Path:
    from golf.data.prepare import write_data_folder

    write_data_folder(out, tokenizer, {"train": docs[FIXTURE_VAL_DOCS:], "val": docs[:FIXTURE_VAL_DOCS]},
                      name="wiki", shard_tokens=FIXTURE_SHARD_TOKENS, workers=1,
                      manifest_extra={"corpus": {"spec": "wiki_val.jsonl.zst (first 200 docs)"}})
    return out


@pytest.fixture(scope="session")
def byte_data_dir(tmp_path_factory, wiki_docs) -> Path:
    from golf.data.tokenizer import ByteTokenizer

    return _build(tmp_path_factory.mktemp("data") / "wiki_byte", ByteTokenizer(), wiki_docs)


@pytest.fixture(scope="session")
def sp_tokenizer(wiki_docs):
    """A 512-piece SentencePiece BPE (challenge settings) trained on ~1.5 MB of wiki text."""
    from golf.data.tokenizer import train_sentencepiece

    lines, size = [], 0
    for d in wiki_docs[FIXTURE_VAL_DOCS:]:
        for line in d.split("\n"):
            lines.append(line)
            size += len(line)
        if size > 1_500_000:
            break
    return train_sentencepiece(lines, vocab_size=512, num_threads=min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def sp_data_dir(tmp_path_factory, wiki_docs, sp_tokenizer) -> Path:
    return _build(tmp_path_factory.mktemp("data") / "wiki_sp512", sp_tokenizer, wiki_docs)
