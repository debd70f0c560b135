"""Distributed training token stream.

The train shards, concatenated in file order, form one circular stream of tokens (documents are
already BOS-separated inside the shards, as in the challenge's TokenStream). Micro-batch k of the
run covers the global window [start + k*G, start + (k+1)*G + 1) of that stream, G = world_size x
local tokens; rank r takes its own contiguous slice of it (+1 token for the shifted targets).
So the position is a single counter: any (seed, micro-batch index) gives the same tokens on any
number of restarts, and resume is exact. The seed picks the starting offset, so different seeds see
the data in a different phase while paired A/B runs with the same seed see identical batches.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from golf.core.utils import GolfError
from golf.data.folder import shard_files
from golf.data.shards import BOS_ID, read_shard


class TokenLoader:
    def __init__(self, shards: Sequence[np.ndarray], seq_len: int, local_batch_seqs: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0):
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
        self.batches_served = 0

    @classmethod
    def from_data_path(cls, data_path: str | Path, vocab_size: int | None, **kw) -> "TokenLoader":

        files = shard_files(data_path, "train")
        return cls([read_shard(f, vocab_size) for f in files], **kw)

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

    def batch_at(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Micro-batch k for this rank: x [B, T] and y = x shifted by one (int64, CPU)."""
        begin = self.start + k * self.global_tokens + self.rank * self.local_tokens
        buf = torch.from_numpy(self._read(begin, self.local_tokens + 1))
        x = buf[:-1].view(self.local_batch_seqs, self.seq_len)
        y = buf[1:].view(self.local_batch_seqs, self.seq_len)
        return x, y

    def next_batch(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch_at(self.batches_served)
        self.batches_served += 1
        dev = torch.device(device)
        if dev.type == "cuda":
            return x.pin_memory().to(dev, non_blocking=True), y.pin_memory().to(dev, non_blocking=True)
        return x, y

    def doc_stats(self, num_batches: int = 8) -> dict:
        """What DOC_ATTENTION changes, measured on this rank's next `num_batches` micro-batches
        (read, not consumed: the position and resume are untouched). Rows stay contiguous spans of
        the stream (the challenge's token order), so a row may hold several documents and start
        mid-document: mean_doc_tokens is tokens per BOS, rows_with_boundary the share of rows with
        a BOS after their first position (where attention within documents differs from plain
        causal attention)."""
        bos = rows = crossed = 0
        for k in range(self.batches_served, self.batches_served + max(1, num_batches)):
            x = self.batch_at(k)[0]
            bos += int((x == BOS_ID).sum())
            crossed += int((x[:, 1:] == BOS_ID).any(dim=1).sum())
            rows += x.shape[0]
        return {"mean_doc_tokens": rows * self.seq_len / max(bos, 1), "rows_with_boundary": crossed / rows,
                "doc_stats_rows": rows}

    # --- resume --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"batches_served": self.batches_served, "start": self.start, "total": self.total,
                "global_tokens": self.global_tokens}

    def load_state_dict(self, state: dict) -> None:
        if state["total"] != self.total or state["global_tokens"] != self.global_tokens:
            raise GolfError(
                f"checkpoint's data stream ({state['total']} tokens, {state['global_tokens']} per micro-batch) "
                f"differs from this run's ({self.total}, {self.global_tokens}); resume with the same DATA_PATH, "
                "TRAIN_BATCH_TOKENS, TRAIN_SEQ_LEN and number of processes")
        self.start = int(state["start"])
        self.batches_served = int(state["batches_served"])
