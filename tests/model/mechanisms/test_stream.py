"""Stream Mixer: causality, chunked scan vs step-by-step recurrence (values and gradients), extreme
decays over long sequences, parameter tags."""
from dataclasses import replace

import pytest
import torch
from modelkit import grads_of, live_mixer

from golf.core.config import GPTConfig
from golf.model.mechanisms.stream import StreamMixer, stream_scan
from golf.model.mixer import MixerContext, optim_group_of, quant_group_of

CFG = GPTConfig(model_dim=32, num_heads=4, stream_num_streams=4, stream_chunk=16, qk_gain_init=1.5)


def make(seed=0, **over):
    return live_mixer("stream", replace(CFG, **over), seed)


@pytest.mark.parametrize("chunk,T", [(16, 37), (7, 50), (64, 20), (1, 9)])
def test_chunked_matches_recurrent(chunk, T):
    m = make(chunk, stream_chunk=chunk)
    x = torch.randn(2, T, 32, requires_grad=True)
    y, y_ref = m(x, MixerContext()), m.forward_recurrent(x, MixerContext())
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    for g, g_ref in zip(grads_of(m, x, y), grads_of(m, x, y_ref)):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("decay_bias", [25.0, -40.0, "mixed"])
def test_extreme_decays_long_sequence(decay_bias):
    """a ~ 1 (state sums 512 tokens), a ~ 0 (log a ~ -40: products ~ e^-2000 inside a chunk) and a
    mix of both in one chunk: the scan stays finite and equals the recurrence, values and grads."""
    m = make(3, stream_chunk=64)
    with torch.no_grad():
        if decay_bias == "mixed":
            m.decay_bias.copy_(torch.tensor([25.0, -40.0, 0.0, 12.0]))
            m.ctrl_proj.weight.mul_(400)  # decays swing between ~0 and ~1 token by token
        else:
            m.decay_bias.fill_(decay_bias)
    x = torch.randn(1, 512, 32, requires_grad=True)
    y, y_ref = m(x, MixerContext()), m.forward_recurrent(x, MixerContext())
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=2e-5)
    for g, g_ref in zip(grads_of(m, x, y), grads_of(m, x, y_ref)):
        assert torch.isfinite(g).all()
        # fp32 noise of both paths scales with the gradient's size (checked against float64)
        torch.testing.assert_close(g, g_ref, rtol=1e-3, atol=1e-5 * float(g_ref.abs().max()) + 1e-5)


def test_scan_against_explicit_loop_with_initial_state():
    torch.manual_seed(0)
    B, T, M, E = 2, 23, 3, 5
    log_a = torch.nn.functional.logsigmoid(torch.randn(B, T, M) * 3)
    r, u, s0 = torch.rand(B, T, M), torch.randn(B, T, E), torch.randn(B, M, E)
    states, last = stream_scan(log_a, r, u, chunk=8, state=s0)
    s = s0
    for t in range(T):
        s = log_a[:, t, :, None].exp() * s + r[:, t, :, None] * u[:, t, None, :]
        torch.testing.assert_close(states[:, t], s, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(last, s, rtol=1e-5, atol=1e-6)


def test_parameter_tags_and_count():
    m = StreamMixer(replace(CFG, model_dim=512, num_heads=8), 0)
    for name, p in m.named_parameters():
        big = name in ("in_proj.weight", "out_proj.weight")
        assert (quant_group_of(p), optim_group_of(p)) == (("attn", "matrix") if big else ("control", "scalar")), name
    assert sum(p.numel() for p in m.parameters()) == 5 * 512 * 512 + 2 * 4 * 512 + 4 + 8


@pytest.mark.parametrize("chunk,T", [(16, 37), (8, 8), (1, 5)])
def test_chunked_read_matches_states_then_read(chunk, T):
    """The fast read (values through a [C, C] mixing matrix, never building the value states)
    equals the plain read of the materialised states, values, last state and grads, also from a
    non-zero initial state."""
    m = make(chunk, stream_chunk=chunk)
    x = torch.randn(2, T, 32, requires_grad=True)
    s0 = torch.randn(2, 4, 64, requires_grad=True)

    def fast():
        q, g, u, log_a, r = m._project(x)
        y, last = m._read_chunked(q, u, log_a, r, s0)
        return m._output(y, g), last

    def slow():
        q, g, u, log_a, r = m._project(x)
        states, last = stream_scan(log_a, r, u, chunk, s0)
        return m._read(q, g, states), last

    (y, last), (y_ref, last_ref) = fast(), slow()
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(last, last_ref, rtol=1e-5, atol=1e-6)
    ps = [x, s0] + list(m.parameters())
    dy, dl = torch.randn_like(y), torch.randn_like(last)
    gs = torch.autograd.grad((y * dy).sum() + (last * dl).sum(), ps)
    gs_ref = torch.autograd.grad((y_ref * dy).sum() + (last_ref * dl).sum(), ps)
    for g, g_ref in zip(gs, gs_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)
