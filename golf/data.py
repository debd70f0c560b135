"""Challenge-format token shards, data folders, and `python -m golf.data prepare` (corpus -> shards).

Shard (the challenge's format): 256 little-endian int32 header [20240520, 1, num_tokens, 0, ...]
followed by num_tokens little-endian uint16 token ids; every document is BOS (id 1) + its tokens.

A data folder (what `make data` writes, what training/eval read):
    manifest.json                 sources + hashes, tokenizer {kind, file, sha256, vocab_size}, and per
                                  split its shard files, each with its token count and sha256
    tokenizer.model | tokenizer.json
    fineweb_train_000000.bin ...  fineweb_val_000000.bin ...

A split is the manifest's list of files, never a filename pattern: `<corpus>_train_*.bin` once
matched `wiki_train_00_val_000000.bin` and trained on the validation text (golf issue 13). Shards get
the challenge's fixed names whatever the corpus is called, so no corpus name can make two splits
collide and the challenge's own scripts read a golf folder as it is. A folder without golf's
manifest (the challenge's download) is read by exactly those names.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from golf.utils import GolfError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
DEFAULT_SHARD_TOKENS = 1 << 24  # 32 MiB a shard: a few files for a wiki shard, one for Shakespeare
SPLITS = ("train", "val")


# ---------------------------------------------------------------------------------------------
# shard I/O


def write_shard(path: str | os.PathLike, tokens) -> Path:
    """Write tokens (any int array, values in [0, 65535]) as a challenge shard, atomically."""
    from golf.utils import atomic_path

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


# ---------------------------------------------------------------------------------------------
# data folders


def read_manifest(data_path: str | os.PathLike) -> dict:
    path = Path(data_path) / "manifest.json"
    if not path.is_file():
        raise GolfError(f"{path} not found: {data_path} is not a prepared data folder; run `make data` "
                        f"(or `make data-fineweb`) or set DATA_PATH to one")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise GolfError(f"{path} is not valid JSON ({e}); re-create the folder with `make data`") from None
    if not isinstance(manifest.get("tokenizer"), dict):
        raise GolfError(f"{path} has no 'tokenizer' entry; re-create the folder with `make data`")
    return manifest


def shard_name(split: str, index: int) -> str:
    """A shard's file name: the challenge's (`fineweb_train_000000.bin`), whatever the corpus."""
    return f"fineweb_{split}_{index:06d}.bin"


def _manifest_split(data_path: Path, manifest: dict, split: str) -> list[Path]:
    """A split's files as the manifest lists them, each checked against its header's token count."""
    mpath = data_path / "manifest.json"
    fix = f"re-create the folder with `make data` (or `make data-fineweb`)"
    entry = (manifest.get("splits") or {}).get(split)
    if entry is None or (isinstance(entry, dict) and not entry.get("files") and not entry.get("tokens")):
        return []  # the folder has no such split (an eval-only folder has no train split)
    if not isinstance(entry, dict) or not isinstance(entry.get("files"), list) or not entry["files"]:
        raise GolfError(f"{mpath}: splits.{split} lists no shard files; {fix}")
    files, total = [], 0
    for item in entry["files"]:
        # golf-data-1 listed bare names; golf-data-2 lists {name, tokens, sha256}
        name, want = (item, None) if isinstance(item, str) else (item.get("name"), item.get("tokens"))
        if not isinstance(name, str) or not name or Path(name).name != name or name.startswith("."):
            raise GolfError(f"{mpath}: {split} shard entry {item!r} is not a plain file name in the folder; {fix}")
        path = data_path / name
        n = read_header(path)
        if want is not None and n != int(want):
            raise GolfError(f"{path} holds {n:,} tokens but {mpath} says {int(want):,}: the folder changed after it "
                            f"was written; {fix}")
        files.append(path)
        total += n
    if entry.get("tokens") is not None and total != int(entry["tokens"]):
        raise GolfError(f"the {split} shards of {data_path} hold {total:,} tokens but {mpath} says "
                        f"{int(entry['tokens']):,}; {fix}")
    return files


def split_layout(data_path: str | os.PathLike) -> dict[str, list[Path]]:
    """Both splits' shard files, checked before any work: taken from golf's manifest (else the
    challenge's names `fineweb_{train,val}_*.bin`), token counts equal to the manifest's, and no file
    in both splits (compared by inode too, so links cannot smuggle one in)."""
    data_path = Path(data_path)
    if not data_path.is_dir():
        raise GolfError(f"data folder {data_path} not found; run `make data` or set DATA_PATH to a prepared folder")
    if (data_path / "manifest.json").is_file():
        manifest = read_manifest(data_path)
        layout = {s: _manifest_split(data_path, manifest, s) for s in SPLITS}
    else:
        # exactly the challenge's numbered names: `fineweb_train_val_000000.bin` belongs to no split
        layout = {s: sorted(f for f in data_path.glob(f"fineweb_{s}_*.bin") if re.fullmatch(rf"fineweb_{s}_\d+\.bin", f.name))
                  for s in SPLITS}
        for f in layout["train"] + layout["val"]:
            read_header(f)
    seen = {}
    for s in SPLITS:
        for f in layout[s]:
            st = f.stat()
            key = (st.st_dev, st.st_ino)
            if key in seen and seen[key][0] != s:
                raise GolfError(f"{data_path}: {f.name} ({s}) is the same file as {seen[key][1].name} "
                                f"({seen[key][0]}): the train and val splits must not share shards; re-create the "
                                f"folder with `make data`")
            seen[key] = (s, f)
    return layout


def shard_files(data_path: str | os.PathLike, split: str) -> list[Path]:
    """One split's shard files (see split_layout: the manifest's list, checked)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    files = split_layout(data_path)[split]
    if not files:
        where = ("its manifest.json lists none" if (Path(data_path) / "manifest.json").is_file()
                 else f"it has no manifest.json and no fineweb_{split}_NNNNNN.bin (the challenge's names)")
        raise GolfError(f"no {split} shards in {data_path}: {where}; run `make data` or set DATA_PATH to a "
                        f"prepared data folder")
    return files


