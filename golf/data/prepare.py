"""`python -m golf.data.prepare`: corpus -> document split -> tokenizer -> a data folder (shards + manifest)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from golf.core.utils import GolfError, atomic_dir, atomic_write_json, git_commit, main_guard, sha256_file, sweep_stale
from golf.data.caseops import IDENTITY
from golf.data.caseops import NAME as CASEOPS_NAME
from golf.data.caseops import OPERATORS as CASEOPS_OPERATORS
from golf.data.caseops import encode as caseops_encode
from golf.data.corpus import corpus_stem, iter_documents, source_files
from golf.data.folder import SPLITS, read_manifest, shard_name, sidecar_name, split_layout
from golf.data.shards import HEADER_INTS, MAGIC, VERSION, read_shard, write_shard
from golf.data.tokenizer import ByteTokenizer, SentencePieceTokenizer, save_tokenizer, train_sentencepiece

DEFAULT_SHARD_TOKENS = 1 << 24  # 32 MiB a shard: a few files for a wiki shard, one for Shakespeare


# ---------------------------------------------------------------------------------------------
# writing a data folder: tokenize documents (in parallel processes) into shards + manifest

_WORKER_TOK = None
_WORKER_OPTS: dict = {}


def _worker_init(kind: str, file_bytes: bytes, opts: dict | None = None) -> None:
    global _WORKER_TOK, _WORKER_OPTS
    _WORKER_TOK = _make_tokenizer(kind, file_bytes)
    _WORKER_OPTS = dict(opts or {})


def _make_tokenizer(kind: str, file_bytes: bytes):
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


def encode_docs_with_bytes(tok, texts: list[str], caseops: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(BOS + tokens for each text, concatenated; the byte sidecar beside them): per token the
    original-text UTF-8 bytes it accounts for (BOS 0, or the bytes of a document that gave no token).
    Both uint16; sums to the texts' UTF-8 length (tokenizer.encode_with_bytes)."""
    enc = tok.encode_with_bytes(texts, caseops=caseops)
    n = sum(ids.size for ids, _, _ in enc) + len(enc)
    toks, nbytes = np.empty(n, dtype=np.uint16), np.empty(n, dtype=np.int64)
    pos = 0
    for ids, counts, left in enc:
        toks[pos], nbytes[pos] = tok.bos_id, left
        toks[pos + 1: pos + 1 + ids.size] = ids
        nbytes[pos + 1: pos + 1 + ids.size] = counts
        pos += 1 + ids.size
    if nbytes.size and nbytes.max() > 0xFFFF:
        raise GolfError(f"a token accounts for {int(nbytes.max()):,} bytes (a run of whitespace the normaliser "
                        f"drops?), more than the uint16 byte sidecar holds; clean the document or leave the sidecar off")
    return toks, nbytes.astype(np.uint16)


def _encode(tok, split: str, texts: list[str], opts: dict):
    """One chunk: (tokens, byte sidecar or None). CaseOps transforms the text first; the val split
    gets its sidecar when asked (CaseOps always: its LUT bytes would count the transformed text)."""
    caseops = bool(opts.get("caseops"))
    if split == "val" and opts.get("byte_sidecar"):
        return encode_docs_with_bytes(tok, texts, caseops)
    if caseops:
        texts = [caseops_encode(t) for t in texts]
    return encode_docs(tok, texts), None


def _encode_chunk(job):
    split, texts = job
    toks, nbytes = _encode(_WORKER_TOK, split, texts, _WORKER_OPTS)
    return split, toks, nbytes, len(texts), sum(len(t.encode("utf-8", "replace")) for t in texts)


