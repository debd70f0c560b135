"""The plug-in interface every sequence mixer and memory mechanism implements.

A *sequence mixer* replaces a block's attention: it maps x [B, T, D] to y [B, T, D] and may only
look at positions <= t to produce position t (tests/memory check this for every registered mixer).
Mixers are chosen per layer by `MIXERS=attn,attn,stream,...`; the backbone never imports a
mechanism directly, only the registry (golf/model/mechanisms/__init__.py).

Every parameter carries two tags, read by the quantiser (golf/compress/quant.py) and the optimizer
(golf/train/optim.py), so a new mechanism never edits either:
  quant group: "mlp" | "attn" | "embed" | "other" | "control"   (control = kept in fp16)
  optim group: "matrix" (Muon) | "embed" | "scalar" | "memory"    (memory = AdamW, no weight decay)
Untagged parameters are classified by shape: 2-D -> ("other", "matrix"), else ("control", "scalar").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from golf.core.config import GPTConfig

QUANT_GROUPS = ("mlp", "attn", "embed", "other", "control")
OPTIM_GROUPS = ("matrix", "embed", "scalar", "memory")


def tag(p: nn.Parameter, quant: str | None = None, optim: str | None = None) -> nn.Parameter:
    """Attach quantisation / optimizer group tags to a parameter (returns it for chaining)."""
    if quant is not None:
        assert quant in QUANT_GROUPS, quant
        p._golf_quant = quant  # type: ignore[attr-defined]
    if optim is not None:
        assert optim in OPTIM_GROUPS, optim
        p._golf_optim = optim  # type: ignore[attr-defined]
    return p


def quant_group_of(p: Tensor) -> str:
    g = getattr(p, "_golf_quant", None)
    if g is not None:
        return g
    return "other" if p.ndim >= 2 else "control"


def optim_group_of(p: Tensor) -> str:
    g = getattr(p, "_golf_optim", None)
    if g is not None:
        return g
    return "matrix" if p.ndim >= 2 else "scalar"


@dataclass
class MixerContext:
    """What a mixer may use besides x. Built once per forward by the backbone.

    cos/sin: rotary tables for positions [0, T) of the full sequence (prefix included), or None.
    num_prefix: how many leading positions are memory (not real text, visible to all; under
    DOC_ATTENTION those with a document id, RMT's memory, to that document only).
    doc_start: bool [B, T], True at BOS positions (mixers with state may reset there), or None.
    doc_ids: long [B, T] with DOC_ATTENTION=1 (else None): the document of every position, from
    document_ids(); mixers then attend and carry state within a document only (see doc_resets).
    """

    cos: Tensor | None = None
    sin: Tensor | None = None
    num_prefix: int = 0
    doc_start: Tensor | None = None
    # model-level mechanisms (ModelMechanism below); attention layers call attention_extra()
    mechanisms: tuple = ()
    doc_ids: Tensor | None = None
    memo: dict = field(default_factory=dict)  # per-forward cache shared by the layers (document masks)

    def attention_extra(self, layer_idx: int, q: Tensor) -> Tensor | None:
        """Sum of what the model's mechanisms add to attention layer `layer_idx`'s per-head output,
        given its (normed, gained, un-rotated) queries q [B, H, T, hd]; None if nothing."""
        out = None
        for m in self.mechanisms:
            extra = m.attention_extra(layer_idx, q)
            if extra is not None:
                out = extra if out is None else out + extra
        return out


def document_ids(bos: Tensor, num_prefix: int = 0) -> Tensor:
    """bos [B, T] (True at BOS) -> long [B, num_prefix + T]: the document of each position (DOC_ATTENTION=1).
    Documents are BOS + tokens, so the id is the running count of BOS; a row that starts mid-document
    has its first segment as one document (id 0). Prefix positions (memory tokens) get -1: they are
    learned parameters, not text, so which document may see them is each mixer's rule (attention:
    every document; recurrent state: none, see doc_resets).
    DOC_PACKING=1 (golf/data/packing.py) relies on both ends of a row: a row that starts with a long
    document's later piece (no BOS) starts a document here already, and the padding after a row's
    last piece (id 0, never BOS) joins that piece's document but comes after every real token, so
    causally no real token sees it (and its targets are ignored by the loss)."""
    ids = bos.to(torch.int64).cumsum(dim=1)
    if num_prefix:
        ids = torch.cat([ids.new_full((bos.shape[0], num_prefix), -1), ids], dim=1)
    return ids


# The log decay a recurrent mixer puts at a reset position: exp(-1e4) is exactly 0 in float32 and
# float64, while -inf would turn the chunked scans' cumulative-sum differences into inf - inf = nan.
RESET_LOG_DECAY = -1e4


def doc_resets(ctx: "MixerContext | None") -> Tensor | None:
    """bool [B, T]: True where a recurrent mixer's state must start from zero (a position whose
    document differs from the one before: every BOS, and the first real token after a memory-token
    prefix), or None without DOC_ATTENTION. A state is a summary of everything before it, so a
    reset cannot keep the prefix and drop the previous document: recurrent layers do not see memory
    tokens under DOC_ATTENTION (attention layers do). RMT's memory has the id of the document it
    belongs to (golf/model/mechanisms/rmt.py), so a recurrent state of that document starts there."""
    d = None if ctx is None else ctx.doc_ids
    if d is None:
        return None
    return torch.cat([torch.zeros_like(d[:, :1], dtype=torch.bool), d[:, 1:] != d[:, :-1]], dim=1)


class SequenceMixer(nn.Module):
    """Base class. Subclasses set `name`, build parameters in __init__(cfg, layer_idx) and
    implement forward(x, ctx) -> y. Recurrent mixers also implement the state API below, and
    `forward` (the fast chunked/parallel path) must agree with `forward_recurrent` (the naive
    step-by-step reference) in values and gradients."""

    name: ClassVar[str] = ""
    recurrent: ClassVar[bool] = False

    def __init__(self, cfg: GPTConfig, layer_idx: int):
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx

    def forward(self, x: Tensor, ctx: MixerContext) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- recurrent mixers only -------------------------------------------------------------
    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no recurrent state")

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        """One token: x_t [B, D] -> (y_t [B, D], new state)."""
        raise NotImplementedError(f"{type(self).__name__} has no recurrent step")

    def forward_recurrent(self, x: Tensor, ctx: MixerContext) -> Tensor:
        """Reference: run `step` over the sequence."""
        state = self.init_state(x.shape[0], x.device, x.dtype)
        ys = []
        for t in range(x.shape[1]):
            y, state = self.step(x[:, t], state)
            ys.append(y)
        return torch.stack(ys, dim=1)


# ---------------------------------------------------------------------------------------------
# Model-level mechanisms: things that are not a per-layer sequence mixer (memory tokens, persistent
# memory, weight-tied depth). The backbone (golf/model/gpt.py) builds every enabled one and only calls
# the hooks below, so a new mechanism never edits the backbone. Default hooks do nothing.


class ModelMechanism(nn.Module):
    """Base class. Subclasses set `name`, implement `enabled(cfg)` and override the hooks they need.

    Order in GPT.forward: embeddings -> [run_stack(), which may call the stack per segment] -> stack:
    prefix() -> for each logical layer i: layer_input(x, i), block (its attention calls
    attention_extra(unique_block_idx, q)) -> drop the prefix -> logits.
    """

    name: ClassVar[str] = ""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg

    @classmethod
    def enabled(cls, cfg: GPTConfig) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def technique(cls, cfg: GPTConfig) -> str:
        """One line for a record's technique list, when enabled(cfg)."""
        return cls.name.replace("_", " ")

    # positions prepended to every sequence by prefix(); they are visible to every real token,
    # carry no loss and are stripped before the logits
    num_prefix: int = 0

    def prefix(self, x: Tensor) -> Tensor:
        """x [B, T, D] -> [B, num_prefix + T, D]."""
        return x

    def block_schedule(self, num_layers: int) -> list[int] | None:
        """Which unique block each logical layer runs (weight-tied depth), or None (one each)."""
        return None

    def layer_input(self, x: Tensor, logical_idx: int) -> Tensor:
        """Adjust the residual stream before logical layer `logical_idx` runs."""
        return x

    def attention_extra(self, layer_idx: int, q: Tensor) -> Tensor | None:
        """Extra per-head attention output [B, H, T, hd] for attention module `layer_idx`."""
        return None

    # False: golf/eval/generate.py must not decode this model incrementally (full recompute instead)
    incremental: bool = True

    def run_stack(self, x: Tensor, doc_start: Tensor, stack: Callable[..., Tensor]) -> Tensor | None:
        """Run the blocks yourself, or None (the backbone runs them once over the whole sequence).
        x [B, T, D]: the embeddings; doc_start [B, T]: True at BOS. `stack(x', doc_start', num_memory)`
        runs every block (with the other mechanisms' hooks) over any [B, T', D] input whose first
        num_memory positions are memory, returning [B, T', D] before the final norm. Must return the
        last block's output for the T real positions [B, T, D] (RMT: segments with carried memory)."""
        return None
