"""Sample text from a quantised artifact: `python -m golf.eval.generate --artifact runs/<id>/model.ptz`.

Two decoding paths behind one `sample(...)`:
- full recompute: run the whole model on the context for every new token. Works for any model.
- incremental: for models whose sequence mixers are all recurrent (stream, deltanet, hypermix) or
  attention (attn, swa; golf/model/attention.py), each mixer carries its state from token to token: a
  recurrent one its state, an attention one a KV cache (keys after q/k norm and RoPE at their
  absolute positions, memory-token prefix first; sliding-window layers keep only the prefix and
  their window). A new token then costs one position per layer instead of the whole context.
  The backbone itself is reused: every block's mixer is temporarily wrapped so that, inside
  `model.hidden(window)`, it consumes only the newest position with `step()` / `forward_cached()`
  and the carried state (other positions of the short window get zeros; they are discarded). The
  window (the last few tokens) only feeds the embedding-level features that look one token back
  (BigramHash, SmearGate); memory-token prefix positions are consumed once, in the prefill.
  Weight-tied blocks keep one state per logical layer; persistent memory needs no state.
  Context length: full recompute feeds the model at most its TRAIN_SEQ_LEN last tokens. A model
  with attention does exactly the same: once the context outgrows TRAIN_SEQ_LEN, every new token
  re-prefills the caches from the last TRAIN_SEQ_LEN tokens (shifting a KV cache is not exact:
  positions and every layer's inputs change), so caches stay bounded and the logits stay those of
  full recompute, at full recompute's cost past that length. Pure recurrent models carry their
  O(1) state on without a cut.
  Before it is trusted, the incremental path is checked once against full recompute on the prompt's
  last token; on any mismatch (a backbone feature it does not handle) it falls back to full recompute.
  DOC_ATTENTION=1: the model itself sees one document at a time (full recompute needs nothing
  more). A carried state does not know about boundaries, so the decoder re-prefills (an exact
  masked forward) when a new document starts (the newest token is BOS) and, for a model with a KV
  cache, on every step while the cached context holds a boundary (a cached step attends to the
  whole cache); a context that is one document, the usual case, decodes incrementally.

Sampling: temperature (0 = greedy), then top-k, then top-p (nucleus) filtering. Generation stops at
BOS (id 1): the next document would begin there.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from golf.compress.artifact import load_artifact
from golf.core.utils import GolfError, main_guard
from golf.data.folder import tokenizer_path
from golf.data.shards import BOS_ID
from golf.data.tokenizer import load_tokenizer

WINDOW = 4  # tokens fed to the embeddings per incremental step (features look back 1 token)


# ---------------------------------------------------------------------------------------------
# filtering


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """logits [B, V] -> logits with everything outside the top-k / top-p nucleus set to -inf.
    top_k <= 0 and top_p >= 1 are off; the most likely token always survives."""
    logits = logits.clone()
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits[logits < kth] = float("-inf")
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits[drop] = float("-inf")
    return logits


def pick(logits: Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None) -> Tensor:
    """logits [B, V] -> next token ids [B]."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


# ---------------------------------------------------------------------------------------------
# incremental decoding with carried mixer state


def _mixer_kind(mixer: nn.Module) -> str | None:
    """"recurrent" (step/state API), "kv" (attention with forward_cached) or None (unsupported)."""
    if getattr(mixer, "recurrent", False):
        return "recurrent"
    if callable(getattr(mixer, "forward_cached", None)):
        return "kv"
    return None


