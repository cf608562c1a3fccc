"""A simulated robot over the wire: one MuJoCo (or 2D navigation) simulation in this process,
driven only through the link protocol, so the whole real-robot path is exercised end to end.

The test-time protocol of the MAML paper (Finn et al. 2017, sec. 5.3): K episodes with the
initialization, one adaptation step on the controller's machine per K episodes, then episodes
with the adapted policy. Unlike ``adaptctl run`` (controller/simloop.py, the sim as a batch in
the controller's process), this robot knows nothing of torch or the artifact: it sees only the
WELCOME layout and the actions that come back. This is the sim side: it may import ``sim``;
the client module it uses may not.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from controller.link.client import LinkError, LinkFault, RobotClient
from controller.link.protocol import ErrorCode
from sim.episodes import most_episodes
from sim.families import Family, get_family
from sim.simulator import Simulator
from sim.tasks import BodySpace, Task, VelocityTask, task_to_dict

log = logging.getLogger(__name__)


class EpisodeStats(NamedTuple):
    """Outcome of one episode played over the link."""

    episode_return: float
    length: int
    velocity_error: float | None
    """Mean |v_x - v*| over the episode's steps (velocity tasks only, else None)."""
    policy_id: str
    """The policy that served the episode's last action."""
    recorded: bool
    """The server recorded the episode (usable for adaptation)."""
    safe_actions: int
    """Steps of the episode that got the safe action (link faults)."""
    batch_ready: bool = False
    """The server's episodes of this policy now make a whole adaptation batch."""
    late: int = 0
    """Steps whose action came later than one control period (paced runs only)."""
    monitor: dict[str, Any] | None = None
    """The server's monitor after the episode (EPISODE ``monitor``; None without --monitor)."""


class SimRobotResult(NamedTuple):
    """Everything one run of :func:`run_sim_robot` saw."""

    family: str
    task: dict[str, Any]
    before: list[EpisodeStats]
    """The episodes collected before each adaptation step (K per step), in order."""
    adapt_reports: list[dict[str, Any]]
    """The controller's report of each adaptation step."""
    after: list[EpisodeStats]
    """The episodes played with the adapted policy."""
    link: dict[str, Any]
    """The client's counters at the end (ClientStats as a dict)."""
    policy_note: str = ""
    """The WELCOME's word on which policy served this robot first, and why."""
    reconnects: tuple[dict[str, Any], ...] = ()
    """What each WELCOME after a reconnect said (policy_origin, adaptation_steps,
    episodes_ready): a restarted server's restored session, or a new one."""

    def summary(self) -> dict[str, Any]:
        """Mean return (and mean |v - v*|) of the first K episodes and of the adapted ones."""

        def mean(values: list[float | None]) -> float | None:
            kept = [v for v in values if v is not None]
            return float(np.mean(kept)) if kept else None

        episodes_per_step = len(self.before) // max(len(self.adapt_reports), 1)
        first = self.before[:episodes_per_step]
        return {
            "family": self.family,
            "task": self.task,
            "return_before": mean([e.episode_return for e in first]),
            "return_after": mean([e.episode_return for e in self.after]),
            "velocity_error_before": mean([e.velocity_error for e in first]),
            "velocity_error_after": mean([e.velocity_error for e in self.after]),
            "adaptations_accepted": sum(bool(r.get("accepted")) for r in self.adapt_reports),
            "safe_actions": self.link["safe_actions"],
            "policy_at_start": self.policy_note,
        }


