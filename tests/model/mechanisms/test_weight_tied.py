import pytest
import torch
from modelkit import small_cfg as _small_cfg

from golf.core.utils import GolfError
from golf.model.gpt import GPT, count_params


def small_cfg(**kw):
    return _small_cfg(**{"num_layers": 6, "train_seq_len": 16, **kw})


def test_k_unique_blocks_run_as_n_logical_layers():
    m = GPT(small_cfg(unique_layers=2))
    assert len(m.blocks) == 2 and m.schedule == [0, 1, 0, 1, 0, 1]
    untied = GPT(small_cfg())
    block = sum(p.numel() for p in untied.blocks[0].parameters())
    # 4 fewer blocks, plus one per-iteration embedding per logical layer
    assert count_params(m) == count_params(untied) - 4 * block + 6 * 32
    assert torch.count_nonzero(m.mechanisms["weight_tied"].iter_emb) == 0


def test_tied_model_equals_untied_model_with_copied_blocks():
    torch.manual_seed(0)
    tied = GPT(small_cfg(unique_layers=2))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tied.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    untied = GPT(small_cfg())
    sd = {k: v for k, v in tied.state_dict().items() if not k.startswith(("blocks.", "mechanisms."))}
    for i in range(6):
        for k, v in tied.blocks[i % 2].state_dict().items():
            sd[f"blocks.{i}.{k}"] = v
    untied.load_state_dict(sd)
    idx = torch.randint(2, 64, (2, 16))
    with torch.no_grad():
        tied.mechanisms["weight_tied"].iter_emb.zero_()
    torch.testing.assert_close(tied(idx), untied(idx))
    # per-iteration embeddings make tied passes differ
    with torch.no_grad():
        tied.mechanisms["weight_tied"].iter_emb.normal_()
    assert not torch.allclose(tied(idx), untied(idx))


def test_tied_blocks_get_gradients_from_every_pass():
    torch.manual_seed(0)
    m = GPT(small_cfg(unique_layers=3))
    idx = torch.randint(2, 64, (2, 16))
    m(idx, idx).backward()
    assert m.mechanisms["weight_tied"].iter_emb.grad.abs().sum(dim=-1).gt(0).all()


def test_bad_settings():
    with pytest.raises(GolfError, match="UNIQUE_LAYERS"):
        GPT(small_cfg(unique_layers=7))
    with pytest.raises(GolfError, match="same mixer"):
        GPT(small_cfg(unique_layers=2, mixers="attn,swa,swa,attn,attn,swa"))
