"""golf/compress/artifact.py: save -> load gives the dequantised model's logits; damage -> clear errors."""
import struct
from dataclasses import asdict

import pytest
import torch
from torch import nn

from golf.compress.artifact import FORMAT_VERSION, MAGIC, load_artifact, read_artifact, save_artifact
from golf.compress.quant import estimate_artifact_bytes, quantize_model_
from golf.core.config import GPTConfig, load_config
from golf.core.utils import GolfError, repo_root
from golf.model.gpt import GPT
from golf.model.mixer import tag

TOK_SHA = "ab" * 32


def _h(**kw):
    base = dict(num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1, rope_dims=16, mlp_mult=3,
                num_memory_tokens=4, bigram_vocab_size=512, bigram_dim=32, mtp_num_heads=1,
                train_seq_len=32, eval_stride=32, quant_min_numel=1024, zstd_level=9)
    base.update(kw)
    return load_config([f"--{k}={v}" for k, v in base.items()], env={}, preset="tiny")


def _trained_ish(h, seed=0):
    torch.manual_seed(seed)
    model = GPT(h.model_config())
    with torch.no_grad():  # move off the (partly zero) init so every tensor carries information
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    h = _h()
    model = _trained_ish(h)
    path = tmp_path_factory.mktemp("art") / "model.ptz"
    report = save_artifact(path, model, h, TOK_SHA)
    return h, model, path, report


def test_round_trip_logits_equal_dequantised_model(saved):
    h, model, path, report = saved
    ref = GPT(h.model_config())  # (not deepcopy: it drops the parameters' quant tags)
    ref.load_state_dict(model.state_dict())
    ref.eval()
    quantize_model_(ref, h)
    loaded, meta = load_artifact(path)
    assert not loaded.training and len(loaded.mtp_heads) == 0  # MTP heads never come back
    assert meta["tokenizer_sha256"] == TOK_SHA and meta["model_config"] == asdict(h.model_config())
    assert meta["config"]["quant_mlp_bits"] == 5 and meta["bytes"] == path.stat().st_size == report["bytes"]
    idx = torch.randint(0, h.vocab_size, (2, 32))
    idx[:, 0] = 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx), ref(idx), rtol=0, atol=0)
        # and the quantisation really happened: the float model differs
        assert not torch.allclose(model.eval()(idx), ref(idx))


def test_clip_ratios_setting_reaches_the_artifact(tmp_path):
    """QUANT_CLIP_RATIOS=1.0 (plain abs-max) writes other integers than the default search, and the
    artifact still loads exactly the model quantize_model_ predicts with that setting."""
    h = _h(quant_clip_ratios="1.0")
    model = _trained_ish(h, seed=1)
    with torch.no_grad():
        model.blocks[0].mlp.fc.weight[0, 0] = 3.0  # an outlier the default search would clip
    save_artifact(tmp_path / "a.ptz", model, h, TOK_SHA)
    loaded, meta = load_artifact(tmp_path / "a.ptz")
    assert meta["config"]["quant_clip_ratios"] == "1.0"
    ref, searched = GPT(h.model_config()), GPT(h.model_config())
    ref.load_state_dict(model.state_dict())
    searched.load_state_dict(model.state_dict())
    quantize_model_(ref, h)
    quantize_model_(searched, _h())
    w = loaded.blocks[0].mlp.fc.weight
    assert torch.equal(w, ref.blocks[0].mlp.fc.weight) and not torch.equal(w, searched.blocks[0].mlp.fc.weight)
    assert w[0, 0].item() == pytest.approx(3.0, rel=1e-3)  # abs-max keeps the outlier


