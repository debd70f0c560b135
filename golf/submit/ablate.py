"""`make ablate`: A and B on the same seeds, paired statistics, one record folder."""
from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any

from golf.core import plots
from golf.core.config import Hyperparameters
from golf.core.utils import (GolfError, atomic_dir, atomic_write_json, atomic_write_text, device_description,
                             git_commit, now_stamp, sweep_stale, today)
from golf.submit import records as R
from golf.submit import stats
from golf.submit.runs import SeedRun, Stages, copy_seed_files, ensure_data, max_params, run_seed, say, seed_history
from golf.submit.settings import default_preset, parse_seeds, parse_settings, resolve_config


def ablate(
    name: str,
    a: str,
    b: str,
    seeds: str | None = None,
    preset: str | None = None,
    settings: dict[str, Any] | None = None,
    records_dir: str | Path = "records",
    stages: Stages | None = None,
    use_cache: bool = True,
) -> Path:
    """Paired A/B on the same seeds; every seed of both arms goes into one record folder."""
    stages = stages or Stages()
    settings = dict(settings or {})
    name = R.check_record_name(name)
    arm_a, arm_b = parse_settings(a, "A"), parse_settings(b, "B")
    if arm_a == arm_b:
        say("warning: A and B are the same settings (an A/A test)")
    preset = preset or default_preset()
    seed_list = parse_seeds(seeds or "3", Hyperparameters.seed, count_ok=True)
    cfg_a = resolve_config(preset, {**settings, **arm_a}, seed_list[0], "check")
    cfg_b = resolve_config(preset, {**settings, **arm_b}, seed_list[0], "check")  # both arms valid up front
    existing = R.find_existing(Path(records_dir), R.ABLATIONS_TRACK, name)
    if existing is not None:
        raise GolfError(f"an ablation named {name!r} already exists ({existing}); choose another NAME")
    date, stamp = today(), now_stamp()
    dest = R.record_dir(Path(records_dir), R.ABLATIONS_TRACK, date, name)
    ensure_data(cfg_a, stages, Path(cfg_a.out_dir) / f"prepare_{stamp}.log")
    two_folders = cfg_b.data_path != cfg_a.data_path  # a tokenizer A/B: each arm reads its own folder
    if two_folders:
        ensure_data(cfg_b, stages, Path(cfg_b.out_dir) / f"prepare_{stamp}_b.log")

    commit = git_commit()  # before training (see submit)
    runs: dict[str, list[SeedRun]] = {"A": [], "B": []}
    for s in seed_list:
        # Interleave the arms seed by seed so slow drift of the machine hits both arms alike.
        for arm, over in (("A", arm_a), ("B", arm_b)):
            h = resolve_config(preset, {**settings, **over}, s, f"{name}_{stamp}_{arm}_s{s}")
            runs[arm].append(run_seed(h, stages, use_cache))

    ra, rb = [r.result for r in runs["A"]], [r.result for r in runs["B"]]
    per_byte = two_folders or cfg_a.vocab_size != cfg_b.vocab_size
    cmp, per_seed = compare(seed_list, ra, rb, per_byte)
    arm_summary = lambda rs, over, rr: {  # noqa: E731
        "settings": R.env_assignments(over),
        "val_bpb": stats.mean([r["val_bpb"] for r in rs]), "val_bpb_std": stats.std([r["val_bpb"] for r in rs]),
        "val_loss": stats.mean([r["val_loss"] for r in rs]),
        "bytes_total": max(r["bytes_total"] for r in rs), "params": max_params(rs),
        "seed_results": rs, "config": rr[0].config, "run_ids": [r.run_id for r in rr],
        "reused_runs": [r.run_id for r in rr if r.reused],
    }
    rec = {
        "kind": "ablation", "name": name, "date": date, "preset": preset, "seeds": seed_list,
        "common_settings": R.env_assignments(settings),
        "A": arm_summary(ra, arm_a, runs["A"]), "B": arm_summary(rb, arm_b, runs["B"]),
        "per_seed": per_seed, "comparison": cmp,
        "bars": {"challenge": f">= {stats.CHALLENGE_MIN_NATS} nats better at one-sided paired p < {stats.CHALLENGE_P}",
                 "practice": f"one-sided Welch p < {stats.PRACTICE_P} (B better than A)"},
        "commit": commit, "hardware": device_description(),
        "data": R.store_manifest(Path(records_dir), cfg_a.data_path, cfg_a.tokenizer_path),
    }
    if two_folders:
        rec["data_b"] = R.store_manifest(Path(records_dir), cfg_b.data_path, cfg_b.tokenizer_path)
    sweep_stale(dest.parent)
    with atomic_dir(dest) as tmp:
        files = []
        for arm in ("A", "B"):
            for r in runs[arm]:
                files += copy_seed_files(r, tmp, prefix=f"{arm}_")
        hist = {f"{arm} s{r.seed}": seed_history(r) for arm in ("A", "B") for r in runs[arm]}
        plots.ablation_plot(seed_list, [r["val_bpb"] for r in ra], [r["val_bpb"] for r in rb], hist,
                            tmp / "ablation.png", title=name)
        rec["files"] = ["ablation.json", "README.md", "ablation.png"] + sorted(files)
        atomic_write_json(tmp / "ablation.json", rec)
        atomic_write_text(tmp / "README.md", render_ablation_readme(rec))
    say(f"ablation written: {dest}  dBPB (B-A) {cmp['mean_diff_bpb']:+.4f}, p {cmp['p_paired']:.3g}, "
        f"challenge bar {'met' if cmp['meets_challenge_bar'] else 'not met'}, "
        f"practice bar {'met' if cmp['meets_practice_bar'] else 'not met'}")
    return dest


