"""Validate every record and render records/LEADERBOARD.md.

    python -m golf.submit.leaderboard [--records records] [--out records/LEADERBOARD.md]

One table per track, sorted by sliding-window val_bpb (mean over seeds), with the challenge README's
columns (Run | Score | Author | Summary | Date | Info). A record that fails validation (schema, files,
bytes_total over the cap, seeds vs seed_results, val_bpb not the mean of its seeds) is listed
separately with the reasons, never ranked. Ablations and memory studies (records/studies/, their
study.json's shape checked) get their own tables. Written atomically.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from golf.core.config import BYTES_CAP
from golf.core.utils import GolfError, atomic_write_text, main_guard
from golf.submit import records as R
from golf.submit.study_report import study_problems


def _cell(s: Any) -> str:
    return str(s if s is not None else "").replace("|", "\\|").replace("\n", " ").strip()


def arm_figures(folder: Path, arm: str) -> dict[str, float]:
    """Mean params / tokens/s / steps over an ablation arm's seeds (its copied metrics files) and
    its bytes_total (size files): the cost side of an A/B next to its BPB."""
    out: dict[str, float] = {}
    for key, pattern in (("params", "metrics"), ("tokens_per_s", "metrics"), ("steps", "metrics"), ("bytes_total", "size")):
        vals = []
        for f in sorted(folder.glob(f"{arm}_{pattern}_seed*.json")):
            try:
                v = json.loads(f.read_text(encoding="utf-8")).get(key)
            except (OSError, ValueError):
                v = None
            if isinstance(v, (int, float)):
                vals.append(float(v))
        if vals:
            out[key] = sum(vals) / len(vals)
    return out


def _arrow(abl: dict, key: str, fmt: str) -> str:
    a, b = abl.get("_figures", {}).get("A", {}).get(key), abl.get("_figures", {}).get("B", {}).get(key)
    return f"{fmt.format(a) if a is not None else '-'} → {fmt.format(b) if b is not None else '-'}"


def ablation_problems(rec: Any) -> list[str]:
    """What keeps an ablation.json from being listed (its shape, not its result)."""
    if not isinstance(rec, dict):
        return ["ablation.json is not a JSON object"]
    problems = []
    for arm in ("A", "B"):
        a = rec.get(arm)
        if not isinstance(a, dict) or not isinstance(a.get("settings"), list):
            problems.append(f"ablation.json has no arm {arm} with a settings list")
    c = rec.get("comparison", {})
    if not isinstance(c, dict):
        problems.append("ablation.json 'comparison' is not an object")
    else:
        bad = [k for k in ("mean_diff_bpb", "mean_diff_nats", "p_paired") if k in c
               and not (isinstance(c[k], (int, float)) or c[k] is None)]
        if bad:
            problems.append(f"ablation.json comparison {bad} are not numbers")
    if not isinstance(rec.get("seeds", []), list):
        problems.append("ablation.json 'seeds' is not a list")
    return problems


def ablation_leaks(root: Path, folder: Path, rec: dict) -> list[str]:
    """The data-split check per arm: an ablation whose arm B reads another data folder (a tokenizer
    A/B) pins it as `data_b`, and B's logs are checked against that manifest."""
    if not isinstance(rec.get("data_b"), dict):
        return R.data_leak_problems(root, folder, rec.get("data"))
    return (R.data_leak_problems(root, folder, rec.get("data"), "A_*train_seed*.log")
            + R.data_leak_problems(root, folder, rec["data_b"], "B_*train_seed*.log"))


