"""One flat, typed Hyperparameters dataclass; presets; env-var and CLI overrides.

Precedence (lowest to highest): dataclass defaults < preset < environment (the challenge's upper-case
names, e.g. NUM_LAYERS=10) < command-line flags (--num-layers 10 or --num_layers=10).
A setting that does not exist is an error that lists the close names, so a typo never silently
trains the default. Derived values (head dim, eval length, run id, ...) come from `finalize()`.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

from golf.core.utils import GolfError, now_stamp

BYTES_CAP = 16_000_000  # the challenge's cap: compressed model + code bytes, decimal


@dataclass
class GPTConfig:
    """The fields that rebuild a model from its artifact (stored there as a dict by
    golf/compress/artifact.py). Hyperparameters inherits them, so a new architecture setting is
    one line here and never needs a second list."""

    vocab_size: int = 1024
    num_layers: int = 9
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    mlp_mult: float = 2.0
    rope_dims: int = 0  # rotary dims per head (partial RoPE); 0 = the whole head dim
    rope_base: float = 10000.0
    logit_softcap: float = 30.0
    qk_gain_init: float = 1.5
    rope_yarn: bool = False  # YaRN (PR #315): past the training length, stretch RoPE's base to the longer window
    xsa_last_n: int = 0  # XSA (PR #198, #478) in the last N attention layers: drop the output's own-value part
    attn_out_gate_enabled: bool = False  # per-head output gate 2*sigmoid(W x[:GATE_WINDOW]), PR #1667
    sparse_attn_gate_enabled: bool = False  # per-head output gate sigmoid(s * W x[:GATE_WINDOW]), PR #1787
    gate_window: int = 12  # residual dims the attention output gates read
    sparse_attn_gate_scale: float = 1.0  # s above (the 1.0611 record: 0.5)
    mlp_leaky_slope: float = 0.0  # MLP activation leaky_relu(x, slope)^2; 0 = relu^2, 0.5 = PR #493
    tie_embeddings: bool = True
    tied_embed_init_std: float = 0.005  # init std of the tied embedding (the challenge's TIED_EMBED_INIT_STD)
    unet_skips: bool = True
    skip_gates: bool = False  # a learned sigmoid gate per U-Net skip channel (PR #289); needs UNET_SKIPS
    ln_scale: bool = True  # scale block inputs by 1/sqrt(layer+1)
    num_memory_tokens: int = 0
    bigram_vocab_size: int = 0  # 0 = off
    bigram_dim: int = 128
    smear_gate: bool = False
    mtp_num_heads: int = 0  # training-only multi-token-prediction heads
    mixers: str = ""  # per-layer sequence mixers, comma-separated (e.g. "attn,attn,stream"); "" = all attn
    persistent_memory: int = 0  # learned key/value slots prepended in every attention layer
    attn_window: int = 0  # sliding-window size in tokens for "swa" layers; 0 = derived from window_frac
    attn_window_frac: float = 0.25
    global_every: int = 4  # with MIXERS=swa_pattern: every k-th layer is global attention
    flex_attention: str = "auto"  # swa layers via flex_attention: auto (compiled CUDA code) | on | off
    doc_attention: bool = False  # attend within documents only (BOS-delimited); recurrent mixers reset at BOS
    unique_layers: int = 0  # weight-tied depth: K unique blocks run as NUM_LAYERS logical layers; 0 = off
    # depth recurrence (PR #1344): logical layers LOOP_START..LOOP_END (inclusive) run 1 + NUM_LOOPS times in a
    # row once the training fraction reaches ENABLE_LOOPING_AT; a rebuilt model (eval, artifact) runs looped.
    # NUM_LOOPS=0 = off. Composes with UNIQUE_LAYERS (the loop repeats logical layers, tying maps them to blocks)
    num_loops: int = 0
    loop_start: int = 3
    loop_end: int = 5
    enable_looping_at: float = 0.35
    # parallel residual lanes (PR #1204, #1530) from logical layer K = PARALLEL_START_LAYER on; 0 = off.
    # PARALLEL_FINAL_LANE: what the final norm reads, mean | attn | mlp
    parallel_start_layer: int = 0
    parallel_final_lane: str = "mean"
    stream_num_streams: int = 4
    stream_chunk: int = 64
    deltanet_chunk: int = 64
    deltanet_heads: int = 0  # 0 = num_heads
    hypermix_hidden: int = 0  # 0 = model_dim // 2
    ttt_linear_chunk: int = 16  # TTT-Linear's mini-batch size (tokens per inner gradient step)
    ttt_linear_heads: int = 0  # 0 = num_heads
    ttt_linear_lr: float = 1.0  # TTT-Linear's base inner LR (times a learned per-token sigmoid / head dim)
    rmt_memory: int = 0  # Recurrent Memory Transformer: memory tokens carried from segment to segment; 0 = off
    rmt_segment: int = 256  # RMT: tokens per segment
    rmt_bptt: int = -1  # RMT: segment transitions gradients flow back through (the last k); -1 = all
    mtp_loss_weight: float = 0.1
    mtp_decay: float = 0.5  # weight of head k is mtp_loss_weight * mtp_decay**(k-1)
    train_seq_len: int = 1024

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "model config") -> "GPTConfig":
        """Rebuild from a stored dict (an artifact's model_config); an unknown key is an error, a
        missing one (an artifact from before the setting existed) takes its default."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise GolfError(f"{source}: unknown model settings {unknown}; it was written by a newer golf")
        cfg = cls()
        for k, v in d.items():
            setattr(cfg, k, _coerce(k, v, source))
        return cfg


@dataclass
class Hyperparameters(GPTConfig):
    # --- run -----------------------------------------------------------------------------------
    preset: str = "tiny"
    run_id: str = ""  # derived: <preset>_<timestamp>_s<seed>
    seed: int = 1337
    out_dir: str = "runs"  # each run writes runs/<run_id>/
    device: str = "auto"  # auto | cpu | cuda
    compile: str = "auto"  # auto (on for CUDA) | on | off
    compile_backend: str = "inductor"  # torch.compile backend; aot_eager/eager isolate an inductor bug
    # --- data ----------------------------------------------------------------------------------
    data_path: str = "data/datasets/shakespeare_sp1024"  # folder of *train_*.bin, *val_*.bin, manifest.json
    tokenizer_path: str = ""  # derived from the data manifest when empty
    val_max_tokens: int = 0  # 0 = the whole val split (training-time val may use a prefix)
    # The final score's val prefix: 0 = the whole split (what the challenge scores). A prefix keeps
    # CPU ablations affordable (the whole split is ~11 min per tiny run); it is written into every
    # report, and a submission record scored on a prefix is refused.
    score_max_tokens: int = 0
    # DOC_PACKING=1 (needs DOC_ATTENTION=1): training rows hold whole documents, a long one split every
    # TRAIN_SEQ_LEN tokens from its BOS, padded at the row's end, instead of fixed cuts of the stream
    # that start mid-document and cut documents at row ends (golf/data/packing.py; PR #1354, #1529)
    doc_packing: int = 0
    # --- model backbone ------------------------------------------------------------------------
    # --- record-stack extras ------------------------------------------------------------------
    # --- memory mechanisms (golf/model/mechanisms/) -------------------------------------------------------
    # --- training ------------------------------------------------------------------------------
    train_batch_tokens: int = 524288  # global tokens per optimizer step
    grad_accum_steps: int = 0  # 0 = derived so one micro-batch fits
    micro_batch_seqs: int = 0  # sequences per micro-batch per rank; 0 = derived
    iterations: int = 20000  # an upper bound: the wall clock usually ends the run first
    max_wallclock_seconds: float = 600.0  # 0 = no wall-clock limit
    compile_warmup_steps: int = 20  # run before the clock starts, then weights are restored
    lr_warmup_frac: float = 0.0
    warmdown_frac: float = 0.5  # fraction of the budget spent decaying the LR to zero
    min_lr: float = 0.0  # warm-down floor of the LR scale, a fraction of each peak LR (PR #1787; the 1.0611 record: 0.1)
    matrix_lr: float = 0.04
    scalar_lr: float = 0.04
    embed_lr: float = 0.05
    memory_lr: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    muon_momentum: float = 0.95
    muon_momentum_warmup_start: float = 0.85
    muon_momentum_warmup_frac: float = 0.1  # fraction of the budget
    muon_backend_steps: int = 5
    muon_ns: str = "classic"  # Newton-Schulz coefficients: classic (one quintic) | polar (Polar Express, PR #1344)
    muon_row_normalize: bool = False  # MuonEq-R: rows of Muon's update to unit norm before NS (PR #1285)
    muon_weight_decay: float = 0.04  # the challenge records' MUON_WD
    adam_weight_decay: float = 0.04  # the embedding group's, unless EMBED_WEIGHT_DECAY is set
    embed_weight_decay: float = -1.0  # the records' EMBED_WD (PR #1218); -1 = ADAM_WEIGHT_DECAY
    scalar_weight_decay: float = 0.0  # the records' ADAM_WD: the scalar/gain group (PR #1218)
    grad_clip_norm: float = 0.3  # 0 = off
    ema: bool = True
    ema_horizon_frac: float = 0.1  # EMA time constant as a fraction of the expected steps
    qat: bool = True
    qat_lr_scale: float = 0.15  # fake-quantise once the LR scale drops below this
    val_every: int = 0  # steps between val evaluations; 0 = only at the end
    val_batch_tokens: int = 65536
    log_every: int = 10
    checkpoint_every: int = 0  # steps; 0 = only by the clock (below), on a signal and at the end
    checkpoint_minutes: float = 5.0  # wall-clock minutes between checkpoints (not counted in the budget); 0 = off
    resume: bool = False
    allow_oversize: bool = False  # go on although the size pre-flight says the artifact cannot fit
    # --- quantisation / artifact ----------------------------------------------------------------
    quant_mlp_bits: int = 5
    quant_attn_bits: int = 6
    quant_embed_bits: int = 8  # 16 = keep fp16
    quant_other_bits: int = 6  # matrices that are neither MLP, attention nor embedding
    quant_min_numel: int = 65536  # smaller tensors (and vectors) stay fp16 (golf/compress/quant.py)
    quant_clip_ratios: str = "1.0,0.95,0.9,0.85,0.8"  # per-row clip search; "1.0" = plain abs-max (fewer bytes)
    # SDClip (PR #1394): "" = the clip search above; a number = every group's row clip at k x its std;
    # or per group, e.g. "mlp=11.5,attn=13,embed=14,other=12.85" (groups left out keep the search)
    quant_clip_sigmas: str = ""
    quant_scheme: str = "rtn"  # rtn (round to nearest) | gptq (Hessian error feedback from training batches)
    quant_calib_batches: int = 8  # gptq: training batches (never validation) for the Hessians
    quant_calib_seqs: int = 8  # sequences of TRAIN_SEQ_LEN per calibration batch
    lqer_rank: int = 0  # LQER (PR #1797): rank of the quantisation-error correction; 0 = off
    lqer_bits: int = 4  # its factors' integer width
    lqer_top_k: int = 3  # on the tensors with the largest error
    lqer_group: int = 64  # values per fp16 scale in the factors
    zstd_level: int = 22
    compressor: str = "zstd"  # the payload's compressor: zstd | brotli | lzma | lrzip (golf/compress/codecs.py)
    quant_layout: str = "rows"  # integers as rows | sorted (L1 nearest-neighbour row order) | sorted_t (+ by column)
    # --- evaluation ----------------------------------------------------------------------------
    eval_seq_len: int = 0  # 0 = train_seq_len
    eval_stride: int = 64
    eval_batch_windows: int = 32
    eval_contexts: str = ""  # extra context lengths for the multi-context report, e.g. "512,1024,2048"
    # --- score-first test-time training (golf/eval/ttt.py; the challenge records' names) -------------
    ttt: str = ""  # "" = plain sliding window | sgd = score-first global SGD | lora = per-document LoRA | phased
    # tokens scored before each adaptation; 0 = the strategy's own: sgd 32768 (of the stream), lora/phased 48 (per doc)
    ttt_chunk_size: int = 0
    global_ttt_lr: float = 1e-4
    ttt_momentum: float = 0.9
    ttt_steps: int = 1  # gradient steps on each chunk after it is scored (sgd: SGD passes; lora: Adam steps)
    ttt_time_budget_s: float = 0.0  # stop adapting (score the rest plainly) after this long; 0 = no limit
    # TTT=lora / phased: rank-r adapters per document (the 1.0611 record's names and values)
    ttt_lora_rank: int = 80  # phased: 0 = no adapters (phased global SGD alone)
    ttt_lora_lr: float = 1e-4
    ttt_lora_alpha: float = 144.0  # adapter output scaled by alpha / rank (PR #1767)
    ttt_batch_size: int = 64  # documents adapted side by side, each with its own adapters
    ttt_weight_decay: float = 0.5
    ttt_beta1: float = 0.0
    ttt_beta2: float = 0.99
    ttt_k_lora: bool = True  # adapters on K (Q and V always, in attention layers)
    ttt_mlp_lora: bool = True  # on each MLP (every mixer kind)
    ttt_o_lora: bool = True  # on the attention output projection
    # TTT=phased: global SGD on the already-scored document prefix between phases (PR #1610, #1626)
    phased_ttt_prefix_docs: int = 2500
    phased_ttt_num_phases: int = 3
    global_ttt_momentum: float = 0.9
    global_ttt_epochs: int = 1
    global_ttt_batch_seqs: int = 32  # EVAL_SEQ_LEN sequences per global SGD step
    global_ttt_grad_clip: float = 1.0  # 0 = off

    # ------------------------------------------------------------------------------------------
    def finalize(self) -> "Hyperparameters":
        """Fill derived values and check consistency. Idempotent."""
        check_ranges(self)
        if not self.run_id:
            self.run_id = f"{self.preset}_{now_stamp()}_s{self.seed}"
        if self.eval_seq_len <= 0:
            self.eval_seq_len = self.train_seq_len
            # a derived eval length takes the stride with it (tiny preset with --train-seq-len 64)
            self.eval_stride = min(self.eval_stride, self.eval_seq_len)
        if self.model_dim % self.num_heads:
            raise GolfError(f"MODEL_DIM={self.model_dim} is not divisible by NUM_HEADS={self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise GolfError(f"NUM_HEADS={self.num_heads} is not divisible by NUM_KV_HEADS={self.num_kv_heads}")
        if self.rope_dims < 0 or self.rope_dims > self.head_dim or self.rope_dims % 2:
            raise GolfError(f"ROPE_DIMS={self.rope_dims} must be even and between 0 and the head dim {self.head_dim}")
        if self.mixers:
            layer_mixers(self.model_config())
        if self.doc_packing and not self.doc_attention:
            # without the document mask, packed rows would still attend across their documents and
            # only add padding: all cost, none of the gain
            raise GolfError("DOC_PACKING=1 needs DOC_ATTENTION=1 (packed rows hold several documents, kept apart "
                            "only by the document mask): set DOC_ATTENTION=1, or DOC_PACKING=0")
        if self.attn_out_gate_enabled and self.sparse_attn_gate_enabled:
            raise GolfError("ATTN_OUT_GATE_ENABLED=1 and SPARSE_ATTN_GATE_ENABLED=1: the two attention output gates "
                            "replace each other; switch one off")
        if (self.attn_out_gate_enabled or self.sparse_attn_gate_enabled) and self.gate_window > self.model_dim:
            raise GolfError(f"GATE_WINDOW={self.gate_window} is wider than MODEL_DIM={self.model_dim}")
        for name, allowed in (("compile", ("auto", "on", "off")), ("flex_attention", ("auto", "on", "off"))):
            if getattr(self, name) not in allowed:
                raise GolfError(f"{name.upper()}={getattr(self, name)!r}: use one of {', '.join(allowed)}")
        parse_clip_ratios(self.quant_clip_ratios)  # a bad QUANT_CLIP_RATIOS fails here, not at export
        parse_clip_sigmas(self.quant_clip_sigmas)
        for name, allowed in (("compressor", ("zstd", "brotli", "lzma", "lrzip")),
                              ("quant_layout", ("rows", "sorted", "sorted_t"))):
            if getattr(self, name) not in allowed:
                raise GolfError(f"{name.upper()}={getattr(self, name)!r}: use one of {', '.join(allowed)}")
        if self.lqer_rank < 0 or not 2 <= self.lqer_bits <= 8 or self.lqer_top_k < 0 or self.lqer_group < 0:
            raise GolfError(f"LQER_RANK={self.lqer_rank} (>= 0), LQER_BITS={self.lqer_bits} (2..8), LQER_TOP_K="
                            f"{self.lqer_top_k} (>= 0), LQER_GROUP={self.lqer_group} (>= 0, 0 = per row): out of range")
        if self.muon_ns not in ("classic", "polar"):
            raise GolfError(f"MUON_NS={self.muon_ns!r}: use classic or polar")
        if self.muon_ns == "polar" and self.muon_backend_steps > 5:
            raise GolfError(f"MUON_NS=polar has 5 Polar-Express steps but MUON_BACKEND_STEPS={self.muon_backend_steps}: "
                            "set MUON_BACKEND_STEPS=5 (the record's) or fewer")
        if -1 < self.embed_weight_decay < 0:
            raise GolfError(f"EMBED_WEIGHT_DECAY={self.embed_weight_decay} is out of range: it must be >= 0, "
                            "or -1 to take ADAM_WEIGHT_DECAY")
        if self.qat and self.warmdown_frac > 0 and 0 < self.qat_lr_scale <= self.min_lr:
            # late QAT starts when the LR scale drops below QAT_LR_SCALE: a floor at or above it never lets it
            raise GolfError(f"MIN_LR={self.min_lr} keeps the LR scale at or above QAT_LR_SCALE={self.qat_lr_scale}, "
                            "so late QAT would never start: lower MIN_LR, raise QAT_LR_SCALE above it, or set QAT=0")
        if self.ttt not in TTT_STRATEGIES:
            raise GolfError(f"TTT={self.ttt!r}: use sgd (score-first global SGD), lora (per-document LoRA), phased "
                            f"(phased global SGD, then per-document LoRA) or leave it empty")
        if self.quant_scheme not in QUANT_SCHEMES:
            raise GolfError(f"QUANT_SCHEME={self.quant_scheme!r}: use one of {', '.join(QUANT_SCHEMES)}")
        if self.quant_scheme == "gptq" and (self.quant_calib_batches < 1 or self.quant_calib_seqs < 1):
            raise GolfError("QUANT_SCHEME=gptq needs QUANT_CALIB_BATCHES >= 1 and QUANT_CALIB_SEQS >= 1")
        if self.eval_stride <= 0 or self.eval_stride > self.eval_seq_len:
            raise GolfError(
                f"EVAL_STRIDE={self.eval_stride} must be between 1 and EVAL_SEQ_LEN={self.eval_seq_len}"
            )
        check_ttt(self, self.eval_seq_len)
        return self

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_config(self) -> GPTConfig:
        """The architecture part of the settings (what the artifact stores)."""
        return GPTConfig(**{f.name: getattr(self, f.name) for f in fields(GPTConfig)})


# Every numeric setting's range (inclusive; None = open), checked before anything is derived from
# it, so a bad value is named in the error instead of failing later as a division by zero.
_POS = 1e-12  # "greater than zero" for floats
RANGES: dict[str, tuple[float | None, float | None]] = {
    "vocab_size": (2, 65536), "num_layers": (1, None), "model_dim": (1, None), "num_heads": (1, None),
    "num_kv_heads": (1, None), "mlp_mult": (_POS, None), "rope_dims": (0, None), "rope_base": (_POS, None),
    "logit_softcap": (0, None), "tied_embed_init_std": (0, None), "num_memory_tokens": (0, None),
    "bigram_vocab_size": (0, None), "bigram_dim": (1, None), "mtp_num_heads": (0, None), "persistent_memory": (0, None),
    "attn_window": (0, None), "attn_window_frac": (_POS, 1), "global_every": (1, None), "unique_layers": (0, None),
    "stream_num_streams": (1, None), "stream_chunk": (1, None), "deltanet_chunk": (1, None), "deltanet_heads": (0, None),
    "hypermix_hidden": (0, None), "ttt_linear_chunk": (1, None), "ttt_linear_heads": (0, None),
    "ttt_linear_lr": (0, None), "rmt_memory": (0, None), "rmt_segment": (1, None), "rmt_bptt": (-1, None),
    "mtp_loss_weight": (0, None), "mtp_decay": (0, None), "train_seq_len": (1, None),
    "val_max_tokens": (0, None), "score_max_tokens": (0, None), "train_batch_tokens": (1, None), "grad_accum_steps": (0, None),
    "doc_packing": (0, 1),
    "micro_batch_seqs": (0, None), "iterations": (0, None), "max_wallclock_seconds": (0, None),
    "compile_warmup_steps": (0, None), "lr_warmup_frac": (0, 1), "warmdown_frac": (0, 1), "min_lr": (0, 1),
    "matrix_lr": (0, None),
    "scalar_lr": (0, None), "embed_lr": (0, None), "memory_lr": (0, None), "beta1": (0, 0.999999),
    "beta2": (0, 0.999999), "adam_eps": (_POS, None), "muon_momentum": (0, 0.999999),
    "muon_momentum_warmup_start": (0, 0.999999), "muon_momentum_warmup_frac": (0, 1), "muon_backend_steps": (1, None),
    "muon_weight_decay": (0, None), "adam_weight_decay": (0, None), "embed_weight_decay": (-1, None),
    "scalar_weight_decay": (0, None), "grad_clip_norm": (0, None),
    "ema_horizon_frac": (_POS, None), "qat_lr_scale": (0, 1), "val_every": (0, None), "val_batch_tokens": (1, None),
    "log_every": (0, None), "checkpoint_every": (0, None), "checkpoint_minutes": (0, None), "quant_min_numel": (0, None), "zstd_level": (1, 22),
    "eval_seq_len": (0, None), "eval_stride": (1, None), "eval_batch_windows": (1, None),
    "quant_calib_batches": (1, None), "quant_calib_seqs": (1, None), "ttt_chunk_size": (0, None),
    "global_ttt_lr": (0, None), "ttt_momentum": (0, 0.999999), "ttt_steps": (1, None), "ttt_time_budget_s": (0, None),
    "ttt_lora_rank": (0, None), "ttt_lora_lr": (0, None), "ttt_lora_alpha": (0, None), "ttt_batch_size": (1, None),
    "ttt_weight_decay": (0, None), "ttt_beta1": (0, 0.999999), "ttt_beta2": (0, 0.999999),
    "phased_ttt_prefix_docs": (0, None), "phased_ttt_num_phases": (1, None), "global_ttt_momentum": (0, 0.999999),
    "global_ttt_epochs": (0, None), "global_ttt_batch_seqs": (1, None), "global_ttt_grad_clip": (0, None),
    "xsa_last_n": (0, None), "gate_window": (1, None), "sparse_attn_gate_scale": (0, None), "mlp_leaky_slope": (0, 1),
}


TTT_STRATEGIES = ("", "sgd", "lora", "phased")
TTT_CHUNK_DEFAULT = {"sgd": 32768, "lora": 48, "phased": 48}  # TTT_CHUNK_SIZE=0: the records' values


def check_ttt(h: Any, seq_len: int) -> None:
    """The TTT settings that depend on each other or on the eval window (EVAL_SEQ_LEN), checked before
    any scoring starts (finalize; eval_bpb.py --ttt with the artifact's window)."""
    if h.ttt not in ("lora", "phased"):
        return
    chunk = int(h.ttt_chunk_size) or TTT_CHUNK_DEFAULT[h.ttt]
    if chunk > seq_len:
        raise GolfError(f"TTT_CHUNK_SIZE={chunk} is longer than the eval window EVAL_SEQ_LEN={seq_len}: a per-document "
                        f"chunk is scored inside one window; set TTT_CHUNK_SIZE <= {seq_len} (the record: 48)")
    if h.ttt == "lora" and int(h.ttt_lora_rank) < 1:
        raise GolfError("TTT=lora needs TTT_LORA_RANK >= 1 (the record: 80); for phased global SGD without adapters "
                        "use TTT=phased TTT_LORA_RANK=0")


def check_ranges(h: Any) -> None:
    """Each numeric setting within its range, and quantisation widths 2..8 or 16 (fp16)."""
    for name, (lo, hi) in RANGES.items():
        v = getattr(h, name)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            want = (f">= {lo:g}" if lo != _POS else "> 0") if hi is None else \
                (f"between {lo:g} and {hi:g}" if lo != _POS else f"in (0, {hi:g}]")
            raise GolfError(f"{name.upper()}={v!r} is out of range: it must be {want}")
    for name in ("quant_mlp_bits", "quant_attn_bits", "quant_embed_bits", "quant_other_bits"):
        v = getattr(h, name)
        if not (2 <= v <= 8 or v == 16):
            raise GolfError(f"{name.upper()}={v} is out of range: integer widths are 2..8, or 16 to keep fp16")
    if h.bigram_vocab_size == 1:
        raise GolfError("BIGRAM_VOCAB_SIZE=1 is out of range: 0 (off) or at least 2 buckets")


def layer_mixers(cfg: GPTConfig) -> list[str]:
    """Per logical layer mixer names from MIXERS:
    "" -> attn everywhere; "swa_pattern" -> GLOBAL_EVERY-1 local ("swa") layers then one global
    ("attn"), repeated (3 local : 1 global with GLOBAL_EVERY=4); a list of NUM_LAYERS names; or a
    shorter list whose length divides NUM_LAYERS, tiled (e.g. swa,swa,swa,attn for 8 layers)."""
    n = int(cfg.num_layers)
    names = [m.strip() for m in str(cfg.mixers or "").split(",") if m.strip()]
    if not names:
        return ["attn"] * n
    if names == ["swa_pattern"]:
        every = int(cfg.global_every)
        if every < 1:
            raise GolfError(f"GLOBAL_EVERY={every} must be >= 1 with MIXERS=swa_pattern")
        return ["attn" if (i + 1) % every == 0 else "swa" for i in range(n)]
    if len(names) == n:
        return names
    if n % len(names) == 0:
        return names * (n // len(names))
    raise GolfError(f"MIXERS lists {len(names)} layers but NUM_LAYERS={n}: give one mixer per layer, "
                    f"a pattern whose length divides {n}, or MIXERS=swa_pattern")


QUANT_SCHEMES = ("rtn", "gptq")
QUANT_GROUPS = ("mlp", "attn", "embed", "other")


def parse_clip_sigmas(spec: Any) -> dict[str, float]:
    """QUANT_CLIP_SIGMAS -> {group: k} for the groups that use SDClip ("" -> none; "12" -> all)."""
    spec = str(spec or "").strip()
    if not spec:
        return {}
    out: dict[str, float] = {}
    try:
        if "=" not in spec:
            out = {g: float(spec) for g in QUANT_GROUPS}
        else:
            for part in spec.split(","):
                g, _, v = part.partition("=")
                if g.strip() not in QUANT_GROUPS:
                    raise ValueError(g)
                out[g.strip()] = float(v)
    except ValueError:
        out = {}
    if not out or not all(0 < v <= 64 for v in out.values()):
        raise GolfError(f"QUANT_CLIP_SIGMAS={spec!r}: give k (every group's row clip = k x the row's std) or "
                        f"group=k pairs from {', '.join(QUANT_GROUPS)}, e.g. mlp=11.5,attn=13,embed=14; k in (0, 64]")
    return out


def parse_clip_ratios(spec: Any) -> tuple[float, ...]:
    """QUANT_CLIP_RATIOS ("1.0,0.95,0.9") as a tuple of ratios of the row abs-max in (0, 1]."""
    if isinstance(spec, (tuple, list)):
        spec = ",".join(str(r) for r in spec)
    try:
        ratios = tuple(float(r) for r in str(spec).split(",") if r.strip())
    except ValueError:
        ratios = ()
    if not ratios or not all(0.0 < r <= 1.0 for r in ratios):
        raise GolfError(f"QUANT_CLIP_RATIOS={spec!r}: give comma-separated ratios of the row abs-max in (0, 1], "
                        "e.g. 1.0,0.95,0.9 (1.0 alone = plain abs-max scaling)")
    return ratios


# ---------------------------------------------------------------------------------------------
# presets: only what differs from the defaults

PRESETS: dict[str, dict[str, Any]] = {
    # CPU smoke-scale model: trains in under 3 minutes on 2 cores and still shows learning.
    "tiny": dict(
        num_layers=4, model_dim=128, num_heads=4, num_kv_heads=2, mlp_mult=3.0, rope_dims=16,
        num_memory_tokens=8, bigram_vocab_size=2048, bigram_dim=32, smear_gate=True,
        train_seq_len=256, train_batch_tokens=4096, max_wallclock_seconds=90.0, compile_warmup_steps=2,
        warmdown_frac=0.4, matrix_lr=0.03, scalar_lr=0.03, embed_lr=0.05, log_every=10,
        val_max_tokens=65536, eval_stride=128, eval_batch_windows=16, val_batch_tokens=16384,
        quant_min_numel=4096,  # tiny matrices are < 65k elements: quantise them anyway so QAT/export are exercised
    ),
    # The challenge's naive baseline: 9x512, GQA 8/4, MLP 2x, seq 1024, 524k tokens/step.
    "baseline": dict(
        num_layers=9, model_dim=512, num_heads=8, num_kv_heads=4, mlp_mult=2.0,
        train_seq_len=1024, train_batch_tokens=524288, quant_mlp_bits=8, quant_attn_bits=8,
        quant_other_bits=8, ema=False, qat=False, eval_stride=64,
    ),
    # The 'Memory Tokens + Mixed Quantization' record stack (public PR #352): its 524,288-token
    # batch (32 x 2048 per GPU on 8 GPUs) and its two training-only MTP heads (weight 0.2 each).
    "record": dict(
        num_layers=10, model_dim=512, num_heads=8, num_kv_heads=4, mlp_mult=3.0, rope_dims=16,
        num_memory_tokens=64, bigram_vocab_size=10240, bigram_dim=128, smear_gate=True,
        mtp_num_heads=2, mtp_loss_weight=0.2, mtp_decay=1.0,
        train_seq_len=2048, train_batch_tokens=524288, quant_mlp_bits=5, quant_attn_bits=6,
        quant_embed_bits=8, eval_stride=64, eval_batch_windows=64,
    ),
    # The April frontier (the 1.0611 script record, 2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack):
    # 11x512, MLP 4x LeakyReLU(0.5)^2, XSA in every layer, sparse attention gates, depth loops over layers
    # 3-5 from 35% of training, parallel lanes from layer 8, gated U-Net skips, Polar-Express Muon with
    # row normalisation, GPTQ + SDClip int6 (int7 embedding) + LQER r4, brotli, phased score-first TTT.
    # Its tokenizer is SP8192 + CaseOps: VOCAB_SIZE=8192 with an SP8192 data folder (make data-fineweb).
    # EMA 0.9965 over its ~4,900 steps = a horizon of ~0.058 of the run.
    "frontier": dict(
        num_layers=11, model_dim=512, num_heads=8, num_kv_heads=4, mlp_mult=4.0, mlp_leaky_slope=0.5,
        rope_dims=16, qk_gain_init=5.0, xsa_last_n=11, sparse_attn_gate_enabled=True, sparse_attn_gate_scale=0.5,
        gate_window=12, smear_gate=True, skip_gates=True, num_loops=2, loop_start=3, loop_end=5,
        enable_looping_at=0.35, parallel_start_layer=8, doc_attention=True, doc_packing=1,
        train_seq_len=2048, train_batch_tokens=786432, warmdown_frac=0.85, min_lr=0.1,
        matrix_lr=0.026, scalar_lr=0.02, embed_lr=0.03, beta2=0.99, muon_ns="polar", muon_row_normalize=True,
        muon_momentum=0.97, muon_momentum_warmup_start=0.92, muon_momentum_warmup_frac=0.3,
        muon_weight_decay=0.095, embed_weight_decay=0.085, scalar_weight_decay=0.02, grad_clip_norm=0.3,
        ema_horizon_frac=0.058, qat=False,
        quant_scheme="gptq", quant_calib_batches=16, quant_clip_sigmas="mlp=11.5,attn=13,embed=14,other=12.85",
        quant_mlp_bits=6, quant_attn_bits=6, quant_other_bits=6, quant_embed_bits=7,
        lqer_rank=4, lqer_bits=4, lqer_top_k=3, lqer_group=64, compressor="brotli", quant_layout="sorted_t",
        eval_stride=64, eval_batch_windows=64, ttt="phased", global_ttt_lr=0.001,
    ),
}


# ---------------------------------------------------------------------------------------------
# parsing


def _field_types() -> dict[str, type]:
    hints = {f.name: f.type for f in fields(Hyperparameters)}
    types = {}
    for name, t in hints.items():
        t = t if isinstance(t, str) else getattr(t, "__name__", str(t))
        types[name] = {"int": int, "float": float, "bool": bool, "str": str}[t]
    return types


FIELD_TYPES = _field_types()


def _coerce(name: str, value: Any, source: str) -> Any:
    t = FIELD_TYPES[name]
    if isinstance(value, t) and not (t is int and isinstance(value, bool)):
        return value
    s = str(value).strip()
    try:
        if t is bool:
            low = s.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(s)
        if t is int:
            f = float(s)
            if f != int(f):
                raise ValueError(s)
            return int(f)
        if t is float:
            return float(s)
        return s
    except ValueError:
        raise GolfError(f"{source}: {name.upper()}={value!r} is not a valid {t.__name__}") from None


def unknown_setting_error(name: str, source: str) -> GolfError:
    close = difflib.get_close_matches(name.lower(), list(FIELD_TYPES), n=4, cutoff=0.6)
    hint = f"; did you mean {', '.join(c.upper() for c in close)}?" if close else "; see golf/core/config.py for the list"
    return GolfError(f"{source}: unknown setting {name!r}{hint}")


def check_name(name: str, source: str) -> str:
    key = name.strip().lstrip("-").replace("-", "_").lower()
    if key not in FIELD_TYPES:
        raise unknown_setting_error(name, source)
    return key


def parse_cli(argv: Sequence[str]) -> dict[str, Any]:
    """--num-layers 10, --num_layers=10, --smear-gate (bare flag = true for booleans)."""
    out: dict[str, Any] = {}
    i = 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise GolfError(f"command line: unexpected argument {arg!r}; settings look like --num-layers 10")
        body = arg[2:]
        if "=" in body:
            name, value = body.split("=", 1)
            i += 1
        else:
            name = body
            key = check_name(name, "command line")
            if FIELD_TYPES[key] is bool and (i + 1 >= len(argv) or argv[i + 1].startswith("--")):
                value = "true"
                i += 1
            else:
                if i + 1 >= len(argv):
                    raise GolfError(f"command line: --{name} needs a value")
                value = argv[i + 1]
                i += 2
        key = check_name(name, "command line")
        out[key] = _coerce(key, value, "command line")
    return out


# Environment variables that look like ours but are not: only names close to a real setting are
# flagged, so unrelated variables (PATH, HOME, CUDA_VISIBLE_DEVICES...) pass untouched.
_ENV_IGNORE = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               # the Makefile's and the pipeline's own variables (make passes them to the recipes' environment)
               "SEEDS", "NAME", "TRACK", "RECORD", "ARTIFACT", "OUT", "CHECKPOINT", "CROSS", "MAX_TOKENS", "DATA_OUT",
               "CORPUS", "VAL", "TOKENIZER", "TEXT_FIELD", "VARIANT", "TRAIN_SHARDS", "PROMPT", "GITHUB_ID", "AUTHOR",
               "BLURB", "NPROC", "PY",
               # make study's own (golf/submit/study.py)
               "ARMS", "BASELINE", "LOCAL", "GLOBAL", "CONTEXTS", "COMMON", "PROBES", "FLOOR"}


# The challenge baseline's settings (openai/parameter-golf train_gpt.py) whose golf name differs: each
# is honoured under golf's name, or refused with the golf setting to use; none is ignored. Those with
# the same name and meaning (NUM_LAYERS, MATRIX_LR, ...) need no entry. EMBED_LR keeps golf's meaning:
# the embedding's LR, tied or not (the baseline's EMBED_LR applies only when untied).
CHALLENGE_NAMES = {
    "VAL_LOSS_EVERY": "val_every",  # steps between val evaluations (0: at the end only)
    "VAL_BATCH_SIZE": "val_batch_tokens",  # tokens per val batch over all ranks
    "TRAIN_LOG_EVERY": "log_every",
    "WARMUP_STEPS": "compile_warmup_steps",  # steps run before the clock starts, then the weights restored
    "TIED_EMBED_LR": "embed_lr",
    # the later records' per-group weight decays (PR #1218; the 1.0611 record: 0.095 / 0.085 / 0.02)
    "MUON_WD": "muon_weight_decay",  # Muon's matrices
    "EMBED_WD": "embed_weight_decay",  # the token embedding's AdamW
    "ADAM_WD": "scalar_weight_decay",  # the scalar/control AdamW group only (not the embedding)
}
CHALLENGE_REFUSED = {
    "WARMDOWN_ITERS": "WARMDOWN_FRAC (golf's warm-down is a fraction of the run, wall clock or ITERATIONS: "
                      "WARMDOWN_ITERS=1200 of a ~13,000-step run is WARMDOWN_FRAC=0.09)",
    "MUON_MOMENTUM_WARMUP_STEPS": "MUON_MOMENTUM_WARMUP_FRAC (a fraction of the run: 500 of ~13,000 steps is 0.04)",
    "HEAD_LR": "EMBED_LR (golf trains an untied LM head in the embedding's group)",
    "CONTROL_TENSOR_NAME_PATTERNS": "QUANT_MIN_NUMEL (golf keeps small and control tensors in fp16 by size and by "
                                    "the parameter's tag, golf/compress/quant.py)",
    "INT8_KEEP_FLOAT_FP32_NAME_PATTERNS": "QUANT_MIN_NUMEL (see golf/compress/quant.py)",
}


def parse_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    upper = {k.upper(): k for k in FIELD_TYPES}
    for name, value in env.items():
        if name in CHALLENGE_REFUSED:
            raise GolfError(f"environment: {name} is the challenge baseline's setting; golf's is "
                            f"{CHALLENGE_REFUSED[name]}. Unset {name}.")
        if name in CHALLENGE_NAMES:
            key = CHALLENGE_NAMES[name]
            mine = env.get(key.upper())
            if mine is not None and _coerce(key, mine, "environment") != _coerce(key, value, "environment"):
                raise GolfError(f"environment: {name}={value} (the challenge's name for {key.upper()}) and "
                                f"{key.upper()}={mine} disagree; set one of them")
            out[key] = _coerce(key, value, f"environment ({name}, golf's {key.upper()})")
        elif name in upper:
            key = upper[name]
            out[key] = _coerce(key, value, "environment")
        elif name.isupper() and name not in _ENV_IGNORE:
            close = looks_like_a_setting(name, list(upper) + list(CHALLENGE_NAMES))
            if close:
                raise GolfError(
                    f"environment: unknown setting {name}; did you mean {', '.join(close)}? "
                    f"(unset {name} or fix its spelling)"
                )
    return out


def looks_like_a_setting(name: str, known: Sequence[str]) -> list[str]:
    """Settings an unknown upper-case variable is probably a misspelling of: the same letters without
    underscores (MODELDIM), a close spelling (NUM_LAYRES), or a cut-off name ending at a word
    boundary (MAX_WALLCLOCK for MAX_WALLCLOCK_SECONDS). Unrelated variables (PATH, OMP_NUM_THREADS,
    CUDA_VISIBLE_DEVICES) match none of these."""
    squash = {k.replace("_", ""): k for k in known}
    bare = name.replace("_", "")
    hits = [squash[bare]] if bare in squash else []
    hits += difflib.get_close_matches(name, list(known), n=3, cutoff=0.88)
    hits += [k for k in known if len(name) >= 8 and k.startswith(name + "_")]
    return list(dict.fromkeys(hits))[:3]


def apply_overrides(h: Hyperparameters, overrides: Mapping[str, Any], source: str) -> Hyperparameters:
    for k, v in overrides.items():
        key = check_name(k, source)
        setattr(h, key, _coerce(key, v, source))
    return h


def load_config(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    preset: str | None = None,
    finalize: bool = True,
) -> Hyperparameters:
    """Build the run's Hyperparameters once: defaults < preset < env < CLI."""
    env = dict(os.environ if env is None else env)
    cli = parse_cli(argv or [])
    env_over = parse_env(env)
    name = cli.get("preset") or env_over.get("preset") or preset or Hyperparameters.preset
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise GolfError(f"unknown preset {name!r}{hint} (known: {', '.join(PRESETS)})")
    h = Hyperparameters(preset=name)
    apply_overrides(h, PRESETS[name], f"preset {name}")
    apply_overrides(h, env_over, "environment")
    apply_overrides(h, cli, "command line")
    return h.finalize() if finalize else h


def settings_diff(cfg: Mapping[str, Any], skip: Sequence[str] = ()) -> dict[str, Any]:
    """The settings of a saved (finalized) config that differ from its preset's: what a command line
    or a bundle's baked defaults must give to rebuild it. A derived EVAL_SEQ_LEN (= TRAIN_SEQ_LEN)
    is left out; unknown keys are ignored (older records)."""
    base = load_config(argv=[], env={}, preset=cfg.get("preset", "tiny"), finalize=False)
    base.eval_seq_len = base.eval_seq_len or cfg.get("train_seq_len", base.train_seq_len)
    ref = base.to_dict()
    out = {}
    for k, v in cfg.items():
        if k in skip or k == "preset" or k not in ref:
            continue
        if k == "eval_seq_len" and v == cfg.get("train_seq_len") and ref[k] in (0, v):
            continue
        if v != ref[k]:
            out[k] = v
    return out


def from_dict(d: Mapping[str, Any], source: str = "config") -> Hyperparameters:
    """Rebuild Hyperparameters from a saved dict (records, checkpoints); unknown keys are errors."""
    h = Hyperparameters()
    apply_overrides(h, d, source)
    return h

