"""Records: the committed evidence of a run (or an A/B) and the rules a valid record follows.

A record is a folder `records/<track>/<YYYY-MM-DD>_<name>/` holding
  submission.json         the challenge's fields + seeds, per-seed results, commit, config, hardware
  README.md               generated: result table, techniques (from the config), reproduce command
  train_seed<N>.log       the training log of every seed (never cherry-picked)
  eval_seed<N>.json       the sliding-window evaluation of every seed's round-tripped artifact
  *.png                   loss curve, BPB vs position
It never holds the weights or a copy of the code: `commit` + `config` pin them, and
`make bundle RECORD=...` regenerates the single-file submission.

The data manifest a record pins (by sha256) is kept beside the records, in
`records/manifests/<data folder>/<sha256>.json`, so the leaderboard can check every run's logged
`train_tokens` against the training split it should have read.

Tracks keep comparable numbers together (same hardware class, preset and validation data):
  track_10min_16mb      the challenge's track: record preset, 8xH100, FineWeb data
  cpu_tiny              the default CPU job (tiny preset, default Shakespeare corpus)
  <hw>_<preset>[_<data>] anything else, e.g. 1xH100_record_wiki_sp1024
"""
from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

from golf.core.config import BYTES_CAP, GPTConfig, settings_diff
from golf.core.utils import GolfError, atomic_write_bytes, sha256_bytes, sha256_file
from golf.data.folder import SPLITS, describe_folder, read_manifest, split_tokens
from golf.model.mechanisms import MECHANISMS

ABLATIONS_TRACK = "ablations"
CHALLENGE_TRACK = "track_10min_16mb"
MANIFESTS = "manifests"  # not a track: the data manifests records pin
BENCHES = "benches"  # not a track: benchmark evidence (JSON rows + README), e.g. the quantiser x serialiser cross
STUDIES = "studies"  # not a track: memory studies (make study), listed apart on the leaderboard
CHALLENGE_FIELDS = ("author", "github_id", "name", "blurb", "date", "val_loss", "val_bpb", "bytes_total", "bytes_code")
SEED_FIELDS = ("seed", "val_loss", "val_bpb", "bytes_total")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
# Settings that never change the result; left out of reproduce commands and cache keys.
NON_RESULT_KEYS = ("run_id", "out_dir", "resume", "seed", "preset", "log_every", "checkpoint_every", "checkpoint_minutes")


# ---------------------------------------------------------------------------------------------
# names and places


def check_record_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise GolfError(
            f"record name {name!r} is not usable as a folder name; use letters, digits, '.', '_' or '-' "
            "(e.g. NAME=memtok64_int5)"
        )
    return name


def hardware_slug(hardware: str) -> str:
    """'8x NVIDIA H100 80GB HBM3' -> '8xH100'; 'cpu (2 cores, x86_64)' -> 'cpu'."""
    m = re.match(r"(\d+)x\s+(.*)", hardware)
    if not m:
        return "cpu"
    model = re.search(r"\b([A-Z]+\d+[A-Za-z]*)\b", m.group(2))
    return f"{m.group(1)}x{model.group(1) if model else 'GPU'}"


def default_track(preset: str, hardware: str, data_path: str, default_data_path: str) -> str:
    hw = hardware_slug(hardware)
    data = Path(data_path).name
    if preset == "record" and hw == "8xH100" and data.startswith("fineweb"):
        return CHALLENGE_TRACK
    track = f"{hw}_{preset}"
    if Path(data_path) != Path(default_data_path):
        track += f"_{data}"
    return track


def find_existing(records_dir: Path, track: str, name: str) -> Path | None:
    """A record of that name in the track, on any date (names identify records; never reuse one)."""
    folder = Path(records_dir) / track
    if not folder.is_dir():
        return None
    for p in sorted(folder.iterdir()):
        if p.is_dir() and not p.name.startswith(".") and p.name[11:] == name and p.name[:10].count("-") == 2:
            return p
    return None


def record_dir(records_dir: Path, track: str, date: str, name: str) -> Path:
    return Path(records_dir) / track / f"{date}_{name}"


# ---------------------------------------------------------------------------------------------
# what the config says about the model (README technique list, reproduce command)