def scan(records_dir: Path) -> tuple[dict[str, list[dict]], list[tuple[Path, list[str]]], list[dict]]:
    """-> (valid records by track, invalid (folder, problems), ablations)."""
    valid: dict[str, list[dict]] = {}
    invalid: list[tuple[Path, list[str]]] = []
    ablations: list[dict] = []
    root = Path(records_dir)
    tracks = (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in (R.MANIFESTS, R.BENCHES, R.STUDIES))
    for track_dir in sorted(tracks):
        for folder in sorted(p for p in track_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:  # one malformed record is listed as invalid; it never stops the leaderboard
                if track_dir.name == R.ABLATIONS_TRACK:
                    try:
                        rec = json.loads((folder / "ablation.json").read_text(encoding="utf-8"))
                        figures = {arm: arm_figures(folder, arm) for arm in ("A", "B")}
                    except (OSError, ValueError) as e:
                        invalid.append((folder, [f"ablation.json unreadable ({e})"]))
                        continue
                    problems = ablation_problems(rec) or ablation_leaks(root, folder, rec)
                    if problems:
                        invalid.append((folder, problems))
                    else:
                        ablations.append({**rec, "_folder": folder, "_figures": figures})
                    continue
                sub, problems = R.validate_record(folder)
                if isinstance(sub, dict) and not problems:
                    problems = R.data_leak_problems(root, folder, sub.get("data"))
                if problems:
                    invalid.append((folder, problems))
                else:
                    valid.setdefault(track_dir.name, []).append({**sub, "_folder": folder})
            except Exception as e:  # noqa: BLE001 - a shape validation did not foresee
                invalid.append((folder, [f"could not be read ({type(e).__name__}: {e})"]))
    for rows in valid.values():
        rows.sort(key=lambda s: (s["val_bpb"], s["date"]))
    return valid, invalid, ablations


def scan_studies(records_dir: Path) -> tuple[list[dict], list[tuple[Path, list[str]]]]:
    """-> (memory studies whose study.json has a study's shape, invalid (folder, problems))."""
    root = Path(records_dir) / R.STUDIES
    studies: list[dict] = []
    invalid: list[tuple[Path, list[str]]] = []
    if not root.is_dir():
        return studies, invalid
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            rec = json.loads((folder / "study.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            invalid.append((folder, [f"study.json unreadable ({e})"]))
            continue
        problems = study_problems(rec)
        if problems:
            invalid.append((folder, problems))
        else:
            studies.append({**rec, "_folder": folder})
    return studies, invalid


def closure_cell(st: dict) -> str:
    """A study's deficit beyond the local window and each mechanism's summary closure at its longest
    context ("-" without a LOCAL/GLOBAL pair)."""
    tables = st.get("deficit") or {}
    if not isinstance(tables, dict) or not tables:
        return "-"
    try:
        ctx = max(tables, key=int)
    except ValueError:
        return "-"
    t = tables[ctx]
    if not isinstance(t, dict):
        return "-"
    fmt = lambda x: "NA" if x is None else f"{x:.2f}"  # noqa: E731
    mechs = ", ".join(f"{m} {fmt(v.get('summary_closure'))}" for m, v in (t.get("mechanisms") or {}).items())
    d = t.get("summary_deficit")
    return f"ctx {ctx}: deficit {'-' if d is None else f'{d:+.4f}'}" + (f"; closure {mechs}" if mechs else "")


def render(records_dir: Path, valid, invalid, ablations, studies=()) -> str:
    root = Path(records_dir)
    rel = lambda p: Path(p).relative_to(root).as_posix()  # noqa: E731  links relative to LEADERBOARD.md
    lines = [
        "# Leaderboard",
        "",
        "Generated by `make leaderboard` (golf/submit/leaderboard.py) from the records in this folder; do not edit by hand.",
        "Score = sliding-window val_bpb after the artifact round-trip, mean over the record's seeds (± std).",
        f"Every ranked record passed validation (files present, bytes_total ≤ {BYTES_CAP:,}, seeds consistent).",
    ]
    order = sorted(valid, key=lambda t: (t != R.CHALLENGE_TRACK, t))
    for track in order:
        lines += ["", f"## {track}", "", "| Run | Score | Author | Summary | Date | Info |", "|---|---|---|---|---|---|"]
        for s in valid[track]:
            folder = rel(s["_folder"])
            n = len(s["seeds"])
            score = f"{s['val_bpb']:.4f}" + (f" ± {s.get('val_bpb_std', 0.0):.4f}" if n > 1 else "")
            author = _cell(s["author"]) + (f" ({_cell(s['github_id'])})" if s.get("github_id") else "")
            info = f"[info]({folder}/README.md) · {n} seed{'s' if n > 1 else ''} · {s['bytes_total']:,} B"
            lines.append(f"| [{_cell(s['name'])}]({folder}) | {score} | {author} | {_cell(s['blurb'])} | {s['date']} | {info} |")
    if not valid:
        lines += ["", "_No valid records yet: run `make train-and-submit`._"]
    if ablations:
        lines += ["", "## Ablations (A/B, paired seeds)", "",
                  "Params, bytes and training tokens/s are per arm (mean over seeds), from the runs' metrics and size files.",
                  "",
                  "| Ablation | A | B | ΔBPB (B-A) | Δnats | p (paired) | challenge bar | practice bar | params A → B "
                  "| bytes_total A → B | train tok/s A → B | seeds | Date |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for a in sorted(ablations, key=lambda a: (a.get("date", ""), a.get("name", ""))):
            c = a.get("comparison", {})
            yn = lambda k: "yes" if c.get(k) else "no"  # noqa: E731
            lines.append(
                f"| [{_cell(a.get('name'))}]({rel(a['_folder'])}/README.md) | `{_cell(' '.join(a['A']['settings']))}` "
                f"| `{_cell(' '.join(a['B']['settings']))}` | {c.get('mean_diff_bpb', float('nan')):+.4f} "
                f"| {c.get('mean_diff_nats', float('nan')):+.4f} | {c.get('p_paired', float('nan')):.3g} "
                f"| {yn('meets_challenge_bar')} | {yn('meets_practice_bar')} "
                f"| {_arrow(a, 'params', '{:,.0f}')} | {_arrow(a, 'bytes_total', '{:,.0f}')} "
                f"| {_arrow(a, 'tokens_per_s', '{:,.0f}')} | {len(a.get('seeds', []))} | {a.get('date', '')} |"
            )
    if studies:
        lines += ["", "## Memory studies (make study)", "",
                  "| Study | Arms | Baseline | Best arm vs baseline (ΔBPB, p) | Deficit and closure (longest context) "
                  "| Contexts | Seeds | Date |",
                  "|---|---|---|---|---|---|---|---|"]
        for st in sorted(studies, key=lambda a: (a.get("date", ""), a.get("name", ""))):
            comps = {a: c.get("headline", {}) for a, c in (st.get("comparisons") or {}).items() if isinstance(c, dict)}
            best = min(comps.items(), key=lambda kv: kv[1].get("mean_diff_bpb", float("inf")), default=None)
            cell = f"{best[0]} {best[1].get('mean_diff_bpb', float('nan')):+.4f}, p {best[1].get('p_paired', float('nan')):.3g}" \
                if best else "-"
            lines.append(f"| [{_cell(st.get('name'))}]({rel(st['_folder'])}/README.md) | {_cell(', '.join(st['arms']))} "
                         f"| {_cell(st['baseline'])} | {_cell(cell)} | {_cell(closure_cell(st))} "
                         f"| {_cell(','.join(map(str, st['contexts'])))} "
                         f"| {len(st['seeds'])} | {st.get('date', '')} |")
    if invalid:
        lines += ["", "## Invalid records (not ranked)", "", "| Record | Why |", "|---|---|"]
        for folder, problems in invalid:
            lines.append(f"| {rel(folder)} | {_cell('; '.join(problems))} |")
    return "\n".join(lines) + "\n"


def build(records_dir: str | Path = "records", out: str | Path | None = None) -> tuple[Path, int, int]:
    """Validate and render. Returns (output path, number of valid records, number of invalid)."""
    root = Path(records_dir)
    if not root.is_dir():
        raise GolfError(f"{root} is not a folder; run from the repository root or pass --records DIR")
    out = Path(out) if out else root / "LEADERBOARD.md"
    valid, invalid, ablations = scan(root)
    studies, bad_studies = scan_studies(root)
    invalid += bad_studies
    atomic_write_text(out, render(root, valid, invalid, ablations, studies))
    return out, sum(len(v) for v in valid.values()), len(invalid)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m golf.submit.leaderboard", description=__doc__.split("\n\n")[0])
    p.add_argument("--records", default="records")
    p.add_argument("--out", help="default: <records>/LEADERBOARD.md")
    args = p.parse_args(argv)
    out, n_ok, n_bad = build(args.records, args.out)
    print(f"[golf] {out}: {n_ok} valid record(s), {n_bad} invalid")
    _, invalid, _ = scan(Path(args.records))
    for folder, problems in invalid + scan_studies(Path(args.records))[1]:
        print(f"[golf] invalid: {folder}: {'; '.join(problems)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_guard(main)())
