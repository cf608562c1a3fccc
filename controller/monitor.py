"""Noticing that the robot changed, and re-adapting: a monitor on the episode returns.

A deployed policy's episode returns scatter around a level that stays put while the robot and its
task do. A damaged motor, a payload or a slippery floor moves that level down, often by no more
than the returns' own scatter from one episode to the next. One low episode says little; a run
of them says a lot. The :class:`ReturnMonitor` therefore accumulates the evidence, with a
one-sided CUSUM (Page 1954, "Continuous inspection schemes", Biometrika 41; Montgomery,
"Introduction to Statistical Quality Control", ch. 9):

    z_t = clip((x_t - centre) / sd, -clip_sd, clip_sd)
    S_t = max(0, S_{t-1} - z_t - slack_sd),   a drop when S_t > decision_sd.

Centre and sd are the mean and standard deviation of the reference, the first ``window`` returns
after a start, an adaptation or a drop. The reference then stays fixed while the monitor watches
(a control chart's phase I and II), so a drop in progress never drags it down to meet the drop;
a reference that admitted only the episodes that looked normal would creep upwards and raise
false alarms. Mean and standard deviation, not median and MAD: a trained locomotion policy's
returns are a mixture, most episodes running and some stumbling, and a robust scale takes the
stumbles for outliers, understates the spread and calls the next stumbles a drop. The clip
bounds what one episode can add (``clip_sd - slack_sd``), so with the defaults no single
episode, however bad, is a drop. The episodes since S last stood at zero are the drop's: CUSUM's
own estimate of when the change happened. ``python -m bench monitor`` measures false alarms and
the episodes to notice a damage on a trained policy's returns (docs/benchmarks.md).

:class:`Recovery` is what the :class:`~controller.runtime.Controller` does with a drop: serve
the initialization again (the adapted policy belonged to the old body), forget the episodes
recorded before the drop, collect K fresh episodes of the new body and take the adaptation step
from the initialization, the step the initialization was meta-trained for; then the monitor
starts over with the adapted policy's returns as its reference. One step does not always help:
once the reference is full, its mean is compared with the K returns the step was taken on, and
when it is lower by more than ``revert_z`` standard errors the initialization serves again
(``revert_z``; a "reverted" event).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from controller.journal import RecordedEpisode
    from controller.runtime import AdaptReport, Controller


class MonitorSettings(BaseModel):
    """When a drop in the episode returns counts as a change of the robot, and what follows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: int = Field(
        default=20,
        ge=2,
        description="Episodes whose returns form the reference (their mean and standard "
        "deviation), the first after a start, an adaptation or a drop; the monitor watches "
        "once it has this many.",
    )
    slack_sd: float = Field(
        default=0.25,
        ge=0.0,
        description="CUSUM slack k: an episode adds evidence of a drop only by how far it lies "
        "more than this many reference standard deviations below the reference mean (half "
        "the smallest drop worth noticing).",
    )
    decision_sd: float = Field(
        default=8.0,
        gt=0.0,
        description="CUSUM decision interval h: a drop when the accumulated evidence exceeds "
        "this many reference standard deviations. Higher: fewer false alarms, later notice.",
    )
    clip_sd: float = Field(
        default=4.0,
        gt=0.0,
        description="An episode's standardized return is clipped to this many standard "
        "deviations, bounding what one episode adds (clip_sd - slack_sd).",
    )
    min_sd: float = Field(
        default=0.0,
        ge=0.0,
        description="Floor on the reference standard deviation, in return units (guards a "
        "reference of near-identical returns from calling a tiny dip a drop).",
    )
    adapt: bool = Field(
        default=True,
        description="On a drop: serve the initialization, collect K fresh episodes and adapt "
        "from it. False: only report the drop (status()['monitor']).",
    )
    revert_z: float | None = Field(
        default=2.0,
        gt=0.0,
        description="After a recovery's adaptation: once the adapted policy has run a full "
        "reference, serve the initialization again if the reference mean is below the mean of "
        "the K returns the step was taken on by more than this many standard errors of the "
        "difference. None: keep the adapted policy whatever it earns.",
    )

    @model_validator(mode="after")
    def _check_clip(self) -> MonitorSettings:
        if self.clip_sd <= self.slack_sd:
            raise ValueError(
                f"clip_sd ({self.clip_sd}) must exceed slack_sd ({self.slack_sd}), or no "
                "episode adds evidence"
            )
        return self


