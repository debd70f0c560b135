"""golf/compress/quant.py: the bit-width policy, the per-row quantiser (fast == reference, error bound), QAT."""
import pytest
import torch
from torch import nn

from golf.compress.quant import bits_for_group, bits_for_tensor, clip_ratios, estimate_artifact_bytes, quant_plan
from golf.core.config import load_config
from golf.core.utils import GolfError
from golf.model.gpt import GPT
from golf.model.mixer import tag
from golf.model.quantgrid import (CLIP_RATIOS, FP16, dequantize_rows, fake_quantize, qmax_for, quantize_dequantize,
                                  quantize_rows, quantize_rows_reference)


def _h(**kw):
    return load_config([f"--{k}={v}" for k, v in kw.items()], env={}, preset="record")


def _weights(rows=48, cols=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    w[3] = 0.0  # an all-zero row
    w[5, 7] = 25.0  # a single outlier: the clip search should cut it
    w[6] *= 1e-6  # a tiny row (scale near fp16's low end)
    w[8] = torch.distributions.StudentT(3.0).sample((cols,))
    return w


def test_policy_table_from_config():
    h = _h()
    assert bits_for_group("mlp", h) == 5 and bits_for_group("attn", h) == 6 and bits_for_group("embed", h) == 8
    assert bits_for_group("other", h) == h.quant_other_bits
    assert bits_for_group("control", h) == FP16
    assert bits_for_group("embed", _h(quant_embed_bits=16)) == FP16
    assert bits_for_group("mlp", h.to_dict()) == 5  # a config dict works too
    with pytest.raises(GolfError):
        bits_for_group("mlp", _h(quant_mlp_bits=12))
    with pytest.raises(ValueError):
        bits_for_group("nope", h)


def test_small_and_vector_tensors_stay_fp16():
    h = _h()
    assert bits_for_tensor(torch.zeros(512, 512), "mlp", h) == 5
    assert bits_for_tensor(torch.zeros(100, 100), "mlp", h) == FP16  # 10k < 65536 elements
    assert bits_for_tensor(torch.zeros(100_000), "mlp", h) == FP16  # a vector
    assert bits_for_tensor(torch.zeros(100, 100), "mlp", _h(quant_min_numel=1000)) == 5


@pytest.mark.parametrize("bits", [4, 5, 6, 8])
def test_fast_quantiser_equals_reference(bits):
    w = _weights(seed=bits)
    q, s = quantize_rows(w, bits)
    q_ref, s_ref = quantize_rows_reference(w, bits)
    assert q.dtype == torch.int8 and s.dtype == torch.float16
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)
    assert int(q.abs().max()) <= qmax_for(bits)
    assert torch.all(q[3] == 0)


@pytest.mark.parametrize("bits", [5, 6, 8])
def test_dequantise_within_analytic_bound(bits):
    w = _weights(seed=10 + bits)
    q, s = quantize_rows(w, bits)
    deq = dequantize_rows(q, s, w.shape)
    s32 = s.float()[:, None]
    clip = qmax_for(bits) * s32
    err = (deq - w).abs()
    inside = w.abs() <= clip
    # inside the clip: rounding error at most half a step (+ fp32 rounding slack)
    assert torch.all(err[inside] <= (s32 / 2).expand_as(w)[inside] * (1 + 1e-5) + 1e-12)
    # outside: the value is clipped to +-clip, so the error is exactly how far it lies beyond it
    out = ~inside
    assert torch.allclose(err[out], (w.abs() - clip.expand_as(w))[out], rtol=1e-5, atol=1e-6)
    # every chosen clip is one of the searched ratios of the row abs-max (up to fp16 rounding)
    # (rows whose scale is a normal fp16 number; the 1e-6 row has a coarse subnormal scale)
    amax = w.abs().amax(1)
    normal = (s.float() >= torch.finfo(torch.float16).tiny) & (amax > 0)
    ratio = (clip[:, 0] / amax)[normal]
    near = torch.stack([(ratio - r).abs() for r in CLIP_RATIOS]).amin(0)
    assert torch.all(near <= 2e-3)
    assert not normal[6] and (q[6] != 0).sum() > 10  # the tiny row still keeps its shape


def test_clip_search_never_worse_than_absmax_and_cuts_outliers():
    w = _weights(seed=3)
    q, s = quantize_rows(w, 5)
    mse = ((dequantize_rows(q, s, w.shape) - w) ** 2).sum(1)
    absmax_s = (w.abs().amax(1) / qmax_for(5)).half().float().clamp_min(6e-5)
    q1 = torch.clamp(torch.round(w / absmax_s[:, None]), -15, 15)
    mse1 = ((q1 * absmax_s[:, None] - w) ** 2).sum(1)
    assert torch.all(mse <= mse1 * (1 + 1e-6) + 1e-12)
    assert mse.sum() < mse1.sum()  # somewhere the search found a better clip


