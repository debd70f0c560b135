"""The export stage: a trained model -> the submission artifact (quantise, compress, write, read
back) and the byte-budget check (artifact + code <= 16,000,000). `quantize.py` runs it on a final.pt;
`train_gpt.py` runs it in the training process (golf/train/run.py)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from golf.compress.artifact import (_PAYLEN, _PREFIX, _build_gpt, export_tensors, read_artifact, save_artifact,
                                    size_report)
from golf.compress.codesize import code_bytes
from golf.compress.gptq import collect_hessians, gptq_quantize
from golf.compress.quant import bits_for_tensor, clip_for
from golf.core.checkpoint import load_checkpoint
from golf.core.config import BYTES_CAP, from_dict
from golf.core.utils import GolfError, atomic_write_json
from golf.data.loader import TokenLoader
from golf.model.quantgrid import FP16

Calibration = Callable[[], Iterator[torch.Tensor]]


@dataclass
class ExportResult:
    artifact: Path
    size: dict[str, Any]  # what size.json holds: bytes_total, bytes_model, bytes_code, fits, groups, ...

    @property
    def bytes_total(self) -> int:
        return int(self.size["bytes_total"])

    @property
    def fits(self) -> bool:
        return bool(self.size["fits"])


def export(model: nn.Module, h: Any, tokenizer_sha256: str, out: str | Path, calibration: Calibration | None = None,
           packing: str = "int8", code: str | Path | None = None) -> ExportResult:
    """Quantise `model` (the policy in golf/compress/quant.py), compress and write `out` atomically,
    read it back, check the byte budget and write size.json beside it.

    calibration: a callable returning an iterator of training token batches [B, T] (never
    validation), for quantisers that need activations: QUANT_SCHEME=gptq collects its Hessians
    from them. Round-to-nearest (rtn) needs none and does not call it."""
    out = Path(out)
    t0 = time.perf_counter()
    quantized = gptq_tensors(model, h, calibration) if getattr(h, "quant_scheme", "rtn") == "gptq" else {}
    t_gptq = time.perf_counter() - t0
    rep = save_artifact(out, model, h, tokenizer_sha256, packing=packing, quantized=quantized)
    if quantized:
        rep["seconds"]["gptq"] = round(t_gptq, 3)
        rep["gptq_tensors"] = len(quantized)
    t0 = time.perf_counter()
    read_artifact(out)  # round-trip check + decompression time
    rep["seconds"]["decompress"] = round(time.perf_counter() - t0, 3)
    size = _budget(rep, code, _config(h))
    atomic_write_json(out.with_name("size.json"), size)
    return ExportResult(out, size)


def calibration_batches(h: Any) -> Iterator[torch.Tensor]:
    """QUANT_CALIB_BATCHES token batches [QUANT_CALIB_SEQS, TRAIN_SEQ_LEN] from the *training* split
    (never validation): the export stage's `calibration` seam. Unpacked even under DOC_PACKING=1:
    GPTQ's Hessians want full rows of real tokens, and the model input carries no targets to mark
    padding, which would otherwise enter them as pad-token activations."""
    loader = TokenLoader.from_data_path(h.data_path, h.vocab_size, seq_len=h.train_seq_len,
                                        local_batch_seqs=int(getattr(h, "quant_calib_seqs", 8)), seed=h.seed + 1)
    for _ in range(int(getattr(h, "quant_calib_batches", 8))):
        yield loader.next_batch()[0]


def gptq_tensors(model: nn.Module, h: Any, calibration: Calibration | None) -> dict[str, tuple]:
    """QUANT_SCHEME=gptq: Hessians from the calibration batches (training data), then GPTQ for every
    integer-quantised tensor that has one (the linear layers and a tied embedding); the rest (lookup
    tables such as BigramHash, memory tokens) are rounded to nearest by save_artifact."""
    if calibration is None:
        raise GolfError("QUANT_SCHEME=gptq needs calibration batches of training data; the export stage was "
                        "called without them (quantize.py: pass --data-path)")
    sd, groups = export_tensors(model)
    bits = {n: bits_for_tensor(t, groups[n], h) for n, t in sd.items()
            if t.is_floating_point() and groups[n] != "buffer"}
    want = {n for n, b in bits.items() if b < FP16}
    hessians = collect_hessians(model, calibration(), want)
    return {n: gptq_quantize(sd[n], H, bits[n], clip_for(groups[n], h)) for n, H in hessians.items() if n in sd}


def model_from_checkpoint(ck: dict[str, Any], path: str | Path = "checkpoint") -> tuple[nn.Module, Any]:
    """(GPT with the checkpoint's export weights, Hyperparameters)."""
    h = from_dict(ck["config"], source=str(path))
    model = _build_gpt(ck["model_config"])
    sd = {k: v for k, v in ck["state_dict"].items() if not k.startswith("mtp_heads.")}
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise GolfError(f"{path}: weights do not match this code's model ({str(e)[:300]}); "
                        f"quantise at the commit that trained it") from None
    return model, h


def quantize_checkpoint(
    checkpoint: str | Path, out: str | Path | None = None, packing: str = "int8", code: str | Path | None = None,
    data_path: str | Path | None = None,
) -> dict[str, Any]:
    """final.pt -> model.ptz (+ size.json beside it). Returns the size report (bytes_total etc.)."""
    checkpoint = Path(checkpoint)
    ck = load_checkpoint(checkpoint, final=True)
    model, h = model_from_checkpoint(ck, checkpoint)
    out = Path(out) if out else checkpoint.with_name("model.ptz")
    if data_path:
        h.data_path = str(data_path)
    res = export(model, h, str(ck.get("tokenizer_sha256", "")), out, packing=packing, code=code,
                 calibration=lambda: calibration_batches(h))
    res.size.update(checkpoint=str(checkpoint))
    atomic_write_json(out.with_name("size.json"), res.size)
    return res.size


def _config(h: Any) -> dict[str, Any] | None:
    return h.to_dict() if hasattr(h, "to_dict") else None


def _budget(rep: dict[str, Any], code: str | Path | None, config: dict[str, Any] | None = None) -> dict[str, Any]:
    nbytes, source = code_bytes(code, config)
    total = rep["bytes"] + nbytes
    return {
        "bytes_total": total, "bytes_model": rep["bytes"], "bytes_code": nbytes, "code_source": source,
        "cap": BYTES_CAP, "fits": total <= BYTES_CAP, "headroom": BYTES_CAP - total, "artifact": rep["path"],
        "params": rep["params"], "bits_per_param": rep["bits_per_param"],
        "payload_bytes": rep["payload_bytes"], "header_bytes": rep["header_bytes"],
        "groups": rep["groups"], "seconds": rep.get("seconds", {}), "lqer": rep.get("lqer") or {},
    }


def check_size(artifact: str | Path, code: str | Path | None = None) -> dict[str, Any]:
    """`quantize.py --check`: bytes_total = artifact + code, with the per-group breakdown."""
    artifact = Path(artifact)
    header, _ = read_artifact(artifact)
    total = artifact.stat().st_size
    hlen = _PREFIX.unpack_from(artifact.read_bytes(), 0)[2]
    rep = size_report(header, total, total - hlen - _PREFIX.size - _PAYLEN.size, hlen)
    rep["path"] = str(artifact)
    cfg = header.get("config")
    return _budget(rep, code, cfg if isinstance(cfg, dict) else None)


def format_size(size: dict[str, Any]) -> str:
    lines = [f"{'group':<10} {'params':>12} {'bits':>10} {'zstd bytes':>12} {'bits/param':>10}"]
    for g, e in sorted(size["groups"].items(), key=lambda kv: -kv[1]["params"]):
        bits = ",".join(sorted(e["bits"], key=lambda b: (not str(b).isdigit(), int(b) if str(b).isdigit() else 0)))
        lines.append(f"{g:<10} {e['params']:>12,} {bits:>10} {e.get('compressed_bytes', 0):>12,} "
                     f"{e.get('bits_per_param', 0):>10}")
    lines.append(f"bytes_model: {size['bytes_model']:,} (header {size['header_bytes']:,}, payload "
                 f"{size['payload_bytes']:,}; {size['params']:,} params, {size['bits_per_param']} bits/param)")
    lines.append(f"bytes_code: {size['bytes_code']:,} ({size['code_source']})")
    verdict = "OK" if size["fits"] else "OVER THE CAP"
    lines.append(f"bytes_total: {size['bytes_total']:,} / cap {size['cap']:,} -> {verdict} "
                 f"(headroom {size['headroom']:,})")
    return "\n".join(lines)