class ShardWriter:
    """Buffers a split's tokens and writes full shards `fineweb_<split>_NNNNNN.bin` as they fill."""

    def __init__(self, folder: Path, split: str, shard_tokens: int, namer=shard_name):
        self.folder, self.split, self.shard_tokens, self.namer = folder, split, shard_tokens, namer
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

            fname = self.namer(self.split, len(self.files))
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
                      manifest_extra: dict | None = None, chunk_bytes: int = 1 << 20,
                      caseops: bool = False, byte_sidecar: bool = False) -> dict:
    """Tokenize `splits` = {"train": iterable of texts, "val": ...} (or one iterable of (split, text)
    pairs, so a corpus is read once while it is split) into a complete data folder.

    The folder is built under a temporary name and renamed into place at the end (an interrupted run
    leaves nothing under `out`); an existing `out` is replaced. Tokenization runs in `workers`
    processes (chunks of ~1 MB of text, results in order, so the output does not depend on workers).
    caseops: the documents are CaseOps-encoded before tokenizing (golf.data.caseops; the tokenizer must
    reserve its operators), and the val split always gets its byte sidecar fineweb_val_bytes_*.bin
    (byte_sidecar: also without CaseOps), listed in the manifest under splits.val.byte_sidecar.
    Returns the manifest."""
    import time

    if tokenizer.vocab_size > 2**16:
        raise GolfError(f"vocab size {tokenizer.vocab_size} does not fit uint16 shards; use --vocab-size <= 65536")
    if caseops and not getattr(tokenizer, "is_caseops", False):
        raise GolfError("CaseOps text needs a tokenizer that reserves its four operators (user_defined_symbols); "
                        "train it with `make data CASEOPS=1`")
    byte_sidecar = byte_sidecar or caseops
    opts = {"caseops": caseops, "byte_sidecar": byte_sidecar}
    t0 = time.time()
    out = Path(out)
    sweep_stale(out.parent)  # folders of earlier killed runs of this command
    with atomic_dir(out, exist_ok=True) as tmp:
        tok_file = save_tokenizer(tokenizer, tmp).name
        writers = {s: ShardWriter(tmp, s, shard_tokens) for s in SPLITS}
        # the val sidecar fills its shards in step with the val shards: file i holds shard i's tokens' bytes
        side = ShardWriter(tmp, "val", shard_tokens, namer=lambda _, i: sidecar_name(i)) if byte_sidecar else None
        if isinstance(splits, dict):
            stream = ((s, text) for s, docs in splits.items() for text in docs)
        else:
            stream = splits
        jobs = _route_chunks(stream, chunk_bytes)
        if workers > 1:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")  # no fork: the parent may hold torch/OpenMP threads
            with ctx.Pool(workers, initializer=_worker_init,
                          initargs=(tokenizer.kind, tokenizer.file_bytes, opts)) as pool:
                for split, toks, side_bytes, ndocs, nbytes in pool.imap(_encode_chunk, jobs):
                    writers[split].add(toks, ndocs, nbytes)
                    if side_bytes is not None:
                        side.add(side_bytes, ndocs, nbytes)
        else:
            for split, texts in jobs:
                toks, side_bytes = _encode(tokenizer, split, texts, opts)
                nbytes = sum(len(t.encode("utf-8", "replace")) for t in texts)
                writers[split].add(toks, len(texts), nbytes)
                if side_bytes is not None:
                    side.add(side_bytes, len(texts), nbytes)
        if side is not None:
            side.flush()
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
            "created_by": f"golf.data.prepare (commit {git_commit()})",
            "tokenizer": {"kind": tokenizer.kind, "file": tok_file, "sha256": tokenizer.sha256,
                          "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id},
            "shard_format": {"magic": MAGIC, "version": VERSION, "header_int32": HEADER_INTS, "dtype": "uint16",
                             "doc_prefix": "BOS", "shard_tokens": shard_tokens},
            "text_transform": CASEOPS_NAME if caseops else IDENTITY,
            # how BPB counts bytes: the val byte sidecar (original-text bytes per token) or the tokenizer's LUTs
            "byte_accounting": "sidecar" if byte_sidecar else "luts",
            **(manifest_extra or {}),
            "splits": {s: w.summary() for s, w in writers.items()},
            "seconds": round(time.time() - t0, 2),
        }
        if side is not None:
            bytes_total = int(sum(np.asarray(read_shard(tmp / f["name"]), dtype=np.int64).sum() for f in side.files))
            if bytes_total != writers["val"].text_bytes:  # the sidecar must count the original text exactly
                raise GolfError(f"the byte sidecar counts {bytes_total:,} bytes but the val documents hold "
                                f"{writers['val'].text_bytes:,}: a bug in golf.data.caseops.piece_byte_counts")
            manifest["splits"]["val"]["byte_sidecar"] = {"files": side.files, "bytes": bytes_total}
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

    return [{"path": str(p), "sha256": sha256_file(p), "bytes": p.stat().st_size} for p in source_files(spec)]


