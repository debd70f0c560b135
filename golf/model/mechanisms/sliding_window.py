"""Sliding-window attention, mixer "swa": each token attends to the last ATTN_WINDOW tokens (or
ATTN_WINDOW_FRAC of TRAIN_SEQ_LEN when ATTN_WINDOW=0) plus every memory-token prefix position.
Mix local and global layers per layer, e.g. MIXERS=swa,swa,swa,attn (tiled over NUM_LAYERS) or
MIXERS=swa_pattern with GLOBAL_EVERY=4 (3 local : 1 global; golf.model.gpt.layer_mixers).
Credit: Longformer (Beltagy et al. 2020); local:global interleaving as in Gemma 2/3.
The window is fixed in tokens at build time, so evaluating at a longer context keeps it.
"""
from __future__ import annotations

from golf.core.config import GPTConfig
from golf.core.utils import GolfError
from golf.model.attention import CausalSelfAttention


class SlidingWindowAttention(CausalSelfAttention):
    name = "swa"

    @staticmethod  # static: the memory study reads an arm's window from its config (golf/submit/study.py)
    def window_size(cfg: GPTConfig) -> int:
        w = int(cfg.attn_window)
        if w <= 0:
            w = int(round(float(cfg.attn_window_frac) * int(cfg.train_seq_len)))
        if w < 1:
            raise GolfError(f"sliding window of {w} tokens: set ATTN_WINDOW >= 1 or a larger ATTN_WINDOW_FRAC")
        return w
