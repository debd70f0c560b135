"""Causal HyperMixing: causality, cumulative-average fast path vs running-sum recurrence (values and
gradients), parameter tags, and a byte-level (vocab 260) model built on it."""
from dataclasses import replace

import pytest
import torch
from modelkit import live_mixer
from torch import nn

from golf.core.config import GPTConfig, Hyperparameters
from golf.core.utils import GolfError
from golf.model.gpt import GPT
from golf.model.mechanisms.hypermixing import HyperMixing
from golf.model.mixer import MixerContext, optim_group_of, quant_group_of

CFG = GPTConfig(model_dim=32, num_heads=4, hypermix_hidden=0)


def make(seed=0, **over):
    return live_mixer("hypermix", replace(CFG, **over), seed)


def test_default_hidden_is_half_the_width():
    assert HyperMixing(CFG, 0).hidden == 16  # HYPERMIX_HIDDEN=0 -> model_dim // 2


def test_mixes_tokens():
    """Position t depends on earlier positions (it is a token mixer, not a per-token MLP)."""
    m = make()
    x = torch.randn(1, 10, 32)
    x2 = x.clone()
    x2[:, 0] += 1.0
    assert (m(x2, MixerContext())[:, -1] - m(x, MixerContext())[:, -1]).abs().max() > 1e-4


@pytest.mark.parametrize("T,hidden", [(1, 0), (37, 8), (64, 32)])
def test_parallel_matches_recurrent(T, hidden):
    m = make(T, hypermix_hidden=hidden)
    x = torch.randn(2, T, 32, requires_grad=True)
    y, y_ref = m(x, MixerContext()), m.forward_recurrent(x, MixerContext())
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    ps = [x] + list(m.parameters())
    for g, g_ref in zip(torch.autograd.grad((y * w).sum(), ps), torch.autograd.grad((y_ref * w).sum(), ps)):
        # fp32 noise of both paths scales with the gradient's size
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5 * float(g_ref.abs().max()) + 1e-5)


def test_parameter_tags_and_count():
    D, hidden = 512, 256
    m = HyperMixing(replace(CFG, model_dim=D, num_heads=8, hypermix_hidden=hidden), 0)
    for name, p in m.named_parameters():
        assert (quant_group_of(p), optim_group_of(p)) == ("attn", "matrix"), name
    assert sum(p.numel() for p in m.parameters()) == D * (2 * hidden + D) + 2 * hidden * hidden + D * D


def test_bad_hidden_is_a_clear_error():
    with pytest.raises(GolfError, match="HYPERMIX_HIDDEN"):
        HyperMixing(replace(CFG, hypermix_hidden=10), 0)


def test_byte_level_model_trains_a_step():
    """A byte-level model (vocab 260) whose every layer is HyperMixing: finite loss, gradients reach
    the mixer, and the model stays causal end to end."""

    h = Hyperparameters(vocab_size=260, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2,
                        mixers="hypermix,hypermix", num_memory_tokens=0, bigram_vocab_size=0)
    torch.manual_seed(0)
    model = GPT(h.model_config())
    idx = torch.randint(0, 260, (2, 24))
    loss = model(idx, idx.roll(-1, 1))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.blocks[0].mixer.out_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        for b in model.blocks:
            nn.init.normal_(b.mixer.out_proj.weight, std=0.2)
        logits = model(idx)
        idx2 = idx.clone()
        idx2[:, 12:] = (idx2[:, 12:] + 7) % 260
        logits2 = model(idx2)
    torch.testing.assert_close(logits2[:, :12], logits[:, :12], rtol=0, atol=1e-5)
    assert (logits2[:, 12:] - logits[:, 12:]).abs().max() > 1e-4
