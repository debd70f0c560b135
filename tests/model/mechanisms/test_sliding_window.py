import math

import torch
from modelkit import small_cfg

from golf.model.gpt import GPT, layer_mixers
from golf.model.layers import Rotary, apply_rotary, rms_norm
from golf.model.mechanisms import build_mixer
from golf.model.mixer import MixerContext

D = 32


def _mixer(name, **kw):
    torch.manual_seed(0)
    mix = build_mixer(name, small_cfg(**kw), 0)
    torch.nn.init.normal_(mix.proj.weight, std=0.2)
    return mix


def _ctx(n, p):
    cos, sin = Rotary(4)(n, torch.device("cpu"))
    return MixerContext(cos=cos, sin=sin, num_prefix=p)


def naive_window_attention(mix, x, ctx, window):
    """One query at a time over the keys it may see: the last `window` tokens and every prefix."""
    B, n, _ = x.shape
    H, Hk, hd = mix.num_heads, mix.num_kv_heads, mix.head_dim
    q = rms_norm(mix.c_q(x).view(B, n, H, hd).transpose(1, 2)) * mix.q_gain[None, :, None, None]
    k = rms_norm(mix.c_k(x).view(B, n, Hk, hd).transpose(1, 2))
    v = mix.c_v(x).view(B, n, Hk, hd).transpose(1, 2)
    q, k = apply_rotary(q, ctx.cos, ctx.sin), apply_rotary(k, ctx.cos, ctx.sin)
    out = torch.zeros(B, H, n, hd)
    for i in range(n):
        js = [j for j in range(i + 1) if i - j < window or j < ctx.num_prefix]
        for h in range(H):
            kk, vv = k[:, h // (H // Hk), js], v[:, h // (H // Hk), js]
            att = torch.softmax((q[:, h, i:i + 1] @ kk.transpose(1, 2)) / math.sqrt(hd), dim=-1)
            out[:, h, i] = (att @ vv)[:, 0]
    return mix.proj(out.transpose(1, 2).reshape(B, n, -1))


def test_window_size_from_tokens_or_fraction():
    assert _mixer("swa", attn_window=7).window == 7
    assert _mixer("swa", attn_window=0, attn_window_frac=0.25).window == 8  # 0.25 * train_seq_len 32
    assert _mixer("attn").window == 0


def test_swa_matches_naive_reference_with_memory_prefix():
    mix = _mixer("swa", attn_window=5)
    x = torch.randn(2, 3 + 20, D)
    ctx = _ctx(23, 3)
    torch.testing.assert_close(mix(x, ctx), naive_window_attention(mix, x, ctx, 5), rtol=1e-4, atol=1e-5)


def test_swa_with_large_window_equals_full_attention():
    swa, attn = _mixer("swa", attn_window=64), _mixer("attn")
    attn.load_state_dict(swa.state_dict())
    x = torch.randn(2, 20, D)
    torch.testing.assert_close(swa(x, _ctx(20, 0)), attn(x, _ctx(20, 0)))


def test_swa_sees_memory_prefix_but_not_old_tokens():
    mix = _mixer("swa", attn_window=4)
    x = torch.randn(1, 2 + 16, D)
    ctx = _ctx(18, 2)
    y = mix(x, ctx)
    far = x.clone()
    far[:, 5] += 5.0  # a real token 12 positions before the last: outside the window
    torch.testing.assert_close(mix(far, ctx)[:, -1], y[:, -1])
    mem = x.clone()
    mem[:, 0] += 5.0  # a memory token: visible to every position
    assert not torch.allclose(mix(mem, ctx)[:, -1], y[:, -1])


def test_model_with_three_local_one_global():
    cfg = small_cfg(num_layers=8, mixers="swa_pattern", global_every=4, attn_window=4, num_memory_tokens=2)
    assert layer_mixers(cfg) == ["swa", "swa", "swa", "attn"] * 2
    m = GPT(cfg)
    assert [b.mixer.name for b in m.blocks] == ["swa", "swa", "swa", "attn"] * 2
    assert m(torch.randint(2, 64, (1, 32))).shape == (1, 32, 64)
