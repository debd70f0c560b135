"""`python train_gpt.py`: train -> export -> score in one process, as the challenge's scripts do.

The stages are library calls with typed results: golf.train.trainer (final.pt), golf.compress.export
(model.ptz + size.json: quantise, compress, byte budget) and golf.eval.score (eval.json: the
round-trip score of the artifact, never of the training weights). Under torchrun every rank trains
and scores (windows split over ranks); rank 0 alone writes the artifact.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch.distributed as dist

from golf.compress.export import calibration_batches, export, model_from_checkpoint
from golf.core.checkpoint import load_checkpoint
from golf.core.config import Hyperparameters
from golf.core.dist import Dist, teardown
from golf.core.utils import GolfError
from golf.data.bpb import data_luts
from golf.data.folder import load_data_tokenizer, load_split
from golf.eval.report import plot_bpb_vs_position, summary, write_report
from golf.eval.score import evaluate_contexts, score
from golf.eval.ttt import strategy_for
from golf.train.trainer import run_training, setup_distributed, submission_log


def score_contexts(h: Hyperparameters) -> str:
    """EVAL_CONTEXTS plus non-overlapping windows at the eval length: the challenge's plain round-trip
    number (val_bpb_roundtrip_nonsliding) beside the sliding-window score."""
    ctx = [c.strip() for c in h.eval_contexts.split(",") if c.strip()]
    return ",".join(dict.fromkeys(ctx + [str(h.eval_seq_len)]))


def _append(run_dir: Path, line: str, d: Dist, h: Hyperparameters) -> None:
    if d.master:
        print(line, flush=True)
        for path in (run_dir / "train.log", submission_log(h)):
            if path is not None:
                with open(path, "a", encoding="utf-8") as f:
                    f.write(line + "\n")


def prequant_score(h: Hyperparameters, final: Path, d: Dist) -> dict[str, Any]:
    """The trained (float, pre-quantisation) weights scored exactly as the round-trip plain number
    is: the whole val split in non-overlapping EVAL_SEQ_LEN windows. Training's own final val reads a
    VAL_MAX_TOKENS prefix; set beside the full-split round trip it misstates the quantisation gap."""
    model, _ = model_from_checkpoint(load_checkpoint(final, final=True), final)
    model = model.to(d.device)
    luts = data_luts(h.data_path, load_data_tokenizer(h.data_path, h.tokenizer_path or None), d.device,
                     h.score_max_tokens)
    val = load_split(h.data_path, "val", h.vocab_size, max_tokens=h.score_max_tokens)
    t0 = time.perf_counter()
    res = evaluate_contexts(model, val, luts, [h.eval_seq_len], stride=0,
                            batch_tokens=h.eval_batch_windows * h.eval_seq_len, device=d.device, rank=d.rank,
                            world_size=d.world_size, compile=d.device.type == "cuda", progress=False)[h.eval_seq_len]
    return {"val_loss": res["val_loss"], "val_bpb": res["val_bpb"], "tokens": res["tokens"], "seq_len": h.eval_seq_len,
            "seconds": round(time.perf_counter() - t0, 3)}


def run(h: Hyperparameters) -> dict[str, Any]:
    """Train, export and score one run. Returns the training summary with `size` (the export
    stage's size report) and `eval` (the score stage's report) added."""
    t_start = time.time()
    d = setup_distributed(h)
    try:
        summary_ = run_training(h, d, t_start)
        if summary_.get("status") != "finished":
            return summary_
        run_dir = Path(summary_["run_dir"])
        artifact = run_dir / "model.ptz"
        size = None
        if d.master:
            ck = load_checkpoint(run_dir / "final.pt", final=True)
            model, _ = model_from_checkpoint(ck, run_dir / "final.pt")
            res = export(model, h, str(ck.get("tokenizer_sha256", "")), artifact,
                         calibration=lambda: calibration_batches(h))
            size = res.size
            _append(run_dir, f"Serialized model int_zstd: {size['bytes_model']} bytes", d, h)
            _append(run_dir, f"Code size: {size['bytes_code']} bytes", d, h)
            _append(run_dir, f"Total submission size: {res.bytes_total} bytes (model {size['bytes_model']}, "
                             f"code {size['bytes_code']}; cap {size['cap']})", d, h)
        if d.on:
            box = [size]
            dist.broadcast_object_list(box, src=0)
            size = box[0]
        if not size["fits"] and not h.allow_oversize:
            raise GolfError(f"bytes_total {size['bytes_total']:,} is over the {size['cap']:,}-byte cap (see "
                            f"{run_dir / 'size.json'}); lower QUANT_*_BITS or the model size, or ALLOW_OVERSIZE=1 "
                            f"to score it anyway")
        pre = prequant_score(h, run_dir / "final.pt", d)
        _append(run_dir, f"diagnostic pre-quantization val_loss:{pre['val_loss']:.8f} val_bpb:{pre['val_bpb']:.8f} "
                         f"eval_time:{1000 * pre['seconds']:.0f}ms", d, h)
        rep = score(artifact, h.data_path, contexts=score_contexts(h), device=str(d.device),
                    rank=d.rank, world_size=d.world_size, tokenizer_path=h.tokenizer_path, max_tokens=h.score_max_tokens,
                    strategy=strategy_for(h, h.eval_seq_len, h.eval_stride, h.eval_batch_windows))
        rep["prequant"] = pre
        if d.master:
            write_report(run_dir / "eval.json", rep)
            try:
                plot_bpb_vs_position(rep, run_dir / "bpb_vs_position.png")
            except ImportError:  # matplotlib is optional (a submission folder has only torch, numpy, ...)
                pass
            plain = (rep.get("contexts") or {}).get(str(h.eval_seq_len)) or {}
            if plain:
                _append(run_dir, f"final_int_zstd_roundtrip_exact val_loss:{plain['val_loss']:.8f} "
                                 f"val_bpb:{plain['val_bpb']:.8f}", d, h)
            # the score's line is named by its strategy: final_sliding_window_exact, final_score_first_sgd_exact,
            # final_ttt_lora_exact or final_ttt_phased_exact
            _append(run_dir, f"final_{rep['strategy']}_exact val_loss:{rep['val_loss']:.8f} val_bpb:{rep['val_bpb']:.8f} "
                             f"stride:{rep['stride']} seq_len:{rep['seq_len']}", d, h)
            print(summary(rep), flush=True)
        return {**summary_, "size": size, "eval": rep}
    finally:
        teardown(d)
