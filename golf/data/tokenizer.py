"""Tokenizers behind one interface: SentencePiece BPE (the challenge's settings) and raw bytes.

Both expose `.kind`, `.vocab_size`, `.sha256`, `.bos_id`, `.encode(text) -> list[int]` (no BOS),
`.encode_batch(texts)`, `.decode(ids) -> str` and `.bpb_luts()`, the three lookup tables the
challenge's tokenizer-agnostic BPB needs (see golf/data/bpb.py for how they are used).

Files: a SentencePiece model is saved as `tokenizer.model`; the byte tokenizer as `tokenizer.json`
in the challenge's `pure_byte` format, so the challenge's own `fineweb_pure_byte_260.json` loads too.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from golf.core.utils import GolfError, atomic_write_bytes, sha256_bytes
from golf.data.caseops import OPERATORS
from golf.data.caseops import encode as caseops_encode
from golf.data.caseops import piece_byte_counts
from golf.data.shards import BOS_ID

PAD_ID, EOS_ID, UNK_ID = 0, 2, 3  # BOS_ID (1) is the shard format's (golf.data.shards)

# The challenge's SentencePiece trainer settings (openai/parameter-golf data/download_hf_docs_and_tokenize.py).
# nmt_nfkc also maps '\n' and '\t' to a space and remove_extra_whitespaces (its default) collapses runs
# of spaces and strips both ends: the *decoded* text is what BPB counts bytes of, not the original.
SP_TRAINER_SETTINGS = dict(
    model_type="bpe",
    character_coverage=0.999,
    byte_fallback=True,
    split_digits=True,
    normalization_rule_name="nmt_nfkc",
    add_dummy_prefix=False,
    pad_id=PAD_ID,
    bos_id=BOS_ID,
    eos_id=EOS_ID,
    unk_id=UNK_ID,
    hard_vocab_limit=False,
)
SP_VOCAB_SIZES = (512, 1024, 2048, 4096, 8192)


class ByteTokenizer:
    """UTF-8 bytes shifted by 4: ids 0..3 are pad/bos/eos/unk, byte b is id b + 4 (vocab 260)."""

    kind = "byte"
    byte_offset = 4

    def __init__(self, file_bytes: bytes | None = None):
        self.file_bytes = file_bytes if file_bytes is not None else self.to_json_bytes()
        self.sha256 = sha256_bytes(self.file_bytes)
        self.vocab_size = self.byte_offset + 256
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

    @staticmethod
    def to_json_bytes() -> bytes:
        payload = {
            "tokenizer_type": "pure_byte",
            "config": {"pad_id": PAD_ID, "bos_id": BOS_ID, "eos_id": EOS_ID, "unk_id": UNK_ID,
                       "byte_offset": 4, "byte_count": 256},
            "vocab_size": 260,
        }
        return (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode()

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_bytes(path, self.file_bytes)

    def encode_np(self, text: str) -> np.ndarray:
        data = text.encode("utf-8", errors="replace")  # lone surrogates -> '?', as the challenge does
        return np.frombuffer(data, dtype=np.uint8).astype(np.uint16) + self.byte_offset

    def encode(self, text: str) -> list[int]:
        return self.encode_np(text).tolist()

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode_np(t) for t in texts]

    is_caseops = False

    def encode_with_bytes(self, texts: list[str], caseops: bool = False, num_threads: int = 1) -> list[tuple]:
        """(ids, original UTF-8 bytes per token, bytes no token holds) per text: one byte a token."""
        if caseops:
            raise GolfError("CaseOps needs a SentencePiece tokenizer (the byte tokenizer has no operator pieces); "
                            "use --tokenizer sp or leave CASEOPS off")
        return [(ids, np.ones(ids.size, dtype=np.int64), 0) for ids in self.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        a = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        a = a[a >= self.byte_offset] - self.byte_offset  # specials decode to nothing
        return a.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def bpb_luts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        base = np.zeros(self.vocab_size, dtype=np.int16)
        base[self.byte_offset:] = 1
        space = np.zeros(self.vocab_size, dtype=bool)
        boundary = np.zeros(self.vocab_size, dtype=bool)
        boundary[: self.byte_offset] = True
        return base, space, boundary


class SentencePieceTokenizer:
    """A SentencePiece BPE model (`.model` file) with the BPB tables of the challenge."""

    kind = "sp"

    def __init__(self, model_bytes: bytes, name: str = "<memory>"):
        import sentencepiece as spm

        self.file_bytes = model_bytes
        self.sha256 = sha256_bytes(model_bytes)
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError with terse messages
            raise GolfError(f"{name}: not a SentencePiece model ({e}); re-create it with `make data`") from None
        self.vocab_size = int(self.sp.vocab_size())
        self.pad_id, self.bos_id = int(self.sp.pad_id()), int(self.sp.bos_id())
        self.eos_id, self.unk_id = int(self.sp.eos_id()), int(self.sp.unk_id())
        if self.bos_id != BOS_ID:
            raise GolfError(f"{name}: BOS id is {self.bos_id}, the shard format needs 1; train it with `make data`")

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_bytes(path, self.file_bytes)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def encode_batch(self, texts: list[str], num_threads: int = 1, fast: bool = True) -> list[list[int]]:
        """Encode many documents; `fast` splits them into lines (same result, ~2.5x faster)."""
        if not fast:
            return self.sp.encode(texts, out_type=int, num_threads=num_threads)
        return self._encode_lines(texts, num_threads)

    def _encode_lines(self, texts: list[str], num_threads: int) -> list[list[int]]:
        # Fast path, checked against sp.encode(doc) in tests/test_tokenizer.py. SentencePiece's BPE
        # runs a priority queue over the whole input, which gets slow (cache misses) on long documents;
        # lines are ~2.5x faster. Pieces never cross whitespace (split_by_whitespace), and nmt_nfkc turns
        # '\n' into a space, so doc = line0 + ' ' + line1 ...: every line after the first one with
        # content is encoded as SENTINEL + ' ' + line with the sentinel's piece dropped, which gives its
        # first word the '▁' it has inside the document (runs of whitespace collapse as they would).
        # Lines before the first content keep no prefix (the normaliser strips leading whitespace).
        # Where our guess of "content" (str.strip) disagrees with the normaliser's (e.g. U+0085 is kept
        # by nmt_nfkc, U+200B removed), the document is re-encoded whole.
        sentinel = self._sentinel()
        segs, plan = [], []
        for text in texts:
            lines = text.split("\n")
            first = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
            plan.append((len(segs), len(lines), first))
            segs.extend(line if i <= first else "a " + line for i, line in enumerate(lines))
        enc = self.sp.encode(segs, out_type=int, num_threads=num_threads)
        out = []
        for text, (start, n, first) in zip(texts, plan):
            e = enc[start: start + n]
            ok = sentinel is not None and all(not e[i] for i in range(min(first, n)))
            ok = ok and (first >= n or len(e[first]) > 0) and all(x and x[0] == sentinel for x in e[first + 1:])
            if not ok:
                out.append(self.sp.encode(text, out_type=int))
                continue
            ids = []
            for i, x in enumerate(e):
                ids.extend(x[1:] if i > first else x)
            out.append(ids)
        return out

    @property
    def is_caseops(self) -> bool:
        """The model reserves CaseOps' four operators as single pieces (a tokenizer for CaseOps text)."""
        if not hasattr(self, "_is_caseops"):
            ids = [self.sp.piece_to_id(op) for op in OPERATORS]
            self._is_caseops = all(i != self.unk_id and self.sp.encode(op, out_type=int) == [i]
                                   for i, op in zip(ids, OPERATORS))
        return self._is_caseops

    def encode_with_bytes(self, texts: list[str], caseops: bool = False, num_threads: int = 1) -> list[tuple]:
        """Per text: (ids, original UTF-8 bytes each token accounts for, bytes no token holds). With
        caseops the text is CaseOps-encoded first and the operators count 0 bytes; either way the
        counts sum to len(text.encode('utf-8', 'replace')) (golf.data.caseops.piece_byte_counts: the
        whitespace the normaliser drops goes to a neighbouring token). Whole documents through
        SentencePiece's offset mapping, so the ids are exactly sp.encode(doc)'s."""
        raw = [t.encode("utf-8", errors="replace") for t in texts]  # lone surrogates -> '?', as text_bytes
        if caseops:
            raw = [caseops_encode(r.decode("utf-8")).encode("utf-8") for r in raw]
        maps = self.sp.encode([r.decode("utf-8") for r in raw], return_type="offset_mapping", return_bytes=True,
                              num_threads=num_threads)
        out = []
        for r, m in zip(raw, maps):
            ids = np.asarray(m["ids"], dtype=np.int64)
            counts, left = piece_byte_counts(r, [e for _, e in m["offsets"]], caseops)
            out.append((ids, counts, left))
        return out

    def _sentinel(self) -> int | None:
        if not hasattr(self, "_sentinel_id"):
            ids = self.sp.encode("a", out_type=int)
            self._sentinel_id = ids[0] if len(ids) == 1 else None
        return self._sentinel_id

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def bpb_luts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # As the challenge's build_sentencepiece_luts: control/unknown/unused pieces are boundaries
        # worth 0 bytes; byte-fallback pieces <0xNN> are 1 byte; otherwise the UTF-8 length of the
        # piece without its leading '▁', which adds 1 byte only when the previous token is not a
        # boundary (golf/data/bpb.py). Why that is exact for add_dummy_prefix=False: the normaliser strips
        # leading whitespace, so a document's first piece never starts with '▁' (tested by the audit).
        sp, V = self.sp, self.vocab_size
        base = np.zeros(V, dtype=np.int16)
        space = np.zeros(V, dtype=bool)
        boundary = np.ones(V, dtype=bool)
        for i in range(V):
            if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
                continue
            boundary[i] = False
            if sp.is_byte(i):
                base[i] = 1
                continue
            piece = sp.id_to_piece(i)
            if piece.startswith("\u2581"):
                space[i] = True
                piece = piece[1:]
            base[i] = len(piece.encode("utf-8"))
        return base, space, boundary


