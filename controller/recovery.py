"""The damaged robot in the sim loop: ``adaptctl run ARTIFACT --motor NAME=GAIN --payload KG
--friction X [--damage-at EPISODE]``.

Without ``--damage-at`` the body is the task of the ordinary sim loop (controller/simloop.py):
K episodes, one adaptation step, K more. With it, one robot is deployed episode after episode:
healthy until episode ``damage_at``, then with the given body. The Controller's monitor
(controller/monitor.py) has to notice the drop in the returns by itself, collect K episodes and
adapt from the initialization; this module only runs the robot (``act``/``record``, as a real
robot's loop does) and reports the returns before the damage, after it, and after adaptation.

A sim-side module like simloop.py: it imports ``sim`` (and so MuJoCo); the controller's core
does not.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controller.cli_args import body_from_args
from controller.config import ConfigError
from controller.monitor import MonitorSettings
from controller.runtime import Controller
from controller.simloop import EpisodeRecorder
from controller.video import write_side_by_side
from sim.families import get_family
from sim.simulator import Simulator
from sim.tasks import BodySpace, BodyTask, describe_body, task_from_dict, task_to_dict


@dataclass
class DeployedEpisode:
    """One episode of the deployment."""

    index: int
    damaged: bool
    adaptation_steps: int
    """Accepted steps from the initialization of the policy that ran it (0: the initialization)."""
    episode_return: float
    length: int
    end_s: float
    """Wall seconds from the start of the deployment to the end of this episode."""


@dataclass
class Deployment:
    family: str
    healthy: dict[str, Any]
    damaged: dict[str, Any]
    damage_at: int
    episodes_per_step: int
    control_dt: float
    """Seconds of robot time per control step."""
    episodes: list[DeployedEpisode]
    events: list[dict[str, Any]]
    """The monitor's events ("drop", "adapted", "rejected"), each with the deployment episode
    ("index") at whose end it happened."""

    def summary(self) -> dict[str, Any]:
        """Mean returns before the damage, after it, after adaptation; damage-to-recovery time.

        The recovery is the first drop noticed at or after the damage and the first adaptation
        that follows it; drops noticed before the damage are false alarms. Episodes count as
        adapted when an adapted policy ran them (a reverted step's later episodes run the
        initialization again).
        """
        drop = next(
            (e for e in self.events if e["kind"] == "drop" and e["index"] >= self.damage_at), None
        )
        adapted = None
        if drop is not None:
            adapted = next(
                (e for e in self.events if e["kind"] == "adapted" and e["index"] >= drop["index"]),
                None,
            )
        end = len(self.episodes) if adapted is None else adapted["index"] + 1
        before = [e for e in self.episodes if not e.damaged]
        damaged = [e for e in self.episodes if e.damaged and e.index < end]
        after = [e for e in self.episodes if e.index >= end and e.adaptation_steps > 0]
        out: dict[str, Any] = {
            "return_healthy": _mean(before),
            "return_damaged": _mean(damaged),
            "return_adapted": _mean(after),
            "false_alarms": sum(
                e["kind"] == "drop" and e["index"] < self.damage_at for e in self.events
            ),
            "drop_noticed_after_episodes": None
            if drop is None
            else drop["index"] - self.damage_at + 1,
            "recovery_episodes": None,
            "recovery_robot_s": None,
            "recovery_wall_s": None,
            "recovered_fraction": None,
            "reverted": adapted is not None
            and any(e["kind"] == "reverted" and e["index"] > adapted["index"] for e in self.events),
        }
        if adapted is not None:
            out["recovery_episodes"] = len(damaged)
            out["recovery_robot_s"] = sum(e.length for e in damaged) * self.control_dt
            start = self.episodes[self.damage_at - 1].end_s if self.damage_at > 0 else 0.0
            out["recovery_wall_s"] = adapted["wall_s"] - start
            gap = out["return_healthy"] - out["return_damaged"] if before and damaged else None
            if gap and gap > 0 and after:
                out["recovered_fraction"] = (out["return_adapted"] - out["return_damaged"]) / gap
        return out

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary()}


def _mean(episodes: list[DeployedEpisode]) -> float | None:
    return float(np.mean([e.episode_return for e in episodes])) if episodes else None


def deploy(
    controller: Controller,
    body: BodyTask,
    damage_at: int,
    episodes: int,
    seed: int = 0,
    recorder: EpisodeRecorder | None = None,
) -> Deployment:
    """Run ``episodes`` episodes one after another on one robot, damaged from ``damage_at``.

    With a ``recorder``, three episodes are filmed (``recorder.films``, in this order): the last
    before the damage (when there is one), the first after it, and the first that the adapted
    policy runs (when adaptation happens).
    """
    family = get_family(controller.artifact.metadata.family)
    space = family.task_space
    assert isinstance(space, BodySpace)
    healthy, body = space.make(), space.validate(body)
    if controller.recovery is None:
        raise ConfigError("a deployment with damage needs the controller's monitor (monitor:)")
    if not 0 <= damage_at < episodes:
        raise ConfigError(f"--damage-at must lie in [0, {episodes}), got {damage_at}")
    sim = family.make_simulator(1, 1)
    rng = np.random.default_rng(seed)
    horizon = controller.artifact.metadata.adaptation.horizon
    rows: list[DeployedEpisode] = []
    events: list[dict[str, Any]] = []
    start = time.monotonic()
    adapted_filmed = False
    for index in range(episodes):
        steps = int(controller.status()["adaptation_steps"])
        seen = len(controller.recovery.events)
        title = _film_title(index, damage_at, steps, adapted_filmed)
        adapted_filmed = adapted_filmed or (title is not None and steps > 0)
        film = None if recorder is None or title is None else (recorder, title)
        total, length = _episode(
            controller, sim, healthy if index < damage_at else body, rng, horizon, film
        )
        rows.append(
            DeployedEpisode(
                index, index >= damage_at, steps, total, length, time.monotonic() - start
            )
        )
        for event in controller.recovery.events[seen:]:
            wall = event["time"] - start
            events.append(
                {**{k: v for k, v in event.items() if k != "time"}, "index": index, "wall_s": wall}
            )
    dt = float(getattr(sim, "dt", 0.0))
    return Deployment(
        family.name,
        task_to_dict(healthy),
        task_to_dict(body),
        damage_at,
        controller.episodes_per_step,
        dt,
        rows,
        events,
    )


def _film_title(index: int, damage_at: int, steps: int, adapted_filmed: bool) -> str | None:
    """The film title of deployment episode ``index``, or None when it is not filmed."""
    if index == damage_at - 1:
        return f"episode {index}: healthy"
    if index == damage_at:
        return f"episode {index}: damaged" + (", adapted" if steps > 0 else "")
    if index > damage_at and steps > 0 and not adapted_filmed:
        return f"episode {index}: damaged, adapted"
    return None


def _episode(
    controller: Controller,
    sim: Simulator,
    body: BodyTask,
    rng: np.random.Generator,
    horizon: int,
    film: tuple[EpisodeRecorder, str] | None = None,
) -> tuple[float, int]:
    """One episode through act/record; the Controller's monitor sees it when it ends.

    ``film``: a recorder and a title, to film this episode.
    """
    observation = sim.reset([body], rng)[0]
    if film is not None:
        film[0].start(sim, film[1], horizon)
    total = 0.0
    for step in range(horizon):
        action = controller.act(observation)
        result = sim.step(action[None, :])
        if film is not None:
            film[0].shoot(sim, result)
        reward = float(sum(float(term[0]) for term in result.reward_terms.values()))
        total += reward
        terminated = bool(result.terminated[0])
        controller.record(observation, action, reward, done=terminated)  # done: episode ends
        if terminated:
            return total, step + 1
        observation = result.observations[0]
    controller.end_episode(truncated=True)
    return total, horizon


def format_deployment(result: Deployment) -> str:
    s = result.summary()
    lines = [
        f"{result.family}: healthy for {result.damage_at} episodes, then "
        f"{_describe(result.family, result.damaged)}; K = {result.episodes_per_step}",
        f"{'phase':<34}{'episodes':>9}{'return (mean)':>16}",
    ]
    damaged = [e for e in result.episodes if e.damaged]
    counts = {
        "healthy (before the damage)": result.damage_at,
        "damaged, before adaptation": s["recovery_episodes"] or len(damaged),
        "damaged, adapted": sum(e.adaptation_steps > 0 for e in damaged),
    }
    for (name, count), value in zip(
        counts.items(), (s["return_healthy"], s["return_damaged"], s["return_adapted"]), strict=True
    ):
        lines.append(f"{name:<34}{count:>9}{'-' if value is None else f'{value:.1f}':>16}")
    for event in result.events:
        lines.append(
            f"episode {event['index']}: {event['kind']}"
            + (f" ({event['reason']})" if "reason" in event else "")
        )
    if s["recovery_episodes"] is None:
        lines.append("the adapted policy never served: no drop noticed, or adaptation refused")
    else:
        lines.append(
            f"damage to adapted policy serving: {s['recovery_episodes']} episodes, "
            f"{s['recovery_robot_s']:.1f} s of robot time ({s['recovery_wall_s']:.2f} s wall "
            f"here); drop noticed after {s['drop_noticed_after_episodes']} episodes"
        )
    if s["false_alarms"]:
        lines.append(f"{s['false_alarms']} drop(s) noticed before the damage: false alarms")
    if s["reverted"]:
        lines.append("the adapted policy earned less than the initialization and was reverted")
    if s["recovered_fraction"] is not None:
        lines.append(
            f"adaptation regained {100 * s['recovered_fraction']:.0f} % of the return "
            "the damage cost"
        )
    return "\n".join(lines)


def _describe(family: str, body: dict[str, Any]) -> str:
    space = get_family(family).task_space
    assert isinstance(space, BodySpace)
    task = task_from_dict(body)
    assert isinstance(task, BodyTask)
    return space.describe(task)


def write_deployment_video(
    recorder: EpisodeRecorder,
    deployment: Deployment,
    body: BodyTask,
    motor_names: tuple[str, ...],
    path: str | Path,
) -> Path:
    """The deployment's filmed episodes (healthy, damaged, adapted) side by side, one MP4.

    The header names the perturbation and the episode it starts at; each film's title gives its
    episode and phase, and its captions the step and the velocity.
    """
    header = (
        f"{deployment.family}: from episode {deployment.damage_at}, "
        f"{describe_body(body, motor_names)}"
    )
    return write_side_by_side(path, recorder.films, header, recorder.fps)


def plot_deployment(result: Deployment, path: str | Path) -> None:
    """Return per episode: healthy, damaged, adapted; the damage, the drop noticed, adaptation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7.0, 3.8))
    index = np.array([e.index for e in result.episodes])
    returns = np.array([e.episode_return for e in result.episodes])
    adapted = np.array([e.adaptation_steps > 0 for e in result.episodes])
    damaged = np.array([e.damaged for e in result.episodes])
    phases = (
        ("healthy", ~damaged, "tab:blue"),
        ("damaged", damaged & ~adapted, "tab:red"),
        ("damaged, adapted", damaged & adapted, "tab:green"),
    )
    for label, mask, color in phases:
        ax.plot(index[mask], returns[mask], "o", markersize=3.5, color=color, label=label)
    ax.axvline(result.damage_at - 0.5, color="black", linewidth=1.0, label="damage")
    styles = {
        "drop": ("tab:orange", "--", "drop noticed"),
        "adapted": ("tab:green", ":", "adapted"),
        "reverted": ("tab:purple", "-.", "reverted to the initialization"),
    }
    labelled: set[str] = set()
    for event in result.events:
        if event["kind"] in styles:
            color, style, label = styles[event["kind"]]
            once = None if label in labelled else label
            labelled.add(label)
            ax.axvline(event["index"] + 0.5, color=color, linestyle=style, label=once)
    s = result.summary()
    title = f"{result.family}: {_describe(result.family, result.damaged)}"
    if s["recovery_episodes"] is not None:
        title += (
            f"\nadapted policy serving {s['recovery_episodes']} episodes "
            f"({s['recovery_robot_s']:.0f} s of robot time) after the damage"
        )
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("episode")
    ax.set_ylabel("return")
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def cmd_run(args: argparse.Namespace) -> int:
    """``adaptctl run`` with a body: the ordinary sim loop, or a deployment with --damage-at."""
    from controller import simloop
    from controller.cli_args import controller_config

    config = controller_config(args)
    if config.seed is None:
        config = config.model_copy(update={"seed": args.seed})
    if "journal" not in config.model_fields_set and config.journal_dir is None:
        # A simulated robot starts from the initialization every time: nothing to resume.
        config = config.model_copy(update={"journal": False})
    if args.damage_at is not None and config.monitor is None:
        config = config.model_copy(update={"monitor": MonitorSettings()})
    out = Path(args.out)
    recorder = EpisodeRecorder() if args.video else None
    try:
        with Controller.load(args.artifact, config) as controller:
            family = get_family(controller.artifact.metadata.family)
            body = body_from_args(args, family)
            outside = family.task_space.outside_training(body)  # type: ignore[union-attr]
            if outside:
                print(f"note: this body is outside the training range: {'; '.join(outside)}")
            if args.damage_at is None:
                result = simloop.run(
                    controller,
                    body,
                    steps=args.steps,
                    seed=args.seed,
                    num_threads=args.threads,
                    recorder=recorder,
                )
            else:
                episodes_per_step = controller.episodes_per_step
                count = args.episodes or args.damage_at + 3 * episodes_per_step
                deployment = deploy(
                    controller, body, args.damage_at, count, seed=args.seed, recorder=recorder
                )
    finally:
        if recorder is not None:
            recorder.close()
    names = family.task_space.motor_names  # type: ignore[union-attr]
    out.mkdir(parents=True, exist_ok=True)
    video = None
    if args.damage_at is None:
        document = result.to_json()
        simloop.plot(result, body, out / "adaptation.png")
        text, figure = simloop.format_table(result), out / "adaptation.png"
        if recorder is not None:
            video = simloop.write_video(
                recorder, result, body, out / "adaptation.mp4", describe_body(body, names)
            )
    else:
        document = deployment.to_json()
        figure = out / "recovery.png"
        plot_deployment(deployment, figure)
        text = format_deployment(deployment)
        if recorder is not None:
            video = write_deployment_video(recorder, deployment, body, names, out / "recovery.mp4")
    (out / "result.json").write_text(json.dumps(document, indent=1) + "\n")
    print(json.dumps(document, indent=1) if args.json else text)
    if not args.json:
        print(f"wrote {out / 'result.json'} and {figure}")
        if video is not None:
            films = " | ".join(f.title for f in recorder.films)  # type: ignore[union-attr]
            print(f"video ({films}, side by side): {video}")
    return 0
