"""Attention's KV-cache path (forward_cached) against its full forward: position by position and in
chunks, full and sliding-window, with memory-token prefixes and GQA."""
import pytest
import torch
from modelkit import randomize, small_cfg

from golf.core.config import load_config
from golf.core.utils import GolfError
from golf.model import attention
from golf.model.layers import Rotary
from golf.model.mechanisms import build_mixer
from golf.model.mixer import MixerContext

ROPE = Rotary(4)


def _mixer(name, **kw):
    torch.manual_seed(0)
    return randomize(build_mixer(name, small_cfg(**kw), 0), std=0.3).eval()


def _ctx(lo, hi, p):
    cos, sin = ROPE(hi, torch.device("cpu"))
    return MixerContext(cos=cos[..., lo:, :], sin=sin[..., lo:, :], num_prefix=p)


@pytest.mark.parametrize("name,window,prefix,kv_heads,chunks", [
    ("attn", 0, 0, 2, [1] * 6),
    ("attn", 0, 3, 4, [2, 1, 3]),
    ("swa", 1, 0, 2, [1] * 6),
    ("swa", 4, 2, 2, [1] * 8),
    ("swa", 4, 2, 1, [3, 1, 5]),  # chunks longer than one position need the mask
    ("swa", 30, 2, 2, [1] * 4),  # window wider than the sequence
])
def test_forward_cached_matches_forward(name, window, prefix, kv_heads, chunks):
    mix = _mixer(name, attn_window=window, num_kv_heads=kv_heads)
    T0 = 9  # prefix + first real tokens go through the prefill
    n = prefix + T0 + sum(chunks)
    x = torch.randn(2, n, 32)
    ref = mix(x, _ctx(0, n, prefix))
    y, cache = mix.forward_cached(x[:, :prefix + T0], _ctx(0, prefix + T0, prefix), None)
    torch.testing.assert_close(y, ref[:, :prefix + T0])
    pos = prefix + T0
    for c in chunks:
        y, cache = mix.forward_cached(x[:, pos:pos + c], _ctx(pos, pos + c, 0), cache)
        torch.testing.assert_close(y, ref[:, pos:pos + c], rtol=1e-5, atol=1e-5)
        pos += c
        assert cache.length == pos
        if window:  # only what a later query can see is kept
            assert cache.k.shape[2] == prefix + min(window - 1, pos - prefix)
        else:
            assert cache.k.shape[2] == pos


def test_forward_cached_refuses_rotary_tables_of_the_wrong_length():
    mix = _mixer("attn")
    x = torch.randn(1, 5, 32)
    _, cache = mix.forward_cached(x, _ctx(0, 5, 0), None)
    with pytest.raises(GolfError, match="rotary tables"):
        mix.forward_cached(x[:, :1], _ctx(0, 6, 0), cache)  # the backbone's whole table, not position 5


# ---------------------------------------------------------------------------------------------
# flex_attention path for sliding windows (on by default on CUDA only): it must equal the mask path

needs_flex = pytest.mark.skipif(not attention.flex_available(),
                                reason="this torch has no torch.nn.attention.flex_attention")
eager_flex = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


@pytest.fixture(autouse=True)
def _dynamo_counters_untouched():
    """Eager flex_attention compiles internally (backend "eager") and bumps dynamo's process-wide
    graph counters, which golf.core.utils.compile_stats (and the training tests) read: put them back."""
    counters = None
    if attention.flex_available():
        from torch._dynamo.utils import counters
    saved = {k: dict(v) for k, v in counters.items()} if counters is not None else None
    yield
    if saved is not None:
        counters.clear()
        for k, v in saved.items():
            counters[k].update(v)


