"""The BPB byte audit on a corpus file: the byte LUTs (golf/data/bpb.py) against the decoded text's
real UTF-8 length, for `eval_bpb.py --audit-bytes`. Kept apart from bpb.py so scoring code (and the
single-file bundle) never pulls in the corpus readers."""
from __future__ import annotations

import itertools

from golf.core.utils import GolfError
from golf.data.bpb import audit_bytes
from golf.data.corpus import iter_documents
from golf.data.tokenizer import load_tokenizer


def audit_file(tokenizer_path, text, max_docs: int = 500, text_field: str = "text") -> dict:
    """`eval_bpb.py --audit-bytes --tokenizer T --text FILE`: audit the first max_docs documents of a
    corpus (any format golf.data.corpus reads; a .txt file is one document) and print both totals."""
    tok = load_tokenizer(tokenizer_path)
    docs = list(itertools.islice(iter_documents(str(text), text_field), max_docs or None))
    r = audit_bytes(tok, docs)
    r.update(tokenizer=str(tokenizer_path), text=str(text))
    print(f"audit {tokenizer_path} on {r['docs']} docs of {text}: LUT bytes {r['lut_bytes']:,} vs decoded "
          f"UTF-8 bytes {r['decoded_bytes']:,} (original text {r['text_bytes']:,}): "
          f"{'EXACT' if r['ok'] else 'MISMATCH'}", flush=True)
    if not r["ok"]:
        raise GolfError(f"BPB byte audit failed for {tokenizer_path}: {r['mismatches'][:3]}; the LUTs do not "
                        f"count the bytes the tokens decode to")
    return r
