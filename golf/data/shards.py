"""Challenge-format token shards: 256 little-endian int32 header [20240520, 1, num_tokens, 0, ...]
followed by num_tokens little-endian uint16 token ids; every document is BOS (id 1) + its tokens."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from golf.core.utils import GolfError, atomic_path

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
BOS_ID = 1  # every document in a shard starts with BOS (id 1), as in the challenge's shards


def write_shard(path: str | os.PathLike, tokens) -> Path:
    """Write tokens (any int array, values in [0, 65535]) as a challenge shard, atomically."""
    toks = np.asarray(tokens)
    if toks.ndim != 1:
        raise ValueError(f"write_shard: tokens must be 1-D, got shape {toks.shape}")
    if toks.size >= 2**31:
        raise ValueError(f"write_shard: {toks.size} tokens do not fit one shard (max 2^31-1)")
    if toks.dtype != np.uint16:
        if toks.size and (toks.min() < 0 or toks.max() >= 2**16):
            raise ValueError("write_shard: token ids must lie in [0, 65535] for uint16 shards")
        toks = toks.astype(np.uint16)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, toks.size
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(toks.astype("<u2", copy=False).tobytes())
    return Path(path)


def read_header(path: str | os.PathLike) -> int:
    """Validate a shard's header and size; return its token count."""
    path = Path(path)
    fix = "re-create the data folder with `make data` (or re-download it with `make data-fineweb`)"
    if not path.is_file():
        raise GolfError(f"shard {path} not found; {fix}")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise GolfError(f"shard {path} is {size} bytes, shorter than its 1024-byte header (truncated?); {fix}")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if int(header[0]) != MAGIC:
        raise GolfError(f"shard {path}: magic number {int(header[0])}, expected {MAGIC}: not a challenge "
                        f"shard (or corrupt); {fix}")
    if int(header[1]) != VERSION:
        raise GolfError(f"shard {path}: format version {int(header[1])}, this code reads version {VERSION}; {fix}")
    n = int(header[2])
    expected = HEADER_BYTES + 2 * n
    if n < 0 or size != expected:
        raise GolfError(f"shard {path}: header says {n} tokens ({expected} bytes) but the file has {size} bytes "
                        f"(truncated or partly written); {fix}")
    return n


def read_shard(path: str | os.PathLike, vocab_size: int | None = None) -> np.memmap:
    """Memory-map a shard's tokens (uint16) after validating header, size and (if given) max id < vocab."""
    path = Path(path)
    n = read_header(path)
    toks = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n,))
    if vocab_size is not None and n:
        top = int(toks.max())
        if top >= vocab_size:
            raise GolfError(f"shard {path} holds token id {top} but the tokenizer has only {vocab_size} ids: the "
                            f"shards were made with another tokenizer; use the tokenizer in the shards' folder or "
                            f"re-create them with `make data`")
    return toks
