"""The BPB byte audit on a corpus file: the byte LUTs (golf/data/bpb.py) against the decoded text's
real UTF-8 length, and the byte sidecar (golf.data.caseops.piece_byte_counts) against the original
documents' UTF-8 length, for `eval_bpb.py --audit-bytes`. Kept apart from bpb.py so scoring code (and
the single-file bundle) never pulls in the corpus readers.

Which count scoring uses depends on the data folder: a folder with a val byte sidecar (every CaseOps
folder; `make data BYTE_SIDECAR=1`) counts the original documents' bytes; one without counts the
LUTs, i.e. the bytes the tokens decode to after SentencePiece's nmt_nfkc normalisation (the
challenge's rule), which differs from the original by what the normaliser rewrites (runs of
whitespace, NFKC folds; 324 bytes of 12.56 MB on FineWeb val with a 1024-piece BPE).
"""
from __future__ import annotations

import itertools

import numpy as np

from golf.core.utils import GolfError
from golf.data.bpb import audit_bytes
from golf.data.caseops import decode, encode
from golf.data.corpus import iter_documents
from golf.data.folder import load_byte_sidecar, load_split, read_manifest
from golf.data.tokenizer import load_tokenizer


def audit_sidecar(tok, texts, caseops: bool | None = None, batch: int = 64, max_mismatches: int = 5) -> dict:
    """Per document: the byte sidecar's counts (what `make data` writes beside the val shards) sum to
    len(text.encode('utf-8')) exactly, and with CaseOps decode(encode(text)) == text. caseops None:
    on when the tokenizer reserves CaseOps' operators."""
    caseops = bool(getattr(tok, "is_caseops", False)) if caseops is None else caseops
    docs = tokens = original = counted = 0
    bad, roundtrip_bad = [], []
    texts = iter(texts)
    while True:
        chunk = list(itertools.islice(texts, batch))
        if not chunk:
            break
        for text, (ids, counts, left) in zip(chunk, tok.encode_with_bytes(chunk, caseops=caseops)):
            want = len(text.encode("utf-8", errors="replace"))
            have = int(counts.sum()) + left
            if have != want and len(bad) < max_mismatches:
                bad.append({"doc": docs, "sidecar_bytes": have, "text_bytes": want, "text_head": text[:80]})
            if caseops and decode(encode(text)) != text and len(roundtrip_bad) < max_mismatches:
                roundtrip_bad.append({"doc": docs, "text_head": text[:80]})
            if counts.size and counts.min() < 0:
                bad.append({"doc": docs, "negative_count": int(counts.min())})
            docs += 1
            tokens += int(ids.size) + 1  # + BOS
            original += want
            counted += have
    return {"ok": counted == original and not bad and not roundtrip_bad, "caseops": caseops, "docs": docs,
            "tokens": tokens, "sidecar_bytes": counted, "text_bytes": original, "mismatches": bad,
            "caseops_roundtrip_failures": roundtrip_bad}


def audit_folder_sidecar(data_path) -> dict | None:
    """A data folder's val byte sidecar against its manifest: one entry per val token, 0 at every
    BOS unless the document gave no token, and the total equal to the val documents' UTF-8 bytes."""
    side = load_byte_sidecar(data_path)
    if side is None:
        return None
    val = np.asarray(load_split(data_path, "val"))
    want = int((read_manifest(data_path).get("splits") or {}).get("val", {}).get("text_bytes", -1))
    total = int(side.astype(np.int64).sum())
    return {"ok": side.size == val.size and total == want, "tokens": int(val.size), "sidecar_bytes": total,
            "manifest_text_bytes": want, "bos_bytes": int(side[val == 1].astype(np.int64).sum())}


def audit_file(tokenizer_path, text, max_docs: int = 500, text_field: str = "text", caseops: bool | None = None,
               data_path: str = "") -> dict:
    """`eval_bpb.py --audit-bytes --tokenizer T --text FILE`: audit the first max_docs documents of a
    corpus (any format golf.data.corpus reads; a .txt file is one document; 0 = all) and print the
    totals. Both byte counts are proved: the LUTs against the decoded text (SentencePiece without
    CaseOps, the byte tokenizer) and the sidecar against the original documents (every kind); with
    data_path, also that folder's sidecar file against its manifest."""
    tok = load_tokenizer(tokenizer_path)
    docs = list(itertools.islice(iter_documents(str(text), text_field), max_docs or None))
    side = audit_sidecar(tok, docs, caseops)
    caseops = side["caseops"]
    r = audit_bytes(tok, docs)
    lut_ok = r["ok"]
    r.update(tokenizer=str(tokenizer_path), text=str(text), caseops=caseops, sidecar=side,
             sidecar_bytes=side["sidecar_bytes"], lut_ok=lut_ok,
             # what a folder made with this tokenizer counts: CaseOps always has the sidecar; the LUTs count
             # CaseOps text's operators as 3 bytes each, so for it they prove nothing and are only reported
             counted_by="sidecar" if caseops else "luts or sidecar (BYTE_SIDECAR=1)",
             ok=side["ok"] and (caseops or lut_ok))
    if caseops:
        r["tokens"] = side["tokens"]
    if data_path:
        r["folder"] = audit_folder_sidecar(data_path)
        r["ok"] = r["ok"] and (r["folder"] is None or r["folder"]["ok"])
    print(f"audit {tokenizer_path} on {r['docs']} docs of {text}{' (CaseOps)' if caseops else ''}: "
          f"sidecar bytes {side['sidecar_bytes']:,} vs original UTF-8 bytes {side['text_bytes']:,}: "
          f"{'EXACT' if side['ok'] else 'MISMATCH'}; " + (
              "LUTs not used (a CaseOps folder counts its sidecar)" if caseops else
              f"LUT bytes {r['lut_bytes']:,} vs decoded UTF-8 bytes {r['decoded_bytes']:,}: "
              f"{'EXACT' if lut_ok else 'MISMATCH'}"), flush=True)
    if r.get("folder"):
        f = r["folder"]
        print(f"folder {data_path}: val sidecar {f['sidecar_bytes']:,} bytes over {f['tokens']:,} tokens vs manifest "
              f"text_bytes {f['manifest_text_bytes']:,}: {'EXACT' if f['ok'] else 'MISMATCH'}", flush=True)
    if not r["ok"]:
        what = (side["mismatches"][:3] or side["caseops_roundtrip_failures"][:3] or r["mismatches"][:3]
                or r.get("folder"))
        raise GolfError(f"BPB byte audit failed for {tokenizer_path}: {what}; the byte counts are not those of the "
                        f"text the tokens stand for")
    return r