def run_episode(
    client: RobotClient,
    simulator: Simulator,
    task: Task,
    rng: np.random.Generator,
    horizon: int,
    *,
    deterministic: bool = False,
    period_s: float | None = None,
) -> EpisodeStats:
    """Play one episode of ``task`` on a one-simulation ``simulator``: observation -> link ->
    action -> simulation step, until the horizon or a terminal state. ``period_s``: pace the
    loop at one step per period, as a robot's control loop runs, counting late actions."""
    observation = simulator.reset([task], rng)[0]
    safe_before = client.stats().safe_actions
    reward, total, errors, terminated, length, late = 0.0, 0.0, [], False, 0, 0
    tick = time.perf_counter()
    for _ in range(horizon):
        asked = time.perf_counter()
        action = client.act(observation, reward, deterministic=deterministic)
        if period_s is not None:
            late += time.perf_counter() - asked > period_s
            tick += period_s
            time.sleep(max(0.0, tick - time.perf_counter()))
        result = simulator.step(action[None, :])
        reward = float(sum(float(term[0]) for term in result.reward_terms.values()))
        total += reward
        length += 1
        if isinstance(task, VelocityTask):
            errors.append(abs(float(result.infos["x_velocity"][0]) - task.velocity))
        observation = result.observations[0]
        terminated = bool(result.terminated[0])
        if terminated:
            break
    receipt = client.episode_end(reward, terminated=terminated)
    return EpisodeStats(
        episode_return=total,
        length=length,
        velocity_error=float(np.mean(errors)) if errors else None,
        policy_id=client.policy_id,
        recorded=bool(receipt and receipt.get("recorded")),
        safe_actions=client.stats().safe_actions - safe_before,
        late=late,
        batch_ready=bool(receipt and receipt.get("batch_ready")),
        monitor=None if receipt is None else receipt.get("monitor"),
    )


def run_sim_robot(
    endpoint: str,
    family: str | Family,
    task: Task,
    episodes_per_step: int,
    *,
    adapted_episodes: int | None = None,
    adapt_steps: int = 1,
    horizon: int | None = None,
    deadline_ms: float = 50.0,
    server_public_key: bytes | None = None,
    client_keys: tuple[bytes, bytes] | None = None,
    seed: int = 0,
    deterministic_after: bool = False,
    rate_hz: float | None = None,
    duration_s: float | None = None,
    on_fault: Callable[[LinkFault], None] | None = None,
    on_episode: Callable[[str, EpisodeStats], None] | None = None,
) -> SimRobotResult:
    """K = ``episodes_per_step`` episodes, one adaptation, repeated ``adapt_steps`` times, then
    ``adapted_episodes`` (default K) episodes with the adapted policy; all over the link.

    ``horizon`` defaults to the server's (WELCOME ``horizon``, the artifact's); a longer one is
    refused, since the server records no episode longer. ``rate_hz`` paces the control loop.
    ``duration_s``: instead of ``adapt_steps``, repeat "K episodes, adapt" until that much
    time has passed (a soak), riding out server restarts. ``on_episode(phase, stats)`` is
    called after each episode with phase "before" or "after".
    """
    family = get_family(family) if isinstance(family, str) else family
    task = family.validate(task)
    run = _Run(np.random.default_rng(seed), None if rate_hz is None else 1.0 / rate_hz)
    clients: list[RobotClient] = []

    def fault(seen: LinkFault) -> None:
        if seen.kind == "reconnected" and clients:  # the new WELCOME is in place by now
            keys = ("policy_origin", "adaptation_steps", "episodes_ready")
            run.reconnects.append({k: clients[0].welcome.get(k) for k in keys})
        if on_fault is not None:
            on_fault(seen)

    with RobotClient(
        endpoint,
        deadline_ms,
        server_public_key,
        client_keys=client_keys,
        on_fault=fault,
        name=f"sim-robot:{family.name}",
    ) as client:
        clients.append(client)
        _check_layout(client, family)
        horizon = _horizon(client, family, horizon)
        log.info("server: %s", client.welcome.get("policy_note"))
        note = str(client.welcome.get("policy_note", ""))
        simulator = family.make_simulator(1, 1)
        counts_steps = client.welcome.get("batch_unit", "episodes") == "steps"
        end = None if duration_s is None else time.monotonic() + duration_s
        cycle = 0
        while cycle < adapt_steps if end is None else time.monotonic() < end:
            cycle += 1
            # K episodes; an artifact counting its batch in steps takes whole episodes until
            # the server holds K x horizon steps of them (WELCOME's batch_unit, at most 4K).
            most = most_episodes(episodes_per_step)
            for played in itertools.count(1):
                stats = run.episode(client, simulator, task, horizon, "before", on_episode)
                enough = not counts_steps or stats.batch_ready
                if (played >= episodes_per_step and enough) or played >= most:
                    break
            run.adapt(client, tolerant=end is not None)
        for _ in range(episodes_per_step if adapted_episodes is None else adapted_episodes):
            run.episode(
                client,
                simulator,
                task,
                horizon,
                "after",
                on_episode,
                deterministic=deterministic_after,
            )
        link = client.stats()._asdict()
    return SimRobotResult(
        family.name,
        task_to_dict(task),
        run.before,
        run.reports,
        run.after,
        link,
        note,
        tuple(run.reconnects),
    )


