"""Bytes per token on a validation corpus for SentencePiece BPE tokenizers of several sizes, with and
without CaseOps (golf issue 19): the tokenizer side of the vocabulary trade-off (more bytes per token
= fewer positions to predict, at the price of a bigger embedding).

    python -m golf.bench.tokenizers --train ../shared/data/wiki_train_00.jsonl.zst --sample-mb 20 \
        --val ../shared/data/fineweb_val.jsonl.zst --vocab 1024,4096,8192 --out records/benches/<dir>/results.json

Each tokenizer is trained (challenge settings, CaseOps operators reserved as user_defined_symbols)
on the first --sample-mb MB of the training corpus's lines, then every val document is encoded whole.
Two byte counts per tokenizer: `original` (the documents' UTF-8 bytes, what the byte sidecar counts
and the audit proves exact) and `lut` (the challenge's byte LUTs: the bytes the tokens decode to
after nmt_nfkc normalisation, which drops newlines and runs of spaces; meaningless for CaseOps
tokens, whose operators the LUT counts as 3 bytes each).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from golf.core.utils import atomic_write_json, git_commit, main_guard
from golf.data.bpb import doc_lut_bytes
from golf.data.caseops import NAME as CASEOPS_NAME
from golf.data.caseops import OPERATORS
from golf.data.caseops import encode as caseops_encode
from golf.data.corpus import iter_documents
from golf.data.tokenizer import load_tokenizer, train_sentencepiece


def sample_lines(train: str, sample_bytes: int, caseops: bool) -> tuple[list[str], int]:
    lines, size = [], 0
    for text in iter_documents(train):
        if caseops:
            text = caseops_encode(text)
        for line in text.split("\n"):
            lines.append(line)
            size += len(line)
        if size >= sample_bytes:
            break
    return lines, size


def measure(tok, docs: list[str], caseops: bool, threads: int) -> dict:
    base, space, boundary = (np.asarray(a) for a in tok.bpb_luts())
    tokens = original = counted = lut = 0
    t0 = time.time()
    for i in range(0, len(docs), 64):
        batch = docs[i:i + 64]
        for text, (ids, counts, left) in zip(batch, tok.encode_with_bytes(batch, caseops=caseops, num_threads=threads)):
            tokens += int(ids.size)
            counted += int(counts.sum()) + left
            original += len(text.encode("utf-8", errors="replace"))
            lut += doc_lut_bytes(ids, base, space, boundary, tok.bos_id)
    return {"docs": len(docs), "tokens": tokens, "tokens_with_bos": tokens + len(docs), "original_bytes": original,
            "sidecar_bytes": counted, "sidecar_exact": counted == original, "lut_bytes": lut,
            "original_bytes_per_token": original / tokens, "lut_bytes_per_token": lut / tokens,
            "original_bytes_per_token_with_bos": original / (tokens + len(docs)),
            "encode_seconds": round(time.time() - t0, 2)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m golf.bench.tokenizers", description=__doc__.split("\n")[0])
    p.add_argument("--train", default="../shared/data/wiki_train_00.jsonl.zst")
    p.add_argument("--val", default="../shared/data/fineweb_val.jsonl.zst")
    p.add_argument("--sample-mb", type=float, default=20.0)
    p.add_argument("--vocab", default="1024,4096,8192")
    p.add_argument("--caseops", default="0,1", help="which of off (0) / on (1) to run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default="", help="folder to keep the trained .model files in (git-ignored)")
    p.add_argument("--reference", action="append", default=[],
                   help="an already trained .model to measure as well (e.g. a record's FineWeb-trained tokenizer; "
                        "CaseOps when it reserves the operators); repeatable")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    @main_guard
    def run():
        docs = [d for d in iter_documents(args.val)]
        rows = []
        out = Path(args.out)
        for ref in args.reference:
            tok = load_tokenizer(ref)
            row = {"vocab_size": tok.vocab_size, "text_transform": CASEOPS_NAME if tok.is_caseops else "identity",
                   "reference": Path(ref).name, "tokenizer_sha256": tok.sha256,
                   **measure(tok, docs, tok.is_caseops, args.threads)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        for vocab in [int(v) for v in args.vocab.split(",") if v]:
            for caseops in [c.strip() == "1" for c in args.caseops.split(",")]:
                t0 = time.time()
                lines, size = sample_lines(args.train, int(args.sample_mb * 1e6), caseops)
                tok = train_sentencepiece(lines, vocab, num_threads=args.threads,
                                          user_defined_symbols=OPERATORS if caseops else ())
                train_s = time.time() - t0
                if args.models:
                    Path(args.models).mkdir(parents=True, exist_ok=True)
                    tok.save(Path(args.models) / f"wiki_{vocab}{'_caseops' if caseops else ''}.model")
                row = {"vocab_size": vocab, "text_transform": CASEOPS_NAME if caseops else "identity",
                       "sample_chars": size, "sample_lines": len(lines), "train_seconds": round(train_s, 1),
                       "tokenizer_sha256": tok.sha256, **measure(tok, docs, caseops, args.threads)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                atomic_write_json(out, {"commit": git_commit(), "train": args.train, "val": args.val,
                                        "sample_mb": args.sample_mb, "threads": args.threads, "rows": rows})

    run()


if __name__ == "__main__":
    main()
