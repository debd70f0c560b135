"""make bench-quant: artifact size and speed figures, and the BPB cost of quantisation.

    python -m golf.bench.quant [--checkpoint runs/<id>/final.pt --data-path DIR] [--out bench/quant.json]

With a checkpoint: quantise/compress/decompress seconds, bits per parameter, and the BPB gap
(pre-quant float model vs the artifact's round-trip model, non-overlapping windows on the val split,
optionally a prefix with --max-tokens). Without one: the record preset's size figures only, for two
stand-ins for trained weights, because a random init compresses very differently (zero-initialised
projections are nearly free; trained weights are not):
  "init":     the model as constructed (GPT's own init),
  "gaussian": every matrix redrawn from N(0, 0.02) (a pessimistic stand-in: trained rows are
              heavier-tailed and compress better; golf/pack.py measures both shapes).
The public memory-tokens record stored 25.8M params in 14,998,539 bytes = 4.65 bits/param.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

PUBLIC_RECORD = {"params": 25_800_000, "bytes": 14_998_539, "bits_per_param": 4.65}


def _size_figures(model, h, tag: str) -> dict[str, Any]:
    from golf.artifact import read_artifact, save_artifact

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.ptz"
        rep = save_artifact(path, model, h, "0" * 64)
        t0 = time.perf_counter()
        read_artifact(path)
        rep["seconds"]["decompress"] = round(time.perf_counter() - t0, 3)
    return {"weights": tag, "bytes": rep["bytes"], "params": rep["params"], "bits_per_param": rep["bits_per_param"],
            "seconds": rep["seconds"],
            "groups": {g: {k: e.get(k) for k in ("params", "bits", "compressed_bytes", "bits_per_param")}
                       for g, e in rep["groups"].items()}}


def bench_preset(preset: str = "record") -> dict[str, Any]:
    from golf.config import load_config
    from golf.model import GPT

    h = load_config([], env={}, preset=preset)
    torch.manual_seed(0)
    model = GPT(h.model_config(), with_mtp=False)
    out = {"preset": preset, "runs": [_size_figures(model, h, "init")]}
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn_like(p) * 0.02)
    out["runs"].append(_size_figures(model, h, "gaussian"))
    return out


def bench_checkpoint(checkpoint: str, data_path: str, max_tokens: int, device: str,
                     overrides: dict[str, str] | None = None) -> dict[str, Any]:
    from golf.artifact import load_artifact, load_checkpoint, model_from_checkpoint, save_artifact
    from golf.bpb import build_luts
    from golf.data import load_data_tokenizer, load_split
    from golf.eval import evaluate_val_loss

    ck = load_checkpoint(checkpoint)
    model, h = model_from_checkpoint(ck, checkpoint)
    if overrides:  # quantisation settings to try on this checkpoint, e.g. QUANT_MIN_NUMEL=4096
        from golf.config import apply_overrides

        apply_overrides(h, overrides, "--set")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.ptz"
        rep = save_artifact(path, model, h, str(ck.get("tokenizer_sha256", "")))
        t0 = time.perf_counter()
        rt, _ = load_artifact(path, device=device)
        rep["seconds"]["decompress_and_load"] = round(time.perf_counter() - t0, 3)
    out = {"checkpoint": checkpoint, "overrides": overrides or {}, "bytes": rep["bytes"], "params": rep["params"],
           "bits_per_param": rep["bits_per_param"], "seconds": rep["seconds"], "groups": rep["groups"]}
    if data_path:
        tok = load_data_tokenizer(data_path)
        luts = build_luts(tok, torch.device(device))
        val = load_split(data_path, "val", vocab_size=h.vocab_size, max_tokens=max_tokens)
        seq = h.train_seq_len
        pre = evaluate_val_loss(model.to(device).eval(), val, luts, seq, h.eval_batch_windows, device=device)
        post = evaluate_val_loss(rt, val, luts, seq, h.eval_batch_windows, device=device)
        out.update(val_tokens=int(val.size), val_bpb_prequant=pre["val_bpb"], val_bpb_roundtrip=post["val_bpb"],
                   bpb_gap=post["val_bpb"] - pre["val_bpb"])
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="quantisation / artifact benchmark")
    ap.add_argument("--checkpoint", default="")
    ap.add_argument("--data-path", default="")
    ap.add_argument("--max-tokens", type=int, default=0)
    ap.add_argument("--preset", default="record")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override a quantisation setting for this run (repeatable), e.g. QUANT_MLP_BITS=4")
    ap.add_argument("--out", default="bench/quant.json")
    a = ap.parse_args(argv)
    from golf.utils import atomic_write_json, device_description, git_commit

    res: dict[str, Any] = {"commit": git_commit(), "device": device_description(), "public_record": PUBLIC_RECORD}
    if a.checkpoint:
        sets = dict(kv.split("=", 1) for kv in a.set)
        res["checkpoint"] = bench_checkpoint(a.checkpoint, a.data_path, a.max_tokens, a.device, sets)
    else:
        res["preset"] = bench_preset(a.preset)
        res["note"] = ("size figures only: no checkpoint given. A random init compresses differently from "
                       "trained weights; 'gaussian' is the pessimistic stand-in")
    atomic_write_json(a.out, res)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    from golf.utils import main_guard

    main_guard(main)()
