"""Plots for records: loss curves (from metrics.json history), A/B comparisons, the memory
study's per-position panels and the retrieval probes' heat maps.

matplotlib is imported lazily with the Agg backend (no screen, no import-time cost). Every plot is
written atomically; a plot that cannot be drawn (no history) returns None instead of failing a run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from golf.core.utils import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> Path:
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return out


def _series(history: Sequence[dict], key: str) -> tuple[list, list]:
    xs, ys = [], []
    for h in history or []:
        if isinstance(h, dict) and h.get(key) is not None and h.get("step") is not None:
            xs.append(h["step"])
            ys.append(h[key])
    return xs, ys


def loss_curves(histories: dict[str, Sequence[dict]], out: Path, title: str = "") -> Path | None:
    """One line per run: train_loss vs step (left), val_bpb vs step where logged (right)."""
    curves = {label: _series(h, "train_loss") for label, h in histories.items()}
    vals = {label: _series(h, "val_bpb") for label, h in histories.items()}
    if not any(xs for xs, _ in curves.values()):
        return None
    plt = _plt()
    has_val = any(xs for xs, _ in vals.values())
    fig, axes = plt.subplots(1, 2 if has_val else 1, figsize=(11 if has_val else 6, 4), squeeze=False)
    for label, (xs, ys) in curves.items():
        axes[0][0].plot(xs, ys, label=label, lw=1)
    axes[0][0].set(xlabel="step", ylabel="train loss (nats)", title="training loss")
    axes[0][0].legend(fontsize=7)
    if has_val:
        for label, (xs, ys) in vals.items():
            if xs:
                axes[0][1].plot(xs, ys, marker="o", ms=3, label=label)
        axes[0][1].set(xlabel="step", ylabel="val bpb", title="validation")
        axes[0][1].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def ablation_plot(
    seeds: Sequence[int],
    bpb_a: Sequence[float],
    bpb_b: Sequence[float],
    histories: dict[str, Sequence[dict]],
    out: Path,
    title: str = "",
) -> Path:
    """Left: per-seed val_bpb of both arms joined by a line per seed (paired). Right: loss curves."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for s, a, b in zip(seeds, bpb_a, bpb_b):
        ax.plot([0, 1], [a, b], color="gray", lw=0.8)
        ax.annotate(f"s{s}", (1.02, b), fontsize=7)
    ax.scatter([0] * len(bpb_a), bpb_a, label="A", zorder=3)
    ax.scatter([1] * len(bpb_b), bpb_b, label="B", zorder=3)
    ax.set_xticks([0, 1], ["A", "B"])
    ax.set_xlim(-0.4, 1.4)
    ax.set(ylabel="val bpb (sliding window)", title="per-seed result (paired)")
    ax = axes[1]
    colors = {"A": "C0", "B": "C1"}
    for label, h in histories.items():
        xs, ys = _series(h, "train_loss")
        if xs:
            ax.plot(xs, ys, color=colors.get(label[:1], None), lw=0.8, alpha=0.8, label=label)
    ax.set(xlabel="step", ylabel="train loss (nats)", title="training loss")
    ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def bpb_vs_position(evals: dict[str, dict[str, Any]], out: Path) -> Path | None:
    """BPB per position bucket from eval JSONs that carry one (key `position_bpb`: list or dict)."""
    series = {}
    for label, ev in evals.items():
        pos = ev.get("position_bpb") or ev.get("bpb_by_position")
        if isinstance(pos, dict):
            pos = pos.get("bpb") or next((v for v in pos.values() if isinstance(v, list)), None)
        if isinstance(pos, list) and pos and all(isinstance(v, (int, float)) for v in pos):
            series[label] = pos
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, ys in series.items():
        ax.plot(range(len(ys)), ys, label=label, lw=1)
    ax.set(xlabel="position bucket", ylabel="bpb", title="BPB vs position")
    ax.legend(fontsize=7)
    return _save(fig, out)


def heatmap(values: Sequence[Sequence[float | None]], rows: Sequence, cols: Sequence, out: Path, title: str = "",
            xlabel: str = "", ylabel: str = "", label: str = "accuracy") -> Path:
    """A rows x cols grid in [0, 1] (the retrieval probes' accuracy), each value written in its
    cell; None (a cell that does not fit) is left blank."""
    import numpy as np

    plt = _plt()
    data = np.ma.masked_invalid(np.array([[np.nan if v is None else v for v in r] for r in values], dtype=float))
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * len(cols), 1.2 + 0.55 * len(rows)))
    im = ax.imshow(data, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    for i, r in enumerate(values):
        for j, v in enumerate(r):
            ax.text(j, i, "-" if v is None else f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="w" if v is None or v < 0.6 else "k")
    fig.colorbar(im, ax=ax, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    return _save(fig, out)


def panels(specs: Sequence[dict[str, Any]], out: Path, title: str = "") -> Path | None:
    """Side-by-side line plots sharing one style. Each spec: title, xlabel, ylabel, series {label:
    (xs, ys, errs or None)} (None values skipped; errs drawn as a band), and optional hline / vline
    (a reference level, e.g. 0; a position, e.g. the attention window). None if nothing to draw."""
    specs = [s for s in specs if any(any(y is not None for y in ys) for _, ys, _ in s["series"].values())]
    if not specs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(specs), figsize=(5.5 * len(specs), 4), squeeze=False)
    for ax, s in zip(axes[0], specs):
        for label, (xs, ys, errs) in s["series"].items():
            pts = [(x, y, (errs or [0] * len(ys))[i] or 0) for i, (x, y) in enumerate(zip(xs, ys)) if y is not None]
            if not pts:
                continue
            px, py, pe = zip(*pts)
            line, = ax.plot(px, py, marker="." if len(px) < 40 else None, lw=1.2, label=label)
            if errs:
                ax.fill_between(px, [y - e for y, e in zip(py, pe)], [y + e for y, e in zip(py, pe)],
                                color=line.get_color(), alpha=0.15, lw=0)
        if s.get("hline") is not None:
            ax.axhline(s["hline"], color="k", lw=0.8)
        if s.get("vline"):
            ax.axvline(s["vline"], color="gray", ls="--", lw=0.8, label=f"window {s['vline']}")
        ax.set(xlabel=s.get("xlabel", ""), ylabel=s.get("ylabel", ""), title=s.get("title", ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, out)