def techniques(cfg: dict[str, Any]) -> list[str]:
    """Human-readable list of the techniques a config switches on, in the order a reader cares about."""
    g = lambda k, d=None: cfg.get(k, d)  # noqa: E731
    out = []
    dim, layers = g("model_dim"), g("num_layers")
    kv = g("num_kv_heads")
    out.append(
        f"{layers} layers x {dim} wide, {g('num_heads')} heads"
        + (f" / {kv} KV heads (GQA)" if kv and kv != g("num_heads") else "")
        + f", relu^2 MLP {g('mlp_mult')}x, vocab {g('vocab_size')}, seq {g('train_seq_len')}"
    )
    mixers = [m.strip() for m in (g("mixers") or "").split(",") if m.strip()]
    if mixers and set(mixers) != {"attn"}:
        counts = {m: mixers.count(m) for m in dict.fromkeys(mixers)}
        out.append("sequence mixers: " + ", ".join(f"{n}x {m}" for m, n in counts.items()) + f" ({g('mixers')})")
    model = GPTConfig.from_dict({k: v for k, v in cfg.items() if k in GPTConfig.__dataclass_fields__}, "config")
    out += [m.technique(model) for m in MECHANISMS.values() if m.enabled(model)]  # each mechanism's own words
    if g("bigram_vocab_size"):
        out.append(f"BigramHash embedding {g('bigram_vocab_size')}x{g('bigram_dim')}")
    if g("smear_gate"):
        out.append("SmearGate (reset at BOS)")
    if g("doc_attention"):
        out.append("attention within documents (BOS-delimited; recurrent mixers reset at BOS)")
    if g("doc_packing"):
        out.append("whole documents packed into training rows, split every TRAIN_SEQ_LEN tokens (PR #1354, #1529)")
    if g("mtp_num_heads"):
        out.append(f"{g('mtp_num_heads')} MTP auxiliary heads (weight {g('mtp_loss_weight')}, training only)")
    rope = g("rope_dims")
    if rope and dim and g("num_heads") and rope < dim // g("num_heads"):
        out.append(f"partial RoPE ({rope}/{dim // g('num_heads')} dims)")
    if g("unet_skips"):
        out.append("U-Net skips" + (" with learned sigmoid gates (PR #289)" if g("skip_gates") else ""))
    if g("num_loops"):
        out.append(f"depth recurrence: layers {g('loop_start')}..{g('loop_end')} run {1 + g('num_loops')}x from "
                   f"{g('enable_looping_at')} of training (PR #1344)")
    if g("parallel_start_layer"):
        out.append(f"parallel residual lanes from layer {g('parallel_start_layer')}, final lane "
                   f"{g('parallel_final_lane', 'mean')} (PR #1204, #1530)")
    if g("tie_embeddings"):
        out.append("tied embeddings")
    if g("logit_softcap"):
        out.append(f"logit softcap {g('logit_softcap')}")
    out.append(
        f"Muon (matrix lr {g('matrix_lr')}, wd {g('muon_weight_decay')}) + AdamW; "
        f"warm-down {g('warmdown_frac')} of the budget"
    )
    if g("ema"):
        out.append(f"EMA of weights for export (horizon {g('ema_horizon_frac')} of the run)")
    if g("qat"):
        out.append(f"late QAT (fake-quantise once the LR scale < {g('qat_lr_scale')})")
    bits = lambda b: "fp16" if b == 16 else f"int{b}"  # noqa: E731
    out.append(
        f"quantisation: MLP {bits(g('quant_mlp_bits'))}, attention {bits(g('quant_attn_bits'))}, "
        f"embedding {bits(g('quant_embed_bits'))}, other {bits(g('quant_other_bits'))}; zstd-{g('zstd_level')}"
    )
    out.append(f"sliding-window eval: seq {g('eval_seq_len')}, stride {g('eval_stride')}")
    return out


def non_default_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """Settings of `cfg` that differ from its preset (what a reproduce command must pass)."""
    return settings_diff(cfg, skip=NON_RESULT_KEYS)


def env_assignments(settings: dict[str, Any]) -> list[str]:
    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "1" if v else "0"
        return str(v)

    return [f"{k.upper()}={shlex.quote(fmt(v))}" for k, v in sorted(settings.items())]


def reproduce_command(name: str, cfg: dict[str, Any], seeds: list[int]) -> str:
    parts = ["make train-and-submit", f"NAME={shlex.quote(name)}", f"PRESET={cfg.get('preset', 'tiny')}",
             "SEEDS=" + ",".join(str(s) for s in seeds)]
    return " ".join(parts + env_assignments(non_default_settings(cfg)))


# ---------------------------------------------------------------------------------------------
# README


