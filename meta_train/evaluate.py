"""The paper's evaluation protocol (MAML_RL.md, 'Evaluation protocol') and its figure.

40 held-out test tasks from a fixed seed; for each task, K on-policy episodes per gradient step;
the mean return over the tasks (± standard error over tasks) after 0, 1, 2, 3 steps. Each step
adapts with controller.adaptation.adapt, the function the runtime controller runs. Every method
(MAML, pretrained, random, oracle) goes through this same code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from controller.adaptation import AdaptationSettings, adapt, task_batch
from controller.policy import Params, PolicySpec, SamplingPolicy, stack_params
from sim.episodes import Episodes
from sim.families import Family
from sim.tasks import (
    DirectionSpace,
    DirectionTask,
    GoalSpace,
    GoalTask,
    Task,
    VelocityTask,
    task_to_dict,
)

if TYPE_CHECKING:
    from meta_train.config import EvalConfig
    from meta_train.trainer import EpisodeSampler

# The paper's numbers (MAML_RL.md, last table): mean over 40 test tasks after 0/1/2/3 steps.
PAPER_RESULTS: dict[str, dict[str, list[float]]] = {
    "navigation2d": {"maml": [-40.4, -11.7, -3.3, -3.2], "pretrained": [-40.8, -19.7, -11.7, -8.5],
                     "random": [-82.7, -58.0, -53.8, -46.8], "oracle": [-2.3]},
    "cheetah_velocity": {"maml": [-129.5, -78.6, -66.6, -60.8],
                         "pretrained": [-158.0, -135.4, -128.5, -133.6],
                         "random": [-254.8, -254.3, -246.8, -230.8], "oracle": [-54.5]},
    "cheetah_direction": {"maml": [-50.7, 293.2, 313.5, 315.7],
                          "pretrained": [-43.0, -24.7, -12.8, 19.6],
                          "random": [-35.7, 21.8, 62.3, 86.2], "oracle": [442.7]},
    "ant_velocity": {"maml": [30.6, 96.7, 100.1, 101.4], "pretrained": [-1.8, 6.1, 8.5, 9.5],
                     "random": [-78.6, -62.8, -48.5, -35.6], "oracle": [107.9]},
    "ant_direction": {"maml": [8.7, 499.1, 500.7, 499.1], "pretrained": [3.2, 1.3, 6.5, 6.9],
                      "random": [3.1, 9.2, 16.0, 26.1], "oracle": [524.8]},
}  # fmt: skip

# First-step fine-tuning step sizes of the authors' test scripts, for pretrained and random
# (MAML_RL.md, 'Comparators'; 2D navigation: the authors' test_maml_point.py fine-tunes every
# method with 0.5); MAML uses the artifact's own (0.1, then 0.05).
COMPARATOR_STEP_SIZES: dict[str, dict[str, float]] = {
    "cheetah_velocity": {"pretrained": 0.02, "random": 0.1},
    "cheetah_direction": {"pretrained": 0.2, "random": 1.0},
    "ant_velocity": {"pretrained": 0.2, "random": 1.0},
    "ant_direction": {"pretrained": 0.2, "random": 1.0},
    "navigation2d": {"pretrained": 0.5, "random": 0.5},
}


def comparator_step_sizes(family: str, method: str, steps: int) -> list[float]:
    """Step sizes of ``steps`` fine-tuning steps of a comparator: the first from
    :data:`COMPARATOR_STEP_SIZES`, every later one half of it, as the authors' test scripts
    run them (``init_learning_rate`` for the first step, ``learning_rate`` = 0.5 x it after)
    and as MAML's own 0.1 then 0.05."""
    first = COMPARATOR_STEP_SIZES[family][method]
    return [first if step == 0 else 0.5 * first for step in range(steps)]


class PaperDraw(NamedTuple):
    """How an authors' test script draws its test tasks: ``np.random.seed(seed)`` then
    ``np.random.uniform(low, high, size)``; a direction task runs backward below ``split``."""

    seed: int
    low: float
    high: float
    split: float | None = None


# The test tasks of the authors' test scripts (cbfinn/maml_rl maml_examples/test_maml_*.py),
# on which the paper's numbers were measured. The direction scripts draw a velocity-like number
# and their environments turn it into a direction (half_cheetah_env_rand_direc: backward below
# 1.0; ant_env_rand_direc: below 1.5).
PAPER_TEST_DRAWS: dict[str, PaperDraw] = {
    "navigation2d": PaperDraw(1, -0.5, 0.5),
    "cheetah_velocity": PaperDraw(1, 0.0, 2.0),
    "cheetah_direction": PaperDraw(1, 0.0, 2.0, split=1.0),
    "ant_velocity": PaperDraw(1, 0.0, 3.0),
    "ant_direction": PaperDraw(2, 0.0, 3.0, split=1.5),
}


def test_tasks(family: Family, num_tasks: int, seed: int) -> list[Task]:
    """Held-out test tasks drawn from their own seed, never from a training stream."""
    return family.sample_tasks(np.random.default_rng(seed), num_tasks)