class _StatefulMixer(nn.Module):
    """Wraps a mixer inside a block. mode "prefill": run the whole sequence, keep the final state
    (recurrent mixers) or the keys/values (attention: a KVCache); mode "step": only the newest
    position, through `step()` or `forward_cached()`. One state per call within a forward, so
    weight-tied blocks run as several logical layers keep separate states."""

    def __init__(self, inner: nn.Module, decoder: "IncrementalDecoder"):
        super().__init__()
        self.inner, self.decoder = inner, decoder
        self.kind = _mixer_kind(inner)
        self.states: list[Any] = []

    def forward(self, x: Tensor, ctx: Any) -> Tensor:
        i = self.decoder.call_index(self)
        if self.decoder.mode == "prefill":
            if self.kind == "kv":
                y, state = self.inner.forward_cached(x, ctx, None)
            elif hasattr(self.inner, "forward_with_state"):
                y, state = self.inner.forward_with_state(x, ctx)
            else:
                state = self.inner.init_state(x.shape[0], x.device, x.dtype)
                ys = []
                for t in range(x.shape[1]):
                    y_t, state = self.inner.step(x[:, t], state)
                    ys.append(y_t)
                y = torch.stack(ys, dim=1)
            self.states.append(state)
            return y
        if self.kind == "kv":
            cache = self.states[i]
            cos, sin = self.decoder.rotary_at(cache.length, ctx, x.device)
            step_ctx = dataclasses.replace(ctx, cos=cos, sin=sin)
            y_t, self.states[i] = self.inner.forward_cached(x[:, -1:], step_ctx, cache)
            y_t = y_t[:, 0]
        else:
            y_t, self.states[i] = self.inner.step(x[:, -1], self.states[i])
        y = x.new_zeros(x.shape)  # earlier window positions are never read (nothing mixes them)
        y[:, -1] = y_t.to(x.dtype)
        return y


def incremental_supported(model: nn.Module) -> bool:
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "hidden") or not hasattr(model, "logits_from_hidden"):
        return False
    if not all(getattr(m, "incremental", True) for m in getattr(model, "mechanisms", {}).values()):
        return False  # e.g. RMT: segments with carried memory, decoded by full recompute
    return all(_mixer_kind(b.mixer) is not None for b in blocks)


def _no_prefix(x: Tensor) -> Tensor:
    return x


