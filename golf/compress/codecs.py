"""Serialisers for the artifact's payload: the byte compressor of each group's frame, and the order
the integers are laid out in before it.

Compressors (COMPRESSOR, the record scripts' name): "zstd" (level ZSTD_LEVEL, golf's default),
"brotli" (quality 11, window 2**24; the April records' choice, PR #1586), "lzma" (preset 9 extreme,
standard library), "lrzip" (ZPAQ via the `lrzip` binary; only where it is installed).

Layouts (QUANT_LAYOUT) of a quantised matrix's integers:
  rows      row after row, as quantised (golf's default);
  sorted    rows reordered by a greedy L1 nearest-neighbour walk (start at row 0, go to the closest
            unused row), so similar rows sit together for the match finder; the permutation is stored;
  sorted_t  the same order, stored column after column (the per-group serialiser of the 1.0611
            record: after the sort, neighbouring bytes of a column are the nearest rows' values).
"""
from __future__ import annotations

import lzma
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from golf.core.utils import GolfError

COMPRESSORS = ("zstd", "brotli", "lzma", "lrzip")
LAYOUTS = ("rows", "sorted", "sorted_t")


def check_compressor(name: str) -> None:
    """Fail before any work if the compressor is unknown or not installed here."""
    if name not in COMPRESSORS:
        raise GolfError(f"COMPRESSOR={name!r}: use one of {', '.join(COMPRESSORS)}")
    if name == "brotli":
        try:
            import brotli  # noqa: F401
        except ImportError:
            raise GolfError("COMPRESSOR=brotli needs the brotli package: pip install brotli "
                            "(or COMPRESSOR=zstd / lzma)") from None
    if name == "lrzip" and shutil.which("lrzip") is None:
        raise GolfError("COMPRESSOR=lrzip needs the lrzip program, which is not installed here "
                        "(apt-get install lrzip), or use COMPRESSOR=brotli / zstd / lzma")


def _lrzip(data: bytes, decompress: bool) -> bytes:
    with tempfile.TemporaryDirectory(prefix="golf-lrzip-") as tmp:
        src = Path(tmp) / ("in.lrz" if decompress else "in")
        src.write_bytes(data)
        out = Path(tmp) / "out"
        args = ["lrzip", "-q", "-f", "-o", str(out)] + (["-d"] if decompress else ["-z", "-L", "9"]) + [str(src)]
        r = subprocess.run(args, capture_output=True, timeout=3600)
        if r.returncode != 0:
            raise GolfError(f"lrzip failed ({r.stderr.decode(errors='replace')[:300]})")
        return out.read_bytes()


def compress(data: bytes, name: str, zstd_level: int = 22) -> bytes:
    if name == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=zstd_level).compress(data)
    if name == "brotli":
        import brotli

        return brotli.compress(data, quality=11, lgwin=24)
    if name == "lzma":
        return lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)
    if name == "lrzip":
        return _lrzip(data, decompress=False)
    raise GolfError(f"compressor {name!r} is not one of {', '.join(COMPRESSORS)}")


def decompress(blob: bytes, name: str, size: int) -> bytes:
    """Decompress one frame of known raw size (any failure: GolfError, the caller names the file)."""
    try:
        if name == "zstd":
            import zstandard

            return zstandard.ZstdDecompressor().decompress(blob, max_output_size=size)
        if name == "brotli":
            import brotli

            return brotli.decompress(blob)
        if name == "lzma":
            return lzma.decompress(blob)
        if name == "lrzip":
            check_compressor("lrzip")
            return _lrzip(blob, decompress=True)
    except GolfError:
        raise
    except Exception as e:  # noqa: BLE001 - each library raises its own error types
        raise GolfError(f"{name} could not decompress a frame ({type(e).__name__}: {e})") from None
    raise GolfError(f"unknown compressor {name!r} in the artifact header; it was written by a newer golf")


def l1_order(q: np.ndarray) -> np.ndarray:
    """Greedy nearest-neighbour walk over the rows of q by L1 distance (start at row 0; ties: the
    lowest index). O(rows^2 x cols): 2048 x 512 takes about a second."""
    rows = q.shape[0]
    x = q.reshape(rows, -1).astype(np.int16)
    used = np.zeros(rows, dtype=bool)
    order = np.empty(rows, dtype=np.int64)
    cur = 0
    for i in range(rows):
        order[i] = cur
        used[cur] = True
        if i == rows - 1:
            break
        left = np.flatnonzero(~used)
        d = np.abs(x[left] - x[cur]).sum(axis=1)
        cur = int(left[int(np.argmin(d))])
    return order


def l1_order_reference(q: np.ndarray) -> np.ndarray:
    """The same walk as plain loops (tests/compress/test_codecs.py checks they agree)."""
    rows = q.shape[0]
    x = q.reshape(rows, -1).astype(int).tolist()
    order, used, cur = [0], {0}, 0
    while len(order) < rows:
        best = None
        for r in range(rows):
            if r not in used:
                d = sum(abs(a - b) for a, b in zip(x[r], x[cur]))
                if best is None or d < best[0]:
                    best = (d, r)
        cur = best[1]
        order.append(cur)
        used.add(cur)
    return np.asarray(order, dtype=np.int64)


def arrange(q: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray | None]:
    """q [rows, cols] -> (the array to store, the row order or None)."""
    if layout == "rows":
        return q, None
    order = l1_order(q)
    out = q[order]
    return (np.ascontiguousarray(out.T) if layout == "sorted_t" else out), order


def restore(stored: np.ndarray, layout: str, order: np.ndarray | None, rows: int) -> np.ndarray:
    """Inverse of arrange: `stored` is the flat integers as written."""
    if layout == "rows":
        return stored.reshape(rows, -1)
    x = stored.reshape(-1, rows).T if layout == "sorted_t" else stored.reshape(rows, -1)
    out = np.empty_like(x)
    out[order] = x
    return out


def perm_dtype(rows: int) -> np.dtype:
    return np.dtype(np.uint16) if rows <= 65536 else np.dtype(np.uint32)


def check_layout(name: str) -> None:
    if name not in LAYOUTS:
        raise GolfError(f"QUANT_LAYOUT={name!r}: use one of {', '.join(LAYOUTS)}")

