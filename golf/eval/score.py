"""Sliding-window, tokenizer-agnostic bits-per-byte evaluation.

The val stream is one long 1-D array of token ids (every document is BOS + its tokens). Target j
(j = 0 .. N-2) is tokens[j+1], predicted from tokens[..j]. Windows are `seq_len` tokens long and
*right-aligned* to the block of targets they score:

    window 0 scores targets [0, seq_len)                      (all its positions)
    window k scores targets [e_{k-1}, e_k), e_k = min(e_{k-1} + stride, N-1)
            using the window of inputs [e_k - seq_len, e_k)   (its last e_k - e_{k-1} positions)

so every target is scored exactly once, every scored token sees the longest left context the window
allows (>= seq_len - stride), every window has the same length (batches need no padding), and the
last window simply scores fewer tokens when N-1 is not a multiple of the stride. Memory tokens, if
the model has any, are prepended inside the model's forward: the evaluator never sees them.
(The scheme is the challenge's sliding-window eval, PR #50 / the public records' eval_val_sliding,
with the tail handled by right-alignment instead of a shorter last window.)

`evaluate_bpb` is the fast path (windows batched, optional torch.compile, bf16 autocast on CUDA,
windows split across torchrun ranks and the sums all-reduced, LM head and loss only for the scored
positions: 14% less time for the tiny preset at stride 64 on CPU). `evaluate_bpb_reference` is the
slow plain loop it must agree with (tests/test_eval.py).
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from golf.compress.artifact import load_artifact
from golf.core.dist import pick_device
from golf.core.utils import GolfError
from golf.data.bpb import bits_per_byte, data_luts, token_bytes
from golf.data.folder import load_data_tokenizer, load_split, read_manifest
from golf.data.folder import tokenizer_path as folder_tokenizer_path
from golf.eval.report import build_report

# ---------------------------------------------------------------------------------------------
# the window plan (shared by the fast path and the reference)


def check_window_args(num_tokens: int, seq_len: int, stride: int) -> None:
    """Bad window settings -> a GolfError that says what to change."""
    if seq_len <= 0:
        raise GolfError(f"eval seq_len={seq_len} must be positive (set --seq-len / EVAL_SEQ_LEN)")
    if stride <= 0 or stride > seq_len:
        raise GolfError(
            f"eval stride={stride} must be between 1 and seq_len={seq_len}: a stride longer than the "
            f"window would skip tokens (set --stride <= --seq-len, or EVAL_STRIDE <= EVAL_SEQ_LEN)"
        )
    if num_tokens < seq_len + 1:
        raise GolfError(
            f"the val stream has {num_tokens} tokens, fewer than one eval window needs "
            f"(seq_len + 1 = {seq_len + 1}); use a shorter --seq-len or a larger val split "
            f"(--max-tokens 0 / VAL_MAX_TOKENS=0 for all of it)"
        )


def window_plan(num_tokens: int, seq_len: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, n_scored) int64 arrays, one entry per window, for a stream of `num_tokens` tokens.

    Window w reads inputs tokens[starts[w] : starts[w] + seq_len] and scores its last n_scored[w]
    positions (targets tokens[starts[w] + 1 : ... + seq_len + 1])."""
    check_window_args(num_tokens, seq_len, stride)
    m = num_tokens - 1  # number of targets
    ends = np.arange(seq_len, m + stride, stride, dtype=np.int64)
    ends = np.minimum(ends, m)  # at most one end passes m: the tail window, clipped to m
    n_scored = np.diff(ends, prepend=0)
    return ends - seq_len, n_scored


def _as_long_tensor(tokens: Any) -> Tensor:
    if isinstance(tokens, Tensor):
        t = tokens
    else:
        t = torch.from_numpy(np.asarray(tokens).astype(np.int64, copy=False))
    if t.ndim != 1:
        raise GolfError(f"eval expects a 1-D token stream, got shape {tuple(t.shape)}")
    return t.long()


