"""The embeddable online-adaptation controller: act, record, adapt, swap.

One :class:`Controller` serves one artifact. Acting runs the policy's ONNX graph in an
onnxruntime session (one intra-op thread, built once per architecture and shared: the
parameters are bound to it as inputs) and adds the Gaussian exploration noise; the K episodes
it records feed THE adaptation step that meta-training uses
(``controller.adaptation.adapt``: one implementation, two callers). A new policy (adapted, reset or swapped) is
built completely off the serving path and published by assigning one reference, so acting never
waits for, nor sees half of, an update.

Threads: ``act``/``record``/``end_episode`` belong to one serving thread; ``adapt``, ``swap``,
``reset`` and ``status`` may run in any other thread (updates are serialised among themselves).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

from controller.adaptation import adapt as adaptation_step
from controller.adaptation import batch_from_arrays
from controller.artifact import (
    Artifact,
    check_compatible,
    load_artifact,
)
from controller.config import ControllerConfig
from controller.journal import (
    Journal,
    RecordedEpisode,
    adaptation_record,
    default_journal_dir,
    episode_record,
    replay,
)
from controller.monitor import Recovery
from controller.policy import Params, PolicySpec, gaussian_kl
from controller.recording import Recorder, pad_episodes
from controller.serving import ServingPolicy, ServingSession, architecture
from controller.threads import torch_threads
from controller.verifier import Verified, Verifier

log = logging.getLogger(__name__)

SAMPLE, MEAN, SAFE = "sample", "mean", "safe"
"""How a command was made (``Controller.served``): an exploration sample, the mean, the safe
action. Only episodes of samples feed an adaptation (means too with adapt_on_mean_actions)."""

SessionCache = dict[tuple[Any, ...], ServingSession]
"""onnxruntime sessions by architecture (``serving.architecture``), shareable between
controllers of one process (``Controller(..., sessions=cache)``)."""


class AdaptTimings(NamedTuple):
    """Wall time of the parts of one adaptation, in seconds."""

    baseline_s: float
    """Padding the episodes, returns, baseline fit and advantages."""
    gradient_s: float
    """The policy-gradient step (``controller.adaptation.adapt``)."""
    export_s: float
    """Finite parameters, and the new policy bound to the shared session and smoke-tested."""
    check_s: float
    """The KL bound, from both policies' onnxruntime means on the episodes' observations."""
    swap_s: float
    """Publishing the new policy to the serving path."""
    journal_s: float
    """Appending the adaptation to the journal (after it serves)."""

    @property
    def to_serving_s(self) -> float:
        """From the episodes in hand to the adapted policy serving."""
        return self.baseline_s + self.gradient_s + self.check_s + self.export_s + self.swap_s


@dataclass(frozen=True)
class AdaptReport:
    """What one call of :meth:`Controller.adapt` did."""

    accepted: bool
    reason: str
    """Why it was accepted or rejected, in words."""
    step: int
    """Index of this gradient step from the initialization (0 = first)."""
    step_size: float
    episode_returns: tuple[float, ...]
    """Undiscounted returns of the K episodes used (empty when none were)."""
    kl: float | None
    """Mean KL(pre-adaptation || adapted) over the episodes' observations (None: not computed)."""
    timings: AdaptTimings | None
    policy_id: str
    """The policy serving after this call."""


class _Installed(NamedTuple):
    """An artifact ready to be the initialization: its serving policy and clip bounds."""

    artifact: Artifact
    initial: ServingPolicy
    low: np.ndarray
    high: np.ndarray
    safe: np.ndarray
    """The safe action (zeros clipped to the bounds)."""


INSTALLED_KEPT = 4
"""Installed artifacts kept by a controller, so that swapping back to one binds nothing."""


@dataclass(frozen=True)
class SwapReport:
    """What one call of :meth:`Controller.swap` did."""

    accepted: bool
    reason: str
    previous_digest: str
    digest: str
    """Digest of the artifact serving after this call."""
    seconds: float


