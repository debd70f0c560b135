"""Plots for records: loss curves (from metrics.json history) and A/B comparisons.

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
