"""The main job: a robot in MuJoCo gets a new task, tries K episodes, adapts, and runs again.

The K episodes of a phase run as a batch of K simulations, but every action comes from
:meth:`Controller.act` and every transition goes through :meth:`Controller.record`, the calls a
real robot's loop makes (one stream per simulation). This is the only controller module that
imports ``sim`` (and so MuJoCo); the controller's core runs without it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from controller.runtime import AdaptReport, Controller
from controller.video import Film, write_side_by_side
from sim.episodes import MAX_EPISODES_PER_STEP_FACTOR
from sim.families import get_family
from sim.render import DEFAULT_SIZE, FrameRenderer, frame_seconds, renderer_for
from sim.simulator import Simulator, StepResult
from sim.tasks import GoalTask, Task, VelocityTask, describe_task, task_from_dict, task_to_dict


@dataclass
class Phase:
    """K episodes run with one policy: the initialization, or after s adaptation steps."""

    name: str
    policy_id: str
    returns: list[float]
    velocity_error: float | None
    """Mean |v_x - v*| over the episodes' steps (velocity tasks only)."""
    trace: dict[str, list[float]] = field(repr=False)
    """Per-step means over the K episodes, for the plot: 'x_velocity' or 'x', 'y'."""

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))

    @property
    def stderr(self) -> float:
        n = len(self.returns)
        return float(np.std(self.returns, ddof=1) / math.sqrt(n)) if n > 1 else 0.0


@dataclass
class RunResult:
    family: str
    task: dict[str, Any]
    episodes_per_step: int
    """K, the episodes of each phase (one adaptation step's worth)."""
    phases: list[Phase]
    adaptations: list[dict[str, Any]]
    control_step: float
    """Simulated seconds per control step (one action)."""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for phase, raw in zip(self.phases, out["phases"], strict=True):
            raw["mean_return"], raw["stderr"] = phase.mean_return, phase.stderr
            raw.pop("trace")
        return out


class EpisodeRecorder:
    """Films the first episode (simulation 0) of every phase, drawn from the simulator's state.

    ``films[i]`` is phase i's; each frame's caption gives the step, the time and the forward
    velocity (or the distance to the goal). The frame rate is the simulation's real time.
    """

    def __init__(self, size: tuple[int, int] = DEFAULT_SIZE) -> None:
        self.size = size
        self.films: list[Film] = []
        self.fps = 0.0
        self._renderer: FrameRenderer | None = None
        self._horizon = 0

    def start(self, sim: Simulator, title: str, horizon: int) -> None:
        if self._renderer is None:
            self._renderer = renderer_for(sim, self.size)
        self._renderer.new_episode()
        self.fps = 1.0 / frame_seconds(sim)
        self._horizon = horizon
        self.films.append(Film(title))
        self.films[-1].add(self._renderer.frame(sim, 0), f"step 0/{horizon}")

    def shoot(self, sim: Simulator, result: StepResult) -> None:
        """Film simulation 0 after a step it took."""
        assert self._renderer is not None, "start() a film first"
        film = self.films[-1]
        step = len(film.frames)
        caption = f"step {step}/{self._horizon}, {step / self.fps:.2f} s"
        if "x_velocity" in result.infos:
            caption += f", v = {float(result.infos['x_velocity'][0]):.2f} m/s"
        if "distance_to_goal" in result.infos:
            caption += f", distance to goal {float(result.infos['distance_to_goal'][0]):.3f}"
        film.add(self._renderer.frame(sim, 0), caption)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


class VelocityTrace:
    """A locomotion phase, for the plot: the mean forward velocity per step and, when the task is a
    target velocity, the mean |v - v*| over the episodes' steps."""

    def __init__(self, target: float | None) -> None:
        self.target = target
        self.x_velocity: list[float] = []
        self._error_sum, self._error_count = 0.0, 0

    def add(self, result: StepResult, alive: np.ndarray) -> None:
        """Record a step of the simulations still running (``alive``)."""
        v = result.infos["x_velocity"][alive]
        self.x_velocity.append(float(v.mean()) if v.size else math.nan)
        if self.target is not None:
            self._error_sum += float(np.abs(v - self.target).sum())
            self._error_count += int(alive.sum())

    def series(self) -> dict[str, list[float]]:
        return {"x_velocity": self.x_velocity}

    def velocity_error(self) -> float | None:
        return self._error_sum / self._error_count if self._error_count else None