def split_tokens(data_path: str | os.PathLike, split: str) -> int:
    return sum(read_header(f) for f in shard_files(data_path, split))


def check_data_folder(data_path: str | os.PathLike) -> dict:
    """split_layout plus every shard's sha256 against the manifest (reads every byte)."""
    from golf.utils import sha256_file

    data_path = Path(data_path)
    layout = split_layout(data_path)
    manifest = read_manifest(data_path) if (data_path / "manifest.json").is_file() else {}
    for s in SPLITS:
        for item in (manifest.get("splits", {}).get(s, {}).get("files") or []):
            if isinstance(item, dict) and item.get("sha256"):
                have = sha256_file(data_path / item["name"])
                if have != item["sha256"]:
                    raise GolfError(f"{data_path / item['name']}: sha256 {have[:12]}… but the manifest says "
                                    f"{item['sha256'][:12]}…; re-create the folder with `make data`")
    return {s: {"files": [f.name for f in layout[s]], "tokens": sum(read_header(f) for f in layout[s])}
            for s in SPLITS if layout[s]}


def manifest_vocab_size(data_path: str | os.PathLike) -> int | None:
    try:
        return int(read_manifest(data_path)["tokenizer"]["vocab_size"])
    except (GolfError, KeyError, TypeError, ValueError):
        return None


def load_split(data_path: str | os.PathLike, split: str, vocab_size: int | None = None,
               max_tokens: int = 0) -> np.ndarray:
    """All tokens of a split (shards in order), validated; max_tokens > 0 keeps only a prefix.

    With vocab_size None the manifest's vocab size (if any) is checked."""
    if vocab_size is None:
        vocab_size = manifest_vocab_size(data_path)
    parts, total = [], 0
    for f in shard_files(data_path, split):
        toks = read_shard(f, vocab_size)
        if max_tokens and total + toks.size > max_tokens:
            toks = toks[: max_tokens - total]
        parts.append(toks)
        total += toks.size
        if max_tokens and total >= max_tokens:
            break
    if len(parts) == 1 and not max_tokens:
        return parts[0]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def tokenizer_path(data_path: str | os.PathLike) -> Path:
    """The data folder's tokenizer file (from the manifest; else tokenizer.model / tokenizer.json)."""
    data_path = Path(data_path)
    mpath = data_path / "manifest.json"
    if mpath.is_file():
        name = read_manifest(data_path)["tokenizer"].get("file")
        if name:
            p = data_path / name
            if not p.is_file():
                raise GolfError(f"{mpath} names tokenizer {name} but {p} is missing; re-create the folder "
                                f"with `make data`")
            return p
    for name in ("tokenizer.model", "tokenizer.json"):
        if (data_path / name).is_file():
            return data_path / name
    raise GolfError(f"no tokenizer (tokenizer.model or tokenizer.json) in {data_path}; run `make data`")


