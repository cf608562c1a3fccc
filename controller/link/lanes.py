"""One controller per robot session: its own policy, recorded episodes and journal.

A robot that says HELLO gets a *lane*: a :class:`controller.runtime.Controller` of its own that
starts from the server's current initialization, records only that robot's episodes and adapts
only on them, so no robot ever acts with a policy adapted on another robot's task. The lanes of
one server share the artifact (loaded and verified once) and the onnxruntime session of its
architecture.

Durability: each lane journals to ``ROOT/sessions/ID/`` where ID is a hash of the session token
(the token itself is a secret and is never written). A restarted server with the same ROOT
(by default derived from the artifact, ``controller.journal.default_journal_dir``) restores a
lane when its robot resumes with the token: the adapted policy and the recorded episodes come
back. With CURVE the lane is also bound to the robot's public key (stored hashed as well).
A SWAP survives a restart too: ``ROOT/initialization.json`` names the artifact it installed,
and a server started again with the same artifact and ROOT serves that one (when it still
loads with the same digest), so new sessions start from it and resumed ones get back the
policies they adapted from it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import IO, NamedTuple

from controller.artifact import Artifact, check_compatible, load_artifact
from controller.config import ControllerConfig
from controller.installing import Installer
from controller.journal import JOURNAL_FILE, JournalError, default_journal_dir
from controller.runtime import Controller, SessionCache, SwapReport
from controller.verifier import Verifier

log = logging.getLogger(__name__)

LANES_DIR = "sessions"
OWNER_FILE = "owner"
"""In a lane directory: the hash of the CURVE public key that opened it ("" without CURVE)."""
ENDED_FILE = "ended"
"""In a lane directory: present once the session said BYE (it cannot be resumed)."""
LOCK_FILE = "server.lock"
INITIALIZATION_FILE = "initialization.json"
"""In the journal root: the artifact the last accepted SWAP installed (path, digest) and the
digest of the artifact the server was started with then."""


def token_hash(secret: str) -> str:
    """The name a token (or a public key) is stored under: 32 hex digits of its SHA-256."""
    return hashlib.sha256(secret.encode()).hexdigest()[:32]


class Lane(NamedTuple):
    """A session's controller and how it started."""

    controller: Controller
    origin: str
    """``initialization`` (new: the current initialization serves), ``resumed`` (this
    session's state, still in memory) or ``restored`` (this session's state, from the journal
    after a restart, or after the session was evicted from memory)."""


