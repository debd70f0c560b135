"""Sequence-mixer throughput: training tokens/s (forward + backward) of ONE layer of each mixer
against the backbone's attention layer, at the same width and sequence length.

    python -m golf.bench.mixers [--out bench/mixers.json] [--seq-len 2048] [--device auto]
                                [--dim D --heads H --batch B --iters N --mixers attn,stream,...]

The issue's goal (make bench-mixers): at seq 2048 on one H100, "stream" and "deltanet" reach >= 50%
of attention's training tokens/s. On CUDA the layers run as in training (bf16 autocast, width 512,
8 heads, 32 sequences = the record preset's per-GPU micro-batch, each layer torch.compiled as training compiles the model; compile time is in the
untimed warm-up) and `goal_met` is reported; on CPU the sizes are small, fp32, and the JSON says
`"cpu_figures": true`: CPU ratios say nothing about the H100 goal (attention there runs on fused
SDPA kernels, the chunked scans on plain matmuls), so no goal is judged.
"""
from __future__ import annotations

import argparse
import time

import torch

from golf.core.config import GPTConfig, Hyperparameters
from golf.core.utils import GolfError, atomic_write_json, device_description, git_commit, main_guard, package_versions
from golf.model.layers import Rotary
from golf.model.mechanisms import build_mixer
from golf.model.mixer import MixerContext

GOAL_RATIO = 0.5
GOAL_MIXERS = ("stream", "deltanet")


def bench_one(name: str, cfg: GPTConfig, batch: int, seq_len: int, device: torch.device, dtype: torch.dtype,
              iters: int, warmup: int, compile_: bool) -> dict:

    torch.manual_seed(0)
    mixer = build_mixer(name, cfg, 0).to(device)
    params = sum(p.numel() for p in mixer.parameters())
    head_dim = cfg.model_dim // cfg.num_heads
    cos, sin = Rotary(head_dim)(seq_len, device)
    ctx = MixerContext(cos=cos, sin=sin)
    fn = torch.compile(mixer) if compile_ else mixer
    x = torch.randn(batch, seq_len, cfg.model_dim, device=device, requires_grad=True)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def run():
        with autocast:
            y = fn(x, ctx)
        y.float().square().mean().backward()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        run()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        run()
    sync()
    dt = (time.perf_counter() - t0) / iters
    out = dict(params=params, ms_per_iter=round(dt * 1e3, 3), tokens_per_s=round(batch * seq_len / dt, 1))
    if device.type == "cuda":
        out["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
        torch.cuda.reset_peak_memory_stats()
    return out


@main_guard
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m golf.bench.mixers", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench/mixers.json")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--mixers", default="attn,stream,deltanet,hypermix")
    p.add_argument("--dim", type=int, default=0, help="model width (0: 512 on CUDA, 128 on CPU)")
    p.add_argument("--heads", type=int, default=0, help="heads (0: 8 on CUDA, 4 on CPU)")
    p.add_argument("--batch", type=int, default=0,
                   help="sequences per step (0: 32 on CUDA, the record's per-GPU micro-batch; 1 on CPU)")
    p.add_argument("--iters", type=int, default=0, help="timed steps (0: 20 on CUDA, 3 on CPU)")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile each layer, as training compiles the model (auto: on for CUDA)")
    args = p.parse_args(argv)


    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda" and not torch.cuda.is_available():
        raise GolfError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    device = torch.device(dev)
    cuda = device.type == "cuda"
    dim = args.dim or (512 if cuda else 128)
    heads = args.heads or (8 if cuda else 4)
    batch = args.batch or (32 if cuda else 1)
    iters = args.iters or (20 if cuda else 3)
    dtype = torch.bfloat16 if cuda else torch.float32
    compile_ = cuda if args.compile == "auto" else args.compile == "on"
    h = Hyperparameters(model_dim=dim, num_heads=heads, num_kv_heads=max(1, heads // 2), train_seq_len=args.seq_len)
    cfg = h.model_config()

    results = {}
    for name in [m.strip() for m in args.mixers.split(",") if m.strip()]:
        results[name] = bench_one(name, cfg, batch, args.seq_len, device, dtype, iters,
                                  3 if cuda or compile_ else 1,  # the compiled backward builds on its first call
                                  compile_)
        print(f"mixer:{name} tokens_per_s:{results[name]['tokens_per_s']} params:{results[name]['params']}",
              flush=True)
    attn = results.get("attn", {}).get("tokens_per_s")
    for r in results.values():
        if attn:
            r["ratio_vs_attn"] = round(r["tokens_per_s"] / attn, 3)
    report = dict(
        benchmark="mixers", what="one layer, forward+backward training tokens/s",
        device=device_description() if cuda else "cpu", cpu_figures=not cuda, dtype=str(dtype).replace("torch.", ""),
        seq_len=args.seq_len, batch=batch, model_dim=dim, num_heads=heads, iters=iters, compile=compile_,
        commit=git_commit(), versions=package_versions(), results=results,
        goal=f"{', '.join(GOAL_MIXERS)} >= {GOAL_RATIO:.0%} of attn tokens/s at seq 2048 on one H100",
    )
    if cuda and attn and args.seq_len == 2048:
        report["goal_met"] = all(results.get(m, {}).get("ratio_vs_attn", 0) >= GOAL_RATIO for m in GOAL_MIXERS)
    else:
        report["goal_met"] = None  # not judged: CPU figures or another sequence length
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