def _f(x: Any, nd: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def render_readme(sub: dict[str, Any]) -> str:
    cfg = sub.get("config", {})
    lines = [
        f"# {sub['name']}",
        "",
        f"{sub.get('blurb') or ''}".strip(),
        "",
        f"- **val_bpb {sub['val_bpb']:.4f}** (sliding window, mean of {len(sub['seeds'])} seed(s), "
        f"std {sub.get('val_bpb_std', 0.0):.4f}); val_loss {sub['val_loss']:.4f} nats",
        f"- bytes_total {sub['bytes_total']:,} (code {sub['bytes_code']:,}) of the {BYTES_CAP:,} cap",
        f"- author {sub.get('author')} ({sub.get('github_id') or '-'}), {sub['date']}, track `{sub.get('track')}`",
        f"- hardware: {sub.get('hardware')}; commit `{sub.get('commit')}`; data manifest sha256 `{sub.get('data', {}).get('manifest_sha256', '-')}`",
        "",
        "## Results per seed",
        "",
        "| seed | val_bpb | val_loss | val_bpb (round-trip, no sliding) | pre-quant val_bpb (same tokens) | bytes_total "
        "| steps | train s | eval s | run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sub["seed_results"]:
        # pre-quant is on the round trip's tokens only when the run measured it there (val_loss_prequant)
        pre = _f(r.get("val_bpb_prequant")) if r.get("val_loss_prequant") is not None else "-"
        lines.append(
            f"| {r['seed']} | {_f(r['val_bpb'])} | {_f(r['val_loss'])} | {_f(r.get('val_bpb_roundtrip_nonsliding'))} | {pre} "
            f"| {r['bytes_total']:,} | {_f(r.get('steps'))} | {_f(r.get('train_seconds'), 1)} "
            f"| {_f(r.get('eval_seconds'), 1)} | {r.get('run_id', '-')}{' (cached)' if r.get('reused') else ''} |"
        )
    lines += ["", "## Techniques", ""] + [f"- {t}" for t in techniques(cfg)]
    lines += [
        "",
        "## Reproduce",
        "",
        "```",
        f"git checkout {str(sub.get('commit', '')).replace('+dirty', '')}",
        reproduce_command(sub["name"], cfg, sub["seeds"]),
        "```",
        "",
        "The weights are not stored here: the commit and the config above pin them. "
        f"`make bundle RECORD={sub.get('record_path', '<this folder>')}` regenerates the single-file `train_gpt.py`; "
        f"`make verify RECORD=<this folder>` re-trains and re-evaluates.",
    ]
    if str(sub.get("commit", "")).endswith("+dirty"):
        lines += ["", "**Note:** the run was made from a tree with uncommitted changes, so the commit does not pin the code exactly."]
    files = sub.get("files") or []
    if files:
        lines += ["", "## Files", ""] + [f"- [{f}]({f})" for f in files]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# validation (shared by the leaderboard and verify)


def validate_record(folder: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """Check a record folder. Returns (submission or None, list of problems; empty = valid)."""
    folder = Path(folder)
    path = folder / "submission.json"
    if not path.is_file():
        return None, ["submission.json is missing"]
    try:
        sub = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return None, [f"submission.json is not valid JSON ({e})"]
    if not isinstance(sub, dict):
        return None, ["submission.json is not a JSON object"]
    problems = []
    for k in CHALLENGE_FIELDS + ("seeds", "seed_results", "commit", "config"):
        if k not in sub:
            problems.append(f"field {k!r} is missing")
    if problems:
        return sub, problems
    num = (int, float)
    for k in ("val_loss", "val_bpb"):
        if not isinstance(sub[k], num) or not math.isfinite(sub[k]) or sub[k] <= 0:
            problems.append(f"{k} must be a positive number, got {sub[k]!r}")
    for k in ("bytes_total", "bytes_code"):
        if not isinstance(sub[k], int) or sub[k] < 0:
            problems.append(f"{k} must be a non-negative integer, got {sub[k]!r}")
    if isinstance(sub["bytes_total"], int) and sub["bytes_total"] > BYTES_CAP:
        problems.append(f"bytes_total {sub['bytes_total']:,} is over the {BYTES_CAP:,}-byte cap")
    seeds, results = sub["seeds"], sub["seed_results"]
    if not isinstance(seeds, list) or not seeds or not isinstance(results, list):
        return sub, problems + ["seeds must be a non-empty list and seed_results a list"]
    if len(set(seeds)) != len(seeds):
        problems.append(f"seeds {seeds} has duplicates")
    got = []
    for i, r in enumerate(results):
        missing = [k for k in SEED_FIELDS if not isinstance(r, dict) or k not in r]
        if missing:
            problems.append(f"seed_results[{i}] lacks {', '.join(missing)}")
            continue
        got.append(r["seed"])
        if isinstance(r["bytes_total"], int) and r["bytes_total"] > BYTES_CAP:
            problems.append(f"seed {r['seed']}: bytes_total {r['bytes_total']:,} is over the cap")
        elif isinstance(r.get("score_max_tokens"), int) and r["score_max_tokens"] > 0:
            problems.append(f"seed {r['seed']} was scored on the first {r['score_max_tokens']:,} val tokens "
                            f"(SCORE_MAX_TOKENS), not the whole split")
    if sorted(got) != sorted(seeds):
        problems.append(f"seeds {seeds} do not match the seeds in seed_results {got}")
    ok_results = [r for r in results if isinstance(r, dict) and all(k in r for k in SEED_FIELDS)]
    if ok_results and not problems:
        for k in ("val_bpb", "val_loss"):
            m = sum(r[k] for r in ok_results) / len(ok_results)
            if abs(m - sub[k]) > 1e-6 * max(1.0, abs(m)):
                problems.append(f"{k} {sub[k]} is not the mean of the seed results ({m:.6f})")
        if sub["bytes_total"] < max(r["bytes_total"] for r in ok_results):
            problems.append("bytes_total is smaller than a seed's bytes_total (report the largest)")
    for f in ["README.md"] + [f"train_seed{s}.log" for s in seeds] + [f"eval_seed{s}.json" for s in seeds]:
        if not (folder / f).is_file():
            problems.append(f"{f} is missing")
    return sub, problems


# ---------------------------------------------------------------------------------------------
# the data a record's runs read


def store_manifest(records_dir: Path, data_path: str | Path, tokenizer: str | Path = "") -> dict[str, Any]:
    """Keep the data folder's manifest under records/manifests/<folder>/<sha256>.json (never
    overwritten: the name is its content's hash) and return the record's `data` entry. A folder
    without golf's manifest (the challenge's download) is described from its files instead."""
    data_path = Path(data_path)
    mpath = data_path / "manifest.json"
    if mpath.is_file():
        read_manifest(data_path)
        blob = mpath.read_bytes()
    elif data_path.is_dir():
        blob = (json.dumps(describe_folder(data_path, tokenizer), indent=2, sort_keys=True) + "\n").encode()
    else:
        return {"path": str(data_path), "manifest_sha256": ""}
    sha = sha256_bytes(blob)
    dest = Path(records_dir) / MANIFESTS / data_path.name / f"{sha}.json"
    if not dest.is_file():
        atomic_write_bytes(dest, blob)
    return {"path": str(data_path), "manifest_sha256": sha,
            "split_tokens": {s: split_tokens(data_path, s) for s in SPLITS}}


def find_manifest(records_dir: Path, data: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The manifest a record's `data` entry pins -> (manifest or None, where it came from).

    By sha256: records/manifests/, then the data folder itself. A record written before manifests
    were kept pins one that is not stored; then a stored manifest of the same data folder name is
    used and the source says so (a folder re-made from the same corpus and settings has the same
    splits)."""
    sha, path = str(data.get("manifest_sha256") or ""), Path(str(data.get("path") or ""))
    store = Path(records_dir) / MANIFESTS / path.name
    for cand in ([store / f"{sha}.json", path / "manifest.json"] if sha else []):
        if cand.is_file() and sha256_file(cand) == sha:
            return json.loads(cand.read_text(encoding="utf-8")), f"{cand.parent.name}/{cand.name[:12]}…"
    others = sorted(store.glob("*.json")) if path.name else []
    if others:
        return (json.loads(others[-1].read_text(encoding="utf-8")),
                f"{path.name}/{others[-1].name[:12]}…; the record's own {sha[:12]}… is not stored; same data folder")
    return None, ""


_TRAIN_TOKENS = re.compile(r"^train_tokens:(\d+)", re.M)


def data_leak_problems(records_dir: Path, folder: Path, data: dict[str, Any] | None,
                       logs: str = "*train_seed*.log") -> list[str]:
    """Problems if a run's logged train_tokens differs from its manifest's training split: the
    loader read shards of another split (golf issue 13: a filename glob read validation as training).
    `logs`: the glob of the run logs that read this data (an ablation whose arms read different
    folders checks each arm's logs against its own manifest)."""
    if not isinstance(data, dict):
        return []
    manifest, source = find_manifest(records_dir, data)
    if manifest is None:
        return []
    splits = manifest.get("splits") or {}
    try:
        train, val = int(splits["train"]["tokens"]), int(splits["val"]["tokens"])
    except (KeyError, TypeError, ValueError):
        return [f"data manifest {source} has no split token counts"]
    by_count: dict[int, list[str]] = {}
    for log in sorted(Path(folder).glob(logs)):
        m = _TRAIN_TOKENS.search(log.read_text(encoding="utf-8", errors="replace"))
        if m is not None and int(m.group(1)) != train:
            by_count.setdefault(int(m.group(1)), []).append(log.name)
    problems = []
    for got, logs in sorted(by_count.items()):
        why = (f"train {train:,} + val {val:,}: the validation shards were read as training data"
               if got == train + val else f"the manifest's train split holds {train:,}")
        problems.append(f"{', '.join(logs)}: training read {got:,} tokens, {why} (manifest {source})")
    return problems
