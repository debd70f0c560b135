import pytest
import torch

from golf.data.shards import BOS_ID
from golf.model.embed import BigramHash, SmearGate, doc_reset


def _bigram(buckets=64, dim=8, model_dim=16):
    torch.manual_seed(0)
    b = BigramHash(buckets, dim, model_dim)
    torch.nn.init.normal_(b.table.weight)
    torch.nn.init.normal_(b.proj.weight)
    return b


def test_doc_reset_marks_first_and_bos_positions():
    idx = torch.tensor([[5, 6, BOS_ID, 7, 8], [BOS_ID, 9, 9, BOS_ID, 4]])
    assert doc_reset(idx).tolist() == [[True, False, True, False, False], [True, False, False, True, False]]


def test_bigram_keys_use_reserved_bucket_at_document_starts():
    b = _bigram()
    idx = torch.tensor([[5, 6, BOS_ID, 7, 8, 9]])
    k = b.keys(idx)
    assert k.min() >= 0 and k.max() < 64
    assert k[0, 0] == 63 and k[0, 2] == 63  # no in-document predecessor
    assert (k[0, [1, 3, 4, 5]] < 63).all()
    # a key depends on (previous, current): same pair -> same bucket, different previous -> usually not
    idx2 = torch.tensor([[2, 6, BOS_ID, 7, 8, 9]])
    assert b.keys(idx2)[0, 3:].tolist() == k[0, 3:].tolist()
    assert b.keys(idx2)[0, 1] != k[0, 1]


def test_bigram_sees_no_future_and_nothing_across_bos():
    b = _bigram()
    torch.manual_seed(1)
    idx = torch.randint(2, 100, (2, 20))
    idx[:, 10] = BOS_ID
    y = b(idx)
    fut = idx.clone()
    fut[:, 6:] = torch.randint(2, 100, (2, 14))
    torch.testing.assert_close(b(fut)[:, :6], y[:, :6])  # only input tokens <= t matter
    prev_doc = idx.clone()
    prev_doc[:, :10] = torch.randint(2, 100, (2, 10))  # rewrite the document before the BOS
    torch.testing.assert_close(b(prev_doc)[:, 10:], y[:, 10:])
    assert not torch.allclose(b(prev_doc)[:, :10], y[:, :10])


def test_bigram_starts_at_zero():
    b = BigramHash(32, 8, 16)
    assert torch.count_nonzero(b(torch.randint(0, 50, (2, 7)))) == 0


@pytest.mark.parametrize("dim,model_dim", [(8, 16), (16, 16)])
def test_bigram_receives_gradient_from_the_start(dim, model_dim):
    # a zero table behind a zero projection would never learn (both gradients are zero)
    b = BigramHash(32, dim, model_dim)
    probe = torch.randn(2, 7, model_dim)
    (b(torch.randint(0, 50, (2, 7))) * probe).sum().backward()
    learnable = b.proj.weight if b.proj is not None else b.table.weight
    assert torch.count_nonzero(learnable.grad) > 0


def test_smear_gate_blends_previous_position_and_resets_at_bos():
    torch.manual_seed(0)
    s = SmearGate(8)
    torch.nn.init.normal_(s.gate)
    g = torch.sigmoid(s.gate)
    x = torch.randn(2, 12, 8)
    idx = torch.randint(2, 100, (2, 12))
    idx[:, 5] = BOS_ID
    y = s(x, idx)
    torch.testing.assert_close(y[:, 0], x[:, 0])
    torch.testing.assert_close(y[:, 5], x[:, 5])  # BOS takes nothing from the previous document
    torch.testing.assert_close(y[:, 3], (1 - g) * x[:, 3] + g * x[:, 2])
    # rewriting the previous document (inputs and embeddings) leaves the new document unchanged
    x2, idx2 = x.clone(), idx.clone()
    x2[:, :5] = torch.randn(2, 5, 8)
    idx2[:, :5] = torch.randint(2, 100, (2, 5))
    torch.testing.assert_close(s(x2, idx2)[:, 5:], y[:, 5:])
    # causal: the future does not change the past
    x3 = x.clone()
    x3[:, 8:] += 1.0
    torch.testing.assert_close(s(x3, idx)[:, :8], y[:, :8])
    # the gate learns
    y.sum().backward()
    assert s.gate.grad is not None and s.gate.grad.abs().sum() > 0
