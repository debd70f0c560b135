"""The submission artifact: one file holding the quantised model, readable without the training code.

Layout (all integers little-endian):
    8 bytes   MAGIC b"GOLFQZ\\r\\n"
    u16       FORMAT_VERSION
    u32       header length H
    H bytes   zstd-compressed JSON header: format_version, model_config (h.model_config()),
              tokenizer_sha256, config (the full run config, for provenance), commit, tensor
              manifest [{name, shape, dtype, group, encoding, bits, packing, offset, nbytes,
              scale_offset, scale_nbytes, alias_of}], payload_sha256 (of the compressed payload),
              raw_sha256 / raw_bytes (of the decompressed payload), compressor, frames [{group,
              raw_bytes, compressed_bytes}] (zstd_bytes in artifacts written before COMPRESSOR)
    u64       payload length P
    P bytes   the payload: one frame per quant group, back to back, each compressed with the header's
              `compressor` (zstd at ZSTD_LEVEL by default; brotli, lzma or lrzip: COMPRESSOR,
              golf/compress/codecs.py); the frames decompress to the tensors' blobs back to back, and
              the manifest's offsets refer to that decompressed payload.

One frame per group makes the per-group byte attribution of `make check-size` exact (no second
compression pass) and lets the groups compress in parallel; the cost is that zstd cannot match
across groups, which trained weights almost never would.

Encodings: "q" = per-row integers (golf.compress.pack layout; with QUANT_LAYOUT=sorted|sorted_t the
rows in an L1 nearest-neighbour order, stored by row or by column, and the order as a "perm" blob) + fp16 row scales; "fp16" = raw fp16; "raw" =
the tensor's own dtype (non-float buffers); "alias" = same tensor as `alias_of` (tied embeddings
are stored once). Within a group's frame, blobs are ordered by kind (integers by bit width, then
scales, then fp16) so each zstd block sees one value distribution.

The header is zstd-compressed too: the manifest and provenance config are ~20 KB of JSON that
would otherwise count against the 16,000,000-byte cap.
"""
from __future__ import annotations

import io
import json
import os
import struct
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from golf.compress import codecs, lqer
from golf.compress import pack as packing_mod
from golf.compress.quant import bits_for_tensor, clip_for
from golf.core.config import GPTConfig
from golf.core.utils import GolfError, atomic_path, git_commit, sha256_bytes
from golf.model.gpt import GPT
from golf.model.mixer import quant_group_of
from golf.model.quantgrid import FP16, dequantize_rows, quantize_rows

MAGIC = b"GOLFQZ\r\n"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sHI")  # magic, version, header length
_PAYLEN = struct.Struct("<Q")

_DTYPES = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def _to_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: store its bits
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def _from_bytes(b: bytes, dtype_name: str, shape: list[int]) -> torch.Tensor:
    dt = _DTYPES[dtype_name]
    if dt == torch.bfloat16:
        return torch.from_numpy(np.frombuffer(b, dtype=np.int16).copy()).view(torch.bfloat16).reshape(shape)
    np_dt = torch.empty(0, dtype=dt).numpy().dtype
    return torch.from_numpy(np.frombuffer(b, dtype=np_dt).copy()).reshape(shape)


def export_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The weights that go into the artifact and each one's quant group.

    Uses `model.export_state_dict()` when the model has it (drops MTP heads, may return EMA weights),
    else `state_dict()`. Groups come from the parameters' tags (golf.model.mixer); buffers -> "buffer"."""
    sd = model.export_state_dict() if hasattr(model, "export_state_dict") else model.state_dict()
    params = dict(model.named_parameters(remove_duplicate=False))
    groups = {name: (quant_group_of(params[name]) if name in params else "buffer") for name in sd}
    return sd, groups


def _zstd(level: int):
    import zstandard

    return zstandard.ZstdCompressor(level=level)