def _nonempty(docs):
    return (t for t in docs if t.strip())


def prepare(corpus: str = "shakespeare", val: str = "", tokenizer: str = "sp", vocab_size: int = 1024,
            out: str | os.PathLike | None = None, text_field: str = "text", val_frac: float = 0.05,
            workers: int = 0, shard_tokens: int = DEFAULT_SHARD_TOKENS,
            tokenizer_sample_bytes: int = 16_000_000, force: bool = False, caseops: bool = False,
            byte_sidecar: bool = False) -> dict:
    """Build a data folder from a corpus (see `python -m golf.data.prepare --help`); returns the manifest.

    An existing folder made from the same sources and settings is kept as it is (unless force)."""
    import time


    if tokenizer not in ("sp", "byte"):
        raise GolfError(f"unknown tokenizer {tokenizer!r}; use --tokenizer sp or --tokenizer byte")
    if caseops and tokenizer != "sp":
        raise GolfError("CaseOps (--caseops, CASEOPS=1) needs a SentencePiece tokenizer (--tokenizer sp): it reserves "
                        "the case operators as pieces")
    if not val and not 0.0 < val_frac < 1.0:
        raise GolfError(f"--val-frac {val_frac} must lie in (0, 1) when no --val corpus is given")
    name = corpus_stem(corpus)
    out = Path(out) if out else Path("data") / "datasets" / (
        f"{name}_{'sp%d' % vocab_size if tokenizer == 'sp' else 'byte'}{'_caseops' if caseops else ''}")
    workers = workers or os.cpu_count() or 1
    t_start = time.time()
    settings = {"corpus": corpus, "val": val or None, "tokenizer": tokenizer,
                "vocab_size": vocab_size if tokenizer == "sp" else 260, "text_field": text_field,
                "val_frac": None if val else val_frac, "split_rule": None if val else "blake2b-order-bytes-v1",
                "shard_tokens": shard_tokens,
                "tokenizer_sample_bytes": tokenizer_sample_bytes if tokenizer == "sp" else None}
    if caseops:  # only when set, so folders made before these settings existed stay up to date
        settings["text_transform"] = CASEOPS_NAME
    if byte_sidecar or caseops:
        settings["byte_sidecar"] = True
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
            if caseops:  # the tokenizer learns the transformed text, operators reserved (PR #1729)
                text = caseops_encode(text)
            for line in text.split("\n"):  # SentencePiece drops over-long "sentences": feed paragraphs
                lines.append(line)
                size += len(line)
            if size >= tokenizer_sample_bytes:
                break
        tok = train_sentencepiece(lines, vocab_size, num_threads=workers,
                                  user_defined_symbols=CASEOPS_OPERATORS if caseops else ())
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
                      "rule": "documents in blake2b-64 order until val_frac of the bytes (golf.data.prepare.val_hash_threshold)",
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
        }, caseops=caseops, byte_sidecar=byte_sidecar)
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
    p = argparse.ArgumentParser(prog="python -m golf.data.prepare", description=__doc__.split("\n")[0])
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
    p.add_argument("--caseops", action="store_true",
                   help="CaseOps (PR #1729): train the tokenizer on and tokenize the case-transformed text; the val "
                        "split gets its byte sidecar, so BPB counts the original bytes")
    p.add_argument("--byte-sidecar", action="store_true",
                   help="write the val byte sidecar without CaseOps too (BPB then counts the original text's bytes, "
                        "not the normalised text's)")
    args = p.parse_args(argv)
    main_guard(prepare)(corpus=args.corpus, val=args.val, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                        out=args.out or None, text_field=args.text_field, val_frac=args.val_frac,
                        workers=args.workers, shard_tokens=args.shard_tokens,
                        tokenizer_sample_bytes=int(args.tokenizer_sample_mb * 1e6), force=args.force,
                        caseops=args.caseops, byte_sidecar=args.byte_sidecar)


if __name__ == "__main__":
    main()
