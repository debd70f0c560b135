"""The memory study's deficit report: where a local model (sliding windows, the SSSL pattern) loses
to a global one, and how much of that loss a memory mechanism wins back.

Inputs: per-position-bucket BPB at one context length for each arm and seed (golf.eval.score's
`position_bpb` from non-overlapping windows, so a bucket is how much context its tokens had), seeds
paired by order. Per bucket, over seeds:
    deficit = local - global       (> 0: the local arm is worse; meaningful beyond its window)
    gain    = local - mechanism    (> 0: the mechanism helps the local arm)
    closure = mean gain / mean deficit (1: the whole gap closed); NA (None) where the mean deficit is
              below `floor` BPB: within noise the ratio is noise over noise, and where the local arm
              is the better one (deficit < 0) there is no gap to close (a mechanism that is worse
              than the local arm there would read as a positive "closure")
with the mean and the seed spread (sample std) of deficit and gain. The summary closure is
sum(gain) / sum(deficit) over the buckets wholly beyond the window whose deficit clears the floor.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from golf.core.utils import GolfError

DEFAULT_FLOOR = 0.005  # BPB: below this a deficit is within seed noise at tiny scale


@dataclass
class ArmBuckets:
    buckets: list[tuple[int, int]]  # [start, end) window positions
    bpb: list[list[float | None]]  # seeds x buckets


def from_reports(reports: Sequence[Mapping[str, Any]], context: int, source: str) -> ArmBuckets:
    """One arm's buckets at `context` from its seeds' score reports (eval_bpb.py --contexts)."""
    buckets, rows = None, []
    for i, rep in enumerate(reports):
        pb = ((rep.get("contexts") or {}).get(str(context)) or {}).get("position_bpb") or {}
        if not pb.get("bpb"):
            raise GolfError(f"{source} seed #{i + 1}: its score report has no position buckets at context {context}; "
                            f"score it with --contexts {context}")
        b = [(int(s), int(e)) for s, e in zip(pb["start"], pb["end"])]
        if buckets is not None and b != buckets:
            raise GolfError(f"{source}: its seeds' position buckets at context {context} differ")
        buckets = b
        rows.append([None if v is None else float(v) for v in pb["bpb"]])
    if buckets is None:
        raise GolfError(f"{source}: no score reports")
    return ArmBuckets(buckets, rows)


def _mean_std(xs: Sequence[float | None]) -> tuple[float | None, float | None]:
    if not xs or any(x is None or math.isnan(x) for x in xs):
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _paired(a: ArmBuckets, b: ArmBuckets) -> list[dict[str, float | None]]:
    """Per bucket: mean and std over seeds of a - b."""
    out = []
    for k in range(len(a.buckets)):
        diffs = [None if x[k] is None or y[k] is None else x[k] - y[k] for x, y in zip(a.bpb, b.bpb)]
        m, s = _mean_std(diffs)
        out.append({"mean": m, "std": s})
    return out


def _check(arms: Mapping[str, ArmBuckets], names: Sequence[str], local: str) -> None:
    missing = [n for n in names if n not in arms]
    if missing:
        raise GolfError(f"deficit: no per-bucket BPB for arm(s) {missing} (arms: {', '.join(arms)})")
    ref = arms[local]
    for n in names:
        if arms[n].buckets != ref.buckets:
            raise GolfError(f"deficit: arm {n}'s position buckets {arms[n].buckets[:3]}... differ from the local arm "
                            f"{local}'s {ref.buckets[:3]}...; score every arm at the same context and bucket size")
        if len(arms[n].bpb) != len(ref.bpb):
            raise GolfError(f"deficit: arm {n} has {len(arms[n].bpb)} seeds, the local arm {local} {len(ref.bpb)}; "
                            "the seeds are paired, give every arm the same seeds")


def deficit_table(arms: Mapping[str, ArmBuckets], local: str, global_: str, mechanisms: Sequence[str] = (),
                  window: int = 0, floor: float = DEFAULT_FLOOR) -> dict[str, Any]:
    """The deficit of `local` against `global_` and each mechanism arm's gain and closure per bucket."""
    if local == global_:
        raise GolfError(f"deficit: the local and the global arm are the same ({local}); name two arms")
    if floor < 0 or window < 0:
        raise GolfError(f"deficit: floor={floor} and window={window} must be >= 0")
    mechanisms = [m for m in mechanisms if m not in (local, global_)]
    _check(arms, [local, global_, *mechanisms], local)
    buckets = arms[local].buckets
    beyond = [s >= window for s, _ in buckets]
    deficit = _paired(arms[local], arms[global_])
    far = [d["mean"] for d, b in zip(deficit, beyond) if b and d["mean"] is not None]
    out: dict[str, Any] = {
        "local": local, "global": global_, "window": window, "floor": floor, "seeds": len(arms[local].bpb),
        "buckets": [list(b) for b in buckets], "beyond_window": beyond,
        "deficit": {"mean": [d["mean"] for d in deficit], "std": [d["std"] for d in deficit]},
        "summary_deficit": statistics.fmean(far) if far else None,  # mean over the buckets beyond the window
        "mechanisms": {},
    }
    for m in mechanisms:
        gain = _paired(arms[local], arms[m])
        closure = [None if g["mean"] is None or d["mean"] is None or d["mean"] < max(floor, 1e-12) else g["mean"] / d["mean"]
                   for g, d in zip(gain, deficit)]
        used = [k for k, c in enumerate(closure) if c is not None and beyond[k]]
        den = sum(deficit[k]["mean"] for k in used)
        out["mechanisms"][m] = {
            "gain": {"mean": [g["mean"] for g in gain], "std": [g["std"] for g in gain]},
            "closure": closure,
            "summary_closure": sum(gain[k]["mean"] for k in used) / den if used else None,
            "summary_buckets": len(used),
        }
    return out