class ReturnMonitor:
    """The drop rule of :class:`MonitorSettings` (module doc) on a stream of episode returns."""

    def __init__(self, settings: MonitorSettings) -> None:
        self.settings = settings
        self._reference: list[float] = []
        self._fit: tuple[float, float] | None = None
        self._evidence = 0.0
        self._pending: list[tuple[int, float]] = []
        """(id, return) of the episodes since the evidence last stood at zero."""

    @property
    def ready(self) -> bool:
        """The reference is full: the monitor is watching."""
        return len(self._reference) == self.settings.window

    @property
    def reference(self) -> list[float]:
        return list(self._reference)

    def _centre_sd(self) -> tuple[float, float] | None:
        if self._fit is not None or not self.ready:
            return self._fit
        reference = np.asarray(self._reference, dtype=np.float64)
        centre, sd = float(reference.mean()), float(reference.std(ddof=1))
        floor = max(self.settings.min_sd, 1e-9 * max(1.0, abs(centre)))
        self._fit = centre, max(sd, floor)
        return self._fit

    def limit(self) -> float | None:
        """The return below which an episode adds evidence of a drop (None while the
        reference fills)."""
        fit = self._centre_sd()
        return None if fit is None else fit[0] - self.settings.slack_sd * fit[1]

    def observe(self, episode_return: float, episode_id: int = -1) -> list[int] | None:
        """Take one finished episode's return; the ids of the drop's episodes on a drop (those
        since the evidence last stood at zero), else None."""
        fit = self._centre_sd()
        if fit is None:
            self._reference.append(float(episode_return))
            return None
        centre, sd = fit
        clip = self.settings.clip_sd
        z = min(max((float(episode_return) - centre) / sd, -clip), clip)
        self._evidence = max(0.0, self._evidence - z - self.settings.slack_sd)
        self._pending.append((episode_id, float(episode_return)))
        if self._evidence > self.settings.decision_sd:
            low = [i for i, _ in self._pending]
            self._evidence, self._pending = 0.0, []
            return low
        if self._evidence == 0.0:  # back to normal: these episodes were noise
            self._pending = []
        return None

    def restart(self) -> None:
        """Forget the reference: the next ``window`` episodes form a new one."""
        self._reference, self._fit = [], None
        self._evidence, self._pending = 0.0, []

    def status(self) -> dict[str, Any]:
        limit = self.limit()
        mean = float(np.mean(self._reference)) if self._reference else None
        return {
            "reference_episodes": len(self._reference),
            "reference_mean": mean,
            "low_limit": limit,
            "evidence_sd": self._evidence,
            "episodes_in_evidence": len(self._pending),
        }


def worse_by(later: Sequence[float], earlier: Sequence[float]) -> float:
    """How many standard errors of the difference mean(later) lies below mean(earlier)
    (Welch's statistic; positive: later is lower). Needs two returns on each side."""
    a, b = np.asarray(later, dtype=np.float64), np.asarray(earlier, dtype=np.float64)
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    gap = float(b.mean() - a.mean())
    if se == 0.0:
        return math.inf if gap > 0 else 0.0
    return gap / se


State = Literal["watching", "collecting"]


