"""golf/data/loader.py: the distributed token stream is deterministic, shifted by one, split by rank."""
import numpy as np
import pytest
import torch
from datakit import token_folder

from golf.core.utils import GolfError
from golf.data.loader import TokenLoader
from golf.data.shards import write_shard
from golf.data.tokenizer import ByteTokenizer


def shards(sizes=(1000, 37, 2500)):
    start, out = 0, []
    for n in sizes:
        out.append((np.arange(start, start + n) % 60000).astype(np.uint16))
        start += n
    return out


def test_targets_are_inputs_shifted_and_contiguous():
    ld = TokenLoader(shards(), seq_len=16, local_batch_seqs=4, seed=0)
    x, y = ld.next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x.flatten()[1:], y.flatten()[:-1])
    assert torch.equal(y.flatten() - x.flatten(), torch.ones(64, dtype=torch.int64))  # the stream is arange
    x2, _ = ld.next_batch()
    assert x2.flatten()[0] == (x.flatten()[-1] + 1) % ld.total


def test_crosses_shard_boundaries_and_wraps():
    ld = TokenLoader(shards(), seq_len=100, local_batch_seqs=5, seed=0)
    seen = np.concatenate([ld.batch_at(k)[0].flatten().numpy() for k in range(12)])  # 6000 > 3537 tokens
    # the circular stream is 0, 1, ..., 3536, 0, 1, ... (arange across three shards)
    assert np.array_equal(seen, (ld.start + np.arange(6000)) % ld.total)
    assert (np.diff(seen) != 1).sum() >= 1  # it did wrap


def test_deterministic_given_seed_and_step_and_resume():
    a = TokenLoader(shards(), seq_len=8, local_batch_seqs=2, seed=7)
    b = TokenLoader(shards(), seq_len=8, local_batch_seqs=2, seed=7)
    for _ in range(5):
        a.next_batch()
    b.load_state_dict(a.state_dict())
    for _ in range(3):
        xa, ya = a.next_batch()
        xb, yb = b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c = TokenLoader(shards(), seq_len=8, local_batch_seqs=2, seed=8)
    assert not torch.equal(c.batch_at(0)[0], a.batch_at(0)[0])  # another seed, another phase


def test_ranks_split_the_global_batch():
    single = TokenLoader(shards(), seq_len=8, local_batch_seqs=4, seed=3)
    ranks = [TokenLoader(shards(), seq_len=8, local_batch_seqs=2, rank=r, world_size=2, seed=3) for r in range(2)]
    for k in range(4):
        xs, ys = single.batch_at(k)
        parts = [r.batch_at(k) for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), xs)
        assert torch.equal(torch.cat([p[1] for p in parts]), ys)


def test_from_data_path_reads_the_manifests_train_shards(tmp_path):
    tok = ByteTokenizer()
    d = token_folder(tmp_path / "d", tok, train=shards(), val=np.full(500, 7, dtype=np.uint16))
    ld = TokenLoader.from_data_path(d, None, seq_len=8, local_batch_seqs=2, seed=0)
    assert ld.total == 3537
    assert not any((s == 7).all() for s in ld.shards)  # the val shard is not in the stream


def test_from_data_path_reads_a_challenge_folder_by_its_names(tmp_path):
    for i, s in enumerate(shards()):
        write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", s)
    write_shard(tmp_path / "fineweb_val_000000.bin", np.arange(600))
    write_shard(tmp_path / "other_train_000000.bin", np.arange(50))  # not the challenge's name: not read
    ld = TokenLoader.from_data_path(tmp_path, None, seq_len=8, local_batch_seqs=2, seed=0)
    assert ld.total == 3537


def test_errors():
    with pytest.raises(GolfError, match="fewer than one global micro-batch"):
        TokenLoader(shards((10,)), seq_len=8, local_batch_seqs=2)
    a = TokenLoader(shards(), seq_len=8, local_batch_seqs=2)
    b = TokenLoader(shards(), seq_len=8, local_batch_seqs=4)
    with pytest.raises(GolfError, match="TRAIN_BATCH_TOKENS"):
        b.load_state_dict(a.state_dict())


def test_doc_stats_reads_without_consuming():
    """DOC_ATTENTION's log line: tokens per BOS and the share of rows with a BOS after position 0,
    from the next batches, read without moving the stream (resume and token order unchanged)."""
    s = np.full(960, 7, dtype=np.uint16)
    s[::20] = 1  # documents of 20 tokens
    ld = TokenLoader([s], seq_len=16, local_batch_seqs=3, seed=0)
    ld.next_batch()
    state = ld.state_dict()
    st = ld.doc_stats(num_batches=4)
    assert ld.state_dict() == state and torch.equal(ld.batch_at(ld.batches_served)[0], ld.next_batch()[0])
    rows = [ld.batch_at(k)[0] for k in range(1, 5)]
    x = torch.cat(rows)
    assert st["doc_stats_rows"] == 12
    assert st["mean_doc_tokens"] == pytest.approx(x.numel() / int((x == 1).sum()))
    assert st["rows_with_boundary"] == pytest.approx(float((x[:, 1:] == 1).any(1).float().mean()))
    assert 0 < st["rows_with_boundary"] < 1  # 16-token rows in 20-token documents: some rows hold a BOS


# --- DOC_PACKING=1 (golf/data/packing.py; agreement with a reference packer: tests/data/test_packing.py) ---