Tokenizer = ByteTokenizer | SentencePieceTokenizer


def train_sentencepiece(texts: Iterable[str], vocab_size: int = 1024, num_threads: int | None = None,
                        max_sentence_length: int = 1 << 16,
                        user_defined_symbols: Iterable[str] = ()) -> SentencePieceTokenizer:
    """Train a BPE model with the challenge's settings on `texts` (each a sentence/paragraph).

    SentencePiece silently drops sentences longer than max_sentence_length bytes, so callers should
    pass paragraphs (split documents on '\\n'), not whole documents. user_defined_symbols (CaseOps'
    operators) are always one piece each, never merged into others (PR #1729's reserved tokenizer)."""
    import sentencepiece as spm

    if vocab_size not in SP_VOCAB_SIZES:
        raise GolfError(f"vocab size {vocab_size} is not supported; use one of {list(SP_VOCAB_SIZES)} (--vocab-size)")
    buf = io.BytesIO()
    n = [0]

    def gen():
        for t in texts:
            t = t.replace("\x00", " ").strip()
            if t:
                n[0] += 1
                yield t

    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=gen(), model_writer=buf, vocab_size=vocab_size,
            num_threads=num_threads or max(1, os.cpu_count() or 1), max_sentence_length=max_sentence_length,
            minloglevel=2, **SP_TRAINER_SETTINGS,
            **({"user_defined_symbols": list(user_defined_symbols)} if user_defined_symbols else {}))
    except RuntimeError as e:
        raise GolfError(f"SentencePiece training failed on {n[0]} text lines ({e}); give it more text "
                        f"or a smaller --vocab-size") from None
    tok = SentencePieceTokenizer(buf.getvalue())
    if tok.vocab_size != vocab_size:  # hard_vocab_limit=False lets a small corpus give fewer pieces
        raise GolfError(f"the corpus ({n[0]} text lines) is too small for a {vocab_size}-piece vocabulary: "
                        f"SentencePiece made only {tok.vocab_size}; use a smaller --vocab-size (VOCAB_SIZE=) or more text")
    return tok


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """`.model` -> SentencePiece, `.json` -> byte tokenizer (golf's or the challenge's pure_byte file)."""
    path = Path(path)
    if not path.is_file():
        raise GolfError(f"tokenizer file {path} not found; run `make data` (or pass the data folder's tokenizer)")
    data = path.read_bytes()
    if path.suffix == ".model":
        return SentencePieceTokenizer(data, name=str(path))
    if path.suffix == ".json":
        try:
            payload = json.loads(data)
        except json.JSONDecodeError as e:
            raise GolfError(f"{path}: invalid JSON ({e}); re-create it with `make data TOKENIZER=byte`") from None
        cfg = payload.get("config", {}) if isinstance(payload, dict) else {}
        if payload.get("tokenizer_type") != "pure_byte" or cfg.get("byte_offset", 4) != 4 or cfg.get("bos_id", 1) != 1:
            raise GolfError(f"{path}: not a byte tokenizer (want tokenizer_type 'pure_byte', byte_offset 4, bos_id 1)")
        return ByteTokenizer(file_bytes=data)
    raise GolfError(f"{path}: unknown tokenizer type; expected a SentencePiece '.model' or a byte-level '.json'")


def save_tokenizer(tok: Tokenizer, folder: str | os.PathLike) -> Path:
    """Write the tokenizer into a data folder under its contract name; returns the file path."""
    name = "tokenizer.model" if tok.kind == "sp" else "tokenizer.json"
    return tok.save(Path(folder) / name)


__all__ = ["ByteTokenizer", "SentencePieceTokenizer", "Tokenizer", "train_sentencepiece", "load_tokenizer",
           "save_tokenizer", "SP_TRAINER_SETTINGS", "PAD_ID", "BOS_ID", "EOS_ID", "UNK_ID"]