def _rank_slice(n: int, rank: int, world_size: int) -> slice:
    """Contiguous, near-equal share of n windows for this rank."""
    return slice(n * rank // world_size, n * (rank + 1) // world_size)


# ---------------------------------------------------------------------------------------------
# results


def _summarise(pos_loss: np.ndarray, pos_tok: np.ndarray, pos_bytes: np.ndarray, windows: int,
               seconds: float, position_bucket: int, seq_len: int, stride: int) -> dict[str, Any]:
    """Per-position sums (float64 [seq_len]) -> the result dict."""
    loss_sum, toks, nbytes = float(pos_loss.sum()), int(round(pos_tok.sum())), int(round(pos_bytes.sum()))
    val_loss = loss_sum / max(toks, 1)
    val_bpb = bits_per_byte(loss_sum, toks, nbytes) if nbytes else float('nan')
    # Columnar, so golf/core/plots.py and records can read position_bpb["bpb"] as a plain list.
    cols: dict[str, list] = {"start": [], "end": [], "tokens": [], "bytes": [], "loss": [], "bpb": []}
    for b0 in range(0, seq_len, position_bucket):
        sl = slice(b0, min(b0 + position_bucket, seq_len))
        bl, bt, bb = float(pos_loss[sl].sum()), int(round(pos_tok[sl].sum())), int(round(pos_bytes[sl].sum()))
        cols["start"].append(b0)
        cols["end"].append(sl.stop)
        cols["tokens"].append(bt)
        cols["bytes"].append(bb)
        cols["loss"].append(bl / bt if bt else None)
        cols["bpb"].append(bits_per_byte(bl, bt, bb) if bb else None)
    return {
        "val_loss": val_loss,
        "val_bpb": val_bpb,
        "tokens": toks,
        "bytes": nbytes,
        "loss_sum": loss_sum,
        "windows": windows,
        "seq_len": seq_len,
        "stride": stride,
        "seconds": seconds,
        "tokens_per_s": toks / seconds if seconds > 0 else float("inf"),
        "position_bucket": position_bucket,
        "position_bpb": cols,
    }


# ---------------------------------------------------------------------------------------------
# fast path


def _default_amp(device: torch.device, amp: bool | None) -> bool:
    return device.type == "cuda" if amp is None else amp


@torch.no_grad()
def evaluate_bpb(
    model: torch.nn.Module,
    tokens: Any,
    luts: Any,
    seq_len: int,
    stride: int,
    batch_windows: int = 32,
    device: str | torch.device = "cpu",
    rank: int = 0,
    world_size: int = 1,
    position_bucket: int = 64,
    compile: bool = False,
    compile_backend: str = "inductor",
    amp: bool | None = None,
    static_batch: bool | None = None,
    all_reduce: bool = True,
    progress: bool = False,
    per_target: bool = False,
) -> dict[str, Any]:
    """Sliding-window BPB of `model` on the 1-D stream `tokens` (uint16/long, BOS included).

    Windows are batched `batch_windows` at a time; under torchrun each rank takes a contiguous share
    of the windows and the per-position sums are all-reduced, so every rank returns the same result.
    `amp` (default: on for CUDA) runs the forward under bf16 autocast; `compile` wraps the model
    with torch.compile; `static_batch` (default: = compile) pads the last batch with unscored
    windows so the shape never changes and the compiled graph is reused. all_reduce=False returns
    this rank's share of the sums only (tests; callers that reduce themselves). per_target adds
    `target_loss`, each target's loss (NaN for targets other ranks scored), as TTT results have it."""
    device = torch.device(device)
    if batch_windows <= 0:
        raise GolfError(f"batch_windows={batch_windows} must be positive (set --batch-windows / EVAL_BATCH_WINDOWS)")
    if position_bucket <= 0:
        raise GolfError(f"position_bucket={position_bucket} must be positive")
    stream = _as_long_tensor(tokens)
    starts, n_scored = window_plan(stream.numel(), seq_len, stride)
    mine = _rank_slice(len(starts), rank, world_size)
    scored_np = n_scored[mine]  # host copy: choosing how many positions to score needs no GPU sync
    # A window scores only its last n <= stride positions (the first window all seq_len): a model
    # whose forward takes `last` (golf.model.gpt.GPT) computes the head and loss for those alone. Two
    # widths only (seq_len, stride), so a compiled forward sees at most two shapes.
    inner = getattr(model, "_orig_mod", model)  # a torch.compile'd model's own forward
    score_last = "last" in inspect.signature(inner.forward).parameters
    starts_t = torch.from_numpy(starts[mine]).to(device)
    scored_t = torch.from_numpy(n_scored[mine]).to(device)
    stream = stream.to(device)
    luts = luts.to(device) if hasattr(luts, "to") else luts
    if hasattr(luts, "check_stream"):
        luts.check_stream(stream.numel())

    was_training = model.training
    model.eval()
    fwd = torch.compile(model, dynamic=False, backend=compile_backend) if compile else model
    use_amp = _default_amp(device, amp)
    static_batch = compile if static_batch is None else static_batch
    offs = torch.arange(seq_len + 1, device=device)
    pos = torch.arange(seq_len, device=device)
    pos_loss = torch.zeros(seq_len, dtype=torch.float64, device=device)
    pos_tok = torch.zeros(seq_len, dtype=torch.float64, device=device)
    pos_bytes = torch.zeros(seq_len, dtype=torch.float64, device=device)
    target_loss = (torch.full((stream.numel() - 1,), float("nan"), dtype=torch.float64, device=device)
                   if per_target else None)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    n_mine = starts_t.numel()
    batches = range(0, n_mine, batch_windows)
    if progress and rank == 0:
        from tqdm import tqdm

        batches = tqdm(batches, desc="eval", unit="batch", leave=False)
    for b0 in batches:
        s = starts_t[b0:b0 + batch_windows]
        n = scored_t[b0:b0 + batch_windows]
        k = seq_len if (not score_last or int(scored_np[b0:b0 + batch_windows].max()) > stride) else stride
        if static_batch and s.numel() < batch_windows:  # keep one static shape: pad with unscored windows
            pad = batch_windows - s.numel()
            s = torch.cat([s, s[-1:].expand(pad)])
            n = torch.cat([n, torch.zeros(pad, dtype=n.dtype, device=device)])
        w = stream[s[:, None] + offs]  # [B, seq_len + 1]
        x, y = w[:, :-1], w[:, 1:]
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            nll = fwd(x, y, reduction="none", last=k) if k < seq_len else fwd(x, y, reduction="none")
        tail = slice(seq_len - k, seq_len)  # the positions nll covers
        mask = pos[None, tail] >= (seq_len - n)[:, None]  # the last n positions of each window
        zero = torch.zeros((), dtype=torch.float64, device=device)
        pos_loss[tail] += torch.where(mask, nll.double(), zero).sum(0)  # where, not *: 0 * inf would be nan
        pos_tok[tail] += mask.sum(0)
        tgt_pos = (s[:, None] + 1 + pos[None, tail])  # the targets' stream positions (a byte sidecar's index)
        pos_bytes[tail] += torch.where(mask, token_bytes(x[:, tail], y[:, tail], luts, tgt_pos).double(), zero).sum(0)
        if target_loss is not None:
            target_loss[(s[:, None] + pos[None, tail])[mask]] = nll.double()[mask]

    if world_size > 1 and all_reduce:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise GolfError(f"evaluate_bpb: world_size={world_size} but torch.distributed is not initialised; "
                            f"launch with torchrun (or pass world_size=1)")
        packed = torch.stack([pos_loss, pos_tok, pos_bytes])
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        pos_loss, pos_tok, pos_bytes = packed[0], packed[1], packed[2]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    model.train(was_training)
    res = _summarise(pos_loss.cpu().numpy(), pos_tok.cpu().numpy(), pos_bytes.cpu().numpy(),
                     len(starts), seconds, position_bucket, seq_len, stride)
    if target_loss is not None:
        res["target_loss"] = target_loss.cpu().tolist()
    return res


# ---------------------------------------------------------------------------------------------
# slow reference: one window at a time, logits -> log-softmax by hand, plain Python bookkeeping


@torch.no_grad()
def evaluate_bpb_reference(
    model: torch.nn.Module,
    tokens: Any,
    luts: Any,
    seq_len: int,
    stride: int,
    device: str | torch.device = "cpu",
    position_bucket: int = 64,
) -> dict[str, Any]:
    """The plain loop `evaluate_bpb` must agree with. Walks the targets left to right: the first
    window scores seq_len of them, every later one the next `stride` (fewer at the end), each from a
    window that ends at its last scored target. Uses the model's logits (targets=None), not its
    per-token loss, so the two paths share no loss code."""
    device = torch.device(device)
    stream = _as_long_tensor(tokens)
    check_window_args(stream.numel(), seq_len, stride)
    luts = luts.to(device) if hasattr(luts, "to") else luts
    was_training = model.training
    model.eval()
    num_targets = stream.numel() - 1
    pos_loss = np.zeros(seq_len)
    pos_tok = np.zeros(seq_len)
    pos_bytes = np.zeros(seq_len)
    windows = 0
    done = 0  # targets scored so far
    t0 = time.perf_counter()
    while done < num_targets:
        end = min(done + (seq_len if done == 0 else stride), num_targets)
        start = end - seq_len
        x = stream[start:end].to(device)
        y = stream[start + 1:end + 1].to(device)
        logits = model(x[None])[0].double()  # [seq_len, V]
        nll = -torch.log_softmax(logits, dim=-1).gather(-1, y[:, None])[:, 0]
        nbytes = token_bytes(x, y, luts, torch.arange(start + 1, end + 1, device=device))
        for p in range(done - start, seq_len):  # window positions of targets done .. end-1
            pos_loss[p] += float(nll[p])
            pos_tok[p] += 1
            pos_bytes[p] += float(nbytes[p])
        done = end
        windows += 1
    model.train(was_training)
    return _summarise(pos_loss, pos_tok, pos_bytes, windows, time.perf_counter() - t0,
                      position_bucket, seq_len, stride)


# ---------------------------------------------------------------------------------------------
# views built on the fast path


def evaluate_val_loss(model: torch.nn.Module, tokens: Any, luts: Any, seq_len: int, batch_windows: int = 32,
                      device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1,
                      max_tokens: int = 0, **kw: Any) -> dict[str, Any]:
    """Training-time val: non-overlapping windows (stride = seq_len), optionally on a prefix."""
    if max_tokens and max_tokens > 0:
        tokens = tokens[: max(max_tokens, seq_len + 1)]
    return evaluate_bpb(model, tokens, luts, seq_len, seq_len, batch_windows, device, rank, world_size, **kw)


def parse_contexts(spec: str | Sequence[int] | None) -> list[int]:
    """'512,1024,2048' -> [512, 1024, 2048] (sorted, unique); '' / None -> []."""
    if spec is None or spec == "":
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = set()
    for it in items:
        s = str(it).strip()
        if not s:
            continue
        try:
            v = int(s)
        except ValueError:
            raise GolfError(f"context length {s!r} is not an integer; use e.g. --contexts 512,1024,2048") from None
        if v <= 0:
            raise GolfError(f"context length {v} must be positive; use e.g. --contexts 512,1024,2048")
        out.add(v)
    return sorted(out)


def evaluate_contexts(
    model: torch.nn.Module,
    tokens: Any,
    luts: Any,
    contexts: Sequence[int] = (512, 1024, 2048),
    stride: int = 0,
    batch_tokens: int = 65536,
    device: str | torch.device = "cpu",
    rank: int = 0,
    world_size: int = 1,
    position_bucket: int = 64,
    **kw: Any,
) -> dict[int, dict[str, Any]]:
    """BPB at several context lengths: the memory-bench view of where longer context helps.

    stride=0 (default) uses non-overlapping windows at each context length, so a token at window
    position p was predicted from exactly p tokens of context: `position_bpb` is then BPB as a
    function of available context, and val_bpb is its token-weighted mean. A positive stride gives
    the sliding-window score at each length instead (min(stride, ctx)). Contexts longer than the
    stream are skipped. Batch size in windows = batch_tokens // ctx (at least 1)."""
    n = _as_long_tensor(tokens).numel()
    out: dict[int, dict[str, Any]] = {}
    for ctx in parse_contexts(contexts):
        if ctx + 1 > n:
            continue
        st = ctx if stride <= 0 else min(stride, ctx)
        bw = max(1, batch_tokens // ctx)
        out[ctx] = evaluate_bpb(model, tokens, luts, ctx, st, bw, device, rank, world_size,
                                position_bucket=position_bucket, **kw)
    return out


# ---------------------------------------------------------------------------------------------
# evaluating an artifact against a data folder (eval_bpb.py, records, make verify)


def _eval_defaults(meta: dict[str, Any]) -> dict[str, Any]:
    """EVAL_SEQ_LEN / EVAL_STRIDE / EVAL_BATCH_WINDOWS / EVAL_CONTEXTS from the artifact's config."""
    cfg = dict(meta.get("config") or {})
    mc = dict(meta.get("model_config") or {})
    seq = int(cfg.get("eval_seq_len") or 0) or int(cfg.get("train_seq_len") or mc.get("train_seq_len") or 1024)
    return {"seq_len": seq, "stride": int(cfg.get("eval_stride") or 64),
            "batch_windows": int(cfg.get("eval_batch_windows") or 32), "contexts": cfg.get("eval_contexts") or ""}


def check_artifact_matches_data(artifact: str, meta: dict[str, Any], data_path: str, tok: Any = None,
                                tok_file: str | Path = "") -> str:
    """The artifact's tokenizer hash and vocab must be those of the data folder's shards: the
    folder's manifest when it has golf's, else the tokenizer it is read with (`tok`: a challenge
    download keeps it in data/tokenizers/). Returns the tokenizer's sha256."""
    have = meta.get("tokenizer_sha256")
    vocab = int((meta.get("model_config") or {}).get("vocab_size", 0))
    mpath = Path(data_path) / "manifest.json"
    if mpath.is_file():
        entry = read_manifest(data_path)["tokenizer"]
        want, mvocab, where = entry.get("sha256"), entry.get("vocab_size"), f"see {mpath}"
    elif tok is not None:
        want, mvocab, where = tok.sha256, tok.vocab_size, f"tokenizer {tok_file}"
    else:
        return str(have or "")
    if want and have and want != have:
        raise GolfError(
            f"tokenizer mismatch: {artifact} was trained with tokenizer sha256 {have[:12]}…, but the shards in "
            f"{data_path} were made with {want[:12]}… ({where}); evaluate on the data folder the model "
            f"was trained on (--data-path, --tokenizer-path), or re-train on this one")
    # a model may carry more rows than the tokenizer has pieces (VOCAB_SIZE padding: training allows
    # it, so scoring must too); fewer rows cannot score the data's tokens
    if mvocab is not None and vocab and int(mvocab) > vocab:
        raise GolfError(
            f"vocab mismatch: {artifact} has vocab_size {vocab}, the data's tokenizer {mvocab} ({where}); use the "
            f"data folder the model was trained on (--data-path) or re-train with VOCAB_SIZE={mvocab}")
    return str(want or have or "")


@dataclass
class SlidingWindow:
    """The default evaluation strategy: every token scored once, with up to seq_len - stride tokens
    of context (the challenge's sliding-window eval, PR #50).

    A strategy is any callable (model, tokens, luts, *, device, rank, world_size, compile, progress)
    -> evaluate_bpb's result dict; test-time training plugs in here as another strategy (score a
    chunk first, then adapt on it: the reviewers' conditions, challenge issue #1017)."""

    seq_len: int
    stride: int
    batch_windows: int
    name: str = "sliding_window"

    def __call__(self, model: torch.nn.Module, tokens: Any, luts: Any, **kw: Any) -> dict[str, Any]:
        return evaluate_bpb(model, tokens, luts, self.seq_len, self.stride, self.batch_windows, **kw)


def score(
    artifact: str | Path,
    data_path: str | Path,
    seq_len: int = 0,
    stride: int = 0,
    batch_windows: int = 0,
    contexts: str | Sequence[int] | None = None,
    context_stride: int = 0,
    max_tokens: int = 0,
    device: str = "auto",
    compile: bool | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
    strategy: Callable[..., dict[str, Any]] | None = None,
    tokenizer_path: str | Path = "",
) -> dict[str, Any]:
    """The score stage: load the artifact (never a training checkpoint), check it against the data
    folder (and `tokenizer_path`, default the folder's own), evaluate its val split with `strategy` (default: SlidingWindow with the artifact's
    EVAL_SEQ_LEN / EVAL_STRIDE / EVAL_BATCH_WINDOWS, each overridable here). Returns the JSON report."""
    artifact, data_path = str(artifact), str(data_path)
    dev = pick_device(device, "--device")
    model, meta = load_artifact(artifact, device=dev)
    check_artifact_matches_data(artifact, meta, data_path)  # golf's manifest: before the tokenizer loads
    d = _eval_defaults(meta)
    seq_len, stride = seq_len or d["seq_len"], stride or d["stride"]
    batch_windows = batch_windows or d["batch_windows"]
    if hasattr(strategy, "resolve"):  # named by settings (golf.eval.ttt.FromSettings): built for this window
        strategy = strategy.resolve(seq_len, stride, batch_windows)
    strategy = strategy or SlidingWindow(seq_len, stride, batch_windows)
    ctx_list = parse_contexts(d["contexts"] if contexts is None else contexts)
    check_window_args(seq_len + 1, seq_len, stride)  # bad settings fail before the val split loads
    tok_file = tokenizer_path or folder_tokenizer_path(data_path)
    tok = load_data_tokenizer(data_path, tok_file)
    tokenizer_sha = check_artifact_matches_data(artifact, meta, data_path, tok, tok_file)
    luts = data_luts(data_path, tok, dev, max_tokens)  # the val byte sidecar when the folder has one
    vocab = int(meta["model_config"]["vocab_size"])
    val = load_split(data_path, "val", vocab_size=vocab, max_tokens=max_tokens)
    if val.size < seq_len + 1:
        raise GolfError(
            f"the val split of {data_path} has {val.size} tokens{' (after --max-tokens)' if max_tokens else ''}, "
            f"fewer than one window needs ({seq_len + 1}); use --seq-len {max(1, val.size - 1)} or less, "
            f"raise --max-tokens, or prepare more val data (`make data VAL=...`)")
    compile = (dev.type == "cuda") if compile is None else compile
    kw = dict(device=dev, rank=rank, world_size=world_size, compile=compile, progress=progress)
    result = strategy(model, val, luts, **kw)
    ctx_res = evaluate_contexts(model, val, luts, ctx_list, stride=context_stride,
                                batch_tokens=batch_windows * seq_len, **kw) if ctx_list else {}
    return build_report(
        result, ctx_res, batch_windows=batch_windows, artifact=str(artifact), artifact_bytes=meta.get("bytes"),
        artifact_commit=meta.get("commit"), data_path=str(data_path),
        tokenizer_sha256=tokenizer_sha, max_tokens=max_tokens,
        world_size=world_size, compiled=bool(compile), eval_device=str(dev),
        strategy=getattr(strategy, "name", type(strategy).__name__),
        contexts_skipped=[c for c in ctx_list if c not in ctx_res],  # longer than the val stream
    )
