
import torch

from golf.model import quantgrid
from golf.model.layers import MLP, CastedLinear, RMSNorm, Rotary, apply_rotary


def test_casted_linear_keeps_fp32_weight_and_follows_input_dtype():
    torch.manual_seed(0)
    lin = CastedLinear(8, 4)
    assert lin.weight.dtype == torch.float32 and lin.bias is None and lin.qat_bits == 0
    x = torch.randn(3, 8)
    torch.testing.assert_close(lin(x), x @ lin.weight.T)
    assert lin(x.to(torch.bfloat16)).dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lin(x).dtype == torch.bfloat16


def test_casted_linear_qat_uses_fake_quantize_with_straight_through_grad(monkeypatch):
    calls = []

    def coarse(w, bits, ratios=None):
        calls.append(bits)
        return (w * 4).round() / 4  # a coarse grid, not differentiable on its own

    monkeypatch.setattr(quantgrid, "quantize_dequantize", coarse)  # what fake_quantize rounds with
    torch.manual_seed(0)
    lin = CastedLinear(8, 4)
    lin.qat_bits = 5
    x = torch.randn(3, 8)
    y = lin(x)
    assert calls == [5]
    torch.testing.assert_close(y, x @ ((lin.weight * 4).round() / 4).T)
    y.sum().backward()
    # straight-through: the gradient is the one of a plain linear layer
    torch.testing.assert_close(lin.weight.grad, torch.ones(3, 4).T @ x)


def test_casted_linear_with_real_quant_module():
    torch.manual_seed(0)
    lin = CastedLinear(64, 32)
    x = torch.randn(5, 64)
    y0 = lin(x)
    lin.qat_bits = 4
    y1 = lin(x)
    assert not torch.allclose(y0, y1)  # coarse grid changes the output
    assert (y1 - y0).abs().max() < 0.5 * y0.abs().max()


def test_rmsnorm_unit_rms():
    x = torch.randn(4, 16) * 7
    y = RMSNorm()(x)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(4), rtol=1e-4, atol=1e-4)


def test_partial_rotary_rotates_only_rope_dims_and_is_relative():
    torch.manual_seed(0)
    hd, r, T = 16, 8, 12
    cos, sin = Rotary(r)(T, torch.device("cpu"))
    assert cos.shape == (1, 1, T, r // 2)
    q = torch.randn(1, 2, T, hd)
    qr = apply_rotary(q, cos, sin)
    torch.testing.assert_close(qr[..., r:], q[..., r:])  # pass-through dims untouched
    torch.testing.assert_close(qr.norm(dim=-1), q.norm(dim=-1))  # a rotation
    torch.testing.assert_close(qr[..., 0, :], q[..., 0, :])  # position 0 = identity
    # q.k depends only on the offset: same vectors at (3, 1) and (7, 5) give the same score
    v = torch.randn(hd)
    w = torch.randn(hd)
    seq_q = v.expand(1, 1, T, hd)
    seq_k = w.expand(1, 1, T, hd)
    rq, rk = apply_rotary(seq_q, cos, sin), apply_rotary(seq_k, cos, sin)
    s1 = (rq[0, 0, 3] * rk[0, 0, 1]).sum()
    s2 = (rq[0, 0, 7] * rk[0, 0, 5]).sum()
    torch.testing.assert_close(s1, s2)
    s3 = (rq[0, 0, 7] * rk[0, 0, 1]).sum()
    assert not torch.allclose(s1, s3)


def test_mlp_starts_as_zero_and_is_relu_squared():
    torch.manual_seed(0)
    mlp = MLP(16, 3.0)
    assert mlp.fc.weight.shape == (48, 16)
    x = torch.randn(2, 5, 16)
    assert torch.count_nonzero(mlp(x)) == 0
    torch.nn.init.normal_(mlp.proj.weight)
    ref = torch.relu(x @ mlp.fc.weight.T).square() @ mlp.proj.weight.T
    torch.testing.assert_close(mlp(x), ref)
