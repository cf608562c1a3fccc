"""The act path: one observation (or a batch) in, clipped commands out, at control rate.

Everything ``act`` reads about the policy comes from one :class:`Serving` value, which the
controller replaces by one assignment when an adaptation, reset or swap publishes a new policy:
an ``act`` call reads that reference once, so it never mixes the parameters of one policy with
the action bounds of another, and never waits for an update.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from controller.serving import ServingPolicy

SAMPLE, MEAN, SAFE = "sample", "mean", "safe"
"""How a command was made (``Controller.served``): an exploration sample, the mean, the safe
action. Only episodes of samples feed an adaptation (means too with adapt_on_mean_actions)."""


class Serving(NamedTuple):
    """What acting uses, published as one reference: the policy and its artifact's bounds."""

    policy: ServingPolicy
    low: np.ndarray
    high: np.ndarray
    safe: np.ndarray
    """The safe action (zeros clipped to the bounds)."""


Pending = tuple[np.ndarray, np.ndarray, str, str]
"""The last command of a stream: (command, sample behind it, policy id, SAMPLE/MEAN/SAFE)."""


class Actor:
    """Acting state of one serving thread: the noise generator and each stream's last command."""

    def __init__(self, seed: int | None, hold_on_non_finite: bool) -> None:
        self.rng = np.random.default_rng(seed)
        self.hold_on_non_finite = hold_on_non_finite
        """Safe action 'hold' (repeat the stream's last command) rather than 'zeros'."""
        self.pending: dict[int, Pending] = {}
        self.non_finite = 0
        """Observations (or overflowing samples) answered with the safe action."""

    def act(
        self, serving: Serving, observation: np.ndarray, deterministic: bool, stream: int
    ) -> np.ndarray:
        """The command for one observation [O] -> [A], or a batch [N, O] -> [N, A]."""
        policy = serving.policy
        observation = np.asarray(observation)
        if observation.ndim != 1:
            return self._act_batch(serving, observation, deterministic)
        if observation.shape != policy.input.shape[1:]:
            raise ValueError(
                f"act() needs an observation of {policy.input.shape[1]} values, "
                f"got shape {observation.shape}"
            )
        policy.input[0] = observation
        if not np.isfinite(policy.input).all():
            return self.safe(serving, stream)
        policy.session.run_with_iobinding(policy.binding)
        mean = policy.output[0]
        if deterministic:
            sample = mean.copy()
        else:
            sample = mean + policy.std * self.rng.standard_normal(mean.shape, dtype=np.float32)
        if not np.isfinite(sample).all():  # a finite but huge observation can overflow
            return self.safe(serving, stream)
        command = np.minimum(np.maximum(sample, serving.low), serving.high)
        self.pending[stream] = (
            command,
            sample,
            policy.policy_id,
            MEAN if deterministic else SAMPLE,
        )
        return command.copy()

    def _act_batch(
        self, serving: Serving, observations: np.ndarray, deterministic: bool
    ) -> np.ndarray:
        size = serving.policy.input.shape[1]
        if observations.ndim != 2 or observations.shape[1] != size:
            raise ValueError(
                f"act() needs [O] or [N, O] observations with O={size}, "
                f"got shape {observations.shape}"
            )
        observations = np.ascontiguousarray(observations, dtype=np.float32)
        finite = np.isfinite(observations).all(axis=1)
        if not finite.all():  # the rows get the safe action; zeros keep the others' run clean
            observations = np.where(finite[:, None], observations, np.float32(0.0))
        policy = serving.policy
        mean = policy.act_batch_mean(observations)
        if deterministic:
            samples = mean
        else:
            samples = mean + policy.std * self.rng.standard_normal(mean.shape, dtype=np.float32)
        finite &= np.isfinite(samples).all(axis=1)
        commands = np.minimum(np.maximum(samples, serving.low), serving.high)
        for row in np.flatnonzero(~finite).tolist():
            commands[row] = samples[row] = self.safe(serving, row)
        kind = MEAN if deterministic else SAMPLE
        for stream in range(commands.shape[0]):
            if finite[stream]:
                self.pending[stream] = (commands[stream], samples[stream], policy.policy_id, kind)
        return commands.copy()

    def safe(self, serving: Serving, stream: int) -> np.ndarray:
        """The safe action for ``stream`` (counted): its last command with 'hold', else zeros."""
        self.non_finite += 1
        pending = self.pending.get(stream)
        if self.hold_on_non_finite and pending is not None:
            command = pending[0].copy()
        else:
            command = serving.safe.copy()
        self.pending[stream] = (command, command, serving.policy.policy_id, SAFE)
        return command.copy()

    def served(self, stream: int) -> str:
        """How the last command of ``stream`` was made; ``""`` before the first."""
        pending = self.pending.get(stream)
        return "" if pending is None else pending[3]