class PathTrace:
    """A 2D navigation phase, for the plot: the mean position (x, y) per step."""

    def __init__(self) -> None:
        self.x: list[float] = []
        self.y: list[float] = []

    def add(self, result: StepResult, alive: np.ndarray) -> None:
        """Record a step of the simulations still running (``alive``)."""
        self.x.append(float(result.observations[alive, 0].mean()))
        self.y.append(float(result.observations[alive, 1].mean()))

    def series(self) -> dict[str, list[float]]:
        return {"x": self.x, "y": self.y}

    def velocity_error(self) -> float | None:
        return None


PhaseTrace = VelocityTrace | PathTrace


def trace_for(task: Task) -> PhaseTrace:
    """What a phase of ``task`` records for the plot and the table, chosen once per phase: the
    path for a goal (2D navigation), else the forward velocity (with its error for a target)."""
    if isinstance(task, GoalTask):
        return PathTrace()
    return VelocityTrace(task.velocity if isinstance(task, VelocityTask) else None)


def run_phase(
    controller: Controller,
    sim: Simulator,
    task: Task,
    seed: int,
    name: str,
    recorder: EpisodeRecorder | None = None,
) -> Phase:
    """K episodes of ``task`` in the K simulations of ``sim``, acting and recording through
    the controller.

    The robot's loop: act on each observation, step, record each transition, close the
    episodes still running at the horizon. ``trace_for(task)`` keeps what the plot shows (of
    the first K). An artifact whose batch counts steps (``Controller.batch_unit``) gets more
    rounds of K episodes until the controller holds a whole batch, as meta-training sampled it.
    """
    policy_id = controller.policy_id
    trace = trace_for(task)
    returns: list[float] = []
    for round_index in range(MAX_EPISODES_PER_STEP_FACTOR):
        first = round_index == 0
        rng = np.random.default_rng(seed if first else [seed, round_index])
        filming, traced = (recorder, trace) if first else (None, trace_for(task))
        returns += _run_round(controller, sim, task, rng, name, filming, traced)
        if controller.batch_unit == "episodes" or controller.batch_progress()[1]:
            break
    return Phase(name, policy_id, returns, trace.velocity_error(), trace.series())


def _run_round(
    controller: Controller,
    sim: Simulator,
    task: Task,
    rng: np.random.Generator,
    name: str,
    recorder: EpisodeRecorder | None,
    trace: VelocityTrace | PathTrace,
) -> list[float]:
    """One episode in each of the simulator's simulations; their returns."""
    episodes_per_step = sim.num_sims
    observation = sim.reset([task] * episodes_per_step, rng)
    horizon = controller.artifact.metadata.adaptation.horizon
    if recorder is not None:
        recorder.start(sim, name, horizon)
    alive = np.ones(episodes_per_step, dtype=bool)
    returns = np.zeros(episodes_per_step)
    for _ in range(horizon):
        action = controller.act(observation)  # streams 0..K-1, exploring as on the robot
        result = sim.step(action, None if alive.all() else alive)
        if recorder is not None and alive[0]:
            recorder.shoot(sim, result)
        reward = np.sum(list(result.reward_terms.values()), axis=0)
        for i in np.flatnonzero(alive).tolist():
            done = bool(result.terminated[i])
            controller.record(observation[i], action[i], float(reward[i]), done, stream=i)
        returns += np.where(alive, reward, 0.0)
        trace.add(result, alive)
        alive &= ~result.terminated
        if not alive.any():
            break
        observation = result.observations
    for i in np.flatnonzero(alive).tolist():
        controller.end_episode(stream=i, truncated=True)
    return returns.tolist()


def run(
    controller: Controller,
    task: Task,
    steps: int = 1,
    seed: int = 0,
    num_threads: int = 2,
    recorder: EpisodeRecorder | None = None,
) -> RunResult:
    """Initialization episodes, ``steps`` adaptation steps, then evaluation episodes.

    With a ``recorder``, the first episode of every phase is filmed (``recorder.films``).
    """
    family = get_family(controller.artifact.metadata.family)
    task = family.validate(task)
    sim = family.make_simulator(controller.episodes_per_step, num_threads)
    phases: list[Phase] = []
    adaptations: list[dict[str, Any]] = []
    for step in range(steps + 1):
        taken = controller.generation  # accepted steps so far
        name = "initialization" if taken == 0 else f"after {taken} step{'s' * (taken > 1)}"
        name += " (again)" if step > 0 and not adaptations[-1]["accepted"] else ""
        phases.append(run_phase(controller, sim, task, seed + step, name, recorder))
        if step < steps:
            report: AdaptReport = controller.adapt()
            adaptations.append(_report_dict(report))
            # A rejected step keeps the current policy serving, as on a robot: the next phase
            # runs it again and the table says why the step was refused.
    return RunResult(
        family.name,
        task_to_dict(task),
        controller.episodes_per_step,
        phases,
        adaptations,
        frame_seconds(sim),
    )