@needs_flex
@eager_flex
@pytest.mark.parametrize("T,window,prefix,heads,kv_heads", [
    (37, 5, 3, 4, 2),  # shorter than one 128-token block, GQA
    (200, 16, 0, 4, 4),  # two blocks, no prefix, no GQA
    (300, 130, 8, 4, 1),  # window wider than a block, prefix, every query head on one kv head
    (150, 1, 2, 2, 2),  # window 1: each token sees itself and the prefix
])
def test_flex_window_attention_matches_mask_path(T, window, prefix, heads, kv_heads):
    g = torch.Generator().manual_seed(T)
    q = torch.randn(2, heads, T, 8, generator=g)
    k, v = torch.randn(2, kv_heads, T, 8, generator=g), torch.randn(2, kv_heads, T, 8, generator=g)
    ref = attention._sdpa(q, k, v, attention.window_mask(T, window, prefix, q.device))
    torch.testing.assert_close(attention.flex_window_attention(q, k, v, window, prefix), ref, rtol=1e-5, atol=1e-5)


@needs_flex
@eager_flex
def test_swa_layer_uses_flex_only_when_asked_on_cpu(monkeypatch):
    calls = []
    real = attention.flex_window_attention
    monkeypatch.setattr(attention, "flex_window_attention", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(2, 2 + 40, 32)
    ctx = _ctx(0, 42, 2)
    plain = _mixer("swa", attn_window=6, num_kv_heads=2)
    assert plain.flex == "auto"  # the default: flex only on CUDA inside torch.compile
    ref = plain(x, ctx)
    assert calls == []
    forced = _mixer("swa", attn_window=6, num_kv_heads=2, flex_attention="on")
    with torch.no_grad():  # FlexAttention has no backward on CPU
        torch.testing.assert_close(forced(x, ctx), ref, rtol=1e-5, atol=1e-5)
    assert calls == [1]
    assert _mixer("attn").flex == "off"  # full attention keeps SDPA's causal kernels


def test_flex_setting_rejects_bad_values():
    with pytest.raises(GolfError, match="FLEX_ATTENTION"):
        _mixer("swa", attn_window=4, flex_attention="maybe")
    with pytest.raises(GolfError, match="FLEX_ATTENTION='maybe'"):
        load_config([], env={"FLEX_ATTENTION": "maybe"})
    assert _mixer("swa", attn_window=4, flex_attention="off").flex == "off"
    assert load_config([], env={"FLEX_ATTENTION": "off"}).model_config().flex_attention == "off"


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@needs_flex
def test_cuda_compiled_swa_uses_flex_and_matches_mask_path():
    """The GPU path the CPU suite cannot run: inside torch.compile on CUDA a window layer goes
    through flex_attention (FLEX_ATTENTION=auto) and must agree with the bool-mask SDPA reference,
    forward and gradients, memory-token prefix and GQA included."""
    dev = torch.device("cuda")
    torch.manual_seed(0)
    flex = randomize(build_mixer("swa", small_cfg(attn_window=48, num_kv_heads=2), 0), std=0.3).to(dev)
    ref = randomize(build_mixer("swa", small_cfg(attn_window=48, num_kv_heads=2, flex_attention="off"), 0),
                    std=0.3).to(dev)
    ref.load_state_dict(flex.state_dict())
    assert flex.flex == "auto" and ref.flex == "off"
    rope = Rotary(4)
    cos, sin = rope(4 + 300, dev)
    ctx = MixerContext(cos=cos, sin=sin, num_prefix=4)
    x = torch.randn(2, 304, 32, device=dev, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    calls = []
    real = attention.flex_window_attention
    attention.flex_window_attention = lambda *a: calls.append(1) or real(*a)
    try:
        y = torch.compile(flex, dynamic=False)(x, ctx)
    finally:
        attention.flex_window_attention = real
    y_ref = ref(x_ref, ctx)
    assert calls, "the compiled CUDA window layer did not take the flex_attention path"
    torch.testing.assert_close(y, y_ref, rtol=2e-4, atol=2e-4)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=2e-3, atol=2e-3)
    for (n, p), p_ref in zip(flex.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=2e-3, atol=2e-3, msg=n)