class Lanes:
    """The lanes of one server (called from its serving thread and its worker thread)."""

    def __init__(self, artifact: Artifact, config: ControllerConfig) -> None:
        self.artifact = artifact
        self.config = config
        """The controller config every lane runs with (its journal fields aside)."""
        self._sessions: SessionCache = {}
        self._verifier = Verifier()
        self._installer = Installer(config, self._sessions)
        """Installs a SWAP's candidate once for all lanes (its own verifier is never used)."""
        self._count = 0
        self._lock_file: IO[bytes] | None = None
        self.root: Path | None = None
        self.started_with = artifact
        """The artifact the server was started with (the initialization until a SWAP)."""
        self.restored = ""
        """What a restart took from ``INITIALIZATION_FILE``, in words ("" when nothing)."""
        if config.journal:
            self.root = config.journal_dir or default_journal_dir(
                artifact.metadata.family, artifact.digest
            )
            self._lock_file = _lock(self.root)
            self._restore_initialization()

    @classmethod
    def load(cls, path: str | Path, config: ControllerConfig | None = None) -> Lanes:
        return cls(load_artifact(path), config or ControllerConfig())

    def stored(self) -> int:
        """Lanes in the journal root that a robot could resume (not ended)."""
        if self.root is None or not (self.root / LANES_DIR).is_dir():
            return 0
        lanes = (self.root / LANES_DIR).iterdir()
        return sum((d / JOURNAL_FILE).exists() and not (d / ENDED_FILE).exists() for d in lanes)

    def restore(self, token: str, peer_key: str | None) -> Lane | None:
        """The lane of session ``token`` from the journal, if one of this token (and, with
        CURVE, this key) is stored there and was not ended; else None (nothing is created)."""
        directory = self._directory(token)
        owner = "" if peer_key is None else token_hash(peer_key)
        if directory is None or not self._resumable(directory, owner):
            return None
        return Lane(self._controller(directory), "restored")

    def new(self, token: str, peer_key: str | None) -> Lane:
        """A new lane for session ``token``, starting from the current initialization."""
        directory = self._directory(token)
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / OWNER_FILE).write_text("" if peer_key is None else token_hash(peer_key))
        return Lane(self._controller(directory), "initialization")

    def close(self, lane: Controller, token: str, ended: bool) -> None:
        """Release a lane's journal; ``ended`` (BYE): it can no longer be resumed."""
        lane.close()
        directory = self._directory(token)
        if ended and directory is not None and directory.is_dir():
            (directory / ENDED_FILE).touch()

    def begin_swap(self, path: str | Path) -> int:
        """The first half of a SWAP: send ``path`` to the verifier child and return the
        file descriptor that becomes readable when it has answered; RuntimeError while another
        swap is being verified or when the child cannot be reached, ValueError for a path the
        child cannot be sent (empty)."""
        return self._verifier.request(path)

    def finish_swap(self, lanes: list[Controller], start: float) -> SwapReport:
        """The second half of a SWAP (``start``: ``time.perf_counter()`` at its begin): take
        the verifier's answer and make the candidate the initialization of every lane and of
        new ones (each lane serves it from its next step, its adaptations dropped), or refuse
        it as a whole when it is unusable or incompatible."""
        try:
            candidate = self._verifier.answer().artifact
        except (ValueError, RuntimeError) as error:
            digest = self.artifact.digest
            return SwapReport(False, str(error), digest, digest, time.perf_counter() - start)
        assert candidate is not None  # nothing was known to the verifier
        digest = self.artifact.digest
        try:  # bound and smoke-tested once, for every lane and for none if it fails
            installed = self._installer.installed(candidate, self.artifact)
        except (ValueError, RuntimeError) as error:
            return SwapReport(False, str(error), digest, digest, time.perf_counter() - start)
        for lane in lanes:  # the lanes act in the serving thread: they can share its buffers
            lane.swap_installed(installed, start)
        self.artifact = candidate
        self._record_initialization()
        reason = f"serving {candidate.path} ({candidate.metadata.family})"
        return SwapReport(True, reason, digest, candidate.digest, time.perf_counter() - start)

    def start_verifier(self) -> None:
        """Start the child process that verifies SWAP artifacts now, not at the first SWAP
        (its imports take seconds)."""
        self._verifier.start()

    def release(self) -> None:
        """Stop the verifier and release the journal directory's lock."""
        self._verifier.close()
        self._installer.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _record_initialization(self) -> None:
        """Write which artifact serves now, for a restart (atomically: a crash leaves the old
        record or the new one)."""
        if self.root is None:
            return
        record = {
            "path": str(Path(self.artifact.path).resolve()),
            "digest": self.artifact.digest,
            "started_with": self.started_with.digest,
        }
        target = self.root / INITIALIZATION_FILE
        scratch = target.with_suffix(".tmp")
        try:
            with open(scratch, "w") as handle:
                json.dump(record, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(scratch, target)
        except OSError as error:  # the swap itself stands; only a restart would not know it
            log.warning("could not record the swap in %s: %s", target, error)

    def _restore_initialization(self) -> None:
        """Serve the artifact the last SWAP installed before a restart, if this server was
        started with the same artifact then and that one still loads unchanged."""
        assert self.root is not None
        target = self.root / INITIALIZATION_FILE
        if not target.exists():
            return
        try:
            record = json.loads(target.read_text())
            path, digest = str(record["path"]), str(record["digest"])
            if record["started_with"] != self.artifact.digest or digest == self.artifact.digest:
                return  # another starting artifact (its own choice), or no swap in effect
        except (OSError, ValueError, KeyError, TypeError) as error:
            self.restored = f"{target} is unreadable ({error}); the artifact given serves"
            log.warning("%s", self.restored)
            return
        try:
            candidate = load_artifact(path)
            if candidate.digest != digest:
                raise ValueError(f"it changed since the swap (digest {candidate.digest[:16]})")
            check_compatible(self.artifact, candidate)
        except (OSError, ValueError, RuntimeError) as error:
            self.restored = (
                f"the initialization swapped in before the restart, {path}, cannot serve "
                f"({error}); {self.artifact.path} serves, and what sessions adapted from the "
                "swapped one is not restored"
            )
            log.warning("%s", self.restored)
            return
        self.restored = (
            f"serving {path}, swapped in before the restart (started with {self.artifact.path})"
        )
        log.info("%s", self.restored)
        self.artifact = candidate

    def _directory(self, token: str) -> Path | None:
        return None if self.root is None else self.root / LANES_DIR / token_hash(token)

    @staticmethod
    def _resumable(directory: Path, owner: str) -> bool:
        if not (directory / JOURNAL_FILE).exists() or (directory / ENDED_FILE).exists():
            return False
        try:
            return (directory / OWNER_FILE).read_text() == owner
        except OSError:
            return False

    def _lane_config(self, directory: Path | None) -> ControllerConfig:
        seed = self.config.seed
        update = {
            "journal": directory is not None,
            "journal_dir": directory,
            "resume": True,
            "seed": None if seed is None else seed + self._count,
        }
        return self.config.model_copy(update=update)

    def _controller(self, directory: Path | None) -> Controller:
        self._count += 1
        config = self._lane_config(directory)
        controller = Controller(self.artifact, config, sessions=self._sessions)
        if controller.recovery is not None:  # its adaptations run in the server's worker
            controller.recovery.inline = False
        return controller


def _lock(root: Path) -> IO[bytes]:
    """An exclusive lock on ``root`` for this server's lifetime (two servers never share)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = open(root / LOCK_FILE, "a+b")  # noqa: SIM115 -- held for the lifetime
    except OSError as error:
        raise JournalError(f"cannot use the journal directory {root}: {error}") from error
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise JournalError(
            f"the journal directory {root} is in use by another server; give this one its own "
            "(--journal-dir DIR) or run it without a journal (--no-journal)"
        ) from None
    return handle
