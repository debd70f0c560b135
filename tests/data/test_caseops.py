"""CaseOps (golf/data/caseops.py, PR #1729's format): the transform is a bijection on every string,
writes exactly the record's spelling, rejects malformed streams, and its byte weights give back the
original text's UTF-8 length."""
import itertools
import random

import pytest

from golf.data.caseops import (ALLCAPS, CAPNEXT, ESC, OPERATORS, TITLE, CaseOpsError, decode, encode,
                               original_byte_weights)

# Random strings rich in what matters (seeded: no extra test dependency): ASCII letters of both cases,
# the operators themselves, other private-use code points, whitespace, non-ASCII letters whose case is
# left alone, and any other code point but a surrogate.
_POOLS = ["aAbBzZqQ", "".join(OPERATORS) + "\ue000\ue005\uf8ff", " \n\t\u00a0\u2028", "ÉéßİıǅΣσ"]


def _random_text(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        k = rng.randrange(6)
        if k < 4:
            out.append(rng.choice(_POOLS[k]))
        elif k == 4:
            out.append(chr(rng.randrange(0xE000, 0xF900)))  # the private-use area
        else:
            c = rng.randrange(0x110000)
            out.append(chr(c if not 0xD800 <= c < 0xE000 else 0x41))
    return "".join(out)


@pytest.mark.parametrize("text, want", [
    ("", ""),
    ("the", "the"),
    ("The NASA Launch", f"{TITLE}the {ALLCAPS}nasa {TITLE}launch"),
    ("A I x", f"{TITLE}a {TITLE}i x"),
    ("iPhOne", f"i{CAPNEXT}ph{CAPNEXT}one"),
    ("McDonald", f"{TITLE}mc{CAPNEXT}donald"),
    ("ÉCOLE", f"É{ALLCAPS}cole"),  # only ASCII letters are touched: the run is "COLE"
    ("ABc9D", f"{TITLE}a{CAPNEXT}bc9{TITLE}d"),
    (TITLE, ESC + TITLE),
    (ESC + ESC, ESC + ESC + ESC + ESC),
    (f"{TITLE}the", f"{ESC}{TITLE}the"),  # an operator in the input never acts as one
])
def test_examples_are_the_records_spelling(text, want):
    assert encode(text) == want
    assert decode(want, strict=True) == text


def test_round_trip_on_random_unicode():
    rng = random.Random(19)
    for _ in range(3000):
        text = _random_text(rng, rng.randrange(0, 40))
        enc = encode(text)
        assert decode(enc) == text, repr(text)
        assert decode(enc, strict=True) == text
        assert not any("A" <= c <= "Z" for c in enc)  # no ASCII capital survives
        assert int(original_byte_weights(enc.encode("utf-8"), True).sum()) == len(text.encode("utf-8"))


@pytest.mark.parametrize("bad", [ESC, TITLE, f"{TITLE} x", f"a{TITLE}b", f"{CAPNEXT}{CAPNEXT}a", f"{ALLCAPS}{TITLE}a",
                                 f"x{CAPNEXT}", f"{TITLE}{ESC}{TITLE}", f"{CAPNEXT}1"])
def test_malformed_streams_are_refused(bad):
    with pytest.raises(CaseOpsError):
        decode(bad)


def test_strict_refuses_non_canonical_spellings():
    assert decode(f"{CAPNEXT}a") == "A"  # read as the record's decoder reads it...
    with pytest.raises(CaseOpsError, match="canonical"):
        decode(f"{CAPNEXT}a", strict=True)  # ...but encode("A") is TITLE a


def test_every_fineweb_val_document_round_trips(shared_data):
    from golf.data.corpus import iter_jsonl_fast

    n = 0
    for text in iter_jsonl_fast(shared_data / "fineweb_val.jsonl.zst"):
        enc = encode(text)
        assert decode(enc) == text
        assert int(original_byte_weights(enc.encode("utf-8"), True).sum()) == len(text.encode("utf-8"))
        n += 1
    assert n == 1813


def test_byte_weights_only_zero_the_operators():
    enc = encode("Ab " + ESC + "ü")
    w = original_byte_weights(enc.encode("utf-8"), True)
    assert w.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1]  # TITLE a b ' ' ESC <ESC> ü
    assert list(itertools.chain(original_byte_weights(enc.encode("utf-8"), False))) == [1] * len(enc.encode("utf-8"))