class Controller:
    """Serves an artifact's policy, records episodes and adapts it online (see module doc)."""

    def __init__(
        self,
        artifact: Artifact,
        config: ControllerConfig | None = None,
        *,
        sessions: SessionCache | None = None,
    ) -> None:
        self.config = config or ControllerConfig()
        self._update_lock = threading.RLock()
        self._rng = np.random.default_rng(self.config.seed)
        # stream -> (command, sample behind it, policy id, how it was served: SAMPLE/MEAN/SAFE)
        self._pending: dict[int, tuple[np.ndarray, np.ndarray, str, str]] = {}
        self._counters = {"non_finite_observations": 0, "adaptations_accepted": 0}
        self._counters.update({"adaptations_rejected": 0, "swaps": 0, "swaps_refused": 0})
        self._counters["episodes_recovered"] = 0
        self._threadpools = ThreadpoolController()  # the loaded BLAS/OpenMP libraries, once
        self._sessions: SessionCache = {} if sessions is None else sessions
        self._installed: dict[str, _Installed] = {}
        self._verifier = Verifier()
        self._install(artifact)
        self._serving = self._initial
        self.recovery = None if self.config.monitor is None else Recovery(self.config.monitor)
        """Notices a change of the robot in the returns and re-adapts (config.monitor)."""
        self._journal: Journal | None = None
        self._recorder = self._new_recorder(0)
        self.restored = ""
        """What the journal restored on load, in words ("" when nothing was)."""
        if self.config.journal:
            directory = self.config.journal_dir or default_journal_dir(
                artifact.metadata.family, artifact.digest
            )
            self._recover(Journal(directory, self.config.journal_fsync))

    @classmethod
    def load(cls, path: str | Path, config: ControllerConfig | None = None) -> Controller:
        """Load and verify the artifact in ``path``; recover the journal if one is configured."""
        return cls(load_artifact(path), config)

    def _install(self, artifact: Artifact) -> None:
        """Make ``artifact`` the initialization (not yet serving); raises if it is unusable."""
        low, high = self.config.action_bounds(artifact.metadata)
        # The artifact's policy.onnx is not run: load_artifact verified it is policy_to_onnx of
        # these params, and the shared serving graph has the same operators.
        initial = ServingPolicy(self._session(artifact.spec), artifact.params, 0)
        safe_zeros = np.clip(np.zeros_like(low), low, high)
        self._use(_Installed(artifact, initial, low, high, safe_zeros))

    def _use(self, installed: _Installed) -> None:
        """Make an installed artifact the initialization; kept for swapping back to it."""
        self._artifact, self._initial = installed.artifact, installed.initial
        self._low, self._high, self._safe_zeros = installed.low, installed.high, installed.safe
        self._installed.pop(installed.artifact.digest, None)
        self._installed[installed.artifact.digest] = installed
        while len(self._installed) > INSTALLED_KEPT:
            del self._installed[next(iter(self._installed))]

    def _new_recorder(self, next_episode_id: int) -> Recorder:
        horizon = self._artifact.metadata.adaptation.horizon
        spec = self._artifact.spec
        return Recorder(spec.observation_size, spec.action_size, next_episode_id, horizon)

    def _recover(self, journal: Journal) -> None:
        recovered = replay(journal.records, self._initial.policy_id, self.config.resume)
        if recovered.adapted_params is not None:
            params = {k: torch.from_numpy(v) for k, v in recovered.adapted_params.items()}
            self._serving = self._build(params, recovered.adaptations)
        self._recorder = self._new_recorder(recovered.next_episode_id)
        self._recorder.restore(recovered.episodes)
        self._recorder.keep_only(self._serving.policy_id)
        ready = self._recorder.available(self._serving.policy_id)
        self._counters["episodes_recovered"] = ready
        self._journal = journal
        if ready or self._serving.generation:
            self.restored = (
                f"restored from the journal {journal.path}: the policy adapted "
                f"{self._serving.generation} step(s) from the initialization and {ready} "
                "recorded episode(s) of it"
            )
            log.info("%s", self.restored)

    def _session(self, spec: PolicySpec) -> ServingSession:
        """The shared session of ``spec``'s architecture, built on first use only.

        Kept for every architecture seen (a handful at most), so swapping back and forth
        between two builds no session after the first of each.
        """
        key = architecture(spec)
        shared = self._sessions.get(key)
        if shared is None:
            shared = ServingSession(spec, self.config.intra_op_threads)
            self._sessions[key] = shared
        return shared

    def _build(self, params: Params, generation: int) -> ServingPolicy:
        """Serving form of ``params`` for the current spec: arrays bound to the shared session."""
        return ServingPolicy(self._session(self.spec), params, generation)

    @property
    def spec(self) -> PolicySpec:
        return self._artifact.spec

    @property
    def artifact(self) -> Artifact:
        return self._artifact

    @property
    def policy_id(self) -> str:
        """Id of the policy serving now."""
        return self._serving.policy_id

    @property
    def generation(self) -> int:
        """Accepted adaptation steps from the initialization of the policy serving now."""
        return self._serving.generation

    @property
    def params(self) -> Params:
        """The parameters serving now (do not modify them in place)."""
        return self._serving.params

    @property
    def episodes_per_step(self) -> int:
        """K, the finished on-policy episodes one adaptation step needs."""
        return self.config.resolved_episodes_per_step(self._artifact.metadata)

    # -- acting ----------------------------------------------------------------------------

    def act(
        self, observation: np.ndarray, deterministic: bool = False, stream: int = 0
    ) -> np.ndarray:
        """The command for one observation [O] -> [A], or a batch [N, O] -> [N, A] (streams 0..N-1).

        Float32, clipped to the actuator range. Exploring (the default) adds
        ``exp(log_std) * z``, z ~ N(0, I); ``deterministic`` gives the mean. A non-finite
        observation gets the safe action and is counted: never a NaN command.
        """
        serving = self._serving  # one read: the whole call uses one policy, even across a swap
        observation = np.asarray(observation)
        if observation.ndim != 1:
            return self._act_batch(serving, observation, deterministic)
        if observation.shape != serving.input.shape[1:]:
            raise ValueError(
                f"act() needs an observation of {serving.input.shape[1]} values "
                f"({self._artifact.metadata.family}), got shape {observation.shape}"
            )
        serving.input[0] = observation
        if not np.isfinite(serving.input).all():
            return self._safe(stream, serving.policy_id)
        serving.session.run_with_iobinding(serving.binding)
        mean = serving.output[0]
        if deterministic:
            sample = mean.copy()
        else:
            sample = mean + serving.std * self._rng.standard_normal(mean.shape, dtype=np.float32)
        if not np.isfinite(sample).all():  # a finite but huge observation can overflow
            return self._safe(stream, serving.policy_id)
        command = np.minimum(np.maximum(sample, self._low), self._high)
        kind = MEAN if deterministic else SAMPLE
        self._pending[stream] = (command, sample, serving.policy_id, kind)
        return command.copy()

    def _act_batch(
        self, serving: ServingPolicy, observations: np.ndarray, deterministic: bool
    ) -> np.ndarray:
        if observations.ndim != 2 or observations.shape[1] != self.spec.observation_size:
            raise ValueError(
                f"act() needs [O] or [N, O] observations with O={self.spec.observation_size}, "
                f"got shape {observations.shape}"
            )
        observations = np.ascontiguousarray(observations, dtype=np.float32)
        finite = np.isfinite(observations).all(axis=1)
        if not finite.all():  # the rows get the safe action; zeros keep the others' run clean
            observations = np.where(finite[:, None], observations, np.float32(0.0))
        mean = serving.act_batch_mean(observations)
        if deterministic:
            samples = mean
        else:
            samples = mean + serving.std * self._rng.standard_normal(mean.shape, dtype=np.float32)
        finite &= np.isfinite(samples).all(axis=1)
        commands = np.minimum(np.maximum(samples, self._low), self._high)
        for row in np.flatnonzero(~finite).tolist():
            commands[row] = samples[row] = self._safe(row, serving.policy_id)
        kind = MEAN if deterministic else SAMPLE
        for stream in range(commands.shape[0]):
            if finite[stream]:
                self._pending[stream] = (commands[stream], samples[stream], serving.policy_id, kind)
        return commands.copy()

    def _safe(self, stream: int, policy: str) -> np.ndarray:
        self._counters["non_finite_observations"] += 1
        pending = self._pending.get(stream)
        hold = self.config.safe_action == "hold" and pending is not None
        command = pending[0].copy() if hold and pending is not None else self._safe_zeros.copy()
        self._pending[stream] = (command, command, policy, SAFE)
        return command.copy()

    def served(self, stream: int = 0) -> str:
        """How the last command of ``stream`` was made: ``"sample"`` (exploring), ``"mean"``
        (deterministic) or ``"safe"`` (the safe action); ``""`` before the first."""
        pending = self._pending.get(stream)
        return "" if pending is None else pending[3]

    # -- recording -------------------------------------------------------------------------

    def record(
        self,
        observation: np.ndarray,
        action: np.ndarray,
        reward: float,
        done: bool,
        stream: int = 0,
    ) -> None:
        """Append a transition to the episode in progress of ``stream``; ``done`` ends it.

        Pass the command :meth:`act` returned for ``observation``: the controller stores the
        Gaussian sample behind it (before clipping), as meta-training's sampler does, because
        the policy gradient needs the log-probability of what the policy sampled. Any other
        action (say, overridden by a safety layer) is stored as given.
        """
        pending = self._pending.get(stream)
        policy = self._serving.policy_id
        stored = np.asarray(action, dtype=np.float32)
        # The very bytes act() returned (a byte comparison, cheaper than array_equal; this
        # runs at control rate); an action with other bytes is stored as given.
        if pending is not None and pending[0].tobytes() == stored.tobytes():
            stored, policy = pending[1], pending[2]
            if pending[3] == SAFE:
                self._recorder.mark(stream, policy, "the safe action was served in it")
            elif pending[3] == MEAN and not self.config.adapt_on_mean_actions:
                reason = "served with the mean action (deterministic), not an exploration sample"
                self._recorder.mark(stream, policy, reason)
        self._recorder.record(stream, observation, stored, reward, policy)
        if done:
            self.end_episode(stream, truncated=False)

    def end_episode(self, stream: int = 0, truncated: bool = True) -> RecordedEpisode | None:
        """Finish the episode of ``stream`` (``truncated``: cut by a time limit, not terminal).

        The episode is appended to the journal (fsync'd) before this returns. Returns it, or
        None when it was empty or dropped (non-finite values, or a policy change mid-episode).
        """
        episode = self._recorder.end(stream, terminated=not truncated)
        if episode is not None and self._journal is not None:
            self._journal.append(episode_record(episode))
        if episode is not None and self.recovery is not None:
            self.recovery.episode_finished(self, episode)  # may reset() and adapt()
        return episode

    def drop_reason(self, stream: int = 0) -> str | None:
        """Why the last episode of ``stream`` was dropped (None if it was kept)."""
        return self._recorder.drop_reasons.get(stream)

    def mark_episode(self, stream: int, reason: str) -> None:
        """Keep the episode in progress of ``stream`` (begun now if none is) out of every
        adaptation: it ends as dropped, ``reason`` saying why (e.g. the robot applied an
        action this controller did not send)."""
        self._recorder.mark(stream, self._serving.policy_id, reason)

    def episodes(self) -> list[RecordedEpisode]:
        """Finished episodes not yet used by an adaptation, oldest first."""
        return list(self._recorder.finished)

    def discard_episodes(self, before_id: int) -> int:
        """Forget the serving policy's finished episodes older than episode ``before_id``
        (recorded before the robot changed); returns how many."""
        with self._update_lock:
            policy = self._serving.policy_id
            stale = [
                e for e in self.episodes() if e.policy_id == policy and e.episode_id < before_id
            ]
            return len(self._recorder.take(policy, len(stale)) or [])

    # -- adapting --------------------------------------------------------------------------

    def adapt(self) -> AdaptReport:
        """One policy-gradient step on K finished on-policy episodes; serve the result if sound.

        Uses the K oldest episodes recorded with the policy serving now, and consumes them
        (accepted or not). A step is on-policy: the next step needs K fresh episodes of the
        adapted policy, so call ``adapt()`` once per K episodes. The step size α is the artifact's
        ``step_size_at(step)`` (paper: 0.1, then 0.05). The new parameters must be finite and
        within ``config.max_kl`` of the pre-adaptation policy; otherwise the report says why and
        the current policy keeps serving.
        """
        with self._update_lock:
            serving, settings = self._serving, self._artifact.metadata.adaptation.settings
            step, k = serving.generation, self.episodes_per_step
            step_size = settings.step_size_at(step)
            if self.config.steps is not None and step >= self.config.steps:
                reason = f"already adapted {step} step(s), the configured limit; reset() first"
                return self._rejected(reason, step, step_size)
            episodes = self._recorder.take(serving.policy_id, k)
            if episodes is None:
                have = self._recorder.available(serving.policy_id)
                reason = f"need {k} finished episodes of the serving policy, have {have}"
                return self._rejected(reason, step, step_size)
            return self._adapt_on(serving, episodes, step, step_size)

    def _adapt_on(
        self, serving: ServingPolicy, episodes: list[RecordedEpisode], step: int, step_size: float
    ) -> AdaptReport:
        metadata, clock = self._artifact.metadata, [time.perf_counter()]
        with self._threads_limited():
            padded = pad_episodes(episodes, metadata.adaptation.horizon)
            batch = batch_from_arrays(*padded, metadata.adaptation.settings)
            clock.append(time.perf_counter())
            adapted = adaptation_step(self.spec, serving.params, batch, step_size)
            clock.append(time.perf_counter())
            new, reason = self._build_checked(adapted, step + 1)
            clock.append(time.perf_counter())
            kl = None
            if new is not None:
                observations = padded[0][padded[3]]  # the valid steps, [N, O]
                kl, reason = self._kl_check(serving, new, observations)
            clock.append(time.perf_counter())
        if reason is None and new is not None:
            self._serving = new  # the atomic switch: the next act() uses the adapted policy
            self._recorder.keep_only(new.policy_id)
        else:
            new = None
        clock.append(time.perf_counter())
        reason = reason or f"step {step} with step_size={step_size} on {len(episodes)} episodes"
        self._journal_adaptation(serving, new, episodes, reason, kl)
        clock.append(time.perf_counter())
        timings = AdaptTimings(*np.diff(clock).tolist())
        self._counters["adaptations_accepted" if new else "adaptations_rejected"] += 1
        returns = tuple(e.episode_return() for e in episodes)
        current = self._serving.policy_id
        return AdaptReport(new is not None, reason, step, step_size, returns, kl, timings, current)

    @contextmanager
    def _threads_limited(self) -> Iterator[None]:
        """Run the adaptation math on ``config.adapt_threads`` threads (torch, BLAS, OpenMP).

        Multi-threaded torch and OpenBLAS slow this step many-fold on a loaded machine (their
        worker threads spin waiting for cores that other processes hold; bench/runtime_bench.py
        measures the step). The limit holds only while adapting.
        """
        threads = self.config.adapt_threads
        with torch_threads(threads), self._threadpools.limit(limits=threads):
            yield

    def _build_checked(
        self, params: Params, generation: int
    ) -> tuple[ServingPolicy | None, str | None]:
        """The serving form of adapted parameters, or None and why it cannot serve."""
        bad = [name for name, value in params.items() if not torch.isfinite(value).all()]
        if bad:
            return None, f"the step made parameters non-finite: {', '.join(bad)}"
        try:
            return self._build(params, generation), None
        except (ValueError, RuntimeError) as error:  # onnxruntime raises RuntimeErrors
            return None, f"the adapted policy cannot serve: {error}"

    def _kl_check(
        self, before: ServingPolicy, after: ServingPolicy, observations: np.ndarray
    ) -> tuple[float, str | None]:
        """Mean KL(before || after) over ``observations`` [N, O], and a reason if too large.

        The means come from onnxruntime with each policy's arrays (4x faster than torch eager
        on 4,000 observations), so the check also covers what will serve.
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
        bound = self.config.resolved_max_kl(self._artifact.metadata)
        if not np.isfinite(kl) or kl > bound:
            return kl, f"KL {kl:.4g} exceeds max_kl {bound:g}"
        return kl, None

    def _rejected(self, reason: str, step: int, step_size: float) -> AdaptReport:
        """A report for an adaptation refused before any computation (nothing consumed)."""
        self._counters["adaptations_rejected"] += 1
        return AdaptReport(False, reason, step, step_size, (), None, None, self._serving.policy_id)

    def _journal_adaptation(
        self,
        before: ServingPolicy,
        after: ServingPolicy | None,
        episodes: list[RecordedEpisode],
        reason: str,
        kl: float | None,
    ) -> None:
        if self._journal is not None:
            consumed = [e.episode_id for e in episodes]
            new_id, params = (None, None) if after is None else (after.policy_id, after.params)
            record = adaptation_record(before.policy_id, new_id, params, consumed)
            self._journal.append(record | {"reason": reason, "kl": kl})

    # -- reset and swap --------------------------------------------------------------------

    def reset(self) -> None:
        """Serve the initialization again (drops the adaptations, keeps the journal)."""
        with self._update_lock:
            self._serving = self._initial
            self._recorder.keep_only(self._initial.policy_id)
            if self._journal is not None:
                self._journal.append({"kind": "reset", "policy": self._initial.policy_id})

    def swap(self, path: str | Path) -> SwapReport:
        """Replace the initialization itself by the artifact in ``path``, while serving.

        The candidate is loaded, verified, checked compatible (same observation/action layout
        and bounds) and bound to its architecture's shared session (built only for an
        architecture not seen before) and smoke-tested before one reference switches; a corrupt or
        incompatible one is refused and the current policy keeps serving.
        """
        start = time.perf_counter()
        try:
            if self.config.verify_swaps_in_child:
                verified = self._verifier.verify(path, frozenset(self._installed))
            else:
                loaded = load_artifact(path)
                verified = Verified(loaded.digest, loaded)
        except (ValueError, RuntimeError) as error:  # ArtifactError is a ValueError
            with self._update_lock:
                return self._swap_refused(str(error), start)
        if verified.artifact is not None:
            return self.swap_to(verified.artifact, start)
        with self._update_lock:  # an artifact installed before: its serving policy is ready
            installed = self._installed.get(verified.digest)
            if installed is None:  # dropped from the cache meanwhile
                return self.swap_to(load_artifact(path), start)
            previous = self._artifact
            self._use(installed)
            return self._swapped(previous, start)

    def swap_to(self, candidate: Artifact, start: float | None = None) -> SwapReport:
        """:meth:`swap` to an artifact already loaded and verified (``load_artifact``)."""
        start = time.perf_counter() if start is None else start
        with self._update_lock:
            previous = self._artifact
            try:
                check_compatible(previous, candidate)
                self._install(candidate)
            except (ValueError, RuntimeError) as error:
                # ArtifactError, ConfigError (ValueErrors) or onnxruntime's failures (RuntimeErrors):
                # _install assigns nothing until the candidate's policy is bound and tested.
                return self._swap_refused(str(error), start)
            return self._swapped(previous, start)

    def _swapped(self, previous: Artifact, start: float) -> SwapReport:
        """Serve the initialization just installed; journal and report the swap."""
        candidate = self._artifact
        self._serving = self._initial
        self._recorder.keep_only(self._initial.policy_id)
        self._counters["swaps"] += 1
        if self._journal is not None:
            record = {"kind": "swap", "artifact": candidate.digest, "path": str(candidate.path)}
            self._journal.append({**record, "policy": self._initial.policy_id})
        reason = f"serving {candidate.path} ({candidate.metadata.family})"
        seconds = time.perf_counter() - start
        return SwapReport(True, reason, previous.digest, candidate.digest, seconds)

    def _swap_refused(self, reason: str, start: float) -> SwapReport:
        self._counters["swaps_refused"] += 1
        digest = self._artifact.digest
        return SwapReport(False, reason, digest, digest, time.perf_counter() - start)

    # -- status and lifetime ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """A JSON-friendly snapshot: what serves, what is recorded, what happened."""
        serving, artifact = self._serving, self._artifact
        return {
            "artifact_path": str(artifact.path),
            "artifact_digest": artifact.digest,
            "family": artifact.metadata.family,
            "policy_id": serving.policy_id,
            "adaptation_steps": serving.generation,
            "episodes_per_step": self.episodes_per_step,
            "episodes_ready": self._recorder.available(serving.policy_id),
            "episodes_in_progress": self._recorder.in_progress,
            "episodes_discarded": self._recorder.discarded,
            "journal": None if self._journal is None else str(self._journal.path),
            "journal_torn_bytes": 0 if self._journal is None else self._journal.torn_bytes,
            "monitor": None if self.recovery is None else self.recovery.status(),
            **self._counters,
        }

    def close(self) -> None:
        """Release the journal (its lock) and the swap verifier's process; the controller must
        not record afterwards."""
        self._verifier.close()
        if self._journal is not None:
            self._journal.close()

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
