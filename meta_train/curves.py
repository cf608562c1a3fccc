"""Training curves: the average return before and after adaptation against the iteration."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from controller.artifact import load_artifact
from meta_train.rundir import LOG_FILE


def read_log(run_dir: str | Path) -> list[dict[str, object]]:
    path = Path(run_dir) / LOG_FILE
    if not path.exists():
        raise FileNotFoundError(f"no training log at {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def window_table(run_dir: str | Path, window: int = 10) -> str:
    """A markdown table of a run's log in windows of ``window`` iterations: mean training
    return before and after adaptation, their difference (what one step buys), mean episode
    length after adaptation (where logged) and seconds per iteration."""
    records = read_log(run_dir)
    lines = [
        "| iterations | return before | return after | gain | length after | s / iteration |",
        "|---|---|---|---|---|---|",
    ]
    for first in range(0, len(records), window):
        chunk = records[first : first + window]

        def mean(key: str, rows: list[dict[str, object]] = chunk) -> float:
            values = [float(r[key]) for r in rows if key in r]  # type: ignore[arg-type]
            return float(np.mean(values)) if values else float("nan")

        before, after, length = mean("return_before"), mean("return_after"), mean("length_after")
        shown = "—" if np.isnan(length) else f"{length:.0f}"
        lines.append(
            f"| {chunk[0]['iteration']}-{chunk[-1]['iteration']} | {before:.1f} | {after:.1f} "
            f"| {after - before:+.1f} | {shown} | {mean('total_s'):.1f} |"
        )
    return "\n".join(lines)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window or window < 2:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_curves(run_dirs: Sequence[str | Path], path: str | Path, window: int = 5) -> None:
    """One panel per run; thin lines per iteration, thick ones a moving average.

    Where a log records episode lengths that vary (``length_before``/``length_after``: families
    whose episodes end early), a second row plots them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = [read_log(run_dir) for run_dir in run_dirs]
    lengths = {r["length_after"] for records in logs for r in records if "length_after" in r}
    with_lengths = len(lengths) > 1  # one value: every episode ran to the horizon
    rows = 2 if with_lengths else 1
    fig, axes = plt.subplots(
        rows, len(run_dirs), figsize=(4.6 * len(run_dirs), 3.4 * rows), squeeze=False
    )
    panels = [("return", "average return (training tasks)")]
    if with_lengths:
        panels.append(("length", "mean episode length (steps)"))
    for column, (run_dir, records) in enumerate(zip(run_dirs, logs, strict=True)):
        for row, (quantity, ylabel) in enumerate(panels):
            ax = axes[row][column]
            for key, color, label in (
                (f"{quantity}_before", "tab:gray", "before adaptation"),
                (f"{quantity}_after", "tab:red", "after adaptation"),
            ):
                kept = [r for r in records if key in r]
                if not kept:
                    continue
                x = np.array([r["iteration"] for r in kept], dtype=float)
                y = np.array([r[key] for r in kept], dtype=float)
                ax.plot(x, y, color=color, alpha=0.25, linewidth=0.8)
                smooth = _smooth(y, window)
                ax.plot(x[len(x) - len(smooth) :], smooth, color=color, label=label)
            ax.set_title(Path(run_dir).name, fontsize=9)
            ax.set_xlabel("meta-iteration")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def direction_split(run_dir: str | Path, window: int = 40) -> str:
    """For a direction family's run: the training return by direction, as a table.

    An iteration logs one mean over its meta-batch; how many of its tasks ran backward is
    recomputed from the run's seed (training draws iteration ``i``'s tasks from
    ``SeedSequence([seed, i])``), and over each ``window`` of iterations the mean return of a
    backward and of a forward task are fitted by least squares (return = b * R_back + (1 - b) *
    R_fwd, b the backward share). Also the correlation of the logged return with b, and the
    share at the run's kept iteration: how much of a single iteration's return is its draw.
    """
    from meta_train.config import TrainConfig
    from meta_train.rundir import CONFIG_FILE
    from meta_train.trainer import draw_tasks, iteration_seeds
    from sim.families import get_family
    from sim.tasks import DirectionSpace, DirectionTask

    config = TrainConfig.from_yaml(Path(run_dir) / CONFIG_FILE)
    family = get_family(config.family)
    records = read_log(run_dir)
    if not isinstance(family.task_space, DirectionSpace):
        raise ValueError(f"{run_dir} trains {config.family}, not a direction family")
    share, returns = [], []
    for record in records:
        iteration = int(record["iteration"])  # type: ignore[call-overload]
        seeds = iteration_seeds(config.seed, iteration, config.meta.inner_steps)
        tasks = draw_tasks(config, family, seeds)
        share.append(np.mean([isinstance(t, DirectionTask) and t.direction < 0 for t in tasks]))
        returns.append(float(record["return_after"]))  # type: ignore[arg-type]
    b, y = np.array(share), np.array(returns)
    lines = [
        f"{run_dir}: {len(y)} iterations; per window of {window}: the fitted return of a "
        "backward and a forward task, and the correlation of the logged return with the share "
        "of backward tasks",
        f"{'iterations':>12} {'backward':>9} {'forward':>9} {'balanced':>9} {'corr':>6}",
    ]
    for start in range(0, len(y), window):
        part = slice(start, start + window)
        design = np.stack([b[part], 1.0 - b[part]], axis=1)
        (back, fwd), *_ = np.linalg.lstsq(design, y[part], rcond=None)
        corr = np.corrcoef(b[part], y[part])[0, 1] if len(y[part]) > 2 else float("nan")
        span = f"{start}-{start + len(y[part]) - 1}"
        lines.append(f"{span:>12} {back:9.1f} {fwd:9.1f} {(back + fwd) / 2:9.1f} {corr:6.2f}")
    artifact = Path(run_dir) / "artifact"
    if artifact.exists():
        metadata = load_artifact(artifact, verify_onnx=False).metadata
        kept = metadata.training.get("best_iteration")
        if kept is not None and 0 <= kept < len(b):
            lines.append(
                f"kept iteration {kept}: return {y[kept]:.1f}, "
                f"{round(b[kept] * config.meta_batch_size)} of {config.meta_batch_size} tasks backward"
            )
    return "\n".join(lines)
