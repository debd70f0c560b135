"""Input-side extras of the record stack: BigramHash embedding and SmearGate.

Both only look at *input* tokens at positions <= t (the target of position t is idx[t+1], which
neither sees), and neither carries information across a document boundary: a position whose token
is BOS (or the first position of the sequence) gets nothing from the position before it.
(BigramHash and SmearGate: public parameter-golf records, e.g. "Int6 MLP3x SmearGate BigramHash".)
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from golf.data.shards import BOS_ID
from golf.model.layers import CastedLinear, QATEmbedding
from golf.model.mixer import tag


def doc_reset(idx: Tensor) -> Tensor:
    """bool [B, T]: True where the previous position belongs to another document (or there is
    none): the first position and every BOS position."""
    reset = idx == BOS_ID
    reset[:, 0] = True
    return reset


class BigramHash(nn.Module):
    """Hash (idx[t-1], idx[t]) into a table of `buckets` rows of width `dim`, project to the model
    width. The last bucket is reserved for positions with no in-document predecessor, so a key never
    mixes two documents. The projection starts at zero (a fresh model ignores the table) but the
    table does not: with both at zero neither would ever receive a gradient. Scaled by a learned
    scalar as in the records."""

    def __init__(self, buckets: int, dim: int, model_dim: int):
        super().__init__()
        if buckets < 2:
            raise ValueError(f"BIGRAM_VOCAB_SIZE={buckets}: need at least 2 buckets (or 0 to switch it off)")
        self.buckets = buckets
        self.table = QATEmbedding(buckets, dim)
        if dim != model_dim:
            nn.init.normal_(self.table.weight, std=0.02)
        else:
            nn.init.zeros_(self.table.weight)
        # Stored at QUANT_OTHER_BITS (int6), not the token embedding's int8: the hashed table is
        # 1.3M params in the record and int8 would cost ~0.3 MB more for little BPB.
        tag(self.table.weight, quant="other", optim="embed")
        self.proj = CastedLinear(dim, model_dim) if dim != model_dim else None
        if self.proj is not None:
            nn.init.zeros_(self.proj.weight)
            tag(self.proj.weight, quant="other", optim="matrix")
        self.scale = tag(nn.Parameter(torch.tensor(0.05)), quant="control", optim="scalar")

    def keys(self, idx: Tensor) -> Tensor:
        """idx [B, T] long -> bucket ids [B, T] long (reserved bucket = buckets - 1)."""
        mod = self.buckets - 1
        cur = idx.to(torch.int64)
        prev = torch.cat([torch.zeros_like(cur[:, :1]), cur[:, :-1]], dim=1)
        h = torch.bitwise_xor(36313 * cur, 27191 * prev) % mod  # multiplicative hash (records)
        return torch.where(doc_reset(idx), torch.full_like(h, mod), h)

    def forward(self, idx: Tensor) -> Tensor:
        e = self.table(self.keys(idx))
        if self.proj is not None:
            e = self.proj(e)
        return e * self.scale.to(e.dtype)


class SmearGate(nn.Module):
    """y[t] = x[t] + g * (x[t-1] - x[t]) with a learned per-channel gate g = sigmoid(w), w = 0 at
    init as in the records (g = 0.5). Reset positions (first, BOS) keep x[t] unchanged: nothing
    crosses a document."""

    def __init__(self, dim: int, init: float = 0.0):
        super().__init__()
        self.gate = tag(nn.Parameter(torch.full((dim,), init)), quant="control", optim="scalar")

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        prev = torch.cat([x[:, :1], x[:, :-1]], dim=1)
        keep = (~doc_reset(idx)).to(x.dtype)[..., None]
        g = torch.sigmoid(self.gate.to(x.dtype)) * keep
        return x + g * (prev - x)
