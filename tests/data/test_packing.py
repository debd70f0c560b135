"""golf/data/packing.py through TokenLoader(doc_packing=True): the fast packer (vectorised over tokens,
one searchsorted per row) agrees with a slow, obviously-correct reference on hostile random streams."""
import numpy as np
import pytest
import torch

from golf.core.utils import GolfError
from golf.data.loader import TokenLoader
from golf.data.packing import pack_rows, window_tokens

BOS = 1


def reference_rows(stream: np.ndarray, start: int, T: int, n_rows: int) -> list[list[int]]:
    """The rule, one token at a time on the circular stream: from the first BOS at or after `start`,
    pieces run to the next BOS or T tokens, whichever comes first; a piece joins the current row if
    it fits, else closes it and starts the next. Returns each row's absolute stream positions."""
    n = len(stream)
    tok = lambda p: int(stream[p % n])  # noqa: E731
    p = start
    while tok(p) != BOS:
        p += 1
        assert p < start + n, "no BOS"
    rows, row = [], []
    while len(rows) < n_rows:
        e = p + 1
        while e - p < T and tok(e) != BOS:
            e += 1
        if len(row) + (e - p) > T:
            rows.append(row)
            row = []
            if len(rows) == n_rows:
                break
        row.extend(range(p, e))
        p = e
    return rows


def reference_batch(stream, rows, T):
    n = len(stream)
    x = torch.zeros(len(rows), T, dtype=torch.int64)
    y = torch.full((len(rows), T), -100, dtype=torch.int64)
    for i, row in enumerate(rows):
        x[i, :len(row)] = torch.tensor([int(stream[q % n]) for q in row])
        y[i, :len(row)] = torch.tensor([int(stream[(q + 1) % n]) for q in row])
    return x, y


def hostile_stream(rng, T: int, n_docs: int) -> np.ndarray:
    """Documents of 1 token (consecutive BOS), exactly T, T +- 1, longer than 3 rows, and random
    lengths, shuffled; the stream usually starts mid-document (a rotation)."""
    lens = [1, 1, 1, T, T - 1, T + 1, 3 * T + 5, 2 * T] + list(rng.integers(1, 2 * T, n_docs))
    rng.shuffle(lens)
    docs = [np.concatenate([[BOS], rng.integers(2, 50, L - 1)]) for L in lens]
    s = np.concatenate(docs)
    return np.roll(s, -int(rng.integers(0, len(s)))).astype(np.uint16)


@pytest.mark.parametrize("seed", range(12))
def test_fast_packer_agrees_with_the_reference(seed):
    rng = np.random.default_rng(seed)
    T, B = int(rng.choice([4, 8, 13])), int(rng.integers(1, 4))
    s = hostile_stream(rng, T, int(rng.integers(5, 30)))
    cut = int(rng.integers(1, len(s) - 1))  # two shards: the stream is their concatenation
    world = int(rng.integers(1, 3))
    if world * B * T + 1 > len(s):
        pytest.skip("stream shorter than one global micro-batch")
    loaders = [TokenLoader([s[:cut], s[cut:]], seq_len=T, local_batch_seqs=B, rank=r, world_size=world,
                           seed=seed, doc_packing=True) for r in range(world)]
    K = 3 * len(s) // (world * B * T) + 2  # several passes: the circular stream wraps
    ref = reference_rows(s, loaders[0].start, T, K * world * B)
    for k in range(K):
        for r, ld in enumerate(loaders):
            x, y = ld.next_batch()
            lo = (k * world + r) * B
            xr, yr = reference_batch(s, ref[lo:lo + B], T)
            assert torch.equal(x, xr) and torch.equal(y, yr), (seed, k, r)
    assert any(len(r) < T for r in ref)  # some rows end in padding


def test_long_documents_split_every_T_from_their_bos():
    T = 8
    doc = np.concatenate([[BOS], np.arange(2, 2 + 3 * T + 2)])  # 3T + 3 tokens: pieces 8, 8, 8, 3
    s = np.concatenate([doc, [BOS, 5], [BOS, 6, 7]]).astype(np.uint16)  # then a 2- and a 3-token doc
    starts, ends = pack_rows(np.tile(s, 4)[:window_tokens(T, 4)], T, 4)
    assert list(ends - starts) == [8, 8, 8, 3 + 2 + 3]
    assert list(starts) == [0, 8, 16, 24]  # rows 2-3 start mid-document (a piece), never cut one


def test_a_piece_that_does_not_fit_closes_the_row():
    T = 8
    s = np.tile(np.array([BOS, 2, 3, 4, 5, BOS, 6, 7, 8, 9, BOS, 3], dtype=np.uint16), 2)  # documents of 5, 5, 2
    ld = TokenLoader([s], seq_len=T, local_batch_seqs=2, seed=0, doc_packing=True)
    x, y = ld.next_batch()
    xr, yr = reference_batch(s, reference_rows(s, ld.start, T, 2), T)
    assert torch.equal(x, xr) and torch.equal(y, yr)
    assert ((y == -100).sum(1) > 0).all()  # no two 5-token documents fit one 8-token row: both rows pad
    assert ((x == 0) == (y == -100)).all()  # pad inputs exactly where targets are ignored
    assert (x[:, 0] == BOS).all()  # every row starts at a document


def test_a_stream_without_bos_is_refused_naming_its_source():
    s = np.full(100, 7, dtype=np.uint16)
    with pytest.raises(GolfError, match="no BOS.*DOC_PACKING=0"):
        TokenLoader([s], seq_len=8, local_batch_seqs=2, doc_packing=True, source="the train split of /d")
    TokenLoader([s], seq_len=8, local_batch_seqs=2)  # unpacked rows do not need documents


def test_one_bos_makes_the_whole_circle_one_document():
    T = 8
    s = np.full(50, 7, dtype=np.uint16)
    s[20] = BOS
    ld = TokenLoader([s], seq_len=T, local_batch_seqs=2, seed=0, doc_packing=True)
    rows = reference_rows(s, ld.start, T, 14)  # 14 x 8 > 2 x 50: wraps twice
    for k in range(7):
        assert torch.equal(ld.next_batch()[0], reference_batch(s, rows[2 * k:2 * k + 2], T)[0])
    # pieces of 8 from the BOS: 50 = 6 x 8 + 2, so every 7th row holds 2 tokens then the BOS's row
    assert [len(r) for r in rows[:8]] == [8] * 6 + [2, 8]
