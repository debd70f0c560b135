"""A memory study's record (golf/submit/study.py): study.json, README.md and figures from the runs,
their per-context reports and the probes; and the shape the leaderboard checks before listing one.

Comparisons follow make ablate: A = the BASELINE arm, B = the other arm, differences B - A (negative:
the arm is better), paired over seeds (golf.submit.stats).
"""
from __future__ import annotations

import math
import os
import shlex
import tempfile
from pathlib import Path
from typing import Any, Sequence

from golf.core import plots
from golf.core.utils import GolfError, atomic_write_json, atomic_write_text, git_commit, today
from golf.eval.deficit import deficit_table, from_reports
from golf.submit import stats
from golf.submit.runs import SeedRun, max_params, read_json, say

FIGURES = ("bpb_by_position.png", "deficit_closure.png")


def _role(spec: dict[str, Any], arm: str) -> str:
    roles = [r for r, k in (("baseline", "baseline"), ("local", "local"), ("global", "global_")) if spec.get(k) == arm]
    return "+".join(roles) or ("mechanism" if spec.get("local") else "arm")


def _buckets(reports: Sequence[dict[str, Any]], ctx: int) -> dict[str, list]:
    """Mean and std over seeds of each position bucket's BPB at `ctx`."""
    cols = [r["contexts"][str(ctx)]["position_bpb"] for r in reports]
    out: dict[str, list] = {"start": cols[0]["start"], "end": cols[0]["end"], "bpb": [], "std": []}
    for k in range(len(out["start"])):
        vals = [c["bpb"][k] for c in cols if c["bpb"][k] is not None]
        out["bpb"].append(stats.mean(vals) if vals else None)
        out["std"].append(stats.std(vals) if vals else None)
    return out


def build_record(spec: dict[str, Any], runs: dict[str, list[SeedRun]], reports: dict[str, list[dict[str, Any]]],
                 probes: dict[str, Any] | None) -> dict[str, Any]:
    arms: dict[str, Any] = {}
    for a, rs in runs.items():
        res = [r.result for r in rs]
        ctx = {}
        for c in spec["contexts"]:
            vals = [rep["contexts"][str(c)]["val_bpb"] for rep in reports[a]]
            ctx[str(c)] = {"val_bpb": vals, "mean": stats.mean(vals), "std": stats.std(vals),
                           "position_bpb": _buckets(reports[a], c)}
        bpb = [r["val_bpb"] for r in res]
        arms[a] = {"settings": spec["arm_settings"][a], "role": _role(spec, a),
                   "val_bpb": stats.mean(bpb), "val_bpb_std": stats.std(bpb),
                   "val_loss": stats.mean([r["val_loss"] for r in res]), "bytes_total": max(r["bytes_total"] for r in res),
                   "params": max_params(res),
                   "seed_results": res, "run_ids": [r.run_id for r in rs], "reused_runs": [r.run_id for r in rs if r.reused],
                   "config": rs[0].config, "contexts": ctx}
    base = arms[spec["baseline"]]
    comparisons = {}
    for a, arm in arms.items():
        if a == spec["baseline"]:
            continue
        head = stats.compare_arms([r["val_loss"] for r in base["seed_results"]], [r["val_loss"] for r in arm["seed_results"]],
                                  [r["val_bpb"] for r in base["seed_results"]], [r["val_bpb"] for r in arm["seed_results"]])
        per_ctx = {}
        for c in spec["contexts"]:
            t = stats.paired_t(base["contexts"][str(c)]["val_bpb"], arm["contexts"][str(c)]["val_bpb"])
            per_ctx[str(c)] = {"mean_diff_bpb": -t["mean_diff"], "std_diff_bpb": t["std_diff"], "p_paired": t["p"]}
        comparisons[a] = {"headline": head, "contexts": per_ctx}
    deficit = deficit_tables(reports, spec["contexts"], spec["local"], spec["global_"], spec["window"], spec["floor"]) \
        if spec.get("local") else None
    return {"kind": "study", "name": spec["name"], "date": spec["date"], "preset": spec["preset"],
            "seeds": spec["seeds"], "contexts": spec["contexts"], "baseline": spec["baseline"],
            "local": spec.get("local"), "global": spec.get("global_"), "window": spec["window"], "floor": spec["floor"],
            "common_settings": spec["common"], "arms": arms, "comparisons": comparisons, "deficit": deficit,
            "probes": probes, "commit": spec["commit"], "hardware": spec["hardware"], "data": spec["data"]}


