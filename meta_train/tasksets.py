"""How much a 40-task mean depends on which 40 tasks: ``python -m meta_train.tasksets ARTIFACT``.

Evaluates the artifact, as ``adaptctl eval`` does (same episode seeds, the artifact's own step
sizes), on ``--sets`` fresh sets of held-out tasks drawn from seeds ``--first-seed``,
``--first-seed`` + 1, ..., and on the two sets the evaluation knows: the authors' test tasks and
the seeded draw of ``evaluation.task_seed``. It prints the spread of the mean return over the
fresh sets after each step and where the two named sets fall in it: the yardstick for reading a
gap to the paper's number that is about one standard error wide. docs/results.md quotes it for
2D navigation.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from controller.artifact import load_artifact
from meta_train.config import EvalConfig
from meta_train.evaluate import evaluate_method, test_tasks
from meta_train.paper import paper_test_tasks
from sim.families import get_family
from sim.sampler import BatchSampler
from sim.tasks import Task


@dataclass(frozen=True)
class TaskSetSpread:
    drawn: np.ndarray
    """[sets, steps + 1]: mean return over each fresh set's tasks after 0..steps steps."""
    paper: list[float]
    """The same on the authors' test tasks."""
    seeded: list[float]
    """The same on the evaluation's seeded tasks (``EvalConfig().task_seed``)."""


def task_set_spread(
    artifact_dir: str,
    sets: int = 20,
    num_tasks: int = 40,
    episodes_per_step: int | None = None,
    steps: int = 1,
    first_seed: int = 5000,
    threads: int = 1,
) -> TaskSetSpread:
    if sets < 2:
        raise ValueError(f"a spread needs at least 2 task sets, got {sets}")
    artifact = load_artifact(artifact_dir)
    adaptation = artifact.metadata.adaptation
    family = get_family(artifact.metadata.family)
    sampler = BatchSampler(family, threads)
    config = EvalConfig(num_tasks=num_tasks, episodes_per_step=episodes_per_step)
    sizes = adaptation.settings.step_sizes(steps)
    episodes_per_step = config.resolved_episodes_per_step(adaptation.episodes_per_step)

    def mean_returns(tasks: Sequence[Task]) -> list[float]:
        result = evaluate_method(
            sampler,
            artifact.spec,
            artifact.params,
            tasks,
            episodes_per_step,
            sizes,
            adaptation.settings,
            seed=config.task_seed + 1,
            batch_unit=adaptation.batch_unit,
        )
        return result.mean

    drawn = [mean_returns(test_tasks(family, num_tasks, first_seed + i)) for i in range(sets)]
    return TaskSetSpread(
        np.array(drawn),
        mean_returns(paper_test_tasks(family, num_tasks)),
        mean_returns(test_tasks(family, num_tasks, config.task_seed)),
    )


def format_spread(spread: TaskSetSpread) -> str:
    sets = len(spread.drawn)
    lines = [
        f"{'step':>4} {'fresh sets: mean':>17} {'sd':>6} {'min':>8} {'max':>8}"
        f" {'authors':>9} {'seeded':>9}"
    ]
    for step, column in enumerate(spread.drawn.T):
        lines.append(
            f"{step:>4} {column.mean():>17.2f} {column.std(ddof=1):>6.2f} {column.min():>8.2f} "
            f"{column.max():>8.2f} {spread.paper[step]:>9.2f} {spread.seeded[step]:>9.2f}"
        )
    last = spread.drawn[:, -1]
    for name, value in (("authors'", spread.paper[-1]), ("seeded", spread.seeded[-1])):
        below = int((last < value).sum())
        lines.append(
            f"after step {len(spread.paper) - 1} the {name} set is above {below} of the "
            f"{sets} fresh sets"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meta_train.tasksets", description=__doc__)
    parser.add_argument("artifact", help="artifact directory")
    parser.add_argument("--sets", type=int, default=20, help="fresh task sets (default 20)")
    parser.add_argument("--num-tasks", type=int, default=40, help="tasks per set (default 40)")
    parser.add_argument(
        "--episodes", type=int, default=None, help="K per step (default: the artifact's)"
    )
    parser.add_argument("--steps", type=int, default=1, help="gradient steps (default 1)")
    parser.add_argument(
        "--first-seed", type=int, default=5000, help="seed of the first fresh set (default 5000)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    spread = task_set_spread(
        args.artifact, args.sets, args.num_tasks, args.episodes, args.steps, args.first_seed
    )
    print(
        f"{args.artifact}: mean return over {args.num_tasks} tasks, {args.sets} fresh sets "
        f"(seeds {args.first_seed}..{args.first_seed + args.sets - 1})"
    )
    print(format_spread(spread))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
