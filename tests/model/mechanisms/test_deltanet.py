"""Gated DeltaNet: causality, chunked WY/UT form vs step-by-step recurrence (values and gradients,
several chunk sizes, T not a multiple of the chunk), the core against the paper's matrix form."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from modelkit import grads_of, live_mixer

from golf.core.config import GPTConfig
from golf.core.utils import GolfError
from golf.model.mechanisms.deltanet import GatedDeltaNet, chunk_gated_delta
from golf.model.mixer import MixerContext, optim_group_of, quant_group_of

CFG = GPTConfig(model_dim=32, num_heads=4, deltanet_heads=2, deltanet_chunk=16)


def make(seed=0, **over):
    return live_mixer("deltanet", replace(CFG, **over), seed)


@pytest.mark.parametrize("chunk,T,heads", [(16, 37, 2), (5, 23, 4), (64, 20, 1), (1, 6, 2), (8, 64, 2)])
def test_chunked_matches_recurrent(chunk, T, heads):
    m = make(chunk, deltanet_chunk=chunk, deltanet_heads=heads)
    x = torch.randn(2, T, 32, requires_grad=True)
    y, y_ref = m(x, MixerContext()), m.forward_recurrent(x, MixerContext())
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    for g, g_ref in zip(grads_of(m, x, y), grads_of(m, x, y_ref)):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("decay", ["slow", "fast"])
def test_extreme_decays_long_sequence(decay):
    m = make(2, deltanet_chunk=64)
    with torch.no_grad():
        if decay == "slow":  # a = exp(-1e-6): the state keeps 512 tokens
            m.A_log.fill_(-6.0), m.dt_bias.fill_(-10.0)
        else:  # a ~ exp(-300): the state forgets at once
            m.A_log.fill_(5.0), m.dt_bias.fill_(2.0)
    x = torch.randn(1, 300, 32, requires_grad=True)
    y, y_ref = m(x, MixerContext()), m.forward_recurrent(x, MixerContext())
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=2e-5)
    for g, g_ref in zip(grads_of(m, x, y), grads_of(m, x, y_ref)):
        # fp32 noise of both paths scales with the gradient's size (checked against float64)
        torch.testing.assert_close(g, g_ref, rtol=1e-3, atol=1e-5 * float(g_ref.abs().max()) + 1e-5)


def test_core_matches_paper_matrix_form():
    """S_t = a_t S_{t-1} (I - b_t k_t k_t^T) + b_t v_t k_t^T, o_t = S_t q_t (S is [dv, dk]), with an
    initial state carried in and the final state returned."""
    torch.manual_seed(0)
    B, H, T, dk, dv = 2, 3, 19, 4, 5
    q, k = torch.randn(B, H, T, dk), F.normalize(torch.randn(B, H, T, dk), dim=-1)
    v, g, beta = torch.randn(B, H, T, dv), -torch.rand(B, H, T), torch.rand(B, H, T)
    S0 = torch.randn(B, H, dk, dv)
    o, S_end = chunk_gated_delta(q, k, v, g, beta, chunk=8, state=S0)
    S, eye = S0.transpose(-1, -2), torch.eye(dk)
    for t in range(T):
        kt, bt = k[:, :, t, :, None], beta[:, :, t, None, None]
        S = g[:, :, t, None, None].exp() * S @ (eye - bt * kt @ kt.transpose(-1, -2)) + bt * v[:, :, t, :, None] @ kt.transpose(-1, -2)
        torch.testing.assert_close(o[:, :, t], (S @ q[:, :, t, :, None])[..., 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(S_end, S.transpose(-1, -2), rtol=1e-4, atol=1e-5)


def test_parameter_tags_and_count():
    D, H = 512, 8
    m = GatedDeltaNet(replace(CFG, model_dim=D, num_heads=H, deltanet_heads=0), 0)
    assert m.num_heads == H  # DELTANET_HEADS=0 -> NUM_HEADS
    big = {"qkv_proj.weight", "gate_proj.weight", "out_proj.weight"}
    for name, p in m.named_parameters():
        want = ("attn", "matrix") if name in big else ("control", "scalar")
        assert (quant_group_of(p), optim_group_of(p)) == want, name
    assert sum(p.numel() for p in m.parameters()) == 5 * D * D + 2 * H * D + 3 * D * 4 + 2 * H


def test_bad_heads_is_a_clear_error():
    with pytest.raises(GolfError, match="DELTANET_HEADS"):
        GatedDeltaNet(replace(CFG, deltanet_heads=5), 0)