def test_clip_ratios_setting_parses_validates_and_drives_the_quantiser():
    assert clip_ratios(_h()) == CLIP_RATIOS
    assert clip_ratios({}) == CLIP_RATIOS  # configs written before the setting existed
    assert clip_ratios(_h(quant_clip_ratios="1.0,0.9")) == (1.0, 0.9)
    for bad in ("", "1.2", "0,1", "x"):
        with pytest.raises(GolfError, match="QUANT_CLIP_RATIOS"):
            _h(quant_clip_ratios=bad)
    w = _weights(seed=5)
    for ratios in [(1.0,), (0.9, 1.0, 0.7)]:
        fast, ref = quantize_rows(w, 6, ratios), quantize_rows_reference(w, 6, ratios)
        assert torch.equal(fast[0], ref[0]) and torch.equal(fast[1], ref[1])
    _, s_abs = quantize_rows(w, 5, (1.0,))  # abs-max only: the outlier row (25.0) keeps its full range
    _, s_search = quantize_rows(w, 5)
    assert s_abs[5] == torch.tensor(25.0 / 15).half() and s_search[5] < s_abs[5]


def test_absmax_only_compresses_heavy_tails_better_than_the_search():
    """The trade QUANT_CLIP_RATIOS=1.0 makes: more error, fewer bytes (zstd-22, int5, t(4) rows)."""
    import zstandard

    torch.manual_seed(0)
    w = torch.distributions.StudentT(4.0).sample((256, 512)) * 0.02
    size = {}
    for ratios in (CLIP_RATIOS, (1.0,)):
        q, s = quantize_rows(w, 5, ratios)
        size[ratios] = (len(zstandard.ZstdCompressor(level=22).compress(q.numpy().tobytes())),
                        ((dequantize_rows(q, s, w.shape) - w) ** 2).sum().item())
    assert size[(1.0,)][0] < 0.97 * size[CLIP_RATIOS][0]
    assert size[(1.0,)][1] > size[CLIP_RATIOS][1]


def test_fake_quantize_forward_matches_exporter_and_passes_gradient():
    w = _weights(seed=4).requires_grad_(True)
    y = fake_quantize(w, 6)
    assert torch.equal(y.detach(), quantize_dequantize(w.detach(), 6))
    g = torch.randn_like(w)
    (y * g).sum().backward()
    assert torch.equal(w.grad, g)  # straight-through
    v = torch.randn(10, requires_grad=True)
    assert fake_quantize(v, 6) is v and fake_quantize(w, 0) is w and fake_quantize(w, 16) is w


def test_quant_plan_on_tagged_module():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Parameter(torch.randn(256, 512))
            self.attn = nn.Parameter(torch.randn(512, 512))
            self.emb = nn.Parameter(torch.randn(1024, 128))
            self.gain = nn.Parameter(torch.ones(512))
            self.mem = nn.Parameter(torch.randn(64, 512)) # control: fp16 even though 2-D and 32k
            tag(self.mlp, quant="mlp"), tag(self.attn, quant="attn"), tag(self.emb, quant="embed")
            tag(self.mem, quant="control")

    plan = quant_plan(M(), _h())
    assert plan == {"mlp": 5, "attn": 6, "emb": 8, "gain": 16, "mem": 16}


def test_estimate_has_group_breakdown_and_flags_oversize():
    h = _h()
    model = GPT(h.model_config())
    est = estimate_artifact_bytes(model, h, code_bytes=50_000)
    assert {"mlp", "attn", "embed"} <= set(est["groups"])
    assert est["groups"]["mlp"]["bits"] == 5 and est["code"] == 50_000
    assert est["total"] == sum(g["bytes"] for g in est["groups"].values()) + est["header"] + est["code"]
    assert est["fits"] and 12e6 < est["total"] < 16e6  # the record preset fits the cap
    big = _h(num_layers=16, quant_mlp_bits=8)
    assert not estimate_artifact_bytes(GPT(big.model_config()), big, code_bytes=50_000)["fits"]


@pytest.mark.parametrize("tie", [1, 0])
def test_estimate_and_quant_groups_scale_with_vocab_size(tie):
    """SP8192 (golf issue 19): the embedding (and an untied head) is 8x the rows at 8192 pieces, and the
    pre-flight and the quantiser's embed group both count them."""
    ests, plans = {}, {}
    for vocab in (1024, 8192):
        h = _h(vocab_size=vocab, tie_embeddings=tie, num_layers=2)
        model = GPT(h.model_config())
        ests[vocab], plans[vocab] = estimate_artifact_bytes(model, h, code_bytes=0), quant_plan(model, h)
        emb = [p for p in model.parameters() if p.ndim == 2 and p.shape[0] == vocab]
        assert ests[vocab]["groups"]["embed"]["params"] == sum(p.numel() for p in emb if getattr(p, "_golf_quant", "") == "embed")
    d = _h().model_dim
    extra = (8192 - 1024) * d * (1 if tie else 2)  # untied: the head's rows are in the embed group too
    e1, e8 = ests[1024]["groups"]["embed"], ests[8192]["groups"]["embed"]
    assert e8["params"] - e1["params"] == extra
    assert e8["bits"] == e1["bits"] and 7.9 * e1["bytes"] < e8["bytes"] < 8.1 * e1["bytes"]
    assert ests[8192]["total"] - ests[1024]["total"] >= e8["bytes"] - e1["bytes"]
    assert set(plans[8192]) == set(plans[1024])  # same tensors, same widths: only their sizes grew
