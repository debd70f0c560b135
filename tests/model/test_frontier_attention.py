"""The April records' attention and MLP parts (issue 17): XSA, the output gates, LeakyReLU(0.5)^2, YaRN.
Each is checked against a plain reference, for the parameters it adds, and for being inert when off."""
import math

import pytest
import torch
import torch.nn.functional as F
from modelkit import randomize, small_cfg

from golf.core.config import load_config
from golf.core.utils import GolfError
from golf.model.gpt import GPT, count_params
from golf.model.layers import MLP, Rotary
from golf.model.mechanisms import build_mixer
from golf.model.mixer import MixerContext

ROPE = Rotary(4)


def _ctx(n, p=0):
    cos, sin = ROPE(n, torch.device("cpu"))
    return MixerContext(cos=cos, sin=sin, num_prefix=p)


def _attn(**kw):
    torch.manual_seed(0)
    return randomize(build_mixer("attn", small_cfg(**kw), 3), std=0.3).eval()  # the last of 4 layers


def test_xsa_matches_a_per_head_loop_and_removes_the_own_value_direction():
    m = _attn(xsa_last_n=1)
    assert m.xsa
    B, H, Hkv, T, hd = 2, 4, 2, 7, 8
    y, v = torch.randn(B, H, T, hd), torch.randn(B, Hkv, T, hd)
    out = m._heads(y, v, torch.randn(B, T, 32))
    ref = torch.empty_like(y)
    for b in range(B):
        for h in range(H):
            for t in range(T):
                u = v[b, h // (H // Hkv), t]
                u = u / u.norm()
                ref[b, h, t] = y[b, h, t] - (y[b, h, t] @ u) * u
    torch.testing.assert_close(out, ref)
    vn = F.normalize(v, dim=-1).repeat_interleave(H // Hkv, dim=1)
    assert (out * vn).sum(-1).abs().max() < 1e-5  # nothing left along the token's own value


def test_xsa_last_n_picks_the_last_layers_of_the_model_and_of_tied_blocks():
    model = GPT(small_cfg(num_layers=4, xsa_last_n=2))
    assert [b.mixer.xsa for b in model.blocks] == [False, False, True, True]
    tied = GPT(small_cfg(num_layers=4, unique_layers=2, xsa_last_n=1))
    assert [b.mixer.xsa for b in tied.blocks] == [False, True]
    assert not any(b.mixer.xsa for b in GPT(small_cfg()).blocks)


def test_xsa_changes_the_output_and_adds_no_parameters():
    x = torch.randn(2, 9, 32)
    a, b = _attn(), _attn(xsa_last_n=4)
    assert count_params(a) == count_params(b)
    b.load_state_dict(a.state_dict())
    assert not torch.allclose(a(x, _ctx(9)), b(x, _ctx(9)))


@pytest.mark.parametrize("gate", ["attn_out_gate_enabled", "sparse_attn_gate_enabled"])
def test_output_gate_reference_init_and_parameters(gate):
    gw = 6
    plain, gated = _attn(), _attn(**{gate: True, "gate_window": gw, "sparse_attn_gate_scale": 0.5})
    assert count_params(gated) - count_params(plain) == 4 * gw  # heads x window
    gated.load_state_dict({**plain.state_dict(), "gate_w": torch.zeros(4, gw)})
    x = torch.randn(2, 9, 32)
    y0, yg = plain(x, _ctx(9)), gated(x, _ctx(9))
    # zero init: the out gate is transparent, the sparse gate halves every head
    if gate == "attn_out_gate_enabled":
        torch.testing.assert_close(yg, y0)
    else:
        w = gated.proj.weight.detach().clone()
        with torch.no_grad():
            gated.proj.weight.mul_(2.0)
        torch.testing.assert_close(gated(x, _ctx(9)), y0)
        gated.proj.weight.data.copy_(w)
    # a trained gate against the formula, head by head
    with torch.no_grad():
        gated.gate_w.normal_()
    y = torch.randn(2, 4, 9, 8)
    out = gated._heads(y, torch.randn(2, 2, 9, 8), x)
    for h in range(4):
        s = x[..., :gw] @ gated.gate_w[h]
        g = 2 * torch.sigmoid(s) if gate == "attn_out_gate_enabled" else torch.sigmoid(0.5 * s)
        torch.testing.assert_close(out[:, h], y[:, h] * g[..., None])
    gated(x, _ctx(9)).square().sum().backward()
    assert gated.gate_w.grad is not None and gated.gate_w.grad.abs().sum() > 0


def test_gate_settings_are_checked_before_work():
    with pytest.raises(GolfError, match="switch one off"):
        load_config([], env={"ATTN_OUT_GATE_ENABLED": "1", "SPARSE_ATTN_GATE_ENABLED": "1"})
    with pytest.raises(GolfError, match="GATE_WINDOW"):
        load_config([], env={"SPARSE_ATTN_GATE_ENABLED": "1", "GATE_WINDOW": "4096"})
    with pytest.raises(GolfError, match="GATE_WINDOW"):
        load_config([], env={"GATE_WINDOW": "0"})
    with pytest.raises(GolfError, match="MLP_LEAKY_SLOPE"):
        load_config([], env={"MLP_LEAKY_SLOPE": "-0.5"})


@pytest.mark.parametrize("extra", [dict(xsa_last_n=2), dict(attn_out_gate_enabled=True, xsa_last_n=1),
                                   dict(sparse_attn_gate_enabled=True, num_kv_heads=1)])
@pytest.mark.parametrize("prefix", [0, 3])
def test_forward_cached_matches_forward_with_xsa_and_gates(extra, prefix):
    m = _attn(**extra)
    with torch.no_grad():
        if hasattr(m, "gate_w"):
            m.gate_w.normal_()
    n = prefix + 12
    x = torch.randn(2, n, 32)
    ref = m(x, _ctx(n, prefix))
    y, cache = m.forward_cached(x[:, :prefix + 8], _ctx(prefix + 8, prefix), None)
    torch.testing.assert_close(y, ref[:, :prefix + 8])
    for pos, c in ((prefix + 8, 1), (prefix + 9, 3)):
        cos, sin = ROPE(pos + c, torch.device("cpu"))
        ctx = MixerContext(cos=cos[..., pos:, :], sin=sin[..., pos:, :], num_prefix=0)
        y, cache = m.forward_cached(x[:, pos:pos + c], ctx, cache)
        torch.testing.assert_close(y, ref[:, pos:pos + c], rtol=1e-5, atol=1e-5)


def test_leaky_relu_square_mlp():
    torch.manual_seed(0)
    relu, leaky = MLP(16, 2.0), MLP(16, 2.0, 0.5)
    leaky.load_state_dict(relu.state_dict())
    with torch.no_grad():
        relu.proj.weight.normal_()
        leaky.proj.weight.copy_(relu.proj.weight)
    x = torch.randn(3, 5, 16, requires_grad=True)
    h = relu.fc(x)
    torch.testing.assert_close(relu(x), relu.proj(torch.relu(h) ** 2), rtol=0, atol=0)  # slope 0 = relu^2 exactly
    torch.testing.assert_close(leaky(x), leaky.proj(torch.where(h > 0, h, 0.5 * h) ** 2))
    # a negative pre-activation still passes a gradient (relu^2 passes none)
    xn = torch.randn(1, 1, 16)
    with torch.no_grad():
        leaky.fc.weight.copy_(-leaky.fc.weight.abs())
    xn = xn.abs().requires_grad_(True)
    leaky(xn).sum().backward()
    assert xn.grad.abs().sum() > 0
    assert count_params(relu) == count_params(leaky)


def test_yarn_leaves_the_training_length_alone_and_stretches_the_base_beyond_it():
    dev = torch.device("cpu")
    plain, yarn = Rotary(16, 10000.0), Rotary(16, 10000.0, yarn_len=32)
    for n in (1, 31, 32):
        for a, b in zip(plain(n, dev), yarn(n, dev)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    cos, _ = yarn(128, dev)
    base = 10000.0 * 4 ** (16 / 14)  # 4x the training length
    inv = 1.0 / base ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16)
    torch.testing.assert_close(cos[0, 0], torch.cos(torch.outer(torch.arange(128.0), inv)))


def test_yarn_counts_the_memory_prefix_as_training_length():
    m = randomize(GPT(small_cfg(rope_yarn=True, num_memory_tokens=4, train_seq_len=16)), std=0.3)
    assert m.rotary.yarn_len == 20
    m.eval()
    idx = torch.randint(2, 64, (1, 16))
    off = GPT(small_cfg(num_memory_tokens=4, train_seq_len=16)).eval()
    off.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(idx), off(idx), rtol=0, atol=0)  # at the training length: unchanged
    long = torch.randint(2, 64, (1, 40))
    assert not torch.allclose(m(long), off(long))


def test_parts_off_are_inert_and_frontier_parts_keep_the_state_dict_keys():
    base = GPT(small_cfg())
    parts = GPT(small_cfg(xsa_last_n=4, mlp_leaky_slope=0.5, rope_yarn=True))
    assert base.state_dict().keys() == parts.state_dict().keys()
    assert all(b.mixer.gate == "" and not b.mixer.xsa and b.mlp.leaky_slope == 0 for b in base.blocks)
    assert base.rotary.yarn_len == 0
    n = math.prod((4, 4, 12))  # layers x heads x the default window
    assert count_params(GPT(small_cfg(sparse_attn_gate_enabled=True))) - count_params(base) == n