def test_manifest_bits_follow_policy_and_mtp_is_dropped(saved):
    h, model, path, report = saved
    header, _ = read_artifact(path)
    by = {e["name"]: e for e in header["tensors"]}
    assert not any(n.startswith("mtp") for n in by)
    assert by["blocks.0.mlp.fc.weight"]["bits"] == 5 and by["blocks.0.mlp.fc.weight"]["encoding"] == "q"
    assert by["blocks.0.mixer.c_q.weight"]["bits"] == 6 and by["tok_emb.weight"]["bits"] == 8
    assert by["blocks.0.attn_scale"]["encoding"] == "fp16"
    g = report["groups"]
    assert {"mlp", "attn", "embed", "control"} <= set(g)
    assert g["mlp"]["bits"] == {"5": g["mlp"]["params"]} and g["mlp"]["compressed_bytes"] > 0
    # one zstd frame per group: the attribution is exact
    assert sum(e["compressed_bytes"] for e in g.values()) == report["payload_bytes"]
    assert report["bytes"] == report["payload_bytes"] + report["header_bytes"] + 8 + 2 + 4 + 8
    assert report["params"] == sum(p.numel() for n, p in model.named_parameters() if not n.startswith("mtp"))


def test_packings_give_identical_weights(tmp_path, saved):
    h, model, path, _ = saved
    out = {}
    for packing in ("bits", "auto"):
        p = tmp_path / f"{packing}.ptz"
        save_artifact(p, model, h, TOK_SHA, packing=packing)
        out[packing] = load_artifact(p)[0].state_dict()
    base = load_artifact(path)[0].state_dict()
    for k, v in base.items():
        assert torch.equal(v, out["bits"][k]) and torch.equal(v, out["auto"][k])


def _corrupt(src, dst, fn):
    data = bytearray(src.read_bytes())
    dst.write_bytes(bytes(fn(data)))
    return dst


def test_damaged_artifacts_raise_clear_errors(tmp_path, saved):
    _, _, path, _ = saved

    def flip_last(d):
        d[-10] ^= 0xFF
        return d

    def bump_version(d):
        d[8:10] = struct.pack("<H", FORMAT_VERSION + 1)
        return d

    cases = {
        "truncated": lambda d: d[: len(d) - 100],
        "SHA-256": flip_last,
        "version": bump_version,
        "magic": lambda d: b"PK\x03\x04" + d[4:],
        "header": lambda d: d[:20] + bytes(len(d) - 20),
    }
    for word, fn in cases.items():
        bad = _corrupt(path, tmp_path / f"{word}.ptz", fn)
        with pytest.raises(GolfError, match=word) as e:
            load_artifact(bad)
        assert str(bad) in str(e.value) and "quantize.py" in str(e.value)
    with pytest.raises(GolfError, match="no such artifact"):
        load_artifact(tmp_path / "missing.ptz")
    assert path.read_bytes()[:8] == MAGIC


def test_tied_weights_stored_once(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(512, 64)
            self.head = nn.Linear(64, 512, bias=False)
            self.head.weight = self.emb.weight
            tag(self.emb.weight, quant="embed")

    h = _h()
    m = Tied()
    save_artifact(tmp_path / "t.ptz", m, h, TOK_SHA)
    header, _ = read_artifact(tmp_path / "t.ptz")
    enc = {e["name"]: e["encoding"] for e in header["tensors"]}
    assert enc == {"emb.weight": "q", "head.weight": "alias"}
    loaded, _ = load_artifact(tmp_path / "t.ptz", build_model=lambda cfg: Tied())
    assert torch.equal(loaded.head.weight, loaded.emb.weight)

    class Copies(nn.Module):  # two distinct parameters with equal values (e.g. zero-initialised)
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.zeros(64, 64))
            self.b = nn.Parameter(torch.zeros(64, 64))

    rep = save_artifact(tmp_path / "c.ptz", Copies(), h, TOK_SHA)
    header, _ = read_artifact(tmp_path / "c.ptz")
    assert [(e["encoding"], e.get("tied")) for e in header["tensors"]] == [("q", None), ("alias", False)]
    assert rep["params"] == 2 * 64 * 64  # both are real parameters
    loaded, _ = load_artifact(tmp_path / "c.ptz", build_model=lambda cfg: Copies())
    assert loaded.a.data_ptr() != loaded.b.data_ptr()


