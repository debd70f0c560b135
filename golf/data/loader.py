"""Distributed training token stream.

The train shards, concatenated in file order, form one circular stream of tokens (documents are
already BOS-separated inside the shards, as in the challenge's TokenStream). Micro-batch k of the
run covers the global window [start + k*G, start + (k+1)*G + 1) of that stream, G = world_size x
local tokens; rank r takes its own contiguous slice of it (+1 token for the shifted targets).
So the position is a single counter: any (seed, micro-batch index) gives the same tokens on any
number of restarts, and resume is exact. The seed picks the starting offset, so different seeds see
the data in a different phase while paired A/B runs with the same seed see identical batches.

DOC_PACKING=1 (golf/data/packing.py) reads the same stream in the same order from the first BOS at or
after that offset, but packs whole documents into rows (padded at their ends). Rows no longer sit
at fixed offsets, so the position is a cursor advanced by each global micro-batch's plan: every rank
plans the same world_size x B rows from the same cursor and keeps its own B, so ranks stay disjoint
and in step; the checkpoint carries the cursor with the micro-batch count.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from golf.core.utils import GolfError
from golf.data.folder import shard_files
from golf.data.packing import PAD_TARGET, pack_rows, rows_from_spans, window_tokens
from golf.data.shards import BOS_ID, read_shard


class TokenLoader:
    def __init__(self, shards: Sequence[np.ndarray], seq_len: int, local_batch_seqs: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0, doc_packing: bool = False,
                 source: str = "the train split"):
        self.shards = [s for s in shards if len(s) > 0]
        if not self.shards:
            raise GolfError("the train split has no tokens; run `make data` (see README) to build shards")
        self.lengths = np.array([len(s) for s in self.shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.total = int(self.offsets[-1])
        self.seq_len, self.local_batch_seqs = seq_len, local_batch_seqs
        self.rank, self.world_size = rank, world_size
        self.local_tokens = seq_len * local_batch_seqs
        self.global_tokens = self.local_tokens * world_size
        if self.global_tokens + 1 > self.total:
            raise GolfError(f"the train split has {self.total} tokens, fewer than one global micro-batch "
                            f"({self.global_tokens}); use more data or a smaller TRAIN_BATCH_TOKENS")
        # a seed-dependent phase, aligned to whole sequences (deterministic: no global RNG)
        self.start = int(np.random.default_rng(seed).integers(0, self.total // seq_len)) * seq_len
        self._served = 0
        self.doc_packing = bool(doc_packing)
        if self.doc_packing:
            self.source = source
            self.first_doc = self._first_bos(self.start)
            self.cursor = self.first_doc  # stream position (mod total) of micro-batch _served's plan

    @classmethod
    def from_data_path(cls, data_path: str | Path, vocab_size: int | None, **kw) -> "TokenLoader":

        files = shard_files(data_path, "train")
        return cls([read_shard(f, vocab_size) for f in files], source=f"the train split of {data_path}", **kw)

    @property
    def batches_served(self) -> int:
        """Micro-batches handed out (read-only: seek() moves the stream, cursor included)."""
        return self._served

    def seek(self, k: int) -> None:
        """Make micro-batch k the next one (the trainer rewinds to 0 after its warm-up steps)."""
        if self.doc_packing:
            self.cursor = self._cursor_at(k)
        self._served = int(k)

    # --- reading -------------------------------------------------------------------------------
    def _read(self, start: int, n: int) -> np.ndarray:
        """n tokens of the circular stream from absolute position `start`."""
        out = np.empty(n, dtype=np.int64)
        filled = 0
        pos = start % self.total
        while filled < n:
            i = int(np.searchsorted(self.offsets, pos, side="right") - 1)
            lo = pos - int(self.offsets[i])
            take = min(n - filled, int(self.lengths[i]) - lo)
            out[filled:filled + take] = self.shards[i][lo:lo + take]
            filled += take
            pos = (pos + take) % self.total
        return out

    def _first_bos(self, pos: int) -> int:
        """Stream position (mod total) of the first BOS at or after pos, scanning a chunk at a time."""
        chunk = 1 << 22
        for off in range(0, self.total, chunk):
            hits = np.flatnonzero(self._read(pos + off, min(chunk, self.total - off)) == BOS_ID)
            if hits.size:
                return (pos + off + int(hits[0])) % self.total
        raise GolfError(f"DOC_PACKING=1 but {self.source} has no BOS token (id {BOS_ID}), so it has no documents "
                        "to pack; re-create the data with `make data` (every document starts with BOS) or set "
                        "DOC_PACKING=0")

    # --- DOC_PACKING=1 -------------------------------------------------------------------------
    def _plan(self, cursor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """The global micro-batch from `cursor`: (window, starts, ends) of its world_size x B rows
        and the next cursor. Every rank computes the same plan."""
        rows = self.world_size * self.local_batch_seqs
        window = self._read(cursor, window_tokens(self.seq_len, rows))
        starts, ends = pack_rows(window, self.seq_len, rows)
        return window, starts, ends, (cursor + int(ends[-1])) % self.total

    def _cursor_at(self, k: int) -> int:
        """Where micro-batch k's plan starts: planned forward from the current cursor, or from the
        first document for an earlier k (each plan is one vectorised pass over its window)."""
        cursor, i = (self.cursor, self._served) if k >= self._served else (self.first_doc, 0)
        while i < k:
            cursor, i = self._plan(cursor)[3], i + 1
        return cursor

    def _packed(self, cursor: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        window, starts, ends, nxt = self._plan(cursor)
        mine = slice(self.rank * self.local_batch_seqs, (self.rank + 1) * self.local_batch_seqs)
        x, y = rows_from_spans(window, starts[mine], ends[mine], self.seq_len)
        return torch.from_numpy(x), torch.from_numpy(y), nxt

    def batch_at(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Micro-batch k for this rank: x [B, T] and y = x shifted by one (int64, CPU). With
        DOC_PACKING=1, padded positions have x = 0 and y = -100 (ignored by the loss)."""
        if self.doc_packing:
            return self._packed(self._cursor_at(k))[:2]
        begin = self.start + k * self.global_tokens + self.rank * self.local_tokens
        buf = torch.from_numpy(self._read(begin, self.local_tokens + 1))
        x = buf[:-1].view(self.local_batch_seqs, self.seq_len)
        y = buf[1:].view(self.local_batch_seqs, self.seq_len)
        return x, y

    def next_batch(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        if self.doc_packing:
            x, y, self.cursor = self._packed(self.cursor)
        else:
            x, y = self.batch_at(self._served)
        self._served += 1
        dev = torch.device(device)
        if dev.type == "cuda":
            return x.pin_memory().to(dev, non_blocking=True), y.pin_memory().to(dev, non_blocking=True)
        return x, y

    def doc_stats(self, num_batches: int = 8) -> dict:
        """What DOC_ATTENTION (and DOC_PACKING) change, measured on this rank's next `num_batches`
        micro-batches (read, not consumed: the position and resume are untouched). mean_doc_tokens:
        tokens per BOS (documents' mean length); rows_with_boundary: the share of rows with a BOS
        after their first position (where attention within documents differs from plain causal
        attention). Unpacked rows are contiguous spans of the stream, so they may also start
        mid-document; packed rows start at a document (or a long one's piece) and end in padding,
        whose share of all positions is padded_share."""
        bos = rows = crossed = real = 0
        cursor = self.cursor if self.doc_packing else 0
        for k in range(self._served, self._served + max(1, num_batches)):
            if self.doc_packing:
                x, y, cursor = self._packed(cursor)
            else:
                x, y = self.batch_at(k)
            bos += int((x == BOS_ID).sum())
            crossed += int((x[:, 1:] == BOS_ID).any(dim=1).sum())
            real += int((y != PAD_TARGET).sum())
            rows += x.shape[0]
        out = {"mean_doc_tokens": real / max(bos, 1), "rows_with_boundary": crossed / rows, "doc_stats_rows": rows}
        if self.doc_packing:
            out["padded_share"] = 1.0 - real / (rows * self.seq_len)
        return out

    # --- resume --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"batches_served": self._served, "start": self.start, "total": self.total,
                 "global_tokens": self.global_tokens}
        if self.doc_packing:  # (unpacked checkpoints keep their old keys)
            state.update(doc_packing=1, cursor=self.cursor)
        return state

    def load_state_dict(self, state: dict) -> None:
        if state["total"] != self.total or state["global_tokens"] != self.global_tokens:
            raise GolfError(
                f"checkpoint's data stream ({state['total']} tokens, {state['global_tokens']} per micro-batch) "
                f"differs from this run's ({self.total}, {self.global_tokens}); resume with the same DATA_PATH, "
                "TRAIN_BATCH_TOKENS, TRAIN_SEQ_LEN and number of processes")
        packed = bool(state.get("doc_packing", 0))
        if packed != self.doc_packing:
            raise GolfError(f"checkpoint's loader was DOC_PACKING={int(packed)} but this run's is "
                            f"DOC_PACKING={int(self.doc_packing)}; resume with the checkpoint's DOC_PACKING")
        self.start = int(state["start"])
        self._served = int(state["batches_served"])
        if packed:
            self.first_doc = self._first_bos(self.start)
            self.cursor = int(state["cursor"])
