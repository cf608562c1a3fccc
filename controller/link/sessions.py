from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from controller.link.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from controller.journal import RecordedEpisode
    from controller.link.lanes import Lanes
    from controller.runtime import Controller

log = logging.getLogger(__name__)

TOKEN_SHOWN = 8
"""Hex digits of a session token shown in logs and STATUS (the rest is a secret)."""


def shown(token: str) -> str:
    """The part of a token that logs and STATUS may show."""
    return token[:TOKEN_SHOWN]


@dataclass
class Session:
    """One robot's link state."""

    id: str
    lane: Controller
    """This session's own controller (policy, episodes, journal)."""
    stream: int
    """Number of the session's lane (informational)."""
    client: str
    connection: bytes
    """Routing id of the connection the token is bound to (b"": none)."""
    peer_key: str | None
    """The robot's CURVE public key (Z85) when the server runs CURVE."""
    origin: str
    """How the session's policy started (Lane.origin)."""
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
    drop_reason: str | None = None
    """Why the last episode was dropped (told in the EPISODE reply); None: not dropped."""
    steps: int = 0
    episodes_recorded: int = 0
    episodes_dropped: int = 0
    silent: bool = False
    """The watchdog found no request for longer than its timeout."""


class Rebinding(NamedTuple):
    """What a HELLO changed in a session, so that it can be undone."""

    session: Session
    created: bool
    """The HELLO made the session (new, or restored from the journal)."""
    connection: bytes
    """The connection the session was bound to before (b"": none)."""
    last_seq: int
    client: str
    origin: str


class WatchdogEvent(NamedTuple):
    """A robot that stopped sending."""

    session: str
    """The first 8 hex digits of its token."""
    stream: int
    client: str
    silent_s: float
    dropped_steps: int
    """Steps of the episode in progress that were dropped (0: none was open)."""
    time: float
    """time.time() when the watchdog noticed."""


