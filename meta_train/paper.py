"""The paper's constants: its reported numbers, the authors' test tasks and fine-tuning steps.

Finn, Abbeel, Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML
2017, arXiv 1703.03400, sec. 5.3 and Figure 5; the authors' test scripts are cbfinn/maml_rl
``maml_examples/test_maml_*.py``. Nothing here is computed from our runs: the evaluation
(meta_train.evaluate) runs on these tasks, the report (meta_train.report) prints these numbers
next to ours.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from sim.families import Family
from sim.tasks import DirectionSpace, DirectionTask, GoalSpace, GoalTask, Task, VelocityTask

# The paper's results (sec. 5.3, plotted in its Figure 5): mean return over the test tasks after
# 0/1/2/3 gradient steps (the oracle does not adapt: one number).
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

# First-step fine-tuning step sizes of the authors' test scripts for the pretrained and random
# comparators (2D navigation: test_maml_point.py fine-tunes every method with 0.5). MAML adapts
# with the step sizes recorded in its own artifact, those it was meta-trained for.
COMPARATOR_STEP_SIZES: dict[str, dict[str, float]] = {
    "cheetah_velocity": {"pretrained": 0.02, "random": 0.1},
    "cheetah_direction": {"pretrained": 0.2, "random": 1.0},
    "ant_velocity": {"pretrained": 0.2, "random": 1.0},
    "ant_direction": {"pretrained": 0.2, "random": 1.0},
    "navigation2d": {"pretrained": 0.5, "random": 0.5},
    # Not in the paper: the damage families (sim/damage.py) reward running forward as the
    # direction families' forward tasks do, so they fine-tune with the direction families' steps.
    "cheetah_damage": {"pretrained": 0.2, "random": 1.0},
    "ant_damage": {"pretrained": 0.2, "random": 1.0},
    "cheetah_crippled": {"pretrained": 0.2, "random": 1.0},
}


def comparator_step_sizes(
    family: str, method: str, steps: int, first: float | None = None
) -> list[float]:
    """Step sizes of ``steps`` fine-tuning steps of a comparator: the first ``first`` (None:
    from :data:`COMPARATOR_STEP_SIZES`), every later one half of it, as the authors' test
    scripts run them (``init_learning_rate`` for the first step, ``learning_rate`` = 0.5 x it
    after) and as MAML's own later steps are half its first."""
    first = COMPARATOR_STEP_SIZES[family][method] if first is None else first
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
