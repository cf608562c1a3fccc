"""Recording episodes in memory: the episode in progress of each stream, the finished ones.

The :class:`Recorder` keeps the episode in progress of each stream (a robot, or one of N parallel
simulations) and hands out finished episodes; an episode that cannot feed a policy gradient is
dropped at its end with its reason. :func:`pad_episodes` lays finished episodes out as the
adaptation step takes them. The journal (controller/journal.py) makes finished ones durable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from controller.journal import RecordedEpisode


class _Partial:
    """The episode in progress of one stream."""

    def __init__(self, policy_id: str) -> None:
        self.policy_id = policy_id
        self.observations: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []
        self.damaged: str | None = None
        """Why the episode cannot feed an adaptation (None: it can, so far)."""


class Recorder:
    """Episodes in progress per stream, and the finished ones waiting for an adaptation.

    ``record`` and ``end`` are called by the acting thread(s); ``take`` by the adapting thread.
    An episode is dropped at its end (counted in ``discarded``, its reason in ``drop_reasons``)
    when it mixes two policies, holds a step that was not an exploration sample of the serving
    policy (``mark``), a non-finite value as float32, or more than ``max_length`` steps.
    """

    def __init__(
        self,
        observation_size: int,
        action_size: int,
        next_episode_id: int = 0,
        max_length: int | None = None,
    ) -> None:
        self.observation_size = observation_size
        self.action_size = action_size
        self.max_length = max_length
        self.finished: list[RecordedEpisode] = []
        self.discarded = 0
        self.drop_reasons: dict[int, str] = {}
        """stream -> why its last episode was dropped (removed when one is kept)."""
        self._next_id = next_episode_id
        self._partial: dict[int, _Partial] = {}
        self._lock = threading.Lock()

    def record(
        self, stream: int, observation: np.ndarray, action: np.ndarray, reward: float, policy: str
    ) -> None:
        """Append one transition to the episode in progress of ``stream``."""
        observation = np.array(observation, dtype=np.float32).reshape(-1)
        action = np.array(action, dtype=np.float32).reshape(-1)
        if observation.size != self.observation_size or action.size != self.action_size:
            raise ValueError(
                f"record() needs an observation of {self.observation_size} values and an action "
                f"of {self.action_size}, got {observation.size} and {action.size}"
            )
        partial = self._partial.get(stream)
        if partial is None:
            partial = self._partial[stream] = _Partial(policy)
        # An episode whose transitions came from two policies (a swap mid-episode) is no use
        # to a policy gradient: it is dropped at its end, as is one with a non-finite value
        # (checked there, once per episode: this runs at control rate on the serving path).
        if policy != partial.policy_id and partial.damaged is None:
            partial.damaged = "the policy changed during the episode (adaptation, swap or reset)"
        partial.observations.append(observation)
        partial.actions.append(action)
        partial.rewards.append(float(reward))

    def mark(self, stream: int, policy: str, reason: str) -> None:
        """Mark the episode in progress of ``stream`` (begun now if none is) as unusable."""
        partial = self._partial.get(stream)
        if partial is None:
            partial = self._partial[stream] = _Partial(policy)
        if partial.damaged is None:
            partial.damaged = reason

    def end(self, stream: int, terminated: bool) -> RecordedEpisode | None:
        """Finish the episode of ``stream``; None when it was empty or damaged (dropped)."""
        partial = self._partial.pop(stream, None)
        if partial is None or not partial.rewards:
            self.drop_reasons[stream] = "no step of the episode was recorded"
            return None
        observations, actions = np.stack(partial.observations), np.stack(partial.actions)
        rewards = np.asarray(partial.rewards, dtype=np.float32)
        finite = all(np.isfinite(x).all() for x in (observations, actions, rewards))
        reason = partial.damaged
        if reason is None and not finite:
            reason = "a value is NaN or infinite as float32"
        if reason is None and self.max_length is not None and len(rewards) > self.max_length:
            reason = f"{len(rewards)} steps exceed the horizon {self.max_length}"
        if reason is not None:
            self.discarded += 1
            self.drop_reasons[stream] = reason
            return None
        self.drop_reasons.pop(stream, None)
        with self._lock:
            episode = RecordedEpisode(
                episode_id=self._next_id,
                stream=stream,
                policy_id=partial.policy_id,
                observations=observations,
                actions=actions,
                rewards=rewards,
                terminated=terminated,
            )
            self._next_id += 1
            self.finished.append(episode)
        return episode

    def restore(self, episodes: list[RecordedEpisode]) -> None:
        with self._lock:
            self.finished.extend(episodes)

    def available(self, policy_id: str) -> int:
        with self._lock:
            return sum(e.policy_id == policy_id for e in self.finished)

    def take(self, policy_id: str, count: int) -> list[RecordedEpisode] | None:
        """Remove and return the ``count`` oldest episodes of ``policy_id``; None if fewer."""
        return self.take_batch(policy_id, lambda lengths: count if len(lengths) >= count else None)

    def lengths(self, policy_id: str) -> list[int]:
        """The step counts of ``policy_id``'s finished episodes, oldest first."""
        with self._lock:
            return [e.length for e in self.finished if e.policy_id == policy_id]

    def take_batch(
        self, policy_id: str, size: Callable[[list[int]], int | None]
    ) -> list[RecordedEpisode] | None:
        """Remove and return the oldest episodes of ``policy_id`` that make one batch:
        ``size(lengths)`` says how many (lengths oldest first; None: not enough, nothing taken)."""
        with self._lock:
            mine = [e for e in self.finished if e.policy_id == policy_id]
            count = size([e.length for e in mine])
            if count is None:
                return None
            mine = mine[:count]
            taken = {e.episode_id for e in mine}
            self.finished = [e for e in self.finished if e.episode_id not in taken]
            return mine

    def keep_only(self, policy_id: str) -> int:
        """Forget finished episodes of other policies (stale after a policy change)."""
        with self._lock:
            before = len(self.finished)
            self.finished = [e for e in self.finished if e.policy_id == policy_id]
            return before - len(self.finished)

    @property
    def in_progress(self) -> dict[int, int]:
        """stream -> steps recorded so far in its episode in progress."""
        streams = list(self._partial.items())  # one C-level copy: the acting thread may insert
        return {stream: len(partial.rewards) for stream, partial in streams}


def pad_episodes(
    episodes: list[RecordedEpisode], horizon: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Episodes of different lengths as arrays padded to H = max(horizon, longest episode).

    Returns observations [E, H, O], actions [E, H, A], rewards [E, H] (float32, zero padding)
    and valid [E, H] bool, the layout of one task of ``sim.episodes.Episodes``.
    """
    length = max(horizon, *(e.length for e in episodes))
    count = len(episodes)
    observations = np.zeros((count, length, episodes[0].observations.shape[1]), np.float32)
    actions = np.zeros((count, length, episodes[0].actions.shape[1]), np.float32)
    rewards = np.zeros((count, length), np.float32)
    valid = np.zeros((count, length), bool)
    for i, episode in enumerate(episodes):
        observations[i, : episode.length] = episode.observations
        actions[i, : episode.length] = episode.actions
        rewards[i, : episode.length] = episode.rewards
        valid[i, : episode.length] = True
    return observations, actions, rewards, valid