def compare(seeds: list[int], ra: list[dict], rb: list[dict], per_byte: bool) -> tuple[dict, list[dict]]:
    """The paired statistics and the per-seed table. Nats per token compare two arms only when they
    share a tokenizer; arms on two tokenizers (per_byte) are tested on nats per byte (val_bpb x ln 2),
    the quantity the challenge scores, and the README says which."""
    nats = (lambda r: r["val_bpb"] * math.log(2)) if per_byte else (lambda r: r["val_loss"])  # noqa: E731
    cmp = stats.compare_arms([nats(r) for r in ra], [nats(r) for r in rb],
                             [r["val_bpb"] for r in ra], [r["val_bpb"] for r in rb])
    cmp["basis"] = "nats per byte (val_bpb x ln 2; the arms' tokenizers differ)" if per_byte else "nats per token (val_loss)"
    per_seed = [
        {"seed": s, "val_bpb_a": x["val_bpb"], "val_bpb_b": y["val_bpb"], "diff_bpb": y["val_bpb"] - x["val_bpb"],
         "val_loss_a": x["val_loss"], "val_loss_b": y["val_loss"], "diff_nats": nats(y) - nats(x)}
        for s, x, y in zip(seeds, ra, rb)
    ]
    return cmp, per_seed


def _scored_on(rec: dict[str, Any]) -> str:
    def arm(a: str) -> str:
        r = (rec[a].get("seed_results") or [{}])[0]
        n = r.get("score_max_tokens") or 0
        part = "the whole val split" if not n else f"the first {n:,} val tokens (SCORE_MAX_TOKENS; not a challenge score)"
        return f"{part}, {r.get('eval_tokens') or '?'} tokens scored"
    a, b = arm("A"), arm("B")
    return a if a == b else f"A {a}; B {b}"


def _data_line(rec: dict[str, Any]) -> str:
    d, b = rec.get("data") or {}, rec.get("data_b")
    if not isinstance(b, dict):
        return f"- data: `{d.get('path', '?')}`"
    return f"- data: A `{d.get('path', '?')}`, B `{b.get('path', '?')}` (each arm's manifest is pinned)"