class DeploymentResult(NamedTuple):
    """What :func:`run_sim_robot_deployment` saw: one robot, damaged mid-deployment."""

    family: str
    healthy: dict[str, Any]
    body: dict[str, Any]
    damage_at: int
    episodes: list[EpisodeStats]
    """Every episode, in order: healthy until index ``damage_at``, damaged from there."""
    link: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """Mean return healthy, damaged (until the adapted policy served) and adapted; when the
        server's monitor noticed the drop and when its adapted policy served, in episodes
        after the damage."""
        damaged, before = self.episodes[self.damage_at :], _drops(self)
        noticed = next(
            (i for i, e in enumerate(damaged) if (e.monitor or {}).get("drops", 0) > before), None
        )
        adapted = None
        if noticed is not None:
            events = [(e.monitor or {}).get("last_event") or {} for e in damaged[noticed:]]
            policy = next((e["policy_id"] for e in events if e.get("kind") == "adapted"), None)
            adapted = next(
                (i for i, e in enumerate(damaged) if i > noticed and e.policy_id == policy), None
            )

        def mean(episodes: list[EpisodeStats]) -> float | None:
            return float(np.mean([e.episode_return for e in episodes])) if episodes else None

        return {
            "family": self.family,
            "body": self.body,
            "return_healthy": mean(self.episodes[: self.damage_at]),
            "return_damaged": mean(damaged if adapted is None else damaged[:adapted]),
            "return_adapted": None if adapted is None else mean(damaged[adapted:]),
            "drop_noticed_after": None if noticed is None else noticed + 1,
            "adapted_policy_from": None if adapted is None else adapted + 1,
            "false_alarms": _drops(self),
            "safe_actions": self.link["safe_actions"],
        }


def _drops(result: DeploymentResult) -> int:
    """Drops the server's monitor noticed before the damage (false alarms)."""
    healthy = result.episodes[: result.damage_at]
    return int((healthy[-1].monitor or {}).get("drops", 0)) if healthy else 0


