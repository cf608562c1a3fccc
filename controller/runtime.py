"""The embeddable online-adaptation controller: act, record, adapt, swap.

One :class:`Controller` serves one artifact. Acting (``controller/acting.py``) runs the policy's
ONNX graph in an onnxruntime session (one intra-op thread, built once per architecture and
shared: the parameters are bound to it as inputs) and adds the Gaussian exploration noise; the
K episodes it records (``controller/recording.py``, journaled by ``controller/journal.py`` and
restored by ``controller/restoring.py``) feed THE adaptation step that meta-training uses
(``controller/adapting.py`` around ``controller.adaptation.adapt``: one implementation, two
callers). A new policy, adapted (``controller/adapting.py``), reset, or swapped in
(``controller/installing.py``), is built completely off the serving path and published by
assigning one reference, so acting never waits for, nor sees half of, an update.

Threads: ``act``/``record``/``end_episode`` belong to one serving thread; ``adapt``, ``swap``,
``reset`` and ``status`` may run in any other thread (updates are serialised among themselves).
A thread other than the acting one still shares the interpreter lock with it, so its work and
even its wake-ups delay ``act`` calls; a serving loop that must not stall swaps with
``begin_swap``/``finish_swap`` itself (the verification runs in a child process meanwhile).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from controller.acting import MEAN, SAFE, SAMPLE, Actor, Serving
from controller.adapting import Threads, adapted_policy
from controller.artifact import Artifact, check_compatible, load_artifact
from controller.config import ControllerConfig
from controller.installing import (
    INSTALLED_KEPT,
    Installed,
    Installer,
    PendingSwap,
    SessionCache,
)
from controller.journal import (
    Journal,
    RecordedEpisode,
    adaptation_record,
    default_journal_dir,
    episode_record,
)
from controller.monitor import Recovery
from controller.policy import Params, PolicySpec
from controller.recording import Recorder
from controller.reports import AdaptReport, AdaptTimings, SwapReport
from controller.restoring import restore
from controller.serving import ServingPolicy
from sim.episodes import BatchUnit, batch_size, describe_batch

__all__ = [
    "INSTALLED_KEPT",
    "MEAN",
    "SAFE",
    "SAMPLE",
    "AdaptReport",
    "AdaptTimings",
    "Controller",
    "SessionCache",
    "SwapReport",
]


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
        self._actor = Actor(self.config.seed, self.config.safe_action == "hold")
        self._counters = {"adaptations_accepted": 0, "adaptations_rejected": 0}
        self._counters.update({"swaps": 0, "swaps_refused": 0, "episodes_recovered": 0})
        self._threads = Threads(self.config.adapt_threads)
        self._installer = Installer(self.config, sessions)
        self._current: Installed = self._installer.install(artifact)
        self._serving: Serving = self._current.serving
        """What act() reads, once per call: replaced by one assignment, never changed."""
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
            self._restore(Journal(directory, self.config.journal_fsync))

    @classmethod
    def load(cls, path: str | Path, config: ControllerConfig | None = None) -> Controller:
        """Load and verify the artifact in ``path``; recover the journal if one is configured."""
        return cls(load_artifact(path), config)

    def _new_recorder(self, next_episode_id: int) -> Recorder:
        horizon = self._current.artifact.metadata.adaptation.horizon
        spec = self.spec
        return Recorder(spec.observation_size, spec.action_size, next_episode_id, horizon)

    def _restore(self, journal: Journal) -> None:
        restored = restore(
            journal, self._current.initial, self.config.resume, self._new_recorder, self._build
        )
        self._serving = self._current.serving_of(restored.policy)
        self._recorder = restored.recorder
        self._counters["episodes_recovered"] = restored.ready
        self._journal = journal
        self.restored = restored.note

    def _build(self, params: Params, generation: int) -> ServingPolicy:
        """Serving form of ``params`` for the current spec: arrays bound to the shared session."""
        return self._installer.build(self.spec, params, generation)

    @property
    def spec(self) -> PolicySpec:
        return self._current.artifact.spec

    @property
    def artifact(self) -> Artifact:
        return self._current.artifact

    @property
    def policy_id(self) -> str:
        """Id of the policy serving now."""
        return self._serving.policy.policy_id

    @property
    def generation(self) -> int:
        """Accepted adaptation steps from the initialization of the policy serving now."""
        return self._serving.policy.generation

    @property
    def params(self) -> Params:
        """The parameters serving now (do not modify them in place)."""
        return self._serving.policy.params

    @property
    def episodes_per_step(self) -> int:
        """K, the finished on-policy episodes one adaptation step needs (with ``batch_unit``
        ``"steps"``: at least K, whole episodes until K x horizon steps)."""
        return self.config.resolved_episodes_per_step(self._current.artifact.metadata)

    @property
    def batch_unit(self) -> BatchUnit:
        """How the artifact counts an adaptation batch: K episodes, or K x horizon steps of
        whole episodes (at most 4K), as meta-training sampled it (``sim.episodes.batch_size``)."""
        return self._current.artifact.metadata.adaptation.batch_unit

    def _batch_size(self, lengths: list[int]) -> int | None:
        """How many of the oldest recorded episodes (``lengths``) make the next batch."""
        horizon = self._current.artifact.metadata.adaptation.horizon
        return batch_size(lengths, self.episodes_per_step, self.batch_unit, horizon)

    # -- acting ----------------------------------------------------------------------------

    def act(
        self, observation: np.ndarray, deterministic: bool = False, stream: int = 0
    ) -> np.ndarray:
        """The command for one observation [O] -> [A], or a batch [N, O] -> [N, A] (streams 0..N-1).

        Float32, clipped to the actuator range. Exploring (the default) adds
        ``exp(log_std) * z``, z ~ N(0, I); ``deterministic`` gives the mean. A non-finite
        observation gets the safe action and is counted: never a NaN command. The whole call
        uses one policy, even across an update published meanwhile.
        """
        return self._actor.act(self._serving, observation, deterministic, stream)

    def served(self, stream: int = 0) -> str:
        """How the last command of ``stream`` was made: ``"sample"`` (exploring), ``"mean"``
        (deterministic) or ``"safe"`` (the safe action); ``""`` before the first."""
        return self._actor.served(stream)

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
        pending = self._actor.pending.get(stream)
        policy = self._serving.policy.policy_id
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
        self._recorder.mark(stream, self._serving.policy.policy_id, reason)

    def episodes(self) -> list[RecordedEpisode]:
        """Finished episodes not yet used by an adaptation, oldest first."""
        return list(self._recorder.finished)

    def discard_episodes(self, before_id: int) -> int:
        """Forget the serving policy's finished episodes older than episode ``before_id``
        (recorded before the robot changed); returns how many."""
        with self._update_lock:
            policy = self._serving.policy.policy_id
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
            serving = self._serving.policy
            settings = self._current.artifact.metadata.adaptation.settings
            step, k = serving.generation, self.episodes_per_step
            step_size = settings.step_size_at(step)
            if self.config.steps is not None and step >= self.config.steps:
                reason = f"already adapted {step} step(s), the configured limit; reset() first"
                return self._rejected(reason, step, step_size)
            episodes = self._recorder.take_batch(serving.policy_id, self._batch_size)
            if episodes is None:
                lengths = self._recorder.lengths(serving.policy_id)
                horizon = self._current.artifact.metadata.adaptation.horizon
                need = describe_batch(k, self.batch_unit, horizon)
                have = f"have {len(lengths)} with {sum(lengths)} steps"
                reason = f"need {need} of the serving policy, {have}"
                return self._rejected(reason, step, step_size)
            return self._adapt_on(serving, episodes, step, step_size)

    def _adapt_on(
        self, serving: ServingPolicy, episodes: list[RecordedEpisode], step: int, step_size: float
    ) -> AdaptReport:
        metadata = self._current.artifact.metadata
        bound = self.config.resolved_max_kl(metadata)
        with self._threads.limited():
            candidate = adapted_policy(
                self.spec, metadata, serving, episodes, step_size, bound, self._build
            )
        new, clock = candidate.policy, candidate.clock
        if new is not None:
            self._serving = self._current.serving_of(new)  # the next act() uses it
            self._recorder.keep_only(new.policy_id)
        clock.append(time.perf_counter())
        reason = candidate.reason or (
            f"step {step} with step_size={step_size} on {len(episodes)} episodes"
        )
        if self._journal is not None:
            new_id, params = (None, None) if new is None else (new.policy_id, new.params)
            record = adaptation_record(
                serving.policy_id, new_id, params, episodes, reason, candidate.kl
            )
            self._journal.append(record)
        clock.append(time.perf_counter())
        timings = AdaptTimings(*np.diff(clock).tolist())
        self._counters["adaptations_accepted" if new else "adaptations_rejected"] += 1
        returns = tuple(e.episode_return() for e in episodes)
        current = self.policy_id
        kl = candidate.kl
        return AdaptReport(new is not None, reason, step, step_size, returns, kl, timings, current)

    def _rejected(self, reason: str, step: int, step_size: float) -> AdaptReport:
        """A report for an adaptation refused before any computation (nothing consumed)."""
        self._counters["adaptations_rejected"] += 1
        return AdaptReport(False, reason, step, step_size, (), None, None, self.policy_id)

    # -- reset and swap --------------------------------------------------------------------

    def reset(self) -> None:
        """Serve the initialization again (drops the adaptations, keeps the journal)."""
        with self._update_lock:
            self._serving = self._current.serving
            initial = self._current.initial.policy_id
            self._recorder.keep_only(initial)
            if self._journal is not None:
                self._journal.append({"kind": "reset", "policy": initial})

    def swap(self, path: str | Path) -> SwapReport:
        """Replace the initialization itself by the artifact in ``path``, while serving.

        The candidate is loaded and verified (in a child process unless
        ``config.verify_swaps_in_child`` is off), checked compatible (same observation/action
        layout and bounds), bound to its architecture's shared session (built only for an
        architecture not seen before) and smoke-tested, all before one reference switches; a
        corrupt or incompatible one is refused and the current policy keeps serving. A swap back
        to an artifact installed before binds nothing.

        Called from a thread other than the acting one, the swap's Python work and its wake-ups
        compete with ``act`` for the interpreter lock; :meth:`begin_swap` and
        :meth:`finish_swap`, called by the acting thread itself, do not.
        """
        return self.finish_swap(self.begin_swap(path))

    def begin_swap(self, path: str | Path) -> PendingSwap:
        """The first half of :meth:`swap`: send the candidate to the verifier and return at once.

        For a serving loop with no other thread: it keeps acting, waits on
        ``pending.fileno()`` (or checks ``pending.ready()``) beside its own input, and calls
        :meth:`finish_swap` once ready, which then only installs and publishes. A begin that
        fails (another candidate is being verified) gives a pending swap that finishes refused.
        """
        start = time.perf_counter()
        try:
            return PendingSwap(self._installer.begin(path), start, None)
        except (ValueError, RuntimeError) as error:
            return PendingSwap(None, start, str(error))

    def finish_swap(self, pending: PendingSwap) -> SwapReport:
        """The second half of :meth:`swap` (waits for the verifier if it has not answered)."""
        if pending.candidate is None:
            return self._swap_refused(pending.error or "the swap did not start", pending.start)
        try:
            installed = self._installer.complete(pending.candidate, self._current.artifact)
        except (ValueError, RuntimeError) as error:  # ArtifactError is a ValueError
            return self._swap_refused(str(error), pending.start)
        return self._publish(installed, pending.start)

    def swap_to(self, candidate: Artifact, start: float | None = None) -> SwapReport:
        """:meth:`swap` to an artifact already loaded and verified (``load_artifact``)."""
        start = time.perf_counter() if start is None else start
        try:
            installed = self._installer.installed(candidate, self._current.artifact)
        except (ValueError, RuntimeError) as error:
            # ArtifactError, ConfigError (ValueErrors) or onnxruntime's failures (RuntimeErrors):
            # nothing is published until the candidate's policy is bound and tested.
            return self._swap_refused(str(error), start)
        return self._publish(installed, start)

    def swap_installed(self, installed: Installed, start: float | None = None) -> SwapReport:
        """:meth:`swap` to an initialization installed by another controller whose ``act``
        runs in this controller's acting thread (the link server's lanes share one, so a swap
        binds it once, not once per lane): checked compatible, nothing bound. Its serving
        policy's buffers are shared, so the controllers must not act concurrently."""
        start = time.perf_counter() if start is None else start
        try:
            check_compatible(self._current.artifact, installed.artifact)
        except ValueError as error:
            return self._swap_refused(str(error), start)
        return self._publish(installed, start)

    def _publish(self, installed: Installed, start: float) -> SwapReport:
        """Serve the initialization ``installed``; journal and report the swap."""
        with self._update_lock:
            previous = self._current.artifact
            self._current = installed
            self._serving = installed.serving  # the switch: the next act() uses it
            candidate, initial = installed.artifact, installed.initial.policy_id
            self._recorder.keep_only(initial)
            self._counters["swaps"] += 1
            if self._journal is not None:
                # Not fsync'd: the acting thread publishes swaps (finish_swap), and a disk wait
                # there stalls acting. The next episode or adaptation record syncs it; a crash
                # before one loses only the swap itself (nothing was recorded after it).
                record = {"kind": "swap", "artifact": candidate.digest, "path": str(candidate.path)}
                self._journal.append({**record, "policy": initial}, sync=False)
        reason = f"serving {candidate.path} ({candidate.metadata.family})"
        seconds = time.perf_counter() - start
        return SwapReport(True, reason, previous.digest, candidate.digest, seconds)

    def _swap_refused(self, reason: str, start: float) -> SwapReport:
        with self._update_lock:
            self._counters["swaps_refused"] += 1
            digest = self._current.artifact.digest
        return SwapReport(False, reason, digest, digest, time.perf_counter() - start)

    # -- status and lifetime ---------------------------------------------------------------

    def batch_progress(self) -> tuple[int, bool]:
        """(episodes of the serving policy recorded and unused, whether they make a batch):
        ``status()``'s ``episodes_ready`` and ``batch_ready`` without the rest of it."""
        return self._progress(self._serving.policy.policy_id)

    def _progress(self, policy_id: str) -> tuple[int, bool]:
        ready = self._recorder.lengths(policy_id)
        return len(ready), self._batch_size(ready) is not None

    def status(self) -> dict[str, Any]:
        """A JSON-friendly snapshot: what serves, what is recorded, what happened."""
        serving, artifact = self._serving.policy, self._current.artifact
        episodes_ready, batch_ready = self._progress(serving.policy_id)
        return {
            "artifact_path": str(artifact.path),
            "artifact_digest": artifact.digest,
            "family": artifact.metadata.family,
            "policy_id": serving.policy_id,
            "adaptation_steps": serving.generation,
            "episodes_per_step": self.episodes_per_step,
            "batch_unit": self.batch_unit,
            "episodes_ready": episodes_ready,
            "batch_ready": batch_ready,
            "episodes_in_progress": self._recorder.in_progress,
            "episodes_discarded": self._recorder.discarded,
            "journal": None if self._journal is None else str(self._journal.path),
            "journal_torn_bytes": 0 if self._journal is None else self._journal.torn_bytes,
            "monitor": None if self.recovery is None else self.recovery.status(),
            "non_finite_observations": self._actor.non_finite,
            **self._counters,
        }

    def close(self) -> None:
        """Release the journal (its lock) and the swap verifier's process; the controller must
        not record afterwards."""
        self._installer.close()
        if self._journal is not None:
            self._journal.close()

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