def check_tokenizer_matches(data_path: str | os.PathLike, tokenizer) -> None:
    """Raise if `tokenizer` is not the one the folder's shards were made with (by SHA-256)."""
    manifest = read_manifest(data_path)
    want = manifest["tokenizer"].get("sha256")
    if want and tokenizer.sha256 != want:
        raise GolfError(
            f"tokenizer (sha256 {tokenizer.sha256[:12]}…, vocab {tokenizer.vocab_size}) does not match the one "
            f"the shards in {data_path} were made with (sha256 {want[:12]}…, vocab "
            f"{manifest['tokenizer'].get('vocab_size')}, see {Path(data_path) / 'manifest.json'}); use "
            f"{tokenizer_path(data_path)} (leave TOKENIZER_PATH empty) or re-create the shards with `make data`")
    vs = manifest["tokenizer"].get("vocab_size")
    if vs is not None and int(vs) != tokenizer.vocab_size:
        raise GolfError(f"tokenizer vocab {tokenizer.vocab_size} != {vs} in {Path(data_path) / 'manifest.json'}; "
                        f"use the folder's own tokenizer or re-create the shards with `make data`")


def load_data_tokenizer(data_path: str | os.PathLike, path: str | os.PathLike | None = None):
    """The tokenizer for a data folder (its own, or `path`), checked against the manifest."""
    from golf.tokenizer import load_tokenizer

    tok = load_tokenizer(path or tokenizer_path(data_path))
    if (Path(data_path) / "manifest.json").is_file():
        check_tokenizer_matches(data_path, tok)
    return tok


# ---------------------------------------------------------------------------------------------
# writing a data folder: tokenize documents (in parallel processes) into shards + manifest

_WORKER_TOK = None


def _worker_init(kind: str, file_bytes: bytes) -> None:
    global _WORKER_TOK
    _WORKER_TOK = _make_tokenizer(kind, file_bytes)


def _make_tokenizer(kind: str, file_bytes: bytes):
    from golf.tokenizer import ByteTokenizer, SentencePieceTokenizer

    return ByteTokenizer(file_bytes) if kind == "byte" else SentencePieceTokenizer(file_bytes)


def encode_docs(tok, texts: list[str]) -> np.ndarray:
    """BOS + tokens for each text, concatenated (uint16)."""
    encoded = tok.encode_batch(texts)
    out = np.empty(sum(len(e) for e in encoded) + len(encoded), dtype=np.uint16)
    pos = 0
    for e in encoded:
        out[pos] = tok.bos_id
        out[pos + 1: pos + 1 + len(e)] = e
        pos += 1 + len(e)
    return out


def _encode_chunk(job):
    split, texts = job
    return split, encode_docs(_WORKER_TOK, texts), len(texts), sum(len(t.encode("utf-8", "replace")) for t in texts)