def deficit_tables(reports: dict[str, list[dict[str, Any]]], contexts: Sequence[int], local: str, global_: str,
                   window: int, floor: float) -> dict[str, Any]:
    """The deficit report (golf.eval.deficit) at each context from every arm's per-seed context reports;
    every arm other than the local and the global one is a mechanism."""
    mechs = [a for a in reports if a not in (local, global_)]
    return {str(c): deficit_table({a: from_reports(reps, c, f"arm {a}") for a, reps in reports.items()},
                                  local, global_, mechs, window, floor)
            for c in contexts}


def _f(x: Any, nd: int = 4, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}"


def _n(x: Any) -> str:
    return f"{x:,}" if isinstance(x, int) else "-"


def _p(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def _scored_on(rec: dict[str, Any]) -> str:
    n = max(int(r.get("score_max_tokens") or 0) for a in rec["arms"].values() for r in a["seed_results"])
    return "the whole val split" if not n else f"the first {n:,} val tokens (SCORE_MAX_TOKENS; not a challenge score)"


def reproduce(rec: dict[str, Any]) -> str:
    arms = ";".join(f"{a}={' '.join(v['settings'])}" for a, v in rec["arms"].items())
    parts = [f"make study NAME={rec['name']} PRESET={rec['preset']} ARMS={shlex.quote(arms)} BASELINE={rec['baseline']}",
             f"CONTEXTS={','.join(map(str, rec['contexts']))} SEEDS={','.join(map(str, rec['seeds']))}"]
    if rec["common_settings"]:
        parts.append(f"COMMON={shlex.quote(' '.join(rec['common_settings']))}")
    if rec.get("local"):
        parts.append(f"LOCAL={rec['local']} GLOBAL={rec['global']} FLOOR={rec['floor']}")
    if rec.get("probes"):
        parts.append("PROBES=1")
    return " ".join(parts)


def render_readme(rec: dict[str, Any]) -> str:
    ctxs = [str(c) for c in rec["contexts"]]
    lines = [f"# Memory study: {rec['name']}", "",
             f"- preset `{rec['preset']}`, common `{' '.join(rec['common_settings']) or '(none)'}`, seeds {rec['seeds']} "
             f"(paired, all reported), baseline arm `{rec['baseline']}`",
             f"- commit `{rec['commit']}`, {rec['hardware']}, {rec['date']}", f"- scored on: {_scored_on(rec)}",
             *[f"- tables and figures re-rendered from these runs at commit `{r['commit']}` ({r['date']}): {r['why']}"
               for r in rec.get("rerendered") or []], "",
             "| arm | role | settings | val_bpb (sliding) | B-A vs baseline | p (paired, val_loss) | params | bytes_total | runs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for a, v in rec["arms"].items():
        c = rec["comparisons"].get(a, {}).get("headline", {})
        lines.append(f"| {a} | {v['role']} | `{' '.join(v['settings']) or '(preset)'}` | {_f(v['val_bpb'])} ± "
                     f"{_f(v['val_bpb_std'])} | {_f(c.get('mean_diff_bpb'), sign=True)} | {_p(c.get('p_paired'))} "
                     f"| {_n(v.get('params'))} | {v['bytes_total']:,} | {len(v['run_ids'])} ({len(v['reused_runs'])} cached) |")
    lines += ["", "BPB at each context (non-overlapping windows: a token at position p had p tokens of context); "
              "mean ± std over seeds, then B-A against the baseline and its paired p:", "",
              "| arm | " + " | ".join(f"ctx {c}" for c in ctxs) + " |", "|---|" + "---|" * len(ctxs)]
    for a, v in rec["arms"].items():
        cells = []
        for c in ctxs:
            cc = rec["comparisons"].get(a, {}).get("contexts", {}).get(c)
            diff = f" ({_f(cc['mean_diff_bpb'], sign=True)}, p {_p(cc['p_paired'])})" if cc else ""
            cells.append(f"{_f(v['contexts'][c]['mean'])} ± {_f(v['contexts'][c]['std'])}{diff}")
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += ["", "![BPB by position](bpb_by_position.png)"]
    if rec.get("deficit"):
        lines += _deficit_lines(rec)
    if rec.get("probes"):
        names = list(next(iter(rec["probes"].values())))
        lines += ["", "Retrieval probes (golf.eval.probes; mean exact-match accuracy over cells, mean over seeds; "
                  "per-seed JSON and heat maps in probes/):", "", "| arm | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for a, res in rec["probes"].items():
            lines.append(f"| {a} | " + " | ".join(_f(stats.mean(res[n]), 3) for n in names) + " |")
    if rec.get("notes"):
        lines += ["", "## Reading", "", *[f"- {n}" for n in rec["notes"]]]
    lines += ["", "Reproduce:", "", "```", f"git checkout {str(rec['commit']).replace('+dirty', '')}", reproduce(rec), "```"]
    return "\n".join(lines) + "\n"


def _deficit_lines(rec: dict[str, Any]) -> list[str]:
    any_t = next(iter(rec["deficit"].values()))
    mechs = list(any_t["mechanisms"])
    lines = ["", f"## Deficit and closure: local `{rec['local']}` vs global `{rec['global']}` (window {rec['window']})", "",
             f"deficit = local - global BPB (> 0: local worse); gain = local - mechanism; closure = gain / deficit, "
             f"NA where the deficit is below {rec['floor']} BPB (within noise, or local already better: no gap to "
             "close). Summary closure = sum(gain) / sum(deficit) over buckets wholly beyond the window that clear "
             "the floor. Mean ± std over seeds.", ""]
    for ctx, t in rec["deficit"].items():
        summ = ", ".join(f"{m} {_f(t['mechanisms'][m]['summary_closure'], 3)}" for m in mechs) or "-"
        lines += [f"Context {ctx}: mean deficit beyond the window {_f(t['summary_deficit'], sign=True)}; summary closure: {summ}",
                  "", "| bucket | deficit | " + " | ".join(f"{m} gain | {m} closure" for m in mechs) + " |",
                  "|---|---|" + "---|---|" * len(mechs)]
        for k, (s, e) in enumerate(t["buckets"]):
            row = f"| {s}-{e}{'' if t['beyond_window'][k] else ' (in window)'} | {_f(t['deficit']['mean'][k], sign=True)} ± " \
                  f"{_f(t['deficit']['std'][k])} |"
            for m in mechs:
                g = t["mechanisms"][m]
                row += f" {_f(g['gain']['mean'][k], sign=True)} ± {_f(g['gain']['std'][k])} | {_f(g['closure'][k], 3)} |"
            lines.append(row)
        lines.append("")
    return lines + ["![deficit and closure](deficit_closure.png)"]


def figures(rec: dict[str, Any], dest: Path) -> list[str]:
    mid = lambda pb: [(s + e) / 2 for s, e in zip(pb["start"], pb["end"])]  # noqa: E731
    win = rec.get("window") or None
    specs = [{"title": f"context {c}", "xlabel": "position in window (tokens)", "ylabel": "bits per byte", "vline": win,
              "series": {a: (mid(v["contexts"][str(c)]["position_bpb"]), v["contexts"][str(c)]["position_bpb"]["bpb"],
                             v["contexts"][str(c)]["position_bpb"]["std"]) for a, v in rec["arms"].items()}}
             for c in rec["contexts"]]
    made = [plots.panels(specs, dest / FIGURES[0], title=f"{rec['name']}: BPB by position (mean ± std over seeds)")]
    if rec.get("deficit"):
        mids = {c: [(s + e) / 2 for s, e in t["buckets"]] for c, t in rec["deficit"].items()}
        dspec = {"title": f"deficit: {rec['local']} - {rec['global']}", "xlabel": "position in window (tokens)",
                 "ylabel": "BPB", "hline": 0, "vline": win,
                 "series": {f"ctx {c}": (mids[c], t["deficit"]["mean"], t["deficit"]["std"]) for c, t in rec["deficit"].items()}}
        cspec = {"title": "closure: gain / deficit", "xlabel": "position in window (tokens)", "ylabel": "closure",
                 "hline": 0, "vline": win,
                 "series": {f"{m} ctx {c}": (mids[c], g["closure"], None) for c, t in rec["deficit"].items()
                            for m, g in t["mechanisms"].items()}}
        made.append(plots.panels([dspec, cspec], dest / FIGURES[1], title=rec["name"]))
    return [Path(p).name for p in made if p]


def write_record(dest: Path, rec: dict[str, Any], files: list[str]) -> None:
    try:
        figs = figures(rec, dest)
    except ImportError:
        figs = []
        say("matplotlib is not installed: the study's figures are skipped (pip install matplotlib)")
    probe_files = sorted(str(p.relative_to(dest)) for p in (dest / "probes").rglob("*") if p.is_file()) \
        if (dest / "probes").is_dir() else []
    rec["files"] = ["study.json", "README.md"] + figs + files + probe_files
    atomic_write_json(dest / "study.json", rec)
    atomic_write_text(dest / "README.md", render_readme(rec))


def study_problems(rec: Any) -> list[str]:
    """What keeps a study.json from being listed (its shape, not its result)."""
    if not isinstance(rec, dict) or rec.get("kind") != "study":
        return ["study.json is not a study record (no kind: study)"]
    problems = []
    arms = rec.get("arms")
    if not isinstance(arms, dict) or len(arms) < 2:
        return problems + ["study.json has fewer than two arms"]
    for a, v in arms.items():
        if not isinstance(v, dict) or not isinstance(v.get("settings"), list) or not isinstance(v.get("val_bpb"), (int, float)):
            problems.append(f"study.json arm {a} has no settings list or no numeric val_bpb")
    if rec.get("baseline") not in arms:
        problems.append("study.json baseline is not one of its arms")
    for k in ("seeds", "contexts"):
        if not isinstance(rec.get(k), list) or not rec.get(k):
            problems.append(f"study.json '{k}' is not a non-empty list")
    if not isinstance(rec.get("comparisons"), dict):
        problems.append("study.json 'comparisons' is not an object")
    return problems


def rerender(folder: str | Path, why: str, notes: Sequence[str] = ()) -> Path:
    """Rebuild a study record's derived parts (parameter counts, deficit and closure tables, README,
    figures) with today's code from the record's own files; the runs, their scores and the paired tests
    are kept as they are. For a report rule that changed after the study ran (retraining every arm to
    re-read its numbers would only cost time). The record says when, at which commit, and why; `notes`
    (a reader's conclusions) are added to its README's Reading section."""
    folder = Path(folder)
    if not why.strip():
        raise GolfError("say why the study is re-rendered (WHY=...): the record keeps it")
    rec = read_json(folder / "study.json")
    problems = study_problems(rec) if rec else ["study.json is missing or not JSON"]
    if problems:
        raise GolfError(f"{folder}: {'; '.join(problems)}")
    reports: dict[str, list[dict[str, Any]]] = {}
    for a, arm in rec["arms"].items():
        for r in arm["seed_results"]:
            if not isinstance(r.get("params"), int):  # runs that predate the count: their training metrics have it
                r["params"] = read_json(folder / f"{a}_metrics_seed{r['seed']}.json").get("params")
        arm["params"] = max_params(arm["seed_results"])
        reports[a] = []
        for s in rec["seeds"]:
            rep = read_json(folder / f"{a}_contexts_seed{s}.json")
            if not rep:
                raise GolfError(f"{folder / f'{a}_contexts_seed{s}.json'} is missing: the study cannot be re-rendered")
            reports[a].append(rep)
    if rec.get("local"):
        rec["deficit"] = deficit_tables(reports, rec["contexts"], rec["local"], rec["global"], rec["window"], rec["floor"])
    rec["notes"] = [*(rec.get("notes") or []), *[n.strip() for n in notes if n.strip()]]
    rec["rerendered"] = [*(rec.get("rerendered") or []), {"commit": git_commit(), "date": today(), "why": why.strip()}]
    try:
        with tempfile.TemporaryDirectory(dir=folder, prefix=".rerender_") as tmp:
            figs = figures(rec, Path(tmp))
            for name in figs:  # each figure replaced whole, never half-written
                os.replace(Path(tmp) / name, folder / name)
        rec["files"] = [*rec.get("files", []), *[f for f in figs if f not in rec.get("files", [])]]
    except ImportError:
        say("matplotlib is not installed: the study's figures are left as they were")
    atomic_write_json(folder / "study.json", rec)
    atomic_write_text(folder / "README.md", render_readme(rec))
    say(f"study re-rendered: {folder}")
    return folder
