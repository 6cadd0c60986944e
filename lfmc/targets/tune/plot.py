"""Tuning curves: each kernel's best measured time against the trials spent on it, with lfmc's default schedule
as the line to beat."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...plot import pyplot


def plot_tuning_curves(tasks: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """A PNG of ``tasks`` (the report's task records, each with ``history`` [[trials, best_s], ...])."""
    plt = pyplot()
    shown = [t for t in tasks if t.get("history")]
    fig, ax = plt.subplots(figsize=(9, 5))
    for i, t in enumerate(shown):
        xs = [h[0] for h in t["history"]]
        ys = [h[1] * 1e6 for h in t["history"]]
        line, = ax.step(xs, ys, where="post", marker="o", ms=3, label=f"{t['name'][:40]} ({t['entry']})")
        if t.get("default_s"):
            ax.axhline(t["default_s"] * 1e6, color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("trials")
    ax.set_ylabel("best time (µs; dotted: lfmc's default schedule)")
    ax.set_yscale("log")
    ax.set_title(title or "tuning curves")
    if shown:
        ax.legend(fontsize=7, loc="upper right")
    else:
        ax.text(0.5, 0.5, "no tuning history recorded yet", ha="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