def save_artifact(
    path: str | Path,
    model: nn.Module,
    h: Any,
    tokenizer_sha256: str,
    packing: str = "int8",
    quantized: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Quantise `model` with the policy in golf.compress.quant and write the artifact atomically.

    packing: "int8" | "bits" | "auto" (measure both per tensor with zstd, keep the smaller).
    quantized: {tensor name: (int8 q [rows, cols], fp16 scales [rows])} already computed by another
    scheme (GPTQ, golf/compress/gptq.py) at the policy's widths; other tensors are rounded here.
    Returns the size report: bytes, payload/header bytes, params, bits_per_param, groups, seconds."""
    if packing not in ("int8", "bits", "auto"):
        raise GolfError(f"packing={packing!r}: use int8, bits or auto")
    get = (lambda k, d: h.get(k, d)) if isinstance(h, dict) else (lambda k, d: getattr(h, k, d))  # noqa: E731
    level, compressor, layout = int(get("zstd_level", 22)), str(get("compressor", "zstd")), str(get("quant_layout", "rows"))
    lq_rank, lq_bits, lq_top, lq_group = (int(get("lqer_rank", 0)), int(get("lqer_bits", 4)), int(get("lqer_top_k", 3)),
                                          int(get("lqer_group", 64)))
    errors: dict[str, float] = {}  # quantisation error norms, for LQER's choice
    residuals: dict[str, tuple[torch.Tensor, dict]] = {}
    codecs.check_compressor(compressor)
    codecs.check_layout(layout)
    t0 = time.perf_counter()
    sd, groups = export_tensors(model)
    quantized = quantized or {}

    # 1. encode every tensor into named blobs (kind decides the payload order)
    entries: list[dict[str, Any]] = []
    blobs: list[tuple[tuple, bytes, dict, str]] = []  # (sort key, bytes, entry, field)
    stored: dict[tuple, list[tuple[str, torch.Tensor, int]]] = {}
    for name, t in sd.items():
        ptr = t.data_ptr()
        t = t.detach().cpu()
        e: dict[str, Any] = {"name": name, "shape": list(t.shape), "dtype": _dtype_name(t.dtype), "group": groups[name]}
        # tied weights (the same tensor under two names, or an equal copy in the same group) are
        # stored once; the loader points both names at it
        key = (tuple(t.shape), t.dtype, groups[name])
        head = t.reshape(-1)[:256]  # cheap pre-check before a full comparison
        twin = next((x for x in stored.get(key, []) if torch.equal(x[1].reshape(-1)[:256], head)
                     and torch.equal(x[1], t)), None) if t.numel() >= 1024 else None
        if twin is not None:
            # tied = literally the same tensor (counted once); else an equal copy (e.g. zero init)
            e.update(encoding="alias", alias_of=twin[0], bits=0, tied=twin[2] == ptr)
            entries.append(e)
            continue
        stored.setdefault(key, []).append((name, t, ptr))
        if not t.is_floating_point():
            e.update(encoding="raw", bits=t.element_size() * 8)
            blobs.append(((groups[name], 3, name), _to_bytes(t), e, ""))
        else:
            bits = bits_for_tensor(t, groups[name], h) if groups[name] != "buffer" else FP16
            if bits >= FP16:
                e.update(encoding="fp16", bits=16)
                blobs.append(((groups[name], 2, name), _to_bytes(t.to(torch.float16)), e, ""))
            else:
                q, s = quantized[name] if name in quantized else quantize_rows(t, bits, clip_for(groups[name], h))
                qn = q.numpy()
                how = packing
                if how == "auto":
                    how, _ = packing_mod.best_packing(qn, bits, level)
                e.update(encoding="q", bits=bits, packing=how, rows=int(q.shape[0]))
                laid, order = codecs.arrange(qn.reshape(q.shape[0], -1), layout)
                blobs.append(((groups[name], 0, bits, how, name), packing_mod.pack(laid, bits, how), e, ""))
                blobs.append(((groups[name], 1, name), _to_bytes(s), e, "scale_"))
                if order is not None:
                    e["layout"] = layout
                    blobs.append(((groups[name], 4, name), order.astype(codecs.perm_dtype(len(order))).tobytes(), e, "perm_"))
                if lq_rank > 0 and t.ndim == 2:
                    err = t.to(torch.float32) - dequantize_rows(q, s, t.shape)
                    errors[name], residuals[name] = float(err.norm()), (err, e)
        entries.append(e)
    for name in lqer.pick(errors, lq_top):  # LQER: the low-rank correction of the largest errors
        err, e = residuals[name]
        qa, sa, qb, sb = lqer.factors(err, lq_rank, lq_bits, lq_group)
        e["lqer"] = {"rank": int(qa.shape[1]), "bits": lq_bits, "group": lq_group, "a_shape": list(qa.shape),
                     "b_shape": list(qb.shape)}
        g = groups[name]
        for field, blob in (("lqa_", qa.numpy().tobytes()), ("lqas_", _to_bytes(sa)), ("lqb_", qb.numpy().tobytes()),
                            ("lqbs_", _to_bytes(sb))):
            blobs.append(((g, 5, name, field), blob, e["lqer"], field))
    t_quant = time.perf_counter() - t0

    # 2. lay the blobs out, one zstd frame per group (compressed in parallel: zstd releases the GIL)
    raw = io.BytesIO()
    sections: list[tuple[str, int, int]] = []  # (group, start, end) in the raw payload
    for key, b, e, field in sorted(blobs, key=lambda x: x[0]):
        if not sections or sections[-1][0] != key[0]:
            sections.append((key[0], raw.tell(), raw.tell()))
        e[field + "offset"] = raw.tell()
        e[field + "nbytes"] = len(b)
        raw.write(b)
        sections[-1] = (key[0], sections[-1][1], raw.tell())
    raw_bytes = raw.getvalue()
    t1 = time.perf_counter()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(len(sections), os.cpu_count() or 1))) as ex:
        frames = list(ex.map(lambda sec: codecs.compress(raw_bytes[sec[1]:sec[2]], compressor, level), sections))
    payload = b"".join(frames)
    t_compress = time.perf_counter() - t1
    frame_info = [{"group": g, "raw_bytes": end - start, "compressed_bytes": len(f)}
                  for (g, start, end), f in zip(sections, frames)]

    cfg = h.to_dict() if hasattr(h, "to_dict") else dict(h)
    model_config = asdict(h.model_config()) if hasattr(h, "model_config") else dict(cfg.get("model_config", {}))
    header = {
        "format_version": FORMAT_VERSION, "model_config": model_config, "tokenizer_sha256": tokenizer_sha256,
        "config": cfg, "commit": git_commit(), "zstd_level": level, "compressor": compressor, "tensors": entries,
        "raw_bytes": len(raw_bytes), "raw_sha256": sha256_bytes(raw_bytes), "payload_sha256": sha256_bytes(payload),
        "frames": frame_info,
    }
    header_z = _zstd(level).compress(json.dumps(header, separators=(",", ":"), default=str).encode())
    data = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_z)) + header_z + _PAYLEN.pack(len(payload)) + payload
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)

    report = size_report(header, len(data), len(payload), len(header_z))
    report.update(path=str(path), seconds={"quantize": round(t_quant, 3), "compress": round(t_compress, 3)})
    return report


def _frame_bytes(frame: dict) -> int:
    return int(frame["compressed_bytes"] if "compressed_bytes" in frame else frame["zstd_bytes"])  # zstd_bytes: older


def size_report(header: dict, total: int, payload_bytes: int, header_bytes: int) -> dict[str, Any]:
    """Per-group attribution: params, bit widths, and the group's own zstd frame size (exact: the
    payload is one frame per group). Tensors stored as an equal copy of another still count as
    parameters (they are model parameters); the same tensor under two names counts once."""
    groups: dict[str, dict[str, Any]] = {}
    params = 0
    for e in header["tensors"]:
        if e["encoding"] == "alias" and e.get("tied", True):
            continue
        n = int(np.prod(e["shape"])) if e["shape"] else 1
        g = groups.setdefault(e["group"], {"params": 0, "tensors": 0, "bits": {}, "raw_bytes": 0, "compressed_bytes": 0})
        g["params"] += n
        g["tensors"] += 1
        bits = e["bits"] if e["encoding"] != "alias" else "alias"
        g["bits"][str(bits)] = g["bits"].get(str(bits), 0) + n
        if e["group"] != "buffer":
            params += n
    for f in header.get("frames", []):
        g = groups.setdefault(f["group"], {"params": 0, "tensors": 0, "bits": {}, "raw_bytes": 0, "compressed_bytes": 0})
        g["raw_bytes"] += f["raw_bytes"]
        g["compressed_bytes"] += _frame_bytes(f)
    for g in groups.values():
        g["bits_per_param"] = round(8 * g["compressed_bytes"] / max(g["params"], 1), 3)
    lq = {e["name"]: sum(e["lqer"].get(f + "nbytes", 0) for f in ("lqa_", "lqas_", "lqb_", "lqbs_"))
          for e in header["tensors"] if e.get("lqer")}
    return {
        "bytes": total, "payload_bytes": payload_bytes, "header_bytes": header_bytes, "params": params,
        "bits_per_param": round(8 * total / max(params, 1), 4), "groups": groups,
        "lqer": {"tensors": sorted(lq), "raw_bytes": sum(lq.values())} if lq else {},
    }


# ---------------------------------------------------------------------------------------------
# reading


def read_artifact(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """Validate and decode the file -> (header, decompressed payload). Any damage -> GolfError."""
    path = Path(path)
    fix = f"re-create it with `python quantize.py --checkpoint runs/<id>/final.pt --out {path}`"
    if not path.is_file():
        raise GolfError(f"{path}: no such artifact; {fix}")
    data = path.read_bytes()
    if len(data) < _PREFIX.size or data[:8] != MAGIC:
        raise GolfError(f"{path}: not a golf artifact (bad magic); {fix}")
    _, version, hlen = _PREFIX.unpack_from(data, 0)
    if version != FORMAT_VERSION:
        raise GolfError(
            f"{path}: artifact format version {version}, this code reads version {FORMAT_VERSION}; "
            f"check out the commit that wrote it (see its record) or {fix}"
        )
    import zstandard

    pos = _PREFIX.size
    if len(data) < pos + hlen + _PAYLEN.size:
        raise GolfError(f"{path}: truncated artifact ({len(data)} bytes, header cut off); {fix}")
    try:
        header = json.loads(zstandard.ZstdDecompressor().decompress(data[pos:pos + hlen]))
    except (zstandard.ZstdError, ValueError) as e:
        raise GolfError(f"{path}: corrupt artifact header ({e}); {fix}") from None
    pos += hlen
    (plen,) = _PAYLEN.unpack_from(data, pos)
    pos += _PAYLEN.size
    payload = data[pos:]
    if len(payload) != plen:
        raise GolfError(f"{path}: truncated artifact (payload {len(payload)} of {plen} bytes); {fix}")
    if sha256_bytes(payload) != header.get("payload_sha256"):
        raise GolfError(f"{path}: corrupt artifact (payload SHA-256 mismatch); {fix}")
    compressor = header.get("compressor", "zstd")  # artifacts before COMPRESSOR existed are zstd
    try:
        parts, pos = [], 0
        for f in header["frames"]:
            n = _frame_bytes(f)
            parts.append(codecs.decompress(payload[pos:pos + n], compressor, f["raw_bytes"]))
            pos += n
        raw = b"".join(parts)
    except (GolfError, KeyError, TypeError) as e:
        raise GolfError(f"{path}: corrupt artifact payload ({e}); {fix}") from None
    if len(raw) != header["raw_bytes"] or sha256_bytes(raw) != header["raw_sha256"]:
        raise GolfError(f"{path}: corrupt artifact (decompressed payload SHA-256 mismatch); {fix}")
    return header, raw


def decode_tensors(header: dict[str, Any], raw: bytes) -> dict[str, torch.Tensor]:
    """Dequantised state dict (fp32 for quantised/fp16 tensors, own dtype for raw ones)."""
    out: dict[str, torch.Tensor] = {}
    for e in header["tensors"]:
        shape, enc = e["shape"], e["encoding"]
        if enc == "alias":
            continue
        b = raw[e["offset"]:e["offset"] + e["nbytes"]]
        if enc == "q":
            n = int(np.prod(shape))
            stored = packing_mod.unpack(b, e["bits"], n, e["packing"])
            order = None
            if e.get("layout", "rows") != "rows":
                pb = raw[e["perm_offset"]:e["perm_offset"] + e["perm_nbytes"]]
                order = np.frombuffer(pb, dtype=codecs.perm_dtype(e["rows"])).astype(np.int64)
            q = torch.from_numpy(codecs.restore(stored, e.get("layout", "rows"), order, e["rows"]).copy())
            sb = raw[e["scale_offset"]:e["scale_offset"] + e["scale_nbytes"]]
            s = _from_bytes(sb, "float16", [e["rows"]])
            out[e["name"]] = dequantize_rows(q, s, shape)
            lq = e.get("lqer")
            if lq:
                blob = lambda f, dt, shp: _from_bytes(raw[lq[f + "offset"]:lq[f + "offset"] + lq[f + "nbytes"]], dt, shp)  # noqa: E731
                qa, qb = blob("lqa_", "int8", lq["a_shape"]), blob("lqb_", "int8", lq["b_shape"])
                sa, sb2 = blob("lqas_", "float16", [lq["lqas_nbytes"] // 2]), blob("lqbs_", "float16", [lq["lqbs_nbytes"] // 2])
                out[e["name"]] = out[e["name"]] + lqer.correction(qa, sa, qb, sb2, lq["group"]).reshape(shape)
        elif enc == "fp16":
            out[e["name"]] = _from_bytes(b, "float16", shape).to(torch.float32)
        elif enc == "raw":
            out[e["name"]] = _from_bytes(b, e["dtype"], shape)
        else:
            raise GolfError(f"artifact: unknown tensor encoding {enc!r} for {e['name']}; regenerate the artifact")
    for e in header["tensors"]:
        if e["encoding"] == "alias":
            out[e["name"]] = out[e["alias_of"]]
    return out


def _build_gpt(model_config: dict[str, Any]) -> nn.Module:
    # training-only heads are never rebuilt for eval
    return GPT(GPTConfig.from_dict(model_config, "artifact model_config"), with_mtp=False)


def load_artifact(
    path: str | Path, device: str | torch.device = "cpu", build_model: Callable[[dict], nn.Module] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model (eval mode, on `device`) from an artifact. Returns (model, meta) where meta
    has model_config, tokenizer_sha256, config, commit, tensors, bytes. `build_model(model_config)`
    defaults to golf.model.gpt.GPT without MTP heads."""
    header, raw = read_artifact(path)
    sd = decode_tensors(header, raw)
    model = (build_model or _build_gpt)(header["model_config"])
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise GolfError(
            f"{path}: artifact does not match this code's model (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}); evaluate it at the commit that wrote it ({header.get('commit')}) or re-quantise"
        )
    sd = {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True)
    model.to(device).eval()
    meta = {k: v for k, v in header.items() if k not in ("tensors",)}
    meta.update(tensors=header["tensors"], bytes=Path(path).stat().st_size, path=str(path))
    return model, meta
