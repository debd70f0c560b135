"""What every recurrent mixer owes the backbone, generation and mixed precision: it is registered
as recurrent, a fresh layer outputs zero, it is causal on and off chunk boundaries, reading a prompt
with `forward_with_state` and then stepping continues the sequence exactly, and bf16 autocast stays
close to fp32. (Mechanism-specific checks live in test_<mixer>.py.)"""
import pytest
import torch
from modelkit import live_mixer

from golf.core.config import GPTConfig
from golf.model.mechanisms import MIXERS, build_mixer
from golf.model.mixer import MixerContext

CASES = {
    "stream": GPTConfig(model_dim=32, num_heads=4, stream_num_streams=4, stream_chunk=16, qk_gain_init=1.5),
    "deltanet": GPTConfig(model_dim=32, num_heads=4, deltanet_heads=2, deltanet_chunk=16),
    "hypermix": GPTConfig(model_dim=32, num_heads=4, hypermix_hidden=0),
    "ttt_linear": GPTConfig(model_dim=32, num_heads=4, ttt_linear_heads=2, ttt_linear_chunk=16),
}


def make(name, seed=0):
    return live_mixer(name, CASES[name], seed)


# positions whose future is perturbed: inside chunks and on chunk boundaries (chunk 16)
CAUSAL_T = (0, 5, 13, 15, 16, 31, 33)


@pytest.mark.parametrize("name", sorted(CASES))
def test_registered_recurrent_and_fresh_layer_outputs_zero(name):
    torch.manual_seed(0)
    m = build_mixer(name, CASES[name], 0)
    assert type(m) is MIXERS[name] and m.recurrent
    assert torch.count_nonzero(m(torch.randn(2, 8, 32), MixerContext())) == 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_causal(name):
    m = make(name)
    x = torch.randn(2, 40, 32)
    y = m(x, MixerContext())
    for t in CAUSAL_T:
        x2 = x.clone()
        x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:])
        y2 = m(x2, MixerContext())
        torch.testing.assert_close(y2[:, : t + 1], y[:, : t + 1], rtol=0, atol=1e-6)
        assert (y2[:, t + 1:] - y[:, t + 1:]).abs().max() > 1e-3


@pytest.mark.parametrize("name", sorted(CASES))
def test_prefill_state_then_step_continues_the_sequence(name):
    m = make(name, 5)
    x = torch.randn(2, 21, 32)
    y = m(x, MixerContext())
    y_pre, state = m.forward_with_state(x[:, :13], MixerContext())
    torch.testing.assert_close(y_pre, y[:, :13])
    for t in range(13, 21):
        y_t, state = m.step(x[:, t], state)
        torch.testing.assert_close(y_t, y[:, t], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bf16_autocast_runs_and_stays_close(name):
    m = make(name)
    x = torch.randn(1, 20, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x, MixerContext())
    y32 = m(x, MixerContext())
    assert torch.isfinite(y.float()).all()
    assert (y.float() - y32).abs().max() < 0.05 * y32.abs().max()
