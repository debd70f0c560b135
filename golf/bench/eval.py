"""Eval throughput: stride-64 sliding-window BPB of a (random-init) preset model.

    python -m golf.bench.eval [--preset record] [--tokens N] [--stride 64] [--batch-windows 64]
                              [--data-path DIR] [--out bench/eval.json]

Reports scored tokens/s and the time it would take to cover the challenge's val set (62M tokens),
which must stay under the 10-minute eval limit on one H100. On CUDA the evaluator runs as the
record does (bf16 autocast, torch.compile, 64-256 windows per batch; compile time is measured
separately and not counted); on CPU it runs fp32 on a small slice and says so: a CPU figure is not
an H100 figure. Random weights cost the same FLOPs as trained ones, and random tokens the same as
real ones (unless --data-path gives a real val split).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from golf.core.config import load_config
from golf.core.dist import pick_device
from golf.core.utils import atomic_write_json, device_description, git_commit, main_guard, package_versions
from golf.data.bpb import Luts, data_luts
from golf.data.folder import load_data_tokenizer, load_split
from golf.eval.score import evaluate_bpb
from golf.model.gpt import GPT, count_params

CHALLENGE_VAL_TOKENS = 62_000_000
EVAL_LIMIT_S = 600.0


def _synthetic_luts(vocab: int, device):
    base = torch.full((vocab,), 3, dtype=torch.int16)  # ~3 bytes/token, like sp1024 on FineWeb
    base[:4] = 0
    return Luts(base.to(device), (torch.arange(vocab) % 2 == 0).to(device), (torch.arange(vocab) < 4).to(device))


@main_guard
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m golf.bench.eval", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="record")
    p.add_argument("--tokens", type=int, default=0, help="val tokens to score (0: 4M on CUDA, ~9 windows on CPU)")
    p.add_argument("--seq-len", type=int, default=0, help="0 = the preset's eval seq len")
    p.add_argument("--stride", type=int, default=64)
    p.add_argument("--batch-windows", type=int, default=0, help="0 = 128 on CUDA, 4 on CPU")
    p.add_argument("--data-path", default="", help="score a real val split instead of random tokens")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--out", default="bench/eval.json")
    args = p.parse_args(argv)


    h = load_config(["--preset", args.preset], env={})
    dev = pick_device(args.device, "--device")
    cuda = dev.type == "cuda"
    seq = args.seq_len or h.eval_seq_len
    bw = args.batch_windows or (128 if cuda else 4)
    n = args.tokens or (4_000_000 if cuda else seq + args.stride * 5 + 1)
    compile = cuda if args.compile == "auto" else args.compile == "on"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(0)
    cfg = replace(h.model_config(), mtp_num_heads=0)
    model = GPT(cfg).to(dev).eval()
    if args.data_path:

        toks = load_split(args.data_path, "val", vocab_size=h.vocab_size, max_tokens=n)
        luts = data_luts(args.data_path, load_data_tokenizer(args.data_path), dev, n)
    else:
        toks = np.random.default_rng(0).integers(4, h.vocab_size, size=n).astype(np.uint16)
        toks[:: 1000] = 1  # a BOS now and then, as in real shards
        luts = _synthetic_luts(h.vocab_size, dev)

    fwd = torch.compile(model, dynamic=False) if compile else model
    # warm-up on one full batch (compilation, autotuning, allocator) before the clock starts; an
    # eager CPU run has nothing to warm up
    t0 = time.perf_counter()
    if compile or cuda:
        evaluate_bpb(fwd, toks[: seq + args.stride * bw + 1], luts, seq, args.stride, bw, dev, static_batch=True)
    warmup_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    res = evaluate_bpb(fwd, toks, luts, seq, args.stride, bw, dev, static_batch=True)

    # Every window costs the same (same length), but the first one scores seq_len tokens and the
    # rest `stride`: on a short slice the raw tokens/s flatters. Extrapolate per window instead.
    s_per_window = res["seconds"] / res["windows"]
    windows_62m = 1 + -(-(CHALLENGE_VAL_TOKENS - 1 - seq) // args.stride)
    extrap = windows_62m * s_per_window
    tps = CHALLENGE_VAL_TOKENS / extrap  # steady-state scored tokens/s at this stride
    out = {
        "bench": "eval",
        "preset": args.preset,
        "params": count_params(model),
        "device": device_description() if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "seq_len": seq, "stride": args.stride, "batch_windows": bw, "memory_tokens": h.num_memory_tokens,
        "compile": compile, "bf16_autocast": cuda, "data": args.data_path or "random tokens",
        "tokens": res["tokens"], "windows": res["windows"], "seconds": res["seconds"],
        "warmup_seconds": warmup_s, "raw_tokens_per_s": res["tokens_per_s"], "tokens_per_s": tps,
        "seconds_per_window": s_per_window,
        # tokens through the model (window + memory tokens) per second: the hardware-bound figure
        "forward_tokens_per_s": res["windows"] * (seq + h.num_memory_tokens) / res["seconds"],
        "extrapolated_seconds_62M": extrap,
        "limit_seconds": EVAL_LIMIT_S,
        "meets_limit": bool(extrap < EVAL_LIMIT_S) if cuda else None,
        "peak_mem_gb": torch.cuda.max_memory_allocated(dev) / 1e9 if cuda else None,
        "note": ("measured on the GPU above" if cuda else
                 "CPU run on a small slice: the extrapolation is for this CPU, not an H100; run "
                 "`make bench-eval` on a GPU for the challenge figure"),
        "commit": git_commit(), "versions": package_versions(),
    }
    atomic_write_json(args.out, out)
    print(f"eval bench ({out['device']}): {tps:,.0f} scored tokens/s at stride {args.stride}, seq {seq}, "
          f"batch {bw}; 62M tokens would take {extrap:,.0f} s (limit {EVAL_LIMIT_S:.0f} s) -> {args.out}")


if __name__ == "__main__":
    main()
