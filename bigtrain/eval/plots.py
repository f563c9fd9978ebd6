"""Small PNG line plots (metric against kimg, metric against truncation) for runs and MLflow."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def plot_lines(
    x: list[float], series: dict[str, list[float]], xlabel: str, path: Path, title: str = ""
) -> Path | None:
    """One line per series against x; returns the PNG path, or None where matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot %s (pip install 'bigtrain[track]')", path.name)
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, ys in series.items():
        ax.plot(x[: len(ys)], ys, marker="o", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
