"""The GPU acceptance figures in one table: `python -m golf.bench.summary [--bench-dir bench]`.

Reads what `make gpu-check` (or the individual benches) wrote under bench/ and prints, for each
speed goal of the issues, the measured figure, the goal and whether it is met; writes the same as
bench/summary.json. A goal is judged only from a figure measured on a GPU (the benches leave their
own goal fields null on CPU); a missing bench is reported as missing, never as met.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from golf.bench.train import GOALS
from golf.core.utils import GolfError, atomic_write_json, main_guard


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise GolfError(f"{path} is not valid JSON ({e}); re-run the bench that writes it") from None


def summarise(bench_dir: str | Path) -> list[dict[str, Any]]:
    """One row per goal: goal, measured, target, met (True / False / None = not judged), source."""
    d = Path(bench_dir)
    rows: list[dict[str, Any]] = []
    for preset, target in GOALS.items():
        r = _load(d / f"train_{preset}.json")
        judged = r is not None and r.get("goal_tokens_per_s") is not None  # set only on CUDA
        rows.append(dict(goal=f"train tokens/s, {preset} preset, one GPU", target=target,
                         measured=r and r.get("tokens_per_s"), device=r and r.get("device"),
                         met=(r["tokens_per_s"] >= target) if judged else None,
                         source=str(d / f"train_{preset}.json") if r else "missing"))
    on, off = _load(d / "train_frontier.json"), _load(d / "train_frontier_nodoc.json")
    judged = bool(on and off and on.get("goal_tokens_per_s") is not None and off.get("goal_tokens_per_s") is not None)
    ratio = on["tokens_per_s"] / off["tokens_per_s"] if on and off else None
    # the challenge's varlen record (PR #1354) reports attention within documents ~2% faster than causal
    rows.append(dict(goal="frontier tokens/s, DOC_ATTENTION=1 vs 0", target=1.0, measured=ratio,
                     device=on and on.get("device"), met=(ratio >= 1.0) if judged else None,
                     source=f"{d / 'train_frontier.json'} / train_frontier_nodoc.json" if on and off else "missing"))
    e = _load(d / "eval.json")
    rows.append(dict(goal="stride-64 eval of 62M tokens, seconds", target=e and e.get("limit_seconds") or 600.0,
                     measured=e and e.get("extrapolated_seconds_62M"), device=e and e.get("device"),
                     met=e and e.get("meets_limit"), source=str(d / "eval.json") if e else "missing"))
    m = _load(d / "mixers.json")
    results = (m or {}).get("results", {})
    for name in ("stream", "deltanet"):
        judged = m is not None and m.get("goal_met") is not None  # CUDA at seq 2048 only
        ratio = results.get(name, {}).get("ratio_vs_attn")
        rows.append(dict(goal=f"{name} training tokens/s vs attention, seq 2048", target=0.5, measured=ratio,
                         device=m and m.get("device"), met=(ratio is not None and ratio >= 0.5) if judged else None,
                         source=str(d / "mixers.json") if m else "missing"))
    return rows


@main_guard
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m golf.bench.summary", description=__doc__.split("\n")[0])
    p.add_argument("--bench-dir", default="bench")
    p.add_argument("--out", default="", help="default: <bench-dir>/summary.json")
    args = p.parse_args(argv)
    rows = summarise(args.bench_dir)
    for r in rows:
        verdict = {True: "MET", False: "NOT MET", None: "not judged"}[r["met"]]
        measured = "missing" if r["measured"] is None else f"{r['measured']:,.3f}"
        print(f"{r['goal']:<50} measured {measured:>16}  target {r['target']:,.3f}  {verdict}  ({r['device']})")
    atomic_write_json(args.out or Path(args.bench_dir) / "summary.json", {"goals": rows})


if __name__ == "__main__":
    main()
