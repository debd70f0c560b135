"""golf/compress/gptq.py and the clip rules: GPTQ equals the plain OBQ loop, lowers the layer-output
error against round-to-nearest on the same weights and calibration data, its Hessians are the
layers' own inputs from training batches, and an artifact exported with it loads."""
import numpy as np
import pytest
import torch
from compress.test_artifact import TOK_SHA, _h, _trained_ish

from golf.compress.artifact import load_artifact
from golf.compress.export import calibration_batches, export
from golf.compress.gptq import collect_hessians, gptq_quantize, obq_reference
from golf.compress.quant import clip_for
from golf.core.config import load_config, parse_clip_sigmas
from golf.core.utils import GolfError
from golf.data.folder import load_split
from golf.model.gpt import GPT
from golf.model.quantgrid import dequantize_rows, qmax_for, quantize_rows, sd_scales


def _layer(rows=12, cols=20, n=400, seed=0):
    """Weights and correlated inputs (a real layer's inputs are far from white)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64) * 0.05
    mix = torch.randn(cols, cols, generator=g, dtype=torch.float64)
    x = torch.randn(n, cols, generator=g, dtype=torch.float64) @ mix
    x[:, 3] = 0  # a dead input
    return w, x, x.T @ x / n


@pytest.mark.parametrize("bits,clip", [(4, (1.0, 0.9, 0.8)), (6, 12.0), (3, 2.5), (8, (1.0,))])
def test_gptq_gives_the_same_integers_as_the_plain_obq_loop(bits, clip):
    w, _, H = _layer()
    q, s = gptq_quantize(w, H, bits, clip, block=8, dtype=torch.float64)  # blocks of 8: the lazy update crosses blocks
    q_ref, s_ref = obq_reference(w, H, bits, clip)
    assert torch.equal(s, s_ref)
    assert torch.equal(q, q_ref)
    assert q.dtype == torch.int8 and q.abs().max() <= qmax_for(bits)


def test_gptq_lowers_the_layer_output_error_against_round_to_nearest():
    for seed in range(3):
        w, x, H = _layer(rows=32, cols=48, n=2000, seed=seed)
        for bits, clip in ((4, (1.0,)), (6, 12.0)):
            q_rtn, s = quantize_rows(w, bits, clip)
            q_gptq, s_g = gptq_quantize(w, H, bits, clip)
            assert torch.equal(s, s_g)  # same grid: only the rounding differs
            err = lambda q: float(((x @ (dequantize_rows(q, s, w.shape, torch.float64) - w).T) ** 2).mean())  # noqa: E731
            assert err(q_gptq) < 0.8 * err(q_rtn), (seed, bits, err(q_gptq), err(q_rtn))


def test_sdclip_scale_is_k_stds_over_qmax():
    w = torch.randn(6, 300) * torch.arange(1, 7)[:, None]
    s = sd_scales(w, 6, 12.0)
    want = (12.0 * w.std(dim=1, unbiased=False) / 31).to(torch.float16).float()
    torch.testing.assert_close(s, want)
    q, s16 = quantize_rows(w, 6, 12.0)
    assert torch.equal(s16.float(), want) and q.abs().max() <= 31


def test_clip_rule_per_group_and_bad_settings():
    assert parse_clip_sigmas("") == {} and parse_clip_sigmas("12") == {g: 12.0 for g in ("mlp", "attn", "embed", "other")}
    assert parse_clip_sigmas("mlp=11.5,embed=14") == {"mlp": 11.5, "embed": 14.0}
    h = load_config(env={"QUANT_CLIP_SIGMAS": "mlp=11.5"})
    assert clip_for("mlp", h) == 11.5 and clip_for("attn", h) == (1.0, 0.95, 0.9, 0.85, 0.8)
    for bad in ("mlp=x", "head=3", "0", "-1", "mlp=100"):
        with pytest.raises(GolfError, match="QUANT_CLIP_SIGMAS"):
            load_config(env={"QUANT_CLIP_SIGMAS": bad})
    with pytest.raises(GolfError, match="QUANT_SCHEME"):
        load_config(env={"QUANT_SCHEME": "obq"})


def test_hessians_are_the_layers_inputs():
    h = _h()
    model = _trained_ish(h)
    idx = torch.randint(0, h.vocab_size, (2, 32))
    seen = {}
    hook = model.blocks[0].mlp.fc.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach()))
    H = collect_hessians(model, [idx])
    hook.remove()
    x = seen["x"].reshape(-1, seen["x"].shape[-1])
    torch.testing.assert_close(H["blocks.0.mlp.fc.weight"], x.T @ x / x.shape[0])
    with torch.no_grad():
        hid = model.hidden(idx).reshape(-1, h.model_dim)
    torch.testing.assert_close(H["tok_emb.weight"], hid.T @ hid / hid.shape[0])  # the tied LM head's input
    only = collect_hessians(model, [idx], {"blocks.1.mixer.proj.weight"})
    assert set(only) == {"blocks.1.mixer.proj.weight"}


def test_calibration_batches_come_from_the_training_split(byte_data_dir):
    h = load_config(env={"DATA_PATH": str(byte_data_dir), "VOCAB_SIZE": "260", "TRAIN_SEQ_LEN": "64",
                         "QUANT_CALIB_BATCHES": "3", "QUANT_CALIB_SEQS": "2"})
    train = np.asarray(load_split(byte_data_dir, "train"))
    val = np.asarray(load_split(byte_data_dir, "val"))
    batches = list(calibration_batches(h))
    assert len(batches) == 3 and all(b.shape == (2, h.train_seq_len) for b in batches)
    text = train.tobytes()
    for b in batches:
        for row in b.numpy().astype(np.uint16):
            assert row.tobytes() in text + text[:2 * h.train_seq_len]  # a window of the (circular) train stream
            assert row.tobytes() not in val.tobytes()


def test_gptq_export_loads_and_fits_the_calibration_better(tmp_path):
    h = _h(quant_scheme="gptq", quant_clip_sigmas="mlp=10,attn=12,other=12,embed=14")
    model = _trained_ish(h)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, h.vocab_size, (4, 32), generator=g) for _ in range(3)]
    with pytest.raises(GolfError, match="calibration"):
        export(model, h, TOK_SHA, tmp_path / "x.ptz")
    res = export(model, h, TOK_SHA, tmp_path / "gptq.ptz", calibration=lambda: iter(batches))
    assert res.size["seconds"]["gptq"] > 0
    h_rtn = _h(quant_clip_sigmas="mlp=10,attn=12,other=12,embed=14")
    export(model, h_rtn, TOK_SHA, tmp_path / "rtn.ptz")
    gq, _ = load_artifact(tmp_path / "gptq.ptz")
    rq, _ = load_artifact(tmp_path / "rtn.ptz")
    # every linear layer's output on the calibration data is closer to the float model's with GPTQ
    H = collect_hessians(model, batches)
    sd, sg, sr = model.state_dict(), gq.state_dict(), rq.state_dict()
    wins = [float(((sg[n] - sd[n]) @ Hn @ (sg[n] - sd[n]).T).trace()) < float(((sr[n] - sd[n]) @ Hn @ (sr[n] - sd[n]).T).trace())
            for n, Hn in H.items()]
    assert all(wins), wins
    assert isinstance(gq, GPT)


def test_lqer_factors_shrink_the_error_and_round_trip_in_the_artifact(tmp_path):
    from golf.compress import lqer
    from golf.compress.artifact import read_artifact, save_artifact

    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 128, generator=g) + 3 * torch.randn(64, 1, generator=g) @ torch.randn(1, 128, generator=g)
    q, s = quantize_rows(w, 3, (1.0,))
    err = w - dequantize_rows(q, s, w.shape)
    fa = lqer.factors(err, 4, 4, 64)
    corr = lqer.correction(*fa, 64)
    assert fa[0].shape == (64, 4) and fa[2].shape == (4, 128) and fa[1].numel() == 64 * 4 // 64
    assert float((err - corr).norm()) < 0.9 * float(err.norm())
    assert lqer.pick({"a": 1.0, "b": 3.0, "c": 2.0}, 2) == ["b", "c"] and lqer.pick({"a": 1.0}, 0) == []
    # in the artifact: the top-k tensors carry factors, and the loader adds A B back exactly
    h = _h(lqer_rank=4, lqer_top_k=2, zstd_level=3)
    model = _trained_ish(h)
    rep = save_artifact(tmp_path / "lq.ptz", model, h, TOK_SHA)
    save_artifact(tmp_path / "plain.ptz", model, _h(zstd_level=3), TOK_SHA)
    header, _ = read_artifact(tmp_path / "lq.ptz")
    with_lq = [e["name"] for e in header["tensors"] if e.get("lqer")]
    assert len(with_lq) == 2 and rep["lqer"]["tensors"] == sorted(with_lq) and rep["lqer"]["raw_bytes"] > 0
    a, _ = load_artifact(tmp_path / "lq.ptz")
    b, _ = load_artifact(tmp_path / "plain.ptz")
    sd, sa, sb = model.state_dict(), a.state_dict(), b.state_dict()
    for n in with_lq:
        assert float((sa[n] - sd[n]).norm()) < float((sb[n] - sd[n]).norm())  # closer to the float weights
    untouched = next(e["name"] for e in header["tensors"] if e["encoding"] == "q" and not e.get("lqer"))
    assert torch.equal(sa[untouched], sb[untouched])
    assert (tmp_path / "lq.ptz").stat().st_size > (tmp_path / "plain.ptz").stat().st_size  # the factors cost bytes
    with pytest.raises(GolfError, match="LQER_BITS"):
        load_config(env={"LQER_BITS": "1"})