def paper_test_tasks(family: Family, num_tasks: int) -> list[Task]:
    """The authors' test tasks for ``family``, in their order (the first ``num_tasks`` of the
    stream their script draws 40 from). Training never draws from this legacy-numpy stream."""
    draw = PAPER_TEST_DRAWS.get(family.name)
    if draw is None:
        raise ValueError(
            f"no test tasks of the authors for family {family.name!r} (known: "
            f"{', '.join(PAPER_TEST_DRAWS)}); set evaluation.tasks: seeded"
        )
    stream = np.random.RandomState(draw.seed)  # what np.random.seed(seed) sets up
    space = family.task_space
    tasks: list[Task]
    if isinstance(space, GoalSpace):  # test_maml_point.py: size (n, 2)
        goals = stream.uniform(draw.low, draw.high, size=(num_tasks, 2))
        tasks = [GoalTask((float(x), float(y))) for x, y in goals]
    elif isinstance(space, DirectionSpace):  # the script's velocity draw, split in two
        assert draw.split is not None, f"PAPER_TEST_DRAWS[{family.name!r}] needs a split"
        values = stream.uniform(draw.low, draw.high, num_tasks)
        tasks = [DirectionTask(-1 if v < draw.split else 1) for v in values]
    else:
        tasks = [VelocityTask(float(v)) for v in stream.uniform(draw.low, draw.high, num_tasks)]
    return [family.validate(task) for task in tasks]


def evaluation_tasks(family: Family, config: EvalConfig) -> list[Task]:
    """The test tasks an evaluation runs on: the authors' (``tasks: paper``, the default) or
    ``num_tasks`` drawn from ``task_seed`` (``tasks: seeded``)."""
    if config.tasks == "paper":
        return paper_test_tasks(family, config.num_tasks)
    return test_tasks(family, config.num_tasks, config.task_seed)


class MethodResult(NamedTuple):
    """Returns of one method over the test tasks."""

    returns: np.ndarray
    """[steps + 1, T]: mean return over the K episodes of each task after s gradient steps."""
    velocity_errors: np.ndarray | None = None
    """[steps + 1, T]: mean |v_x - v*| over the valid steps of each task's K episodes
    (velocity tasks only): what a user of a velocity task watches, next to the return."""
    velocities: np.ndarray | None = None
    """[steps + 1, T]: mean v_x over the same steps (velocity tasks only)."""

    @property
    def mean(self) -> list[float]:
        return _mean_stderr(self.returns)[0]

    @property
    def stderr(self) -> list[float]:
        return _mean_stderr(self.returns)[1]


def evaluate_method(
    sampler: EpisodeSampler, spec: PolicySpec, params: Params, tasks: Sequence[Task],
    episodes_per_step: int, step_sizes: Sequence[float], settings: AdaptationSettings,
    seed: int, task_features: bool = False, horizon: int | None = None,
) -> MethodResult:  # fmt: skip
    """Sample, adapt each task's policy with step_sizes[s], sample again, ..."""
    per_task = [params] * len(tasks)
    rows, stats = [], []
    for step in range(len(step_sizes) + 1):
        policy = SamplingPolicy(spec, stack_params(per_task), seed + 7919 * step)
        episodes = sampler.sample(
            tasks, episodes_per_step, policy, seed + 104729 * step, horizon, task_features
        )
        rows.append(episodes.returns().mean(axis=1))
        stats.append(velocity_stats(episodes))
        if step < len(step_sizes):
            per_task = [
                adapt(spec, per_task[i], task_batch(episodes, i, settings), step_sizes[step])
                for i in range(len(tasks))
            ]
    known = [x for x in stats if x is not None]
    if len(known) < len(stats):
        return MethodResult(np.stack(rows))
    errors, velocities = (np.stack(column) for column in zip(*known, strict=True))
    return MethodResult(np.stack(rows), errors, velocities)


def velocity_stats(episodes: Episodes) -> tuple[np.ndarray, np.ndarray] | None:
    """([T], [T]): each task's mean |v_x - v*| and mean v_x over the valid steps of its
    episodes; None unless every task is a VelocityTask."""
    targets = [task.velocity for task in episodes.tasks if isinstance(task, VelocityTask)]
    if len(targets) != len(episodes.tasks):
        return None
    velocity, valid = episodes.infos["x_velocity"], episodes.valid
    steps = valid.sum(axis=(1, 2))
    error = np.abs(velocity - np.array(targets)[:, None, None]) * valid
    return error.sum(axis=(1, 2)) / steps, (velocity * valid).sum(axis=(1, 2)) / steps