class SessionTable:
    """All sessions of a server, keyed by token; called from the server's one serving thread."""

    def __init__(self, lanes: Lanes, max_sessions: int, horizon: int) -> None:
        self.lanes = lanes
        self._max_sessions = max_sessions
        self._horizon = horizon
        self._sessions: dict[str, Session] = {}
        self._connections: dict[bytes, Session] = {}
        self._streams = 0

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, token: str, connection: bytes) -> Session | None:
        """The session of ``token`` if ``connection`` holds it (a token is bound to its
        connection: the same token from another one is as unknown as a made-up one)."""
        session = self._sessions.get(token)
        return session if session is not None and session.connection == connection else None

    def lane(self, token: str) -> Controller | None:
        """The controller of session ``token``, whatever its connection."""
        session = self._sessions.get(token)
        return None if session is None else session.lane

    def on_connection(self, connection: bytes) -> Session | None:
        """The session bound to ``connection``, if any."""
        return self._connections.get(connection)

    def open(
        self, client: str, seq: int, resume: str | None, connection: bytes, peer_key: str | None
    ) -> Rebinding:
        """The session of a HELLO on ``connection``, bound to it, and what that changed:
        ``resume`` names this robot's earlier session to continue (in memory, or restored from
        the journal after a restart); else a new session with a new lane that starts from the
        current initialization. :meth:`undo` takes the change back."""
        now = time.monotonic()
        known = self._sessions.get(resume) if resume is not None else None
        if known is not None and known.peer_key == peer_key:
            before = Rebinding(
                known, False, known.connection, known.last_seq, known.client, known.origin
            )
            known.last_seq, known.last_seen = seq, now
            known.client = client or known.client  # a resume need not repeat the name
            known.origin = "resumed"
            self._bind(known, connection)
            self._wake(known)
            return before
        if len(self._sessions) >= self._max_sessions:
            self.close(min(self._sessions.values(), key=lambda s: s.last_seen), "evicted")
        lane = None
        if resume is not None and known is None:  # a session of a server before a restart?
            lane, token = self.lanes.restore(resume, peer_key), resume
        if lane is None:
            token = secrets.token_hex(16)
            lane = self.lanes.new(token, peer_key)
        self._streams += 1
        session = Session(
            token,
            lane.controller,
            self._streams - 1,
            client,
            connection,
            peer_key,
            lane.origin,
            seq,
            now,
        )
        self._sessions[token] = session
        self._bind(session, connection)
        log.info(
            "robot %r: session %s (%s), lane %d", client, shown(token), lane.origin, session.stream
        )
        return Rebinding(session, True, b"", seq, client, lane.origin)

    def undo(self, change: Rebinding, why: str) -> None:
        """Take back what a HELLO did (its WELCOME could not be delivered): a session it made
        is closed, a session it moved goes back to its connection and counter."""
        session = change.session
        if change.created:
            self.close(session, why, ended=session.origin == "initialization")
            return
        if self._connections.get(session.connection) is session:
            del self._connections[session.connection]
        session.connection = b""
        if change.connection:
            self._bind(session, change.connection)
        session.last_seq, session.client, session.origin = (
            change.last_seq,
            change.client,
            change.origin,
        )
        log.info(
            "robot %r: session %s stays where it was: %s", session.client, shown(session.id), why
        )

    def _bind(self, session: Session, connection: bytes) -> None:
        """Bind ``session`` to ``connection``; a session that connection held is unbound, and
        its episode in progress dropped: the robot now plays another session's actions, and a
        later resume must not continue that episode as if nothing came between."""
        previous = self._connections.pop(session.connection, None)
        if previous is not None and previous is not session:
            self._connections[session.connection] = previous
        other = self._connections.get(connection)
        if other is not None and other is not session:
            other.connection = b""  # that session's token now needs a HELLO resume
            self.drop_episode(other, "a HELLO for another session on its connection")
        session.connection = connection
        self._connections[connection] = session

    def touch(self, session: Session, seq: int) -> None:
        """A request of ``session`` with sequence number ``seq`` was accepted."""
        session.last_seq, session.last_seen = seq, time.monotonic()
        if session.silent:
            self._wake(session)

    def close(self, session: Session, why: str, ended: bool = False) -> None:
        """End ``session`` in memory (its journal stays; ``ended``: BYE, no resume)."""
        self.drop_episode(session, why)
        self._sessions.pop(session.id, None)
        if self._connections.get(session.connection) is session:
            del self._connections[session.connection]
        self.lanes.close(session.lane, session.id, ended)
        log.info("robot %r (session %s) left: %s", session.client, shown(session.id), why)

    def close_all(self) -> None:
        for session in self:
            self.close(session, "the server stopped")

    # ---- episodes -------------------------------------------------------------------------
    def before_act(
        self,
        session: Session,
        reward: float,
        done: bool,
        start: bool,
        interrupted: bool,
        seq: int,
    ) -> None:
        """Complete the previous transition of a STEP, or drop/close the episode it belongs to.
        Raises EPISODE_TOO_LONG when this STEP's action would exceed the horizon."""
        if interrupted:
            self.drop_episode(session, "the robot applied actions the server did not send")
        if done:  # the previous action ended the episode, whether or not start is set too
            self._finish(session, reward, terminated=True)
        elif start:
            self.drop_episode(session, "a new episode started before this one ended")
        elif session.pending is not None:
            if session.episode_steps + 1 >= self._horizon:
                raise ProtocolError(
                    ErrorCode.EPISODE_TOO_LONG,
                    f"this STEP would be action {session.episode_steps + 2} of the episode; "
                    f"episodes last at most horizon={self._horizon} actions (WELCOME "
                    "'horizon'): send EPISODE_END after the last one",
                    seq,
                )
            observation, command = session.pending
            session.lane.record(observation, command, reward, False)
            session.episode_steps += 1
        if start or done:
            session.recording, session.drop_reason = True, None

    def after_act(
        self, session: Session, observation: np.ndarray, command: np.ndarray, served: str
    ) -> None:
        """Hold (observation, command) until the next request brings its reward; an episode
        that got the safe action is dropped (the action did not come from the policy)."""
        session.steps += 1
        if served == "safe":
            self.drop_episode(session, "the server answered a STEP with the safe action")
        elif session.recording:
            session.pending = (observation, command)

    def end_episode(
        self, session: Session, reward: float, terminated: bool, interrupted: bool
    ) -> dict[str, Any]:
        """EPISODE_END: record the last transition and finish the episode; a receipt."""
        if interrupted:
            self.drop_episode(session, "the robot applied actions the server did not send")
        if not session.recording:
            reason = session.drop_reason or (
                "no episode was being recorded (recording starts at a STEP with start or done)"
            )
            session.drop_reason = None
            return {"recorded": False, "steps": 0, "reason": reason, "episode": None}
        steps = session.episode_steps + 1
        episode = self._finish(session, reward, terminated)
        if episode is None:
            dropped = session.lane.drop_reason(0)
            return {"recorded": False, "steps": 0, "reason": dropped, "episode": None}
        return {"recorded": True, "steps": steps, "reason": None, "episode": episode.episode_id}

    def drop_episode(self, session: Session, why: str) -> int:
        """Forget the episode being recorded (none of it may feed an adaptation); its length."""
        if not session.recording:
            return 0
        steps = session.episode_steps + (session.pending is not None)
        session.lane.mark_episode(0, why)
        session.lane.end_episode(0)
        session.recording, session.pending, session.episode_steps = False, None, 0
        session.drop_reason = why
        session.episodes_dropped += 1
        log.warning("dropped the %d-step episode of lane %d: %s", steps, session.stream, why)
        return steps

    def _finish(self, session: Session, reward: float, terminated: bool) -> RecordedEpisode | None:
        """Record the pending last transition and end the episode; the episode if it was kept."""
        pending = session.pending
        session.recording, session.pending, session.episode_steps = False, None, 0
        if pending is None:
            return None
        session.lane.record(pending[0], pending[1], reward, False)
        episode = session.lane.end_episode(0, truncated=not terminated)
        if episode is None:
            session.episodes_dropped += 1
            session.drop_reason = session.lane.drop_reason(0)
        session.episodes_recorded += episode is not None
        return episode

    # ---- watchdog ---------------------------------------------------------------------------
    def watchdog(self, timeout_s: float, waiting: Collection[bytes] = ()) -> list[WatchdogEvent]:
        """Mark robots silent for longer than ``timeout_s``; drop their episodes in progress.
        Sessions are kept, so a robot that comes back (HELLO resume) carries on. A robot on a
        connection in ``waiting`` waits for a reply (ADAPT, RESET or SWAP with ``wait``) and
        is not silent."""
        now = time.monotonic()
        events = []
        for session in self._sessions.values():
            silent_s = now - session.last_seen
            if session.silent or silent_s <= timeout_s or session.connection in waiting:
                continue
            session.silent = True
            dropped = self.drop_episode(session, f"robot silent for {silent_s:.2f} s")
            event = WatchdogEvent(
                shown(session.id), session.stream, session.client, silent_s, dropped, time.time()
            )
            log.warning(
                "watchdog: robot %r (lane %d) silent for %.2f s; dropped %d steps in progress",
                session.client,
                session.stream,
                silent_s,
                dropped,
            )
            events.append(event)
        return events

    def answered(self, connection: bytes) -> None:
        """A deferred reply went to ``connection``: its robot was waiting, not silent, so its
        silence counts from now."""
        session = self._connections.get(connection)
        if session is not None:
            session.last_seen = time.monotonic()

    def _wake(self, session: Session) -> None:
        if session.silent:
            session.silent = False
            log.info("robot %r (lane %d) is back", session.client, session.stream)
