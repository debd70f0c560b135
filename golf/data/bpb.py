"""Tokenizer-agnostic bits-per-byte, as the challenge scores it, and an audit of its byte counts.

BPB = (sum of CE in nats / ln 2) / (number of UTF-8 bytes the scored tokens stand for). A token's
bytes (challenge rule, openai/parameter-golf train_gpt.py `build_sentencepiece_luts`):
  base_bytes[tok] + (has_leading_space[tok] and not is_boundary[prev_tok])
where base_bytes is the UTF-8 length of the piece without its leading '▁' (1 for byte-fallback
pieces, 0 for control/unknown/unused pieces, which are the boundary tokens). Public entries that
counted the '▁' unconditionally, or counted pieces' bytes before normalisation, reported BPB up to
20% too good; `audit_bytes` checks the rule against the decoded text's real byte count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from golf.core.utils import GolfError
from golf.data.folder import load_byte_sidecar


@dataclass
class Luts:
    base_bytes: torch.Tensor  # int16 [V]
    has_leading_space: torch.Tensor  # bool [V]
    is_boundary: torch.Tensor  # bool [V]
    # The val split's byte sidecar (int32 [N], one entry per token of the stream, BOS 0), when the data
    # folder has one (CaseOps): a token's bytes are then its original-text bytes, read by position,
    # not the LUTs' (which would count the transformed text, operators included). golf issue 19.
    sidecar: torch.Tensor | None = None

    @property
    def vocab_size(self) -> int:
        return int(self.base_bytes.numel())

    def to(self, device) -> "Luts":
        return Luts(self.base_bytes.to(device), self.has_leading_space.to(device), self.is_boundary.to(device),
                    None if self.sidecar is None else self.sidecar.to(device))

    def check_stream(self, num_tokens: int) -> None:
        """A sidecar must cover the stream it scores (the same val split, the same or a longer prefix)."""
        if self.sidecar is not None and int(self.sidecar.numel()) < num_tokens:
            raise GolfError(f"the byte sidecar holds {int(self.sidecar.numel()):,} entries but the val stream "
                            f"{num_tokens:,} tokens; load both from the same data folder (golf.data.folder.load_byte_sidecar)")


def build_luts(tokenizer, device: str | torch.device = "cpu", sidecar: np.ndarray | None = None) -> Luts:
    """The byte LUTs of `tokenizer`, and the val split's byte sidecar when given (see Luts.sidecar)."""
    base, space, boundary = tokenizer.bpb_luts()
    return Luts(torch.as_tensor(np.asarray(base, dtype=np.int16), device=device),
                torch.as_tensor(np.asarray(space, dtype=bool), device=device),
                torch.as_tensor(np.asarray(boundary, dtype=bool), device=device),
                None if sidecar is None else torch.as_tensor(np.asarray(sidecar, dtype=np.int32), device=device))


def data_luts(data_path, tokenizer, device: str | torch.device = "cpu", max_tokens: int = 0) -> Luts:
    """build_luts for scoring a data folder's val split: with its byte sidecar when it has one
    (max_tokens: the same prefix as load_split's); a CaseOps folder without one is refused."""
    return build_luts(tokenizer, device, load_byte_sidecar(data_path, tokenizer, max_tokens))


def token_bytes(prev_ids: torch.Tensor, tgt_ids: torch.Tensor, luts: Luts,
                tgt_pos: torch.Tensor | None = None) -> torch.Tensor:
    """Bytes each target token stands for, given the token before it (same shapes; int32).

    With a byte sidecar (luts.sidecar) the bytes are looked up by the targets' positions in the val
    stream, `tgt_pos` (same shape), which every caller passes: without them a sidecar cannot be read."""
    if getattr(luts, "sidecar", None) is not None:
        if tgt_pos is None:
            raise GolfError("token_bytes: this data folder counts bytes from its byte sidecar, by stream "
                            "position; pass tgt_pos (the targets' positions in the val stream)")
        return luts.sidecar[torch.as_tensor(tgt_pos, device=luts.sidecar.device).long()].to(torch.int32)
    prev_ids, tgt_ids = prev_ids.long(), tgt_ids.long()
    n = luts.base_bytes[tgt_ids].to(torch.int32)
    n += (luts.has_leading_space[tgt_ids] & ~luts.is_boundary[prev_ids]).to(torch.int32)
    return n


def bits_per_byte(loss_sum_nats: float, num_tokens: int, num_bytes: int) -> float:
    """BPB from a summed CE in nats: (mean loss / ln 2) * tokens / bytes = sum / (ln 2 * bytes).

    num_tokens is accepted (the challenge writes it as mean-loss x tokens/bytes) but cancels."""
    del num_tokens
    if num_bytes <= 0:
        raise ValueError("bits_per_byte: no bytes were scored")
    return float(loss_sum_nats) / (math.log(2.0) * float(num_bytes))


def doc_lut_bytes(ids: np.ndarray, base: np.ndarray, space: np.ndarray, boundary: np.ndarray,
                  bos_id: int = 1) -> int:
    """LUT bytes of one document given as its tokens without BOS (the previous token of the first
    one is BOS, a boundary token)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        return 0
    prev = np.concatenate([[bos_id], ids[:-1]])
    return int(base[ids].astype(np.int64).sum() + (space[ids] & ~boundary[prev]).sum())


def audit_bytes(tokenizer, texts: Iterable[str], max_mismatches: int = 5) -> dict:
    """Tokenize each text, count its bytes with the LUTs (document = BOS + tokens) and compare with
    len(decode(tokens).encode('utf-8')), exactly, per document.

    We compare against the *decoded* text, not the original: nmt_nfkc normalisation rewrites the
    text (newlines/tabs become spaces, runs of spaces collapse, leading/trailing spaces go, NFKC
    folds ligatures and full-width forms), and BPB is defined over what the tokens stand for. The
    original's byte count is reported alongside (`text_bytes`) for information."""
    base, space, boundary = (np.asarray(a) for a in tokenizer.bpb_luts())
    docs = lut_total = real_total = text_total = tokens = 0
    mismatches = []
    for i, text in enumerate(texts):
        ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
        lut = doc_lut_bytes(ids, base, space, boundary, tokenizer.bos_id)
        real = len(tokenizer.decode(ids.tolist()).encode("utf-8"))
        docs += 1
        tokens += int(ids.size) + 1  # + BOS
        lut_total += lut
        real_total += real
        text_total += len(text.encode("utf-8", errors="replace"))
        if lut != real and len(mismatches) < max_mismatches:
            mismatches.append({"doc": i, "lut_bytes": lut, "decoded_bytes": real, "text_head": text[:80]})
    n_bad = len(mismatches)
    return {
        "ok": lut_total == real_total and n_bad == 0,
        "docs": docs,
        "tokens": tokens,
        "lut_bytes": lut_total,
        "decoded_bytes": real_total,
        "text_bytes": text_total,
        "bytes_per_token": lut_total / max(1, tokens),
        "mismatches": mismatches,
        "tokenizer_kind": tokenizer.kind,
        "tokenizer_sha256": tokenizer.sha256,
    }