def _mean_stderr(rows: np.ndarray) -> tuple[list[float], list[float]]:
    n = rows.shape[1]
    means = [float(r.mean()) for r in rows]
    return means, [float(r.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0 for r in rows]


def results_document(
    family: Family, tasks: Sequence[Task], results: dict[str, MethodResult],
    provenance: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    return {
        "family": family.name,
        "num_tasks": len(tasks),
        "tasks": [task_to_dict(t) for t in tasks],
        "methods": {name: _method_document(r) for name, r in results.items()},
        "paper": PAPER_RESULTS.get(family.name, {}),
        "provenance": provenance,
    }


def _method_document(result: MethodResult) -> dict[str, Any]:
    document: dict[str, Any] = {
        "mean": result.mean,
        "stderr": result.stderr,
        "per_task": result.returns.tolist(),
    }
    if result.velocity_errors is not None:
        mean, stderr = _mean_stderr(result.velocity_errors)
        document["velocity_error"] = {
            "mean": mean,
            "stderr": stderr,
            "per_task": result.velocity_errors.tolist(),
        }
    if result.velocities is not None:
        document["velocity_per_task"] = result.velocities.tolist()
    return document


def format_table(document: dict[str, Any]) -> str:
    """Ours next to the paper's, one row per method, one column per gradient step."""
    methods = document["methods"]
    steps = max(len(m["mean"]) for m in methods.values())
    header = f"{'method':<11}" + "".join(f"{'step ' + str(s):>22}" for s in range(steps))
    lines = [f"{document['family']}: mean return over {document['num_tasks']} test tasks "
             "± standard error (paper in brackets)", header]  # fmt: skip
    for name, m in methods.items():
        paper = document["paper"].get(name, [])
        cells = []
        for s in range(len(m["mean"])):
            ref = f" [{paper[s]:.1f}]" if s < len(paper) else ""
            cells.append(f"{m['mean'][s]:.1f}±{m['stderr'][s]:.1f}{ref}".rjust(22))
        lines.append(f"{name:<11}" + "".join(cells))
    with_errors = {name: m["velocity_error"] for name, m in methods.items()
                   if "velocity_error" in m}  # fmt: skip
    if with_errors:
        lines += ["", "mean |v - v*| (m/s) over the same episodes ± standard error", header]
        for name, error in with_errors.items():
            cells = [f"{mu:.3f}±{se:.3f}".rjust(22)
                     for mu, se in zip(error["mean"], error["stderr"], strict=True)]  # fmt: skip
            lines.append(f"{name:<11}" + "".join(cells))
    return "\n".join(lines)


def plot_results(documents: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Figure 5 of the paper: return against gradient steps, one panel per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(documents), figsize=(4.2 * len(documents), 3.4), squeeze=False)
    styles = {"maml": ("tab:red", "o"), "pretrained": ("tab:blue", "s"),
              "random": ("tab:gray", "^"), "oracle": ("tab:green", None)}  # fmt: skip
    for ax, doc in zip(axes[0], documents, strict=True):
        steps = max(len(m["mean"]) for m in doc["methods"].values())
        for name, m in doc["methods"].items():
            color, marker = styles.get(name, ("black", "x"))
            mean, err = np.array(m["mean"]), np.array(m["stderr"])
            if len(mean) == 1:  # the oracle does not adapt: a horizontal line
                ax.axhline(mean[0], color=color, linestyle="--", label=name)
                for value in doc.get("paper", {}).get(name, [])[:1]:
                    ax.axhline(
                        value, color=color, linestyle=":", alpha=0.5, label=f"{name} (paper)"
                    )
                continue
            x = np.arange(len(mean))
            ax.errorbar(x, mean, yerr=err, color=color, marker=marker, capsize=3, label=name)
            paper = doc.get("paper", {}).get(name, [])
            if len(paper) > 1:  # the paper's curve, faint, for comparison
                ax.plot(range(len(paper)), paper, color=color, linestyle=":", alpha=0.5,
                        label=f"{name} (paper)")  # fmt: skip
        ax.set_title(doc["family"])
        ax.set_xlabel("number of gradient steps")
        ax.set_xticks(range(steps))
        ax.set_ylabel("average return")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_results(document: dict[str, Any], out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{document['family']}.json"
    path.write_text(json.dumps(document, indent=1) + "\n")
    plot_results([document], out / f"{document['family']}.png")
    if any("velocity_per_task" in m for m in document["methods"].values()):
        plot_velocity_tracking(document, out / f"{document['family']}_tracking.png")
    return path


def plot_velocity_tracking(document: dict[str, Any], path: str | Path) -> None:
    """Velocity reached against the target, per test task, after each gradient step: one
    panel per method (velocity tasks). Reads better than the return alone: it shows which
    targets a step reaches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = {n: m for n, m in document["methods"].items() if "velocity_per_task" in m}
    targets = np.array([t["velocity"] for t in document["tasks"]])
    order = np.argsort(targets)
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.4), squeeze=False,
                             sharey=True)  # fmt: skip
    for ax, (name, m) in zip(axes[0], methods.items(), strict=True):
        reached = np.array(m["velocity_per_task"])
        colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(reached)))
        for step, (row, color) in enumerate(zip(reached, colors, strict=True)):
            ax.plot(targets[order], row[order], marker=".", color=color, label=f"step {step}")
        ax.plot(targets[order], targets[order], color="tab:red", linestyle="--", label="v = v*")
        ax.set_title(name)
        ax.set_xlabel("target velocity v* (m/s)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean forward velocity reached (m/s)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"{document['family']}: {document['num_tasks']} test tasks")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def set_threads(num_threads: int) -> None:
    torch.set_num_threads(num_threads)
