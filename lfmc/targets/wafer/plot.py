"""Pictures of a wafer placement (which layer on which PEs, SRAM use per PE) and of one decode step's timeline.

matplotlib is optional (``pip install lfmc[plot]``); without it these raise a clear error.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...ir.errors import LfmcError
from ...plot import pyplot
from .place import Placement


def _plt():
    return pyplot()


def _layer_no(name: str) -> int:
    return int(name.split()[1]) if name.startswith("layer ") else -1


def plot_placement(pl: Placement, path: str | Path) -> Path:
    """Two panels: PEs colored by layer (embedding / LM head table in grey, KV strips hatched darker), and SRAM
    bytes per PE as a fraction of its capacity."""
    plt = _plt()
    m = pl.machine
    layer = np.full(pl.owner.shape, np.nan)
    for i, r in enumerate(pl.roles):
        layer[pl.owner == i] = _layer_no(r.layer)
    fig, ax = plt.subplots(1, 2, figsize=(13, 6.2 * max(0.4, min(1.6, m.height / m.width))))
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("white")
    im = ax[0].imshow(np.ma.masked_invalid(layer), cmap=cmap, interpolation="nearest", vmin=-1,
                      vmax=max(1, len(pl.layers) - 1))
    for r in pl.roles:
        if r.kind == "kv":
            ax[0].add_patch(plt.Rectangle((r.x - .5, r.y - .5), r.w, r.h, fill=False, ec="red", lw=0.8))
    fig.colorbar(im, ax=ax[0], label="layer (-1: embedding / LM head table)", shrink=0.8)
    ax[0].set_title(f"placement: {len(pl.layers)} layers, {int((pl.owner >= 0).sum()):,} of {m.width * m.height:,} "
                    "PEs (KV strips in red)")
    im2 = ax[1].imshow(pl.sram / m.sram_bytes, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im2, ax=ax[1], label=f"SRAM used / {m.sram_bytes // 1024} KB", shrink=0.8)
    ax[1].set_title(f"SRAM per PE (max {pl.sram.max() / m.sram_bytes:.0%}, total "
                    f"{pl.sram.sum() / (m.width * m.height * m.sram_bytes):.1%})")
    for a in ax:
        a.set_xlabel("x (PE column)")
        a.set_ylabel("y (PE row)")
    fig.suptitle(f"{m.name}: {m.width} x {m.height} mesh")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_timeline(timeline: list[dict[str, Any]], path: str | Path, machine: dict[str, Any]) -> Path:
    """One bar per op of a decode step, a row per layer, colored by kind, in microseconds."""
    plt = _plt()
    kinds = sorted({e["op"] for e in timeline})
    colors = {k: plt.get_cmap("tab20")(i % 20) for i, k in enumerate(kinds)}
    layers = sorted({e["layer"] for e in timeline}, key=lambda s: (_layer_no(s), s))
    row = {lay: i for i, lay in enumerate(layers)}
    us = 1e6 / (machine["clock_ghz"] * 1e9)
    fig, ax = plt.subplots(figsize=(13, 1.2 + 0.32 * len(layers)))
    for e in timeline:
        ax.barh(row[e["layer"]], (e["end"] - e["start"]) * us, left=e["start"] * us, color=colors[e["op"]],
                height=0.7, edgecolor="none")
    ax.set_yticks(range(len(layers)), layers)
    ax.invert_yaxis()
    ax.set_xlabel("microseconds from the start of the step")
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colors[k]) for k in kinds], labels=kinds, ncol=6,
              fontsize=8, loc="lower right")
    end = max(e["end"] for e in timeline) * us
    ax.set_title(f"one decode step on {machine['name']} (simulated): {end:,.2f} us")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
