"""The server's per-robot state: sessions, the episode each one is recording, and the watchdog.

A session is one robot (one client) between its HELLO and its BYE; it survives reconnects
(HELLO with ``resume``). Each session owns a controller *stream*: the controller keeps the
exploration sample behind each command per stream, and ``record`` must follow ``act`` on the
same stream (``Controller.record`` docstring), so two robots never share one.

Recording follows docs/protocol.md, "Episodes": a STEP's reward and done complete the previous
STEP's transition; an episode that cannot be trusted to be on-policy (the robot applied a safe
action, the server lost track, the robot went silent) is dropped, never recorded in part.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

log = logging.getLogger(__name__)


class RecordingController(Protocol):
    """What sessions need from a controller (``controller.runtime.Controller`` has it)."""

    def act(
        self, observation: np.ndarray, deterministic: bool = False, stream: int = 0
    ) -> np.ndarray: ...

    def record(
        self,
        observation: np.ndarray,
        action: np.ndarray,
        reward: float,
        done: bool,
        stream: int = 0,
    ) -> None: ...

    def end_episode(self, stream: int = 0, truncated: bool = True) -> Any: ...


@dataclass
class Session:
    """One robot's link state."""

    id: str
    stream: int
    client: str
    last_seq: int
    last_seen: float
    """time.monotonic() of the last request."""
    recording: bool = False
    """An episode is being recorded (it began with a STEP flagged start or done)."""
    pending: tuple[np.ndarray, np.ndarray] | None = None
    """(observation [O], command [A]) of the last STEP of the episode being recorded, whose
    reward arrives with the next request."""
    episode_steps: int = 0
    """Transitions recorded so far in the episode being recorded."""
    steps: int = 0
    episodes_recorded: int = 0
    episodes_dropped: int = 0
    silent: bool = False
    """The watchdog found no request for longer than its timeout."""


class WatchdogEvent(NamedTuple):
    """A robot that stopped sending."""

    session: str
    stream: int
    client: str
    silent_s: float
    dropped_steps: int
    """Steps of the episode in progress that were dropped (0: none was open)."""
    time: float
    """time.time() when the watchdog noticed."""


class SessionTable:
    """All sessions of a server, keyed by id; called from the server's one serving thread."""

    def __init__(self, controller: RecordingController, max_sessions: int) -> None:
        self._controller = controller
        self._max_sessions = max_sessions
        self._sessions: dict[str, Session] = {}

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def open(self, client: str, seq: int, resume: str | None) -> tuple[Session, bool]:
        """(the session, resumed?): ``resume`` names a known session to continue, else a new
        one takes the lowest free stream (evicting the longest-silent session when full)."""
        now = time.monotonic()
        known = self._sessions.get(resume) if resume is not None else None
        if known is not None:
            known.last_seq, known.last_seen, known.client = seq, now, client
            self._wake(known)
            return known, True
        if len(self._sessions) >= self._max_sessions:
            self.close(min(self._sessions.values(), key=lambda s: s.last_seen), "evicted")
        used = {s.stream for s in self._sessions.values()}
        stream = next(i for i in range(len(used) + 1) if i not in used)
        session = Session(secrets.token_hex(16), stream, client, seq, now)
        self._sessions[session.id] = session
        log.info("robot %r connected: session %s, stream %d", client, session.id[:8], stream)
        return session, False

    def touch(self, session: Session, seq: int) -> None:
        """A request of ``session`` with sequence number ``seq`` was accepted."""
        session.last_seq, session.last_seen = seq, time.monotonic()
        if session.silent:
            self._wake(session)

    def close(self, session: Session, why: str) -> None:
        self.drop_episode(session, why)
        self._sessions.pop(session.id, None)
        log.info("robot %r (session %s) left: %s", session.client, session.id[:8], why)

    # ---- episodes -------------------------------------------------------------------------
    def before_act(
        self, session: Session, reward: float, done: bool, start: bool, interrupted: bool
    ) -> None:
        """Complete the previous transition of a STEP, or drop/close the episode it belongs to."""
        if interrupted:
            self.drop_episode(session, "the robot applied actions the server did not send")
        if start:
            self.drop_episode(session, "a new episode started before this one ended")
        elif done:
            self._finish(session, reward, terminated=True)
        elif session.pending is not None:
            observation, command = session.pending
            self._controller.record(observation, command, reward, False, session.stream)
            session.episode_steps += 1
        if start or done:
            session.recording = True

    def after_act(self, session: Session, observation: np.ndarray, command: np.ndarray) -> None:
        """Hold (observation, command) until the next request brings its reward."""
        session.steps += 1
        if session.recording:
            session.pending = (observation, command)

    def end_episode(
        self, session: Session, reward: float, terminated: bool, interrupted: bool
    ) -> dict[str, Any]:
        """EPISODE_END: record the last transition and finish the episode; a receipt."""
        if interrupted:
            self.drop_episode(session, "the robot applied actions the server did not send")
        steps = session.episode_steps + 1
        recorded = self._finish(session, reward, terminated)
        return {"recorded": recorded, "steps": steps if recorded else 0}

    def drop_episode(self, session: Session, why: str) -> int:
        """Forget the episode being recorded (none of it may feed an adaptation); its length."""
        if not session.recording:
            return 0
        steps = session.episode_steps
        if session.pending is not None:
            # A non-finite reward marks the controller's episode in progress as damaged, which
            # drops it at its end (Controller.end_episode: "dropped (non-finite values ...)").
            observation, command = session.pending
            self._controller.record(observation, command, float("nan"), True, session.stream)
            steps += 1
        session.recording, session.pending, session.episode_steps = False, None, 0
        session.episodes_dropped += 1
        log.warning("dropped the %d-step episode of stream %d: %s", steps, session.stream, why)
        return steps

    def _finish(self, session: Session, reward: float, terminated: bool) -> bool:
        """Record the pending last transition and end the episode; True if it was kept."""
        pending = session.pending
        session.recording, session.pending, session.episode_steps = False, None, 0
        if pending is None:
            return False
        self._controller.record(pending[0], pending[1], reward, False, session.stream)
        episode = self._controller.end_episode(session.stream, truncated=not terminated)
        session.episodes_recorded += episode is not None
        return episode is not None

    # ---- watchdog ---------------------------------------------------------------------------
    def watchdog(self, timeout_s: float) -> list[WatchdogEvent]:
        """Mark robots silent for longer than ``timeout_s``; drop their episodes in progress.
        Sessions are kept, so a robot that comes back (HELLO resume) carries on."""
        now = time.monotonic()
        events = []
        for session in self._sessions.values():
            silent_s = now - session.last_seen
            if session.silent or silent_s <= timeout_s:
                continue
            session.silent = True
            dropped = self.drop_episode(session, f"robot silent for {silent_s:.2f} s")
            event = WatchdogEvent(
                session.id, session.stream, session.client, silent_s, dropped, time.time()
            )
            log.warning(
                "watchdog: robot %r (stream %d) silent for %.2f s; dropped %d steps in progress",
                session.client, session.stream, silent_s, dropped,
            )  # fmt: skip
            events.append(event)
        return events

    def _wake(self, session: Session) -> None:
        if session.silent:
            session.silent = False
            log.info("robot %r (stream %d) is back", session.client, session.stream)