def test_mismatched_model_is_a_clear_error(tmp_path, saved):
    _, _, path, _ = saved
    with pytest.raises(GolfError, match="does not match"):
        load_artifact(path, build_model=lambda cfg: GPT(GPTConfig.from_dict({**cfg, "num_layers": 3}), with_mtp=False))


def test_preflight_estimate_is_close_to_real_size(tmp_path):
    h = _h(model_dim=128, num_heads=4, num_kv_heads=2, quant_min_numel=4096, zstd_level=22)
    model = GPT(h.model_config())
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn_like(p) * 0.02)
    real = save_artifact(tmp_path / "m.ptz", model, h, TOK_SHA)["bytes"]
    est = estimate_artifact_bytes(model, h, code_bytes=0)["total"]
    assert 0.8 * real < est < 1.25 * real, (est, real)


def _final_pt(tmp_path, h, model):
    path = tmp_path / "run" / "final.pt"
    path.parent.mkdir(parents=True)
    torch.save({"config": h.to_dict(), "model_config": asdict(h.model_config()), "state_dict": model.state_dict(),
                "tokenizer_sha256": TOK_SHA, "data_path": "x", "metrics": {}}, path)
    return path


def test_quantize_cli_writes_artifact_and_size_json_and_enforces_cap(tmp_path, monkeypatch, capsys):
    import json
    import subprocess
    import sys

    h = _h()
    model = _trained_ish(h, seed=1)  # has an MTP head: quantize.py must drop it
    ck = _final_pt(tmp_path, h, model)
    code = tmp_path / "train_gpt.py"
    code.write_bytes(b"x" * 1234)
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    q = [sys.executable, str(repo_root() / "quantize.py")]
    p = subprocess.run(q + ["--checkpoint", str(ck), "--code", str(code)], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    art = ck.with_name("model.ptz")
    size = json.loads(ck.with_name("size.json").read_text())
    assert size["bytes_model"] == art.stat().st_size and size["bytes_code"] == 1234
    assert size["bytes_total"] == size["bytes_model"] + 1234 and size["fits"]
    assert size["groups"]["mlp"]["compressed_bytes"] > 0 and "decompress" in size["seconds"]
    assert "bytes_total:" in p.stdout and "mlp" in p.stdout
    loaded, meta = load_artifact(art)
    assert meta["tokenizer_sha256"] == TOK_SHA

    # the other modes in-process (a subprocess costs seconds of torch import)
    import runpy

    def run_cli(*args):
        monkeypatch.setattr(sys, "argv", ["quantize.py", *args])
        try:
            runpy.run_path(str(repo_root() / "quantize.py"), run_name="__main__")
        except SystemExit as e:
            return e.code
        return 0

    assert run_cli("--check", str(art), "--code", str(code)) == 0
    out = capsys.readouterr()
    assert f"bytes_total: {size['bytes_total']:,}" in out.out, out
    with open(code, "wb") as f:  # code alone at the cap: the total is over it
        f.truncate(16_000_000)
    assert run_cli("--check", str(art), "--code", str(code)) == 1
    assert "over the 16,000,000-byte cap" in capsys.readouterr().err
    assert run_cli("--check", str(tmp_path / "nope.ptz")) == 2
    assert "no such artifact" in capsys.readouterr().err
    assert run_cli("--check", "") == 2  # make check-size without ARTIFACT=
    assert "ARTIFACT=" in capsys.readouterr().err


def test_untrained_model_with_equal_copies_quantises_and_prints(tmp_path):
    """An ITERATIONS=0 run: zero-initialised projections are equal copies, stored as aliases; the
    size table prints them (it once failed on int('alias') after model.ptz was written)."""
    from golf.compress.export import format_size, quantize_checkpoint

    h = _h()
    torch.manual_seed(0)
    ck = _final_pt(tmp_path, h, GPT(h.model_config()))
    size = quantize_checkpoint(ck, code=__file__)
    assert any("alias" in e["bits"] for e in size["groups"].values())
    assert "bytes_total:" in format_size(size)
