"""Data folders made straight from token arrays (no corpus): golf's manifest layout, as `make data`
writes it, for tests that need exact tokens in a split."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from golf.core.utils import atomic_write_json
from golf.data.prepare import ShardWriter
from golf.data.tokenizer import save_tokenizer


def token_folder(d: Path, tok, shard_tokens: int = 1 << 20, tokenizer_sha: str | None = None,
                 vocab_size: int | None = None, **splits) -> Path:
    """A data folder at d with the given splits (split=token array or list of arrays, one shard each)."""
    d.mkdir(parents=True, exist_ok=True)
    tok_file = save_tokenizer(tok, d).name
    entries = {}
    for split, arrays in splits.items():
        w = ShardWriter(d, split, shard_tokens)
        for a in arrays if isinstance(arrays, list) and arrays and isinstance(arrays[0], np.ndarray) else [arrays]:
            w.add(np.asarray(a, dtype=np.uint16), 1, 0)
            w.flush()
        entries[split] = w.summary()
    atomic_write_json(d / "manifest.json", {
        "format": "golf-data-2",
        "tokenizer": {"kind": tok.kind, "file": tok_file, "sha256": tokenizer_sha or tok.sha256,
                      "vocab_size": vocab_size or tok.vocab_size, "bos_id": tok.bos_id},
        "splits": entries})
    return d