def _per(c: dict[str, Any]) -> str:
    return " per byte" if str(c.get("basis", "")).startswith("nats per byte") else ""


def render_ablation_readme(rec: dict[str, Any]) -> str:
    c = rec["comparison"]
    f = lambda x, nd=4: "-" if x is None or x != x else (f"{x:+.{nd}f}" if nd < 0 else f"{x:.{nd}f}")  # noqa: E731
    sign = lambda x: "-" if x != x else f"{x:+.4f}"  # noqa: E731
    a_set = " ".join(rec["A"]["settings"]) or "(preset defaults)"
    b_set = " ".join(rec["B"]["settings"]) or "(preset defaults)"
    lines = [
        f"# Ablation: {rec['name']}",
        "",
        f"- A: `{a_set}`",
        f"- B: `{b_set}`",
        f"- common: preset `{rec['preset']}` {' '.join(rec['common_settings'])}; seeds {rec['seeds']} (paired, all reported)",
        f"- commit `{rec['commit']}`, {rec['hardware']}, {rec['date']}",
        f"- scored on: {_scored_on(rec)}",
        _data_line(rec),
        "",
        f"| seed | A val_bpb | B val_bpb | B-A bpb | A val_loss | B val_loss | B-A nats{_per(c)} | A run | B run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p, x, y in zip(rec["per_seed"], rec["A"]["seed_results"], rec["B"]["seed_results"]):
        lines.append(
            f"| {p['seed']} | {f(p['val_bpb_a'])} | {f(p['val_bpb_b'])} | {sign(p['diff_bpb'])} | {f(p['val_loss_a'])} "
            f"| {f(p['val_loss_b'])} | {sign(p['diff_nats'])} | {x.get('run_id')}{' (cached)' if x.get('reused') else ''} "
            f"| {y.get('run_id')}{' (cached)' if y.get('reused') else ''} |"
        )
    lines += [
        f"| **mean** | {f(rec['A']['val_bpb'])} | {f(rec['B']['val_bpb'])} | **{sign(c['mean_diff_bpb'])}** "
        f"| {f(rec['A']['val_loss'])} | {f(rec['B']['val_loss'])} | **{sign(c['mean_diff_nats'])}** | | |",
        "",
        f"- paired t-test (scipy.stats.ttest_rel, two-sided, {c.get('basis', 'nats per token (val_loss)')}): "
        f"p = {c['p_paired']:.4g}; "
        f"one-sided (B better): p = {c['p_paired_b_better']:.4g}",
        f"- challenge bar ({rec['bars']['challenge']}): p = {c['p_challenge']:.4g} -> "
        f"**{'met' if c['meets_challenge_bar'] else 'not met'}**",
        f"- practice bar ({rec['bars']['practice']}): p = {c['p_welch_b_better']:.4g} -> "
        f"**{'met' if c['meets_practice_bar'] else 'not met'}**",
        f"- bytes_total: A {rec['A']['bytes_total']:,}, B {rec['B']['bytes_total']:,}",
        *([f"- params: A {pa:,}, B {pb:,} (B-A {pb - pa:+,})"]
          if isinstance(pa := rec["A"].get("params"), int) and isinstance(pb := rec["B"].get("params"), int) else []),
        "",
        "![A vs B](ablation.png)",
        "",
        "Reproduce:",
        "",
        "```",
        f"git checkout {str(rec['commit']).replace('+dirty', '')}",
        f"make ablate NAME={rec['name']} PRESET={rec['preset']} A={shlex.quote(' '.join(rec['A']['settings']))} "
        f"B={shlex.quote(' '.join(rec['B']['settings']))} SEEDS={','.join(map(str, rec['seeds']))} "
        + " ".join(rec["common_settings"]),
        "```",
    ]

    return "\n".join(lines) + "\n"
