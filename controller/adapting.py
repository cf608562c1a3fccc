"""One adaptation step of a serving policy, computed off the serving path.

:func:`adapted_policy` runs THE adaptation step (``controller.adaptation.adapt``, the one
meta-training's inner loop differentiates through) on K recorded episodes, builds the serving
form of the result and checks it: finite parameters, a smoke test in onnxruntime, and the mean
KL from the policy before it within the bound. Nothing here publishes anything; the controller
decides from the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

from controller.adaptation import adapt as adaptation_step
from controller.adaptation import batch_from_arrays
from controller.artifact import ArtifactMetadata
from controller.journal import RecordedEpisode
from controller.policy import Params, PolicySpec, gaussian_kl
from controller.recording import pad_episodes
from controller.serving import ServingPolicy
from controller.threads import torch_threads

Build = Callable[[Params, int], ServingPolicy]
"""Serving form of parameters at an adaptation generation (``Installer.build`` for a spec)."""


class Candidate(NamedTuple):
    """An adapted policy, and whether it may serve."""

    policy: ServingPolicy | None
    """The adapted policy, None when it failed a check."""
    reason: str | None
    """Why it may not serve (None: it may)."""
    kl: float | None
    clock: list[float]
    """time.perf_counter() at the start and after each part (baseline, gradient, export,
    check): the first four of ``AdaptTimings``."""


class Threads:
    """Runs the adaptation math on a fixed number of threads (torch, BLAS, OpenMP).

    Multi-threaded torch and OpenBLAS slow this step many-fold on a loaded machine (their
    worker threads spin waiting for cores that other processes hold; bench/runtime_bench.py
    measures the step). The limit holds only while adapting.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pools = ThreadpoolController()  # the loaded BLAS/OpenMP libraries, once

    @contextmanager
    def limited(self) -> Iterator[None]:
        with torch_threads(self.threads), self._pools.limit(limits=self.threads):
            yield


def adapted_policy(
    spec: PolicySpec,
    metadata: ArtifactMetadata,
    serving: ServingPolicy,
    episodes: list[RecordedEpisode],
    step_size: float,
    max_kl: float,
    build: Build,
) -> Candidate:
    """One policy-gradient step of ``serving`` on ``episodes``, built and checked."""
    clock = [time.perf_counter()]
    padded = pad_episodes(episodes, metadata.adaptation.horizon)
    batch = batch_from_arrays(*padded, metadata.adaptation.settings)
    clock.append(time.perf_counter())
    params = adaptation_step(
        spec,
        serving.params,
        batch,
        step_size,
        parameters=metadata.adaptation.settings.adapted_parameters,
    )
    clock.append(time.perf_counter())
    new, reason = _built_checked(params, serving.generation + 1, build)
    clock.append(time.perf_counter())
    kl = None
    if new is not None:
        observations = padded[0][padded[3]]  # the valid steps, [N, O]
        kl, reason = kl_check(serving, new, observations, max_kl)
        if reason is not None:
            new = None
    clock.append(time.perf_counter())
    return Candidate(new, reason, kl, clock)


def _built_checked(
    params: Params, generation: int, build: Build
) -> tuple[ServingPolicy | None, str | None]:
    """The serving form of adapted parameters, or None and why it cannot serve."""
    bad = [name for name, value in params.items() if not torch.isfinite(value).all()]
    if bad:
        return None, f"the step made parameters non-finite: {', '.join(bad)}"
    try:
        return build(params, generation), None
    except (ValueError, RuntimeError) as error:  # onnxruntime raises RuntimeErrors
        return None, f"the adapted policy cannot serve: {error}"


def kl_check(
    before: ServingPolicy, after: ServingPolicy, observations: np.ndarray, bound: float
) -> tuple[float, str | None]:
    """Mean KL(before || after) over ``observations`` [N, O], and a reason if above ``bound``.

    The means come from onnxruntime with each policy's arrays (faster than torch eager on a
    batch of K episodes' observations), so the check also covers what will serve.
    """
    mean_before = torch.from_numpy(before.batch_mean(observations))
    mean_after = torch.from_numpy(after.batch_mean(observations))
    kl = float(
        gaussian_kl(
            mean_before.double(),
            before.params["log_std"].double(),
            mean_after.double(),
            after.params["log_std"].double(),
        ).mean()
    )
    if not np.isfinite(kl) or kl > bound:
        return kl, f"KL {kl:.4g} exceeds max_kl {bound:g}"
    return kl, None
