"""Training throughput: tokens/s, ms/step, peak memory and MFU of a preset's real training step.

    python -m golf.bench.train [--preset record] [--steps N] [--warmup N] [--qat] [--out bench/train_<preset>.json]
                               [--setting value ...]   (any train setting, e.g. --train-batch-tokens 65536)

It runs golf.train.trainer's own step (same micro-batching, grad clip, Muon + AdamW; bf16 autocast and
torch.compile on CUDA) on random tokens (the FLOPs do not depend on token values), after warm-up
steps that are not timed. Goals on one H100: record >= 1.0M tokens/s, baseline >= 1.5M tokens/s.
MFU = 6 x params x tokens/s / peak FLOP/s (attention FLOPs not counted; H100 bf16 dense 989 TFLOP/s).
On CPU (the default there is the tiny preset) it reports the same figures and MFU null.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from golf.compress.quant import clip_plan, quant_plan
from golf.core.config import load_config
from golf.core.utils import atomic_write_json, device_description, git_commit, main_guard, package_versions, today
from golf.data.loader import TokenLoader
from golf.train.optim import build_optimizers
from golf.train.trainer import batch_layout, build_model, setup_distributed, train_step

# One GPU's tokens/s. frontier: the 1.0611 record script's published pace, 121.7 ms per 786,432-token
# step on 8xH100 = 807,758 tokens/s per GPU (its README); golf's frontier preset should keep it.
GOALS = {"record": 1.0e6, "baseline": 1.5e6, "frontier": 786_432 / 0.1217 / 8}
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # bf16 dense, per GPU


def peak_flops(device: torch.device) -> tuple[float | None, str]:
    if device.type != "cuda":
        return None, "cpu: no reference peak"
    name = torch.cuda.get_device_name(device)
    for key, f in PEAK_FLOPS.items():
        if key in name:
            return f, f"{key} bf16 dense"
    return None, f"unknown GPU {name}"


@main_guard
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m golf.bench.train", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="", help="default: record on CUDA, tiny on CPU")
    p.add_argument("--steps", type=int, default=0, help="timed steps (default: 20 on CUDA, 5 on CPU)")
    p.add_argument("--warmup", type=int, default=-1, help="untimed steps first (default: 5 on CUDA, 1 on CPU)")
    p.add_argument("--qat", action="store_true", help="time with late QAT (fake quantisation) on")
    p.add_argument("--out", default="", help="default: bench/train_<preset>.json (record and baseline side by side)")
    args, rest = p.parse_known_args(argv)


    cuda = torch.cuda.is_available()
    preset = args.preset or ("record" if cuda else "tiny")
    h = load_config(["--preset", preset, *rest], env={})
    d = setup_distributed(h)
    cuda = d.device.type == "cuda"
    full_batch = h.train_batch_tokens
    if not cuda and full_batch > 65536 and not any(a.startswith("--train-batch-tokens") for a in rest):
        # a GPU preset's step (786,432 tokens for frontier) takes an hour on CPU: time two sequences
        # instead, so `make bench-train PRESET=frontier` answers in minutes; the JSON says so
        h = load_config(["--preset", preset, *rest, "--train-batch-tokens", str(2 * h.train_seq_len)], env={})
    steps = args.steps or (20 if cuda else 5)
    warm = args.warmup if args.warmup >= 0 else (5 if cuda else 1)
    compile = h.compile == "on" or (h.compile == "auto" and cuda)
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else __import__("contextlib").nullcontext

    torch.manual_seed(h.seed)
    model = build_model(h, d.device)
    n_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("mtp"))
    optimizers = build_optimizers(model, h)
    params = [p for p in model.parameters() if p.requires_grad]
    if args.qat:
        model.set_qat_bits(quant_plan(model, h), clip_plan(model, h))
    fwd = torch.compile(model, dynamic=False) if compile else model
    micro, accum = batch_layout(h, 1, d.device.type)
    tokens = np.random.default_rng(0).integers(4, h.vocab_size, size=max(4 * h.train_batch_tokens, 1 << 20))
    tokens[::1000] = 1  # a BOS now and then, as in real shards
    loader = TokenLoader([tokens.astype(np.uint16)], seq_len=h.train_seq_len, local_batch_seqs=micro, seed=0,
                         doc_packing=bool(h.doc_packing))

    def batches():
        while True:
            yield loader.next_batch(d.device)

    stream = batches()
    model.train()
    t0 = time.perf_counter()
    for _ in range(warm):
        train_step(fwd, optimizers, params, stream, accum, amp, h.grad_clip_norm, False)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(d.device)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = train_step(fwd, optimizers, params, stream, accum, amp, h.grad_clip_norm, False)
    loss = float(loss.item())
    if cuda:
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    ms = 1000 * sec / steps
    tps = h.train_batch_tokens * steps / sec
    pf, pf_src = peak_flops(d.device)
    if cuda:
        peak_mb = torch.cuda.max_memory_allocated(d.device) / 2**20
    else:
        import resource

        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "bench": "train", "preset": preset, "date": today(), "device": device_description(),
        "threads": torch.get_num_threads(), "compile": compile, "bf16_autocast": cuda, "qat": args.qat,
        "params": n_params, "train_seq_len": h.train_seq_len, "tokens_per_step": h.train_batch_tokens,
        "preset_tokens_per_step": full_batch,
        # depth recurrence: a built model runs looped (the trainer starts plain until ENABLE_LOOPING_AT)
        "looped": bool(model.looping) if model.loop_order is not None else None,
        "micro_batch_seqs": micro, "grad_accum_steps": accum, "warmup_steps": warm, "warmup_seconds": warm_s,
        "steps": steps, "seconds": sec, "ms_per_step": ms, "tokens_per_s": tps,
        "peak_mem_mb": peak_mb, "peak_mem_kind": "cuda max_memory_allocated" if cuda else "process max RSS",
        "model_flops_per_s": 6 * n_params * tps, "peak_flops": pf, "peak_flops_source": pf_src,
        "mfu": 6 * n_params * tps / pf if pf else None, "last_loss": loss,
        "goal_tokens_per_s": GOALS.get(preset) if cuda else None,
        "overrides": rest, "commit": git_commit(), "versions": package_versions(),
    }
    args.out = args.out or f"bench/train_{preset}.json"
    atomic_write_json(args.out, out)
    mfu = f", MFU {out['mfu']:.1%}" if out["mfu"] else ""
    print(f"train bench {preset} ({out['device']}): {ms:,.1f} ms/step, {tps:,.0f} tokens/s, "
          f"peak {peak_mb:,.0f} MB{mfu} -> {args.out}")


if __name__ == "__main__":
    main()