class IncrementalDecoder:
    """Carries every mixer's state (recurrent state or attention KV cache) across tokens; see the
    module docstring. max_ctx (default: the model's train_seq_len; 0 = unbounded) bounds the context
    of models with attention exactly as full recompute does: once the context outgrows it, each new
    token re-prefills the caches from the last max_ctx tokens."""

    def __init__(self, model: nn.Module, max_ctx: int | None = None):
        if not incremental_supported(model):
            raise GolfError("generate: incremental decoding needs every sequence mixer to be recurrent "
                            "(stream, deltanet, hypermix) or attention with a KV cache (attn, swa)")
        self.model = model
        self.mode = "prefill"
        self._counts: dict[int, int] = {}
        self._rope: tuple[int, Any, Any] | None = None
        if max_ctx is None:
            max_ctx = int(getattr(getattr(model, "cfg", None), "train_seq_len", 0) or 0)
        if max_ctx < 0:
            raise GolfError(f"generate: max_ctx={max_ctx} must be >= 0 (0 = unbounded)")
        self.max_ctx = max_ctx
        # a KV cache grows with the context and its positions are absolute: bound it like full
        # recompute bounds its window; pure recurrent models carry O(1) state and are never cut
        self.has_cache = any(_mixer_kind(b.mixer) == "kv" for b in model.blocks)
        self.doc_attention = bool(getattr(getattr(model, "cfg", None), "doc_attention", False))
        self.prefills = self.steps = 0  # how the tokens were computed (tests, benchmarks)

    def call_index(self, wrapper: _StatefulMixer) -> int:
        i = self._counts.get(id(wrapper), 0)
        self._counts[id(wrapper)] = i + 1
        return i

    def rotary_at(self, pos: int, ctx: Any, device: torch.device) -> tuple[Tensor | None, Tensor | None]:
        """Rotary tables [1, 1, 1, r/2] of absolute position `pos` (computed once per step, shared
        by the layers): sliced from the full table so they are bit-identical to the backbone's."""
        if ctx.cos is None:
            return None, None
        if self._rope is None or self._rope[0] != pos:
            cos, sin = self.model.rotary(pos + 1, device)
            self._rope = (pos, cos[..., pos:, :], sin[..., pos:, :])
        return self._rope[1], self._rope[2]

    @contextlib.contextmanager
    def wrapped(self) -> Iterator[None]:
        originals = [b.mixer for b in self.model.blocks]
        wrappers = getattr(self, "_wrappers", None) or [_StatefulMixer(m, self) for m in originals]
        self._wrappers = wrappers
        # a step needs no prefix positions: their keys/state are cached since the prefill, so skip
        # recomputing them (and their MLPs) for every token
        prefixed = [m for m in getattr(self.model, "mechanisms", {}).values() if getattr(m, "num_prefix", 0)]
        try:
            for b, w in zip(self.model.blocks, wrappers):
                b.mixer = w
            if self.mode == "step":
                for m in prefixed:
                    m.prefix = _no_prefix
            yield
        finally:
            for b, m in zip(self.model.blocks, originals):
                b.mixer = m
            for m in prefixed:
                m.__dict__.pop("prefix", None)

    def _run(self, idx: Tensor, mode: str) -> Tensor:
        self.mode, self._counts = mode, {}
        if mode == "prefill":
            for w in getattr(self, "_wrappers", []):
                w.states = []
        with self.wrapped():
            return self.model.logits_from_hidden(self.model.hidden(idx)[:, -1:])[:, -1]

    def prefill(self, idx: Tensor) -> Tensor:
        """Consume the whole context (its last max_ctx tokens when the model has attention);
        returns the logits for the next token [B, V]."""
        if self.has_cache and self.max_ctx and idx.shape[1] > self.max_ctx:
            idx = idx[:, -self.max_ctx:]
        self.prefills += 1
        return self._run(idx, "prefill")

    def step(self, idx: Tensor) -> Tensor:
        """The context grew by one token (idx is the whole context); returns next-token logits."""
        if self.has_cache and self.max_ctx and idx.shape[1] > self.max_ctx:
            # the window slid: every cached position shifts (RoPE, memory prefix, layer inputs
            # after the first): recompute it as full recompute does, memory stays bounded
            return self.prefill(idx)
        if self.doc_attention and bool((idx[:, -1] == BOS_ID).any()
                                       or (self.has_cache and (idx[:, 1:] == BOS_ID).any())):
            return self.prefill(idx)  # a document boundary: see the module docstring
        self.steps += 1
        return self._run(idx[:, -WINDOW:], "step")


# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def sample(model: nn.Module, prompt_ids: list[int] | Tensor, max_new_tokens: int, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
           incremental: bool | None = None, stop_at_bos: bool = True, return_logits: bool = False,
           max_ctx: int | None = None):
    """Sample up to `max_new_tokens` after `prompt_ids` (a list or [B, T] tensor; start it with BOS).

    incremental: None = carried state / KV cache when every mixer supports it (and it passes its
    self-check), True = insist (error if unsupported), False = full recompute. max_ctx: the longest
    context fed (None = the model's TRAIN_SEQ_LEN; 0 = all of it, as the multi-context score and the
    retrieval probes read a window). Returns the new ids [B, N] (and the logits [B, N, V] each one was
    drawn from when return_logits)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    idx = torch.as_tensor(prompt_ids, dtype=torch.long, device=device)
    if idx.ndim == 1:
        idx = idx[None]
    if idx.shape[1] == 0:
        idx = torch.full((idx.shape[0], 1), BOS_ID, dtype=torch.long, device=device)
    if max_ctx is None:
        max_ctx = int(getattr(getattr(model, "cfg", None), "train_seq_len", 0) or 0)

    def full(ctx_ids: Tensor) -> Tensor:
        if max_ctx and ctx_ids.shape[1] > max_ctx:  # the model never saw longer contexts
            ctx_ids = ctx_ids[:, -max_ctx:]
        return model(ctx_ids)[:, -1].float()

    dec = None
    if incremental is None or incremental:
        if incremental_supported(model):
            dec = IncrementalDecoder(model, max_ctx)
            logits = _checked_prefill(dec, idx, full)
            if logits is None:
                if incremental:
                    raise GolfError("generate: incremental decoding disagrees with full recompute for this "
                                    "model; use full recompute (incremental=False / --full-recompute)")
                dec = None
        elif incremental:
            raise GolfError("generate: incremental decoding needs every sequence mixer to be recurrent "
                            "(stream, deltanet, hypermix) or attention with a KV cache (attn, swa); "
                            "this model has others: use full recompute")
    if dec is None:
        logits = full(idx)

    new, all_logits = [], []
    try:
        for n in range(max_new_tokens):
            nxt = pick(logits, temperature, top_k, top_p, generator)
            new.append(nxt)
            all_logits.append(logits)
            idx = torch.cat([idx, nxt[:, None]], dim=1)
            if stop_at_bos and bool((nxt == BOS_ID).all()):
                break
            if n + 1 < max_new_tokens:
                logits = dec.step(idx).float() if dec is not None else full(idx)
    finally:
        model.train(was_training)
    out = torch.stack(new, dim=1) if new else idx.new_zeros(idx.shape[0], 0)
    if return_logits:
        return out, (torch.stack(all_logits, dim=1) if all_logits else None)
    return out


def _checked_prefill(dec: IncrementalDecoder, idx: Tensor, full) -> Tensor | None:
    """Prefill all but the last prompt token, step the last one, and compare with full recompute:
    the incremental path is used only if it reproduces the model's own logits."""
    want = full(idx)
    if dec.has_cache and dec.max_ctx and idx.shape[1] > dec.max_ctx:
        idx = idx[:, -dec.max_ctx:]  # what full() saw; longer contexts re-prefill, so check a real step
    if idx.shape[1] < 2:
        return dec.prefill(idx).float()
    dec.prefill(idx[:, :-1])
    got = dec.step(idx).float()
    tol = 1e-3 * float(want.abs().max()) + 1e-4
    if (got - want).abs().max() > tol:
        print("generate: incremental decoding disagrees with full recompute; using full recompute", file=sys.stderr)
        return None
    return got


# ---------------------------------------------------------------------------------------------
# command line


def _load_tokenizer(args, meta: dict):
    path = args.tokenizer
    if not path:
        cfg = meta.get("config") or {}
        path = cfg.get("tokenizer_path") or ""
        if not path and cfg.get("data_path"):
            try:
                path = str(tokenizer_path(cfg["data_path"]))
            except Exception:
                path = ""
    if not path:
        raise GolfError(f"{args.artifact}: cannot find the tokenizer it was trained with; pass --tokenizer PATH")
    tok = load_tokenizer(path)
    want = meta.get("tokenizer_sha256")
    if want and getattr(tok, "sha256", want) != want:
        raise GolfError(f"{path}: tokenizer sha256 {tok.sha256[:12]} does not match the artifact's {want[:12]}; "
                        "pass the tokenizer the model was trained with (--tokenizer PATH)")
    return tok


@main_guard
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m golf.eval.generate", description=__doc__.split("\n")[0])
    p.add_argument("--artifact", required=True, help="quantised artifact (runs/<id>/model.ptz)")
    p.add_argument("--prompt", default="", help="text to continue (a new document if empty)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--tokenizer", default="", help="tokenizer file (default: the one of the artifact's data)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--full-recompute", action="store_true", help="never carry recurrent state or KV caches")
    args = p.parse_args(argv)

    model, meta = load_artifact(args.artifact, device=args.device)
    tok = _load_tokenizer(args, meta)
    ids = [BOS_ID] + tok.encode(args.prompt)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    out = sample(model, ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p, gen,
                 incremental=False if args.full_recompute else None)
    new = [t for t in out[0].tolist() if t != BOS_ID]
    print(args.prompt + tok.decode(new))


if __name__ == "__main__":
    main()