def _report_dict(report: AdaptReport) -> dict[str, Any]:
    timings = report.timings
    return {
        "accepted": report.accepted,
        "reason": report.reason,
        "step": report.step,
        "step_size": report.step_size,
        "kl": report.kl,
        "to_serving_ms": None if timings is None else 1000 * timings.to_serving_s,
    }


def _words(family: str, task: Task) -> str:
    """``task`` in words, a body's motors by name."""
    return describe_task(task, get_family(family).task_space)


def format_table(result: RunResult) -> str:
    velocity = any(p.velocity_error is not None for p in result.phases)
    width = max(16, *(len(p.name) + 1 for p in result.phases))  # "after 2 steps (again)"
    header = f"{'phase':<{width}}{'episodes':>9}{'return (mean ± se)':>22}"
    header += f"{'mean |v - v*|':>16}" if velocity else ""
    task = _words(result.family, task_from_dict(result.task))
    lines = [f"{result.family}, {task}: K = {result.episodes_per_step}", header]
    for p in result.phases:
        returns = f"{p.mean_return:.1f} ± {p.stderr:.1f}"
        line = f"{p.name:<{width}}{len(p.returns):>9}{returns:>22}"
        if p.velocity_error is not None:
            line += f"{p.velocity_error:>16.3f}"
        lines.append(line)
    for a in result.adaptations:
        if not a["accepted"]:
            lines.append(f"adaptation step {a['step'] + 1}: REJECTED, {a['reason']}")
            continue
        lines.append(
            f"adaptation step {a['step'] + 1}: step size α {a['step_size']}, KL {a['kl']:.4f}, "
            f"{a['to_serving_ms']:.1f} ms to serving"
        )
    return "\n".join(lines)


def plot(result: RunResult, task: Task, path: str | Path) -> None:
    """Velocity against time (or the mean path, for 2D navigation), before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(result.phases)))
    for phase, color in zip(result.phases, colors, strict=True):
        if "x_velocity" in phase.trace:
            t = np.arange(len(phase.trace["x_velocity"]))
            ax.plot(t, phase.trace["x_velocity"], color=color, label=phase.name)
        else:
            ax.plot(phase.trace["x"], phase.trace["y"], color=color, label=phase.name)
    if isinstance(task, VelocityTask):
        ax.axhline(task.velocity, color="tab:red", linestyle="--", label="target v*")
    if "x_velocity" in result.phases[0].trace:
        ax.set_xlabel(f"control step ({result.control_step:g} s)")
        ax.set_ylabel("forward velocity (m/s)\nmean of the phase's first K episodes", fontsize=9)
    else:
        goal = result.task["goal"]
        ax.plot([goal[0]], [goal[1]], marker="*", color="tab:red", markersize=14, label="goal")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    ax.set_title(f"{result.family}: {_words(result.family, task)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_video(
    recorder: EpisodeRecorder,
    result: RunResult,
    task: Task,
    path: str | Path,
    description: str | None = None,
) -> Path:
    """The first and the last phase's filmed episodes side by side, as one MP4 at real time.

    The header gives the family and the task, with which side is which; a ``description``
    (a damaged body's, with its motors' names) replaces both, the films' titles then naming
    the phases.
    """
    films = recorder.films
    if len(films) < 2:
        raise ValueError("a before/after video needs at least two filmed phases")
    # The phases' own names ("initialization", "after 1 step"): a controller that resumed an
    # adapted policy from its journal starts from that policy, and the titles say so.
    films[0].title, films[-1].title = result.phases[0].name, result.phases[-1].name
    header = (
        f"{result.family}: {_words(result.family, task)}  |  left: before adaptation, right: after"
    )
    if description is not None:
        header = f"{result.family}: {description}"
    return write_side_by_side(path, [films[0], films[-1]], header, recorder.fps)
