"""Causality for every registered sequence mixer and for the full model with every mechanism on:
changing inputs at positions > t must leave outputs at positions <= t unchanged."""
import pytest
import torch
from modelkit import assert_causal, randomize
from modelkit import small_cfg as _small_cfg

from golf.model.gpt import GPT
from golf.model.layers import Rotary
from golf.model.mechanisms import MECHANISMS, MIXERS, build_mixer
from golf.model.mixer import MixerContext

T, D, P = 24, 32, 3


def small_cfg(**kw):
    return _small_cfg(**{"train_seq_len": T, "attn_window": 5, "stream_chunk": 8, "deltanet_chunk": 8,
                         "ttt_linear_chunk": 8, **kw})


def _mixer_names():
    return sorted(MIXERS)


def test_registry_holds_every_mixer_and_mechanism():
    assert sorted(MIXERS) == ["attn", "deltanet", "hypermix", "stream", "swa", "ttt_linear"]
    assert sorted(MECHANISMS) == ["memory_tokens", "persistent_memory", "rmt", "weight_tied"]
    for name, cls in {**MIXERS, **MECHANISMS}.items():
        assert cls.name == name  # the registry key is the class's own name


@pytest.mark.parametrize("name", _mixer_names())
@pytest.mark.parametrize("num_prefix", [0, P])
def test_mixer_is_causal(name, num_prefix):
    torch.manual_seed(0)
    mixer = randomize(build_mixer(name, small_cfg(), 0)).eval()
    n = num_prefix + T
    cos, sin = Rotary(4)(n, torch.device("cpu"))
    doc_start = torch.zeros(2, n, dtype=torch.bool)
    doc_start[:, num_prefix + 10] = True
    ctx = MixerContext(cos=cos, sin=sin, num_prefix=num_prefix, doc_start=doc_start)
    x = torch.randn(2, n, D)
    y = mixer(x, ctx)
    assert y.shape == x.shape and torch.isfinite(y).all()
    for t in (num_prefix + 2, num_prefix + 11, n - 2):
        x2 = x.clone()
        x2[:, t + 1:] = torch.randn(2, n - t - 1, D) * 3
        y2 = mixer(x2, ctx)
        torch.testing.assert_close(y2[:, : t + 1], y[:, : t + 1], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(y2[:, t + 1:], y[:, t + 1:])  # the test can fail: the future did change


ALL_ON = dict(num_memory_tokens=P, bigram_vocab_size=32, bigram_dim=8, smear_gate=True, mtp_num_heads=2,
              persistent_memory=4, unique_layers=2, mixers="swa,attn")


# the April records' attention/MLP parts, with YaRN stretching past a short training length
FRONTIER_ATTN = dict(xsa_last_n=2, sparse_attn_gate_enabled=True, gate_window=8, mlp_leaky_slope=0.5, rope_yarn=True,
                     train_seq_len=16)


@pytest.mark.parametrize("extra", [dict(), ALL_ON, dict(ALL_ON, unique_layers=0, mixers="swa_pattern", global_every=2),
                                   dict(ALL_ON, mixers="ttt_linear,attn"),
                                   dict(ALL_ON, rmt_memory=2, rmt_segment=7),  # RMT: segments 7+7+7+3
                                   dict(ALL_ON, mixers="ttt_linear,attn", doc_attention=True),
                                   dict(ALL_ON, rmt_memory=2, rmt_segment=7, mixers="swa,deltanet", doc_attention=True),
                                   FRONTIER_ATTN, dict(FRONTIER_ATTN, sparse_attn_gate_enabled=False,
                                                       attn_out_gate_enabled=True, num_memory_tokens=P)])
def test_full_model_is_causal(extra):
    torch.manual_seed(0)
    m = randomize(GPT(small_cfg(**extra)))
    m.eval()
    idx, logits = assert_causal(m, T)
    assert logits.shape == (2, T, 64)
    # per-token losses obey the same rule (target of t is idx[t+1], so compare up to t-1)
    tgt = torch.roll(idx, -1, dims=1)
    loss = m(idx, tgt, reduction="none")
    idx3 = idx.clone()
    idx3[:, 12:] = torch.randint(2, 64, (2, T - 12))
    torch.testing.assert_close(m(idx3, torch.roll(idx3, -1, dims=1), reduction="none")[:, :11], loss[:, :11])
