"""DOC_PACKING=1: training rows made of whole documents (golf issue 23).

After the challenge's varlen record (records/track_10min_16mb/2026-04-10_VarLenAttn, PR #1354 and
#1529), which packs documents into flat buffers and splits a document longer than max_doc_len.
Our own code, for fixed-length rows: a document (BOS + its tokens) is cut into pieces of at most
TRAIN_SEQ_LEN tokens counted from its BOS; pieces go in stream order into rows of TRAIN_SEQ_LEN;
a piece that does not fit in the current row closes it (the rest is padding) and starts the next.
No piece is cut, no token skipped or repeated, and every row starts at a BOS or at a piece
boundary of a long document.

Pieces are consecutive in the stream, so a row is one contiguous span [start, end) of it followed
by padding; a piece's last token predicts the next stream token (as in the record's flat buffer:
a document's last token predicts the next BOS).
"""
from __future__ import annotations

import numpy as np

from golf.data.shards import BOS_ID

PAD_INPUT = 0  # input id at padded positions (never BOS, so no document starts there)
PAD_TARGET = -100  # F.cross_entropy's default ignore_index: padded positions add nothing to the loss


def window_tokens(seq_len: int, num_rows: int) -> int:
    """Stream tokens pack_rows reads: the rows' worth plus one row. A piece is at most seq_len long,
    so every piece starting inside the first num_rows * seq_len tokens has its true end in the
    window, and the pieces there hold more tokens than the rows can take (the plan always ends)."""
    return (num_rows + 1) * seq_len


def pack_rows(window: np.ndarray, seq_len: int, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """window: the stream from a document or piece start on (at least window_tokens long).
    Returns (starts, ends) int64 [num_rows]: row r holds window[starts[r]:ends[r]], then padding;
    ends[r] == starts[r + 1], and ends[-1] is where the next plan starts.

    Vectorised over tokens and documents: the BOS positions give the documents, np.repeat their
    pieces, and each row is one searchsorted (the last piece that ends within seq_len of the
    row's start), so the only Python loop is over rows."""
    T, need = int(seq_len), window_tokens(seq_len, num_rows)
    if len(window) < need:
        raise ValueError(f"pack_rows: window of {len(window)} tokens, need {need}")
    w = np.asarray(window[:need])
    # documents in the window: [bounds[i], bounds[i+1]); position 0 starts one whether or not it is
    # a BOS (a piece of a long document); the window's end closes the last (a piece cut there
    # starts beyond num_rows * T, so it is never placed)
    bounds = np.concatenate([[0], np.flatnonzero(w[1:] == BOS_ID) + 1, [need]]).astype(np.int64)
    lens = np.diff(bounds)
    n = -(-lens // T)  # pieces per document
    first = np.repeat(np.cumsum(n) - n, n)
    p_start = np.repeat(bounds[:-1], n) + (np.arange(int(n.sum()), dtype=np.int64) - first) * T
    p_end = np.minimum(p_start + T, np.repeat(bounds[1:], n))
    starts = np.empty(num_rows, dtype=np.int64)
    ends = np.empty(num_rows, dtype=np.int64)
    i = 0
    for r in range(num_rows):
        s = int(p_start[i])
        j = int(np.searchsorted(p_end, s + T, side="right"))  # pieces i..j-1 fit (p_end increases)
        starts[r], ends[r] = s, int(p_end[j - 1])
        i = j  # < len(p_end): the pieces hold need > num_rows * T tokens
    return starts, ends


def rows_from_spans(window: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                    seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """x, y int64 [len(starts), seq_len]: each span, its targets the next stream tokens, then
    padding (PAD_INPUT in, PAD_TARGET out)."""
    pos = starts[:, None] + np.arange(seq_len, dtype=np.int64)
    real = pos < ends[:, None]
    last = len(window) - 1  # padded positions read a clamped index; np.where drops it
    w = np.asarray(window, dtype=np.int64)
    x = np.where(real, w[np.minimum(pos, last)], PAD_INPUT)
    y = np.where(real, w[np.minimum(pos + 1, last)], PAD_TARGET)
    return x, y
