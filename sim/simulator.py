"""What a batch of simulations of one task family looks like to a sampler or a controller."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol

import numpy as np

from sim.tasks import Task


class StepResult(NamedTuple):
    """The outcome of one control step of N simulations (N = ``Simulator.num_sims``)."""

    observations: np.ndarray
    """[N, O] float32: observations after the step."""
    reward_terms: Mapping[str, np.ndarray]
    """name -> [N] float64: the named reward terms of the step; their sum is the reward."""
    terminated: np.ndarray
    """[N] bool: the step ended the episode (e.g. the Ant's torso left its healthy height)."""
    infos: Mapping[str, np.ndarray]
    """name -> [N] float64: diagnostics such as ``x_velocity``."""


class Simulator(Protocol):
    """N simulations of one family, each with its own task, stepped in lock-step."""

    @property
    def num_sims(self) -> int: ...

    def reset(self, tasks: Sequence[Task], rng: np.random.Generator) -> np.ndarray:
        """Start a new episode in every simulation; ``tasks`` has one task per simulation.

        Returns the first observations, [N, O] float32.
        """
        ...

    def step(self, actions: np.ndarray, active: np.ndarray | None = None) -> StepResult:
        """Apply ``actions`` [N, A] (clipped to the actuator range here) for one control step.

        ``active`` [N] bool selects the simulations to advance (None: all); the others keep
        their state and their entries of the result are meaningless.
        """
        ...
