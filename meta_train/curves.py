"""Training curves: the average return before and after adaptation against the iteration."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from meta_train.trainer import LOG_FILE


def read_log(run_dir: str | Path) -> list[dict[str, object]]:
    path = Path(run_dir) / LOG_FILE
    if not path.exists():
        raise FileNotFoundError(f"no training log at {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window or window < 2:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_curves(run_dirs: Sequence[str | Path], path: str | Path, window: int = 5) -> None:
    """One panel per run; thin lines per iteration, thick ones a moving average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(run_dirs), figsize=(4.6 * len(run_dirs), 3.4), squeeze=False)
    for ax, run_dir in zip(axes[0], run_dirs, strict=True):
        records = read_log(run_dir)
        x = np.array([r["iteration"] for r in records], dtype=float)
        for key, color, label in (("return_before", "tab:gray", "before adaptation"),
                                  ("return_after", "tab:red", "after adaptation")):  # fmt: skip
            y = np.array([r[key] for r in records], dtype=float)
            ax.plot(x, y, color=color, alpha=0.25, linewidth=0.8)
            smooth = _smooth(y, window)
            ax.plot(x[len(x) - len(smooth) :], smooth, color=color, label=label)
        ax.set_title(Path(run_dir).name, fontsize=9)
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel("average return (training tasks)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