class ShardWriter:
    """Buffers a split's tokens and writes full shards `fineweb_<split>_NNNNNN.bin` as they fill."""

    def __init__(self, folder: Path, split: str, shard_tokens: int):
        self.folder, self.split, self.shard_tokens = folder, split, shard_tokens
        self.buf = np.empty(shard_tokens, dtype=np.uint16)
        self.fill = 0
        self.files: list[dict] = []
        self.tokens = self.docs = self.text_bytes = 0
        self.max_id = -1

    def add(self, toks: np.ndarray, docs: int, text_bytes: int) -> None:
        self.docs += docs
        self.text_bytes += text_bytes
        self.tokens += toks.size
        if toks.size:
            self.max_id = max(self.max_id, int(toks.max()))
        pos = 0
        while pos < toks.size:
            take = min(self.shard_tokens - self.fill, toks.size - pos)
            self.buf[self.fill: self.fill + take] = toks[pos: pos + take]
            self.fill += take
            pos += take
            if self.fill == self.shard_tokens:
                self.flush()

    def flush(self) -> None:
        if self.fill:
            import hashlib

            fname = shard_name(self.split, len(self.files))
            path = write_shard(self.folder / fname, self.buf[: self.fill])
            self.files.append({"name": fname, "tokens": int(self.fill),
                               "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
            self.fill = 0

    def summary(self) -> dict:
        return {"docs": self.docs, "tokens": self.tokens, "text_bytes": self.text_bytes, "files": self.files}


def _route_chunks(stream, chunk_bytes: int):
    """(split, text) pairs -> (split, [texts]) chunks of about chunk_bytes characters, per split."""
    batches = {s: ([], [0]) for s in SPLITS}
    for split, text in stream:
        batch, size = batches[split]
        batch.append(text)
        size[0] += len(text)
        if size[0] >= chunk_bytes:
            yield split, list(batch)
            batch.clear()
            size[0] = 0
    for split, (batch, _) in batches.items():
        if batch:
            yield split, batch


def _chunks_for_bench(texts: list[str], chunk_bytes: int = 1 << 20):
    return _route_chunks((("train", t) for t in texts), chunk_bytes)


def write_data_folder(out: str | os.PathLike, tokenizer, splits, name: str,
                      shard_tokens: int = DEFAULT_SHARD_TOKENS, workers: int = 1,
                      manifest_extra: dict | None = None, chunk_bytes: int = 1 << 20) -> dict:
    """Tokenize `splits` = {"train": iterable of texts, "val": ...} (or one iterable of (split, text)
    pairs, so a corpus is read once while it is split) into a complete data folder.

    The folder is built under a temporary name and renamed into place at the end (an interrupted run
    leaves nothing under `out`); an existing `out` is replaced. Tokenization runs in `workers`
    processes (chunks of ~1 MB of text, results in order, so the output does not depend on workers).
    Returns the manifest."""
    import time

    from golf.tokenizer import save_tokenizer
    from golf.utils import atomic_dir, atomic_write_json, git_commit

    if tokenizer.vocab_size > 2**16:
        raise GolfError(f"vocab size {tokenizer.vocab_size} does not fit uint16 shards; use --vocab-size <= 65536")
    t0 = time.time()
    out = Path(out)
    with atomic_dir(out, exist_ok=True) as tmp:
        tok_file = save_tokenizer(tokenizer, tmp).name
        writers = {s: ShardWriter(tmp, s, shard_tokens) for s in SPLITS}
        if isinstance(splits, dict):
            stream = ((s, text) for s, docs in splits.items() for text in docs)
        else:
            stream = splits
        jobs = _route_chunks(stream, chunk_bytes)
        if workers > 1:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")  # no fork: the parent may hold torch/OpenMP threads
            with ctx.Pool(workers, initializer=_worker_init, initargs=(tokenizer.kind, tokenizer.file_bytes)) as pool:
                for split, toks, ndocs, nbytes in pool.imap(_encode_chunk, jobs):
                    writers[split].add(toks, ndocs, nbytes)
        else:
            for split, texts in jobs:
                writers[split].add(encode_docs(tokenizer, texts), len(texts),
                                   sum(len(t.encode("utf-8", "replace")) for t in texts))
        for s, w in writers.items():
            w.flush()
            if w.docs == 0:
                raise GolfError(f"the {s} split of {out} would be empty (no documents); check the corpus / --val "
                                f"/ --val-frac")
            if w.max_id >= tokenizer.vocab_size:
                raise GolfError(f"tokenizer produced id {w.max_id} >= its vocab {tokenizer.vocab_size} (corrupt model?)")
        manifest = {
            "format": "golf-data-2",
            "name": name,
            "created_by": f"golf.data (commit {git_commit()})",
            "tokenizer": {"kind": tokenizer.kind, "file": tok_file, "sha256": tokenizer.sha256,
                          "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id},
            "shard_format": {"magic": MAGIC, "version": VERSION, "header_int32": HEADER_INTS, "dtype": "uint16",
                             "doc_prefix": "BOS", "shard_tokens": shard_tokens},
            **(manifest_extra or {}),
            "splits": {s: w.summary() for s, w in writers.items()},
            "seconds": round(time.time() - t0, 2),
        }
        atomic_write_json(tmp / "manifest.json", manifest)
        split_layout(tmp)  # the folder reads back as written: disjoint splits, the manifest's counts
    return manifest


# ---------------------------------------------------------------------------------------------
# prepare: corpus -> split -> tokenizer -> data folder


def doc_hash(text: str) -> int:
    """64-bit BLAKE2b of a document's UTF-8 text: its place in the train/val split."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def val_hash_threshold(docs, val_frac: float) -> int:
    """Split by document content, deterministically: order documents by doc_hash and take them into
    val until they hold val_frac of the text bytes; return the last hash taken (val = hash <= it).

    Identical documents share a hash, so duplicates never straddle the split; the split depends on
    the texts only (not their order, the workers or the machine); val holds at least one document
    even for a corpus of a few dozen works (a fixed hash cut would often leave Shakespeare's val
    empty or one sonnet long)."""
    pairs = sorted((doc_hash(t), len(t.encode("utf-8", "surrogatepass"))) for t in docs)
    if not pairs:
        raise GolfError("the corpus holds no documents (empty corpus); check the files and --text-field")
    total, acc = sum(b for _, b in pairs), 0
    for h, b in pairs:
        acc += b
        if acc >= val_frac * total:
            return h
    return pairs[-1][0]


def _sources(spec: str) -> list[dict]:
    from golf.corpus import source_files
    from golf.utils import sha256_file

    return [{"path": str(p), "sha256": sha256_file(p), "bytes": p.stat().st_size} for p in source_files(spec)]


def _nonempty(docs):
    return (t for t in docs if t.strip())


def prepare(corpus: str = "shakespeare", val: str = "", tokenizer: str = "sp", vocab_size: int = 1024,
            out: str | os.PathLike | None = None, text_field: str = "text", val_frac: float = 0.05,
            workers: int = 0, shard_tokens: int = DEFAULT_SHARD_TOKENS,
            tokenizer_sample_bytes: int = 16_000_000, force: bool = False) -> dict:
    """Build a data folder from a corpus (see `python -m golf.data prepare --help`); returns the manifest.

    An existing folder made from the same sources and settings is kept as it is (unless force)."""
    import time

    from golf.corpus import corpus_stem, iter_documents
    from golf.tokenizer import ByteTokenizer, train_sentencepiece

    if tokenizer not in ("sp", "byte"):
        raise GolfError(f"unknown tokenizer {tokenizer!r}; use --tokenizer sp or --tokenizer byte")
    if not val and not 0.0 < val_frac < 1.0:
        raise GolfError(f"--val-frac {val_frac} must lie in (0, 1) when no --val corpus is given")
    name = corpus_stem(corpus)
    out = Path(out) if out else Path("data") / "datasets" / f"{name}_{'sp%d' % vocab_size if tokenizer == 'sp' else 'byte'}"
    workers = workers or os.cpu_count() or 1
    t_start = time.time()
    settings = {"corpus": corpus, "val": val or None, "tokenizer": tokenizer,
                "vocab_size": vocab_size if tokenizer == "sp" else 260, "text_field": text_field,
                "val_frac": None if val else val_frac, "split_rule": None if val else "blake2b-order-bytes-v1",
                "shard_tokens": shard_tokens,
                "tokenizer_sample_bytes": tokenizer_sample_bytes if tokenizer == "sp" else None}
    corpus_sources = _sources(corpus)
    val_sources = _sources(val) if val else None
    if (out / "manifest.json").is_file() and not force:
        try:
            old = read_manifest(out)
        except GolfError:
            old = {}
        # golf-data-1 folders named shards after the corpus (issue 13): re-made with fixed names
        if (old.get("format") == "golf-data-2" and old.get("settings") == settings and old.get("corpus", {}).get("sources") == corpus_sources
                and (old.get("val_corpus") or {}).get("sources") == val_sources):
            print(f"{out} is up to date (same sources and settings); --force rebuilds it", flush=True)
            return old

    def train_docs():
        docs = _nonempty(iter_documents(corpus, text_field))
        return docs if val else (t for t in docs if doc_hash(t) > threshold)

    # Without --val: a first pass over the corpus fixes the hash threshold of the val split.
    threshold = None if val else val_hash_threshold(_nonempty(iter_documents(corpus, text_field)), val_frac)
    tok_info = None
    if tokenizer == "byte":
        tok = ByteTokenizer()
    else:
        t0 = time.time()
        lines, size = [], 0
        for text in train_docs():
            for line in text.split("\n"):  # SentencePiece drops over-long "sentences": feed paragraphs
                lines.append(line)
                size += len(line)
            if size >= tokenizer_sample_bytes:
                break
        tok = train_sentencepiece(lines, vocab_size, num_threads=workers)
        tok_info = {"sample_chars": size, "sample_lines": len(lines), "seconds": round(time.time() - t0, 2),
                    "note": "the first tokenizer_sample_bytes of training text, split into lines"}
        print(f"tokenizer: SentencePiece BPE {tok.vocab_size} trained on {size / 1e6:.1f} MB in "
              f"{tok_info['seconds']} s", flush=True)

    if val:
        stream = ((s, t) for s, docs in (("train", train_docs()), ("val", _nonempty(iter_documents(val, text_field))))
                  for t in docs)
        split_info = {"method": "files", "val": val}
    else:
        stream = (("val" if doc_hash(t) <= threshold else "train", t)
                  for t in _nonempty(iter_documents(corpus, text_field)))
        split_info = {"method": "hash", "val_frac": val_frac,
                      "rule": "documents in blake2b-64 order until val_frac of the bytes (golf.data.val_hash_threshold)",
                      "threshold": threshold}
    t0 = time.time()
    manifest = write_data_folder(
        out, tok, stream, name=name, shard_tokens=shard_tokens, workers=workers,
        manifest_extra={
            "corpus": {"spec": corpus, "text_field": text_field, "sources": corpus_sources},
            "val_corpus": {"spec": val, "text_field": text_field, "sources": val_sources} if val else None,
            "split": split_info,
            "tokenizer_training": tok_info,
            "settings": settings,
            "workers": workers,
        })
    secs = time.time() - t0
    total_bytes = sum(manifest["splits"][s]["text_bytes"] for s in SPLITS)
    for s in SPLITS:
        sp = manifest["splits"][s]
        print(f"{s}: {sp['docs']} docs, {sp['tokens']:,} tokens, {sp['text_bytes'] / 1e6:.2f} MB text, "
              f"{len(sp['files'])} shard(s)", flush=True)
    print(f"wrote {out} in {time.time() - t_start:.1f} s (tokenize+write {secs:.1f} s, "
          f"{total_bytes / 1e6 / max(secs, 1e-9):.1f} MB/s with {workers} worker(s))", flush=True)
    return manifest


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> None:
    from golf.utils import main_guard

    parser = argparse.ArgumentParser(prog="python -m golf.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="corpus -> tokenizer + train/val shards + manifest")
    p.add_argument("--corpus", default="shakespeare",
                   help="'shakespeare' (default), file(s)/glob (.jsonl[.gz|.zst], .parquet, .txt) or a Hub dataset")
    p.add_argument("--val", default="", help="validation corpus (same forms); empty = split --corpus by document")
    p.add_argument("--tokenizer", default="sp", choices=["sp", "byte"])
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--out", default="", help="output folder (default data/datasets/<corpus>_sp<vocab> or _byte)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--val-frac", type=float, default=0.05)
    p.add_argument("--workers", type=int, default=0, help="tokenizer processes (0 = all cores)")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS)
    p.add_argument("--tokenizer-sample-mb", type=float, default=16.0,
                   help="MB of training text the SentencePiece model is trained on")
    p.add_argument("--force", action="store_true", help="rebuild even if the folder is already up to date")
    p = sub.add_parser("info", help="print a data folder's manifest summary")
    p.add_argument("data_path")
    p = sub.add_parser("check", help="check a data folder: disjoint splits, token counts, every shard's sha256")
    p.add_argument("data_path")
    args = parser.parse_args(argv)

    @main_guard
    def run():
        if args.cmd == "prepare":
            prepare(corpus=args.corpus, val=args.val, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                    out=args.out or None, text_field=args.text_field, val_frac=args.val_frac,
                    workers=args.workers, shard_tokens=args.shard_tokens,
                    tokenizer_sample_bytes=int(args.tokenizer_sample_mb * 1e6), force=args.force)
        elif args.cmd == "check":
            json.dump(check_data_folder(args.data_path), sys.stdout, indent=2)
            print(f"\n{args.data_path}: OK")
        else:
            m = read_manifest(args.data_path)
            json.dump({k: m.get(k) for k in ("name", "tokenizer", "splits")}, sys.stdout, indent=2)
            print()

    run()


if __name__ == "__main__":
    main()
