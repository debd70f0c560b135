"""Eval reports: one JSON (the record keeps it), a short human summary, a BPB-vs-position plot.

The JSON is flat at the top (val_loss, val_bpb, tokens, bytes, windows, seconds, tokens_per_s of
the headline sliding-window eval) so records and the leaderboard read it directly; the
multi-context view sits under "contexts" keyed by context length. matplotlib is imported only
when a plot is drawn (Agg backend: no screen needed).
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Mapping

from golf.core.utils import atomic_path, atomic_write_json, device_description, git_commit, package_versions

HEADLINE = ("val_loss", "val_bpb", "tokens", "bytes", "windows", "seq_len", "stride", "seconds", "tokens_per_s")


def build_report(result: Mapping[str, Any], contexts: Mapping[int, Mapping[str, Any]] | None = None,
                 **info: Any) -> dict[str, Any]:
    """result: evaluate_bpb's dict; contexts: evaluate_contexts' dict; info: provenance to keep
    (artifact path, data path, tokenizer hash, batch_windows, world_size, ...)."""
    rep: dict[str, Any] = {k: result[k] for k in HEADLINE if k in result}
    rep.update(loss_sum=result.get("loss_sum"), position_bucket=result.get("position_bucket"),
               position_bpb=result.get("position_bpb"))
    rep["contexts"] = {
        str(ctx): {k: r.get(k) for k in (*HEADLINE, "position_bucket", "position_bpb")}
        for ctx, r in sorted((contexts or {}).items())
    }
    rep.update(info)
    rep.setdefault("date", _dt.datetime.now().isoformat(timespec="seconds"))
    rep.setdefault("commit", git_commit())
    rep.setdefault("device", device_description())
    rep.setdefault("versions", package_versions())
    return rep


def summary(rep: Mapping[str, Any]) -> str:
    """A few lines for the terminal / run log."""
    lines = [
        f"val_bpb:{rep['val_bpb']:.6f} val_loss:{rep['val_loss']:.6f} (seq_len {rep.get('seq_len')}, "
        f"stride {rep.get('stride')})",
        f"tokens:{rep['tokens']} bytes:{rep['bytes']} windows:{rep['windows']} "
        f"seconds:{rep['seconds']:.2f} tokens_per_s:{rep['tokens_per_s']:.0f}",
    ]
    ctxs = rep.get("contexts") or {}
    if ctxs:
        lines.append("context  val_bpb   (first-bucket bpb -> last-bucket bpb)")
        for ctx, r in ctxs.items():
            bpb = [b for b in (r.get("position_bpb") or {}).get("bpb", []) if b is not None]
            span = f"({bpb[0]:.4f} -> {bpb[-1]:.4f})" if bpb else ""
            lines.append(f"{int(ctx):>7}  {r['val_bpb']:.6f}  {span}")
    return "\n".join(lines)


def write_report(path: str | Path, rep: Mapping[str, Any]) -> Path:
    return atomic_write_json(path, dict(rep))


def plot_bpb_vs_position(rep: Mapping[str, Any], path: str | Path) -> Path | None:
    """BPB of each 64-token bucket against position in the window, one line per context length
    (falls back to the headline eval's buckets when no contexts were run). None if nothing to plot."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    sources = {f"ctx {c}": r for c, r in (rep.get("contexts") or {}).items()}
    if not sources:
        sources = {f"seq {rep.get('seq_len')}, stride {rep.get('stride')}": rep}
    for label, r in sources.items():
        pb = r.get("position_bpb") or {}
        xs, ys = [], []
        for s, e, b in zip(pb.get("start", []), pb.get("end", []), pb.get("bpb", [])):
            if b is not None:
                xs.append((s + e) / 2)
                ys.append(b)
        if xs:
            series[label] = (xs, ys)
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="." if len(xs) < 40 else None, lw=1.2, label=label)
    ax.axhline(rep["val_bpb"], color="k", ls="--", lw=0.8,
               label=f"sliding eval {rep['val_bpb']:.4f} (stride {rep.get('stride')})")
    ax.set_xlabel(f"position in window (tokens of context; {rep.get('position_bucket', 64)}-token buckets)")
    ax.set_ylabel("bits per byte")
    ax.set_title("BPB vs position")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
