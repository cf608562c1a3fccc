"""Noticing that the robot changed, and re-adapting: a monitor on the episode returns.

A deployed policy's episode returns scatter around a level that stays put while the robot and its
task do. A damaged motor, a payload or a slippery floor moves that level down. The
:class:`ReturnMonitor` keeps the last ``window`` returns as its reference and flags an episode
whose return falls more than ``threshold_sd`` standard deviations (and at least ``min_drop``)
below their centre; ``consecutive`` flagged episodes in a row are a drop (one bad episode is
noise). Centre and spread are the median and 1.4826 x the median absolute deviation, the
Hampel identifier (Hampel 1974, "The influence curve and its role in robust estimation";
Pearson 2002, "Outliers in process modeling and identification", IEEE TCST 10(1)): robust, so
that the few post-drop episodes that pass the limit and enter the window do not inflate the
spread and absorb the drop, as a mean and standard deviation would. A one-sided control chart
with a run rule (Montgomery, "Introduction to Statistical Quality Control", ch. 6).

:class:`Recovery` is what the :class:`~controller.runtime.Controller` does with a drop: serve
the initialization again (the adapted policy belonged to the old body), forget the episodes
recorded before the drop, collect K fresh episodes of the new body and take the adaptation step
from the initialization, the step the initialization was meta-trained for; then the monitor
starts over with the adapted policy's returns as its reference.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from controller.journal import RecordedEpisode
    from controller.runtime import Controller


class MonitorSettings(BaseModel):
    """When a drop in the episode returns counts as a change of the robot, and what follows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: int = Field(
        default=20,
        ge=2,
        description="Episodes whose returns form the reference (their median and robust "
        "standard deviation, 1.4826 x MAD); the monitor watches once it has this many.",
    )
    threshold_sd: float = Field(
        default=2.5,
        gt=0.0,
        description="An episode is low when its return is more than this many reference "
        "standard deviations below the reference median.",
    )
    min_drop: float = Field(
        default=0.0,
        ge=0.0,
        description="... and at least this far below the median, in return units (guards a "
        "reference of near-identical returns from flagging a tiny dip).",
    )
    consecutive: int = Field(
        default=3,
        ge=1,
        description="Low episodes in a row that make a drop; a normal episode in between "
        "starts the count again.",
    )
    adapt: bool = Field(
        default=True,
        description="On a drop: serve the initialization, collect K fresh episodes and adapt "
        "from it. False: only report the drop (status()['monitor']).",
    )


class ReturnMonitor:
    """The drop rule of :class:`MonitorSettings` on a stream of episode returns."""

    def __init__(self, settings: MonitorSettings) -> None:
        self.settings = settings
        self._reference: deque[float] = deque(maxlen=settings.window)
        self._low: list[int] = []

    @property
    def ready(self) -> bool:
        """The reference is full: the monitor is watching."""
        return len(self._reference) == self.settings.window

    def limit(self) -> float | None:
        """The return below which an episode is low (None while the reference fills)."""
        if not self.ready:
            return None
        reference = np.asarray(self._reference)
        centre = float(np.median(reference))
        # 1.4826 x MAD estimates the standard deviation of normal returns (Hampel 1974)
        sd = 1.4826 * float(np.median(np.abs(reference - centre)))
        return centre - max(self.settings.threshold_sd * sd, self.settings.min_drop)

    def observe(self, episode_return: float, episode_id: int = -1) -> list[int] | None:
        """Take one finished episode's return; the ids of the low episodes on a drop, else None.

        Low episodes stay out of the reference, so a drop cannot drag the reference down.
        """
        limit = self.limit()
        if limit is not None and episode_return < limit:
            self._low.append(episode_id)
            if len(self._low) >= self.settings.consecutive:
                low, self._low = self._low, []
                return low
            return None
        self._low = []
        self._reference.append(float(episode_return))
        return None

    def restart(self) -> None:
        """Forget the reference: the next ``window`` episodes form a new one."""
        self._reference.clear()
        self._low = []

    def status(self) -> dict[str, Any]:
        limit = self.limit()
        mean = float(np.mean(self._reference)) if self._reference else None
        return {
            "reference_episodes": len(self._reference),
            "reference_mean": mean,
            "low_limit": limit,
            "low_in_a_row": len(self._low),
        }


State = Literal["watching", "collecting"]


class Recovery:
    """The controller's reaction to a drop (module doc); called after every finished episode."""

    def __init__(self, settings: MonitorSettings) -> None:
        self.settings = settings
        self.monitor = ReturnMonitor(settings)
        self.state: State = "watching"
        self.events: list[dict[str, Any]] = []
        """What happened, in order: {"kind": "drop" | "adapted" | "rejected", "episode": id,
        "time": time.monotonic(), ...}."""

    def episode_finished(self, controller: Controller, episode: RecordedEpisode) -> None:
        if self.state == "collecting":
            self._maybe_adapt(controller, episode)
            return
        low = self.monitor.observe(episode.episode_return(), episode.episode_id)
        if low is None:
            return
        self.events.append(
            {"kind": "drop", "episode": episode.episode_id, "low": low, "time": time.monotonic()}
        )
        if not self.settings.adapt:
            self.monitor.restart()
            return
        if controller.status()["adaptation_steps"] > 0:
            controller.reset()  # the adapted policy's episodes go with it
        else:  # the low episodes are the new body's, on the initialization: keep them
            controller.discard_episodes(before_id=min(low))
        self.state = "collecting"
        self._maybe_adapt(controller, episode)

    def _maybe_adapt(self, controller: Controller, episode: RecordedEpisode) -> None:
        status = controller.status()
        if not status["batch_ready"]:
            return
        report = controller.adapt()
        self.events.append(
            {
                "kind": "adapted" if report.accepted else "rejected",
                "episode": episode.episode_id,
                "reason": report.reason,
                "policy_id": report.policy_id,
                "time": time.monotonic(),
            }
        )
        self.state = "watching"
        self.monitor.restart()

    def status(self) -> dict[str, Any]:
        drops = sum(e["kind"] == "drop" for e in self.events)
        return {"state": self.state, "drops": drops, **self.monitor.status()}
