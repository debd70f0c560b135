"""CaseOps: a reversible text transform that takes ASCII capitalisation out of the words, so a tokenizer
spends its pieces on lowercase words and four operator symbols carry the case (PR #1729, the
`lossless_caps_caseops_v1` format of the 1.0611 record; our own code, same format, so the published
CaseOps shards and tokenizer decode with it).

Over maximal runs of ASCII letters [A-Za-z]:
    lowercase word          unchanged                           "the"   -> "the"
    ALLCAPS (2+ letters)    ALLCAPS + lowercase                 "NASA"  -> ALLCAPS "nasa"
    Title (incl. "A")       TITLE + lowercase                   "The"   -> TITLE "the"
    mixed                   [TITLE] first letter, then CAPNEXT  "iPhOne" -> "i" CAPNEXT "p" "h" CAPNEXT "o" "ne"
                            before each later capital
and an operator character that occurs in the input is escaped as ESC + itself, so every string maps
to a distinct string and decode(encode(x)) == x for all x (tests/data/test_caseops.py, also on every
FineWeb val document). Non-ASCII letters are untouched. The operators are private-use code points
(U+E001..U+E004); the tokenizer reserves them as user_defined_symbols so each is always one piece.

Byte accounting: BPB on CaseOps shards must count the *original* text's UTF-8 bytes, not those of the
transformed text (operators are 3 bytes each and stand for none). `piece_byte_counts` gives every
token the original bytes it accounts for; written beside the val shards as the byte sidecar
(fineweb_val_bytes_*.bin), which scoring then counts instead of the tokenizer's byte LUTs.
"""
from __future__ import annotations

import re

import numpy as np

from golf.core.utils import GolfError

NAME = "lossless_caps_caseops_v1"
IDENTITY = "identity"
TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
OPERATORS = (TITLE, ALLCAPS, CAPNEXT, ESC)  # the tokenizer's user_defined_symbols, in this order

_ENC = re.compile(r"[a-z]*[A-Z][A-Za-z]*|[\ue001-\ue004]")  # maximal letter runs holding a capital; operators
_DEC = re.compile(r"(\ue004[\s\S]?)|([\ue001-\ue003])|([A-Za-z]+)|([^A-Za-z\ue001-\ue004]+)")
# in the transformed UTF-8 bytes (every operator is EE 80 81..84): an escape pair (ESC counts 0 bytes,
# the escaped operator its own 3) or a bare operator (0 bytes)
_OPS_BYTES = re.compile(rb"\xee\x80\x84\xee\x80[\x81-\x84]|\xee\x80[\x81-\x84]")


class CaseOpsError(GolfError):
    """A string that is not the output of `encode` (a malformed transformed text)."""


def _word(m: re.Match) -> str:
    w = m.group(0)
    if len(w) == 1 and w in OPERATORS:
        return ESC + w
    low = w.lower()
    if len(w) >= 2 and w.isupper():
        return ALLCAPS + low
    if w[0].isupper() and (len(w) == 1 or w[1:].islower()):
        return TITLE + low
    out = [TITLE + low[0] if w[0].isupper() else low[0]]
    out.extend(CAPNEXT + c if o.isupper() else c for o, c in zip(w[1:], low[1:]))
    return "".join(out)


def encode(text: str) -> str:
    """The CaseOps transform of `text` (any str, also one holding the operator characters)."""
    return _ENC.sub(_word, text)


def decode(text: str, strict: bool = False) -> str:
    """The inverse of `encode`. Raises CaseOpsError on a string no valid stream contains (dangling
    or misplaced operators). strict=True also requires `text` to be exactly encode(result), i.e. the
    one canonical spelling (e.g. CAPNEXT at a word's start is read, but encode never writes it)."""
    out: list[str] = []
    pending = None  # "title" | "allcaps": the next letter starts a word in that case
    capnext = in_word = allcaps = False
    for m in _DEC.finditer(text):
        esc, op, letters, other = m.groups()
        if esc is not None:
            if len(esc) == 1:
                raise CaseOpsError("dangling ESC at the end of a CaseOps text")
            if pending or capnext:
                raise CaseOpsError(f"a case operator is followed by an escaped character at {m.start()}")
            ch = esc[1]
            out.append(ch)
            in_word = "a" <= ch.lower() <= "z" and ch.isascii()
            allcaps = allcaps and in_word
        elif op is not None:
            if op == CAPNEXT:
                if capnext:
                    raise CaseOpsError(f"two CAPNEXT in a row at {m.start()}")
                capnext = True
            else:
                if pending or in_word or capnext:
                    raise CaseOpsError(f"misplaced TITLE/ALLCAPS at {m.start()} (inside a word or after another operator)")
                pending = "title" if op == TITLE else "allcaps"
        elif letters is not None:
            first, rest = letters[0], letters[1:]
            if not in_word:
                up = pending is not None or capnext
                allcaps = pending == "allcaps"
                in_word = True
            else:
                up = allcaps or capnext
            pending, capnext = None, False
            out.append(first.upper() if up else first)
            out.append(rest.upper() if allcaps else rest)
        else:
            if pending or capnext:
                raise CaseOpsError(f"a case operator at {m.start()} is not followed by an ASCII letter")
            out.append(other)
            in_word = allcaps = False
    if pending or capnext:
        raise CaseOpsError("dangling case operator at the end of a CaseOps text")
    res = "".join(out)
    if strict and encode(res) != text:
        raise CaseOpsError("not a canonical CaseOps text (encode(decode(s)) != s)")
    return res


def transform(name: str | None):
    """The forward transform a data folder's manifest names ("identity" / None / "lossless_caps_caseops_v1")."""
    if name in (None, "", IDENTITY):
        return None
    if name == NAME:
        return encode
    raise GolfError(f"unknown text transform {name!r}; golf knows {IDENTITY!r} and {NAME!r}")


def original_byte_weights(transformed: bytes, caseops: bool) -> np.ndarray:
    """Per byte of the transformed text's UTF-8: how many bytes of the original text it stands for
    (1, or 0 for the bytes of an operator). Sums to the original text's UTF-8 length."""
    w = np.ones(len(transformed), dtype=np.int64)
    if caseops and b"\xee\x80" in transformed:
        for m in _OPS_BYTES.finditer(transformed):
            w[m.start(): m.start() + 3] = 0
    return w


def piece_byte_counts(transformed: bytes, ends, caseops: bool) -> tuple[np.ndarray, int]:
    """Original-text bytes per token, from each piece's end byte offset in the transformed text
    (SentencePiece's offset mapping). Piece i accounts for the bytes after piece i-1's end up to its
    own end; the first piece also takes what lies before it and the last one what lies after it
    (whitespace the normaliser drops, which no piece covers), so the counts sum to the original UTF-8
    length exactly. Returns (counts int64 [len(ends)], bytes left over: all of them when there is no
    piece, e.g. a document of whitespace only)."""
    cum = np.concatenate([[0], np.cumsum(original_byte_weights(transformed, caseops))])
    ends = np.asarray(ends, dtype=np.int64)
    if ends.size == 0:
        return np.zeros(0, dtype=np.int64), int(cum[-1])
    ends = np.maximum.accumulate(np.clip(ends, 0, len(transformed)))
    ends[-1] = len(transformed)
    return np.diff(cum[ends], prepend=0), 0


__all__ = ["NAME", "IDENTITY", "OPERATORS", "TITLE", "ALLCAPS", "CAPNEXT", "ESC", "CaseOpsError", "encode", "decode",
           "transform", "original_byte_weights", "piece_byte_counts"]