class Recovery:
    """The controller's reaction to a drop (module doc); called after every finished episode.

    The monitor watches the policy that serves: an episode of a policy that no longer serves
    (it ended after a change) is not watched, and the first episode of a policy the monitor
    did not install (an adaptation, reset or swap made outside it) starts it over, with that
    policy's returns as the reference. With ``inline`` (the default) a recovery's adaptation runs inside
    :meth:`episode_finished`; without, it is left ``due`` for the caller, who runs
    ``controller.adapt()`` off its acting path and hands the report to :meth:`adapted`
    (the link server's worker thread does).
    """

    def __init__(self, settings: MonitorSettings, inline: bool = True) -> None:
        self.settings = settings
        self.inline = inline
        self.monitor = ReturnMonitor(settings)
        self.state: State = "watching"
        self.events: list[dict[str, Any]] = []
        """What happened, in order: {"kind": "drop" | "adapted" | "rejected" | "reverted",
        "episode": id, "time": time.monotonic(), ...}."""
        self.due: int | None = None
        """Not inline: the episode whose end made a recovery's adaptation due, until
        :meth:`adapted` (or a change of policy) clears it."""
        self._step_returns: tuple[float, ...] | None = None
        """The returns the last recovery step was taken on, until its policy is judged."""
        self._policy: str | None = None
        """The policy whose returns the monitor watches."""

    def episode_finished(self, controller: Controller, episode: RecordedEpisode) -> None:
        if episode.policy_id != controller.policy_id:
            return  # played by a policy that no longer serves (it ended after a change)
        if episode.policy_id != self._policy:
            self._watch(episode.policy_id)  # changed outside the monitor: start over
        if self.state == "collecting":
            self._maybe_adapt(controller, episode)
            return
        low = self.monitor.observe(episode.episode_return(), episode.episode_id)
        if low is None:
            if self._step_returns is not None and self.monitor.ready:
                self._judge_step(controller, episode)
            return
        self._step_returns = None
        self.events.append(
            {"kind": "drop", "episode": episode.episode_id, "low": low, "time": time.monotonic()}
        )
        if not self.settings.adapt:
            self.monitor.restart()
            return
        if controller.status()["adaptation_steps"] > 0:
            controller.reset()  # the adapted policy's episodes go with it
            self._policy = controller.status()["policy_id"]
        else:  # the low episodes are the new body's, on the initialization: keep them
            controller.discard_episodes(before_id=min(low))
        self.state = "collecting"
        self._maybe_adapt(controller, episode)

    def _watch(self, policy_id: str) -> None:
        self._policy, self.state, self.due, self._step_returns = policy_id, "watching", None, None
        self.monitor.restart()

    def _maybe_adapt(self, controller: Controller, episode: RecordedEpisode) -> None:
        if self.due is not None or not controller.status()["batch_ready"]:
            return
        if not self.inline:
            self.due = episode.episode_id
            return
        self.adapted(controller, controller.adapt(), episode.episode_id)

    def adapted(self, controller: Controller, report: AdaptReport, episode_id: int) -> None:
        """The recovery's adaptation ended with ``report`` (due at episode ``episode_id``)."""
        self.events.append(
            {
                "kind": "adapted" if report.accepted else "rejected",
                "episode": episode_id,
                "reason": report.reason,
                "policy_id": report.policy_id,
                "time": time.monotonic(),
            }
        )
        self._watch(controller.status()["policy_id"])
        if (
            report.accepted
            and self.settings.revert_z is not None
            and len(report.episode_returns) >= 2
        ):
            self._step_returns = report.episode_returns

    def adaptation_failed(self, controller: Controller, reason: str, episode_id: int) -> None:
        """The recovery's adaptation raised instead of reporting (not inline): the policy
        that served goes on serving and the monitor starts over with it."""
        event = {"kind": "rejected", "episode": episode_id, "reason": reason}
        self.events.append({**event, "policy_id": None, "time": time.monotonic()})
        self._watch(controller.status()["policy_id"])

    def _judge_step(self, controller: Controller, episode: RecordedEpisode) -> None:
        """The adapted policy's first reference against the returns its step was taken on."""
        assert self._step_returns is not None and self.settings.revert_z is not None
        before, self._step_returns = self._step_returns, None
        after = self.monitor.reference
        z = worse_by(after, before)
        if z <= self.settings.revert_z:
            return
        controller.reset()
        self._policy = controller.status()["policy_id"]
        self.events.append(
            {
                "kind": "reverted",
                "episode": episode.episode_id,
                "reason": f"the adapted policy's {len(after)} returns averaged "
                f"{np.mean(after):.4g}, {z:.1f} standard errors below the {len(before)} "
                f"the step was taken on ({np.mean(before):.4g}): the initialization serves",
                "time": time.monotonic(),
            }
        )
        self.monitor.restart()

    def status(self) -> dict[str, Any]:
        drops = sum(e["kind"] == "drop" for e in self.events)
        last = None
        if self.events:
            last = {k: v for k, v in self.events[-1].items() if k != "time"}
        return {
            "state": self.state,
            "adaptation_due": self.due is not None,
            "drops": drops,
            "last_event": last,
            **self.monitor.status(),
        }
