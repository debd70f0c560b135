"""What every recurrent mixer owes generation and mixed precision: reading a prompt with
`forward_with_state` and then stepping continues the sequence exactly, and bf16 autocast stays
close to fp32. (Mechanism-specific checks live in test_<mixer>.py.)"""
import pytest
import torch
from torch import nn

from golf.memory.base import MixerContext, build_mixer

CASES = {
    "stream": dict(model_dim=32, num_heads=4, stream_num_streams=4, stream_chunk=16, qk_gain_init=1.5),
    "deltanet": dict(model_dim=32, num_heads=4, deltanet_heads=2, deltanet_chunk=16),
    "hypermix": dict(model_dim=32, num_heads=4, hypermix_hidden=0),
}


def make(name, seed=0):
    torch.manual_seed(seed)
    m = build_mixer(name, CASES[name], 0)
    nn.init.normal_(m.out_proj.weight, std=0.2)  # zero-init output would make every check trivial
    return m


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
