"""Initializations ready to serve: verified, checked compatible, bound to a shared session.

A swap has two halves. :meth:`Installer.begin` and :meth:`Installer.complete` do all the work: the candidate artifact is
loaded and verified (in a child process by default, :mod:`controller.verifier`), checked
compatible with the controller's layout, and its parameters bound to the onnxruntime session of
its architecture and smoke-tested. The controller then publishes the result by assigning
references. They split at the verifier's answer, so that a serving loop can keep acting while the child
verifies. Installed artifacts are kept (a few), so a swap back to one of them only asks the
child for the candidate's digest and binds nothing in the serving process.

Every artifact an installer holds has the layout of the first one it installed (a candidate is
installed only after :func:`controller.artifact.check_compatible` against it), so a kept one
needs no check.
"""

from __future__ import annotations

import select
import threading
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from controller.acting import Serving
from controller.artifact import Artifact, check_compatible, load_artifact
from controller.config import ControllerConfig
from controller.policy import Params, PolicySpec
from controller.serving import ServingPolicy, ServingSession, architecture
from controller.verifier import Verifier

SessionCache = dict[tuple[Any, ...], ServingSession]
"""onnxruntime sessions by architecture (``serving.architecture``), shareable between
controllers of one process (``Controller(..., sessions=cache)``)."""

INSTALLED_KEPT = 4
"""Installed artifacts kept by a controller, so that swapping back to one binds nothing."""


class Installed(NamedTuple):
    """An artifact ready to be the initialization: its serving policy and clip bounds."""

    artifact: Artifact
    serving: Serving
    """Its initial policy with the artifact's bounds, as acting reads them."""

    @property
    def initial(self) -> ServingPolicy:
        return self.serving.policy

    def serving_of(self, policy: ServingPolicy) -> Serving:
        """``policy`` (adapted from this initialization) with this artifact's bounds."""
        return self.serving._replace(policy=policy)


class Candidate(NamedTuple):
    """An artifact being verified for a swap (:meth:`Installer.begin`)."""

    path: str | Path
    fd: int | None
    """Readable when the verifier's answer arrives; None: loaded in this process on
    completion (``verify_swaps_in_child`` off), so ready at once."""

    def ready(self) -> bool:
        """Whether completing it would not wait for the verifier."""
        return self.fd is None or bool(select.select([self.fd], [], [], 0)[0])


class PendingSwap(NamedTuple):
    """A swap begun by ``Controller.begin_swap``; ``Controller.finish_swap`` ends it."""

    candidate: Candidate | None
    """None when the swap could not start (``error`` says why): it finishes refused."""
    start: float
    """``time.perf_counter()`` when it began."""
    error: str | None

    def ready(self) -> bool:
        """Whether finishing would not wait for the verifier."""
        return self.candidate is None or self.candidate.ready()

    def fileno(self) -> int:
        """Readable when the verifier's answer arrives (for ``select`` or a ``zmq.Poller``);
        ValueError for a swap that is :meth:`ready` already without one."""
        if self.candidate is None or self.candidate.fd is None:
            raise ValueError("this swap waits for no verifier: it is ready")
        return self.candidate.fd


class Installer:
    """Builds and keeps a controller's installed artifacts; any thread, one build at a time."""

    def __init__(self, config: ControllerConfig, sessions: SessionCache | None = None) -> None:
        self.config = config
        self.sessions: SessionCache = {} if sessions is None else sessions
        self._kept: dict[str, Installed] = {}
        self._lock = threading.Lock()
        self._verifier = Verifier()

    def session(self, spec: PolicySpec) -> ServingSession:
        """The shared session of ``spec``'s architecture, built on first use only.

        Kept for every architecture seen (a handful at most), so swapping back and forth
        between two builds no session after the first of each.
        """
        key = architecture(spec)
        shared = self.sessions.get(key)
        if shared is None:
            shared = ServingSession(spec, self.config.intra_op_threads)
            self.sessions[key] = shared
        return shared

    def build(self, spec: PolicySpec, params: Params, generation: int) -> ServingPolicy:
        """Serving form of ``params``: arrays bound to the shared session, smoke-tested."""
        return ServingPolicy(self.session(spec), params, generation)

    def install(self, artifact: Artifact, first: Artifact | None = None) -> Installed:
        """``artifact`` ready to serve (not yet serving), and kept; raises if it is unusable.

        ``first``: the artifact whose layout it must have (ArtifactError otherwise).
        """
        if first is not None:
            check_compatible(first, artifact)
        low, high = self.config.action_bounds(artifact.metadata)
        # The artifact's policy.onnx is not run: load_artifact verified it is policy_to_onnx of
        # these params, and the shared serving graph has the same operators.
        initial = self.build(artifact.spec, artifact.params, 0)
        safe = np.clip(np.zeros_like(low), low, high)
        installed = Installed(artifact, Serving(initial, low, high, safe))
        self.keep(installed)
        return installed

    def keep(self, installed: Installed) -> None:
        """Keep ``installed`` as the most recently used, dropping the oldest beyond the limit."""
        kept = self._kept
        kept.pop(installed.artifact.digest, None)
        kept[installed.artifact.digest] = installed
        while len(kept) > INSTALLED_KEPT:
            del kept[next(iter(kept))]

    def begin(self, path: str | Path) -> Candidate:
        """Start installing the artifact in ``path`` without waiting for the verifier (in the
        child process unless configured otherwise): the returned candidate becomes ready
        (``select``able) when the child's answer comes; :meth:`complete` finishes. Raises
        RuntimeError while another candidate is being verified."""
        with self._lock:
            return self._begin(path)

    def complete(self, candidate: Candidate, first: Artifact) -> Installed:
        """``candidate`` installed: compatible with ``first``, bound; a kept one when its
        digest is known (blocks until the child answers). Raises ValueError (ArtifactError) or
        RuntimeError saying why it cannot serve."""
        with self._lock:
            return self._complete(candidate, first)

    def _begin(self, path: str | Path) -> Candidate:
        if not self.config.verify_swaps_in_child:
            return Candidate(path, None)
        return Candidate(path, self._verifier.request(path, frozenset(self._kept)))

    def _complete(self, candidate: Candidate, first: Artifact) -> Installed:
        if candidate.fd is None:
            return self._kept_or_installed(load_artifact(candidate.path), first)
        verified = self._verifier.answer()
        if verified.artifact is not None:
            return self._kept_or_installed(verified.artifact, first)
        kept = self._kept.get(verified.digest)
        if kept is None:  # no longer kept (the verifier was told a stale set)
            return self._kept_or_installed(load_artifact(candidate.path), first)
        self.keep(kept)
        return kept

    def installed(self, artifact: Artifact, first: Artifact) -> Installed:
        """``artifact`` (loaded and verified) installed: the kept one of its digest, if any."""
        with self._lock:
            return self._kept_or_installed(artifact, first)

    def _kept_or_installed(self, artifact: Artifact, first: Artifact) -> Installed:
        kept = self._kept.get(artifact.digest)
        if kept is None:
            return self.install(artifact, first)
        self.keep(kept)
        return kept

    def start_verifier(self) -> None:
        """Start the verifier's child process now (its imports take seconds)."""
        self._verifier.start()

    def close(self) -> None:
        """Stop the verifier's child process."""
        self._verifier.close()