def run_sim_robot_deployment(
    endpoint: str,
    family: str | Family,
    body: Task,
    damage_at: int,
    episodes: int,
    *,
    horizon: int | None = None,
    deadline_ms: float = 50.0,
    server_public_key: bytes | None = None,
    client_keys: tuple[bytes, bytes] | None = None,
    seed: int = 0,
    rate_hz: float | None = None,
    on_episode: Callable[[str, EpisodeStats], None] | None = None,
) -> DeploymentResult:
    """One robot of a damage family deployed episode after episode, healthy until episode
    ``damage_at`` and with ``body`` from there, never asking for an adaptation: the server
    (``adaptctl serve --monitor``) has to notice the drop and adapt by itself.
    ``on_episode(phase, stats)``: phase "healthy" or "damaged"."""
    family = get_family(family) if isinstance(family, str) else family
    space = family.task_space
    if not isinstance(space, BodySpace):
        raise ValueError(
            f"--damage-at needs a damage family's server; this one serves {family.name}"
        )
    body = family.validate(body)
    healthy = space.make()
    if not 0 < damage_at < episodes:
        raise ValueError(f"--damage-at must lie in [1, {episodes}), got {damage_at}")
    run = _Run(np.random.default_rng(seed), None if rate_hz is None else 1.0 / rate_hz)
    with RobotClient(
        endpoint,
        deadline_ms,
        server_public_key,
        client_keys=client_keys,
        name=f"sim-robot:{family.name}",
    ) as client:
        _check_layout(client, family)
        horizon = _horizon(client, family, horizon)
        simulator = family.make_simulator(1, 1)
        played: list[EpisodeStats] = []
        for index in range(episodes):
            phase = "healthy" if index < damage_at else "damaged"
            task = healthy if index < damage_at else body
            stats = run.episode(client, simulator, task, horizon, "after", None)
            if index == 0 and stats.monitor is None and stats.recorded:
                raise ValueError(
                    "the server runs no monitor: start it with 'adaptctl serve --monitor' so "
                    "that it notices the damage and adapts by itself"
                )
            played.append(stats)
            if on_episode is not None:
                on_episode(phase, stats)
        link = client.stats()._asdict()
    return DeploymentResult(
        family.name, task_to_dict(healthy), task_to_dict(body), damage_at, played, link
    )


class _Run:
    """The episodes, reports and reconnects of one sim-robot run."""

    def __init__(self, rng: np.random.Generator, period_s: float | None) -> None:
        self.rng, self.period_s = rng, period_s
        self.before: list[EpisodeStats] = []
        self.after: list[EpisodeStats] = []
        self.reports: list[dict[str, Any]] = []
        self.reconnects: list[dict[str, Any]] = []

    def episode(
        self,
        client: RobotClient,
        simulator: Simulator,
        task: Task,
        horizon: int,
        phase: str,
        on_episode: Callable[[str, EpisodeStats], None] | None,
        deterministic: bool = False,
    ) -> EpisodeStats:
        stats = run_episode(
            client,
            simulator,
            task,
            self.rng,
            horizon,
            deterministic=deterministic,
            period_s=self.period_s,
        )
        (self.before if phase == "before" else self.after).append(stats)
        if on_episode is not None:
            on_episode(phase, stats)
        return stats

    def adapt(self, client: RobotClient, tolerant: bool) -> None:
        """ADAPT; with ``tolerant``, a link failure (a server restarting) is a refused step."""
        try:
            report = adapt_when_free(client)
        except LinkError as error:
            if not tolerant:
                raise
            report = {"accepted": False, "reason": f"link: {error}"}
        log.info("adaptation: %s", report.get("reason"))
        self.reports.append(report)


def adapt_when_free(client: RobotClient, timeout_s: float = 60.0) -> dict[str, Any]:
    """ADAPT, retried while the server answers BUSY (a swap of every lane is running)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.adapt() or {}
        except LinkError as error:
            if error.code is not ErrorCode.BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _horizon(client: RobotClient, family: Family, wanted: int | None) -> int:
    served = client.horizon
    if wanted is None:
        return family.horizon if served is None else served
    if served is not None and wanted > served:
        raise ValueError(
            f"--horizon {wanted} exceeds the server's horizon {served} (the artifact's): the "
            "server records no longer episode"
        )
    return wanted


def _check_layout(client: RobotClient, family: Family) -> None:
    layout = client.layout
    if (layout.observation_size, layout.action_size) != (
        family.observation_size,
        family.action_size,
    ):
        raise ValueError(
            f"the server serves observations of {layout.observation_size} and actions of "
            f"{layout.action_size} values, but family {family.name} has "
            f"{family.observation_size} and {family.action_size}: start the sim robot with the "
            "family the artifact was trained on"
        )
