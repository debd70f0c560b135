"""Tokenizers (golf/data/tokenizer.py): round trips, challenge settings, the fast encoder vs the reference."""
import random

import numpy as np
import pytest

from golf.core.utils import GolfError
from golf.data.corpus import iter_jsonl_fast
from golf.data.tokenizer import ByteTokenizer, load_tokenizer, save_tokenizer, train_sentencepiece


def test_byte_tokenizer_round_trip_and_ids(tmp_path):
    tok = ByteTokenizer()
    assert tok.vocab_size == 260 and tok.bos_id == 1 and tok.kind == "byte"
    text = "héllo\nwörld \u2028 😀"
    ids = tok.encode(text)
    assert ids[0] == ord("h") + 4 and min(ids) >= 4 and len(ids) == len(text.encode())
    assert tok.decode(ids) == text
    assert tok.decode([1] + ids + [2]) == text  # specials decode to nothing
    p = save_tokenizer(tok, tmp_path)
    assert p.name == "tokenizer.json"
    again = load_tokenizer(p)
    assert again.sha256 == tok.sha256 and again.encode(text) == ids
    base, space, boundary = tok.bpb_luts()
    assert base.dtype == np.int16 and base[:4].sum() == 0 and (base[4:] == 1).all()
    assert boundary[:4].all() and not boundary[4:].any() and not space.any()


def test_sentencepiece_has_challenge_settings(sp_tokenizer, tmp_path):
    sp = sp_tokenizer.sp
    assert b"nmt_nfkc" in sp_tokenizer.file_bytes  # the normaliser's name is stored in the model
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert sum(sp.is_byte(i) for i in range(sp.get_piece_size())) == 256  # byte_fallback
    assert [sp.id_to_piece(i) for i in sp.encode("\u4e00")] == ["<0xE4>", "<0xB8>", "<0x80>"]
    assert sp.decode(sp.encode("\ufb01ne")) == "fine"  # NFKC
    assert sp_tokenizer.vocab_size == 512 and sp_tokenizer.kind == "sp"
    text = "The year 2024 was 12% warmer — café."
    ids = sp_tokenizer.encode(text)
    assert sp_tokenizer.decode(ids) == text
    assert [sp_tokenizer.sp.id_to_piece(i) for i in sp_tokenizer.encode("2024")] == ["2", "0", "2", "4"]
    p = save_tokenizer(sp_tokenizer, tmp_path)
    assert p.name == "tokenizer.model" and load_tokenizer(p).sha256 == sp_tokenizer.sha256


def test_fast_encoder_matches_reference(sp_tokenizer, wiki_docs, shared_data):
    import itertools

    fineweb = list(itertools.islice(iter_jsonl_fast(shared_data / "fineweb_val.jsonl.zst"), 200))
    docs = wiki_docs[:100] + fineweb
    assert sp_tokenizer.encode_batch(docs) == sp_tokenizer.encode_batch(docs, fast=False)
    # adversarial: blank lines, characters the normaliser drops/keeps, leading whitespace, CR, combining marks
    rng = random.Random(0)
    alpha = [" ", "\n", "\n", "a", "b", "\u200b", "\u00ad", "\u00b4", "\u3000", "\ufeff", "\x00", "\u0301", "1",
             "\u2028", "é", "\x85", "\x1c", "\r", "\t", "\u00a0", "😀"]
    texts = ["".join(rng.choice(alpha) for _ in range(rng.randint(0, 12))) for _ in range(5000)]
    assert sp_tokenizer.encode_batch(texts) == [sp_tokenizer.encode(t) for t in texts]


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(GolfError, match="not found"):
        load_tokenizer(tmp_path / "nope.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(GolfError, match="not a SentencePiece model"):
        load_tokenizer(bad)
    other = tmp_path / "other.json"
    other.write_text('{"tokenizer_type": "bpe"}')
    with pytest.raises(GolfError, match="not a byte tokenizer"):
        load_tokenizer(other)
    with pytest.raises(GolfError, match="unknown tokenizer type"):
        load_tokenizer(tmp_path / "x.txt") if (tmp_path / "x.txt").write_text("") is None else load_tokenizer(tmp_path / "x.txt")
    with pytest.raises(GolfError, match="vocab size"):
        train_sentencepiece(["hello"], vocab_size=1000)


def test_a_corpus_too_small_for_the_vocabulary_is_an_error():
    """SentencePiece with hard_vocab_limit=False gives fewer pieces than asked on a small corpus; a
    silently smaller vocabulary would then disagree with VOCAB_SIZE everywhere after."""
    from golf.core.utils import GolfError
    from golf.data.tokenizer import train_sentencepiece

    with pytest.raises(GolfError, match="too small for a 8192-piece vocabulary"):
        train_sentencepiece(["a tiny corpus of a few words"] * 40, 8192, num_threads=1)