def doc_shards():
    """Two shards of documents of 1..40 tokens (BOS first), deterministic."""
    lens = (np.arange(120) * 37) % 40 + 1
    s = np.concatenate([np.concatenate([[1], 2 + (np.arange(n - 1) * 13 + n) % 90]) for n in lens]).astype(np.uint16)
    return [s[:1000], s[1000:]]


def test_default_batches_are_unchanged_byte_for_byte():
    """DOC_PACKING=0 (the default) gives the same batches as before packing existed: the digest was
    computed with the loader at the commit before DOC_PACKING."""
    import hashlib
    sh = [((np.arange(a, a + n) * 7919) % 301).astype(np.uint16) for a, n in ((0, 700), (700, 45), (745, 1300))]
    h = hashlib.sha256()
    for r in range(2):
        ld = TokenLoader(sh, seq_len=16, local_batch_seqs=3, rank=r, world_size=2, seed=5)
        for _ in range(40):
            x, y = ld.next_batch()
            h.update(x.numpy().tobytes())
            h.update(y.numpy().tobytes())
    assert h.hexdigest() == "b899e62d25c50c357aa9444234747ee5223c7eb78c169290cd933aa139fddcc6"
    assert set(ld.state_dict()) == {"batches_served", "start", "total", "global_tokens"}  # old checkpoints' keys


def test_packed_resume_is_exact_and_seek_rewinds():
    a = TokenLoader(doc_shards(), seq_len=32, local_batch_seqs=3, seed=4, doc_packing=True)
    ref = [a.batch_at(k) for k in range(12)]  # read ahead without consuming
    for _ in range(5):
        a.next_batch()
    b = TokenLoader(doc_shards(), seq_len=32, local_batch_seqs=3, seed=4, doc_packing=True)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict() and a.state_dict()["cursor"] == a.cursor
    for k in range(5, 12):
        xa, ya = a.next_batch()
        xb, yb = b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(xa, ref[k][0]) and torch.equal(ya, ref[k][1])
    a.seek(0)  # the trainer's rewind after its warm-up steps
    assert a.batches_served == 0 and torch.equal(a.next_batch()[1], ref[0][1])
    a.seek(9)
    assert torch.equal(a.next_batch()[0], ref[9][0])
    with pytest.raises(AttributeError):
        a.batches_served = 0  # read-only: assigning it would leave the cursor behind
    c = TokenLoader(doc_shards(), seq_len=32, local_batch_seqs=3, seed=5, doc_packing=True)
    assert not torch.equal(c.batch_at(0)[0], ref[0][0])  # another seed, another phase


def test_packed_ranks_are_disjoint_and_in_step():
    single = TokenLoader(doc_shards(), seq_len=16, local_batch_seqs=4, seed=3, doc_packing=True)
    ranks = [TokenLoader(doc_shards(), seq_len=16, local_batch_seqs=2, rank=r, world_size=2, seed=3,
                         doc_packing=True) for r in range(2)]
    served = []
    for k in range(30):
        xs, ys = single.next_batch()
        parts = [r.next_batch() for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), xs) and torch.equal(torch.cat([p[1] for p in parts]), ys)
        served += [row[t != -100] for xb, yb in parts for row, t in zip(xb, yb)]  # rank 0's rows, then 1's
    assert ranks[0].cursor == ranks[1].cursor == single.cursor
    # the ranks' real tokens, in order, are the stream from the first document on: none skipped or repeated
    served = torch.cat(served).numpy()
    stream = np.concatenate(doc_shards())
    assert np.array_equal(served, stream[(single.first_doc + np.arange(len(served))) % len(stream)])


def test_packed_state_must_match():
    a = TokenLoader(doc_shards(), seq_len=8, local_batch_seqs=2, doc_packing=True)
    b = TokenLoader(doc_shards(), seq_len=8, local_batch_seqs=2)
    with pytest.raises(GolfError, match="DOC_PACKING=1 but this run's is DOC_PACKING=0"):
        b.load_state_dict(a.state_dict())
    with pytest.raises(GolfError, match="DOC_PACKING=0 but this run's is DOC_PACKING=1"):
        a.load_state_dict(b.state_dict())
    big = TokenLoader(doc_shards(), seq_len=8, local_batch_seqs=4, doc_packing=True)
    with pytest.raises(GolfError, match="TRAIN_BATCH_TOKENS"):
        big.load_state_dict(a.state_dict())


def test_packed_doc_stats_read_without_consuming():
    ld = TokenLoader(doc_shards(), seq_len=32, local_batch_seqs=3, seed=1, doc_packing=True)
    ld.next_batch()
    state = ld.state_dict()
    st = ld.doc_stats(num_batches=4)
    assert ld.state_dict() == state
    rows = [ld.next_batch() for _ in range(4)]
    x, y = torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])
    real = int((y != -100).sum())
    assert st["doc_stats_rows"] == 12
    assert st["padded_share"] == pytest.approx(1 - real / x.numel()) and 0 < st["padded_share"] < 0.5
    assert st["mean_doc_tokens"] == pytest.approx(real / int((x == 1).sum()))
    assert st["rows_with_boundary"] == pytest.approx(float((x[:, 1:] == 1).any(1).float().mean()))
    assert "padded_share" not in TokenLoader(doc_shards(), seq_len=32, local_batch_seqs=3).doc_stats()
