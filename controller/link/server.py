"""The link server: a Controller behind a ZeroMQ ROUTER socket (protocol: docs/protocol.md).

One serving thread owns the socket and answers every request in arrival order: HELLO, STEP
(record the previous transition, act, reply), EPISODE_END, STATUS and BYE inline; ADAPT and
RESET go to a worker thread, so step requests keep being answered by the current policy while
the controller builds the next one off the serving path (controller/runtime.py); so does the
adaptation a session's monitor makes due (``--monitor``: controller/monitor.py, ``Recovery``). A reply to a
waiting ADAPT/RESET is sent when the worker finishes; a pipe wakes the serving thread's poll.
SWAP is verified in a child process (controller/verifier.py) while this thread keeps serving;
when the child answers (its pipe in the same poll) and no job is queued or running, this thread
installs the candidate itself: no other thread of this process competes with acting for the
interpreter lock during a swap. Every malformed request gets an ERROR reply and the server carries on; an ERROR
reply on a connection whose session is recording an episode drops that episode.

Each session acts with its own lane (controller/link/lanes.py): a new robot starts from the
current initialization, never from another robot's adapted policy.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import zmq
from pydantic import BaseModel, ConfigDict, Field
from zmq.auth.thread import ThreadAuthenticator

from controller.link.codec import (
    Message,
    decode_request,
    encode,
    error_header,
    read_array,
    read_reward,
    to_wire,
)
from controller.link.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_SOCKET_MAX_BYTES,
    FINISHED_REPLY,
    PROTOCOL_VERSION,
    STARTED_REPLY,
    WIRE_DTYPE,
    ErrorCode,
    MessageType,
    ProtocolError,
)
from controller.link.security import (
    CurveKeys,
    check_bind,
    is_local_endpoint,
    secure_server_socket,
)
from controller.link.sessions import Session, SessionTable, WatchdogEvent, shown
from controller.link.transport import send_frames
from controller.link.worker import Job, Worker
from controller.reports import SwapReport

if TYPE_CHECKING:
    from controller.artifact import Artifact
    from controller.config import ControllerConfig
    from controller.link.lanes import Lanes
    from controller.runtime import Controller

log = logging.getLogger(__name__)

Reply = tuple[dict[str, Any], Sequence[np.ndarray]]


class LinkConfig(BaseModel):
    """How the link server listens, limits and watches its robots."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    watchdog_timeout_s: float = Field(
        default=1.0,
        gt=0.0,
        description="A robot silent for longer is reported and its episode in progress dropped "
        "(its session and recorded episodes are kept). 1 s is 1000 periods of a 1 kHz loop.",
    )
    max_message_bytes: int = Field(
        default=DEFAULT_MAX_MESSAGE_BYTES,
        ge=1024,
        description="Largest request body answered normally; bigger ones get TOO_LARGE.",
    )
    socket_max_bytes: int = Field(
        default=DEFAULT_SOCKET_MAX_BYTES,
        ge=1024,
        description="ZMQ_MAXMSGSIZE: libzmq disconnects a peer sending a bigger frame (no reply).",
    )
    max_sessions: int = Field(
        default=16,
        ge=1,
        description="Sessions kept; a new robot beyond it evicts the longest-silent one.",
    )


def welcome_layout(artifact: Artifact, config: ControllerConfig) -> dict[str, Any]:
    """The artifact's layout as sent in WELCOME (bounds as the controller clips to)."""
    low, high = config.action_bounds(artifact.metadata)
    layout = artifact.layout
    return {
        "observation_size": layout.observation_size,
        "action_size": layout.action_size,
        "observation_names": list(layout.observation_names),
        "action_names": list(layout.action_names),
        "action_low": np.asarray(low, np.float64).tolist(),
        "action_high": np.asarray(high, np.float64).tolist(),
        "family": artifact.metadata.family,
        "horizon": artifact.metadata.adaptation.horizon,
    }


def policy_note(origin: str, steps: int, ready: int) -> str:
    """WELCOME's ``policy_note``: which policy serves this session and why, in words."""
    policy = "the initialization" if steps == 0 else f"its policy adapted {steps} step(s)"
    if origin == "initialization":
        return "new session: the current initialization serves"
    if origin == "resumed":
        return f"session resumed: {policy} serves, {ready} recorded episode(s) ready"
    return (
        f"session restored from the journal (after a restart or an eviction): {policy} serves, "
        f"{ready} recorded episode(s) ready"
    )


class PendingLinkSwap(NamedTuple):
    """A SWAP whose artifact the verifier child is checking."""

    fd: int
    """Readable when the child has answered."""
    start: float
    reply_to: list[bytes] | None
    """Envelope of a waiting request; None: nobody waits (``wait: false``)."""
    seq: int
    answered: bool = False
    """The child's answer is waiting in the pipe (the descriptor left the poll)."""


class LinkServer:
    """Serves ``lanes`` on ``bind`` (see module docstring); binds in the constructor."""

    def __init__(
        self,
        lanes: Lanes,
        bind: str = "tcp://127.0.0.1:5555",
        *,
        curve_keys: CurveKeys | None = None,
        insecure: bool = False,
        config: LinkConfig | None = None,
    ) -> None:
        check_bind(bind, curve_keys, insecure)
        self.config = config or LinkConfig()
        self.lanes = lanes
        self._layout = welcome_layout(lanes.artifact, lanes.config)
        self._observation_size = int(self._layout["observation_size"])
        horizon = int(self._layout["horizon"])
        self._sessions = SessionTable(lanes, self.config.max_sessions, horizon)
        self._waiting: Counter[bytes] = Counter()
        """Connections waiting for a job's reply (ADAPT, RESET, SWAP with ``wait``)."""
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, self.config.socket_max_bytes)
        # A reply to a connection that is gone fails (EHOSTUNREACH) instead of vanishing, so a
        # HELLO whose WELCOME cannot be delivered is undone (_on_hello).
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._authenticator: ThreadAuthenticator | None = None
        try:
            if curve_keys is not None:
                self._authenticator = secure_server_socket(self._context, self._socket, curve_keys)
            self._socket.bind(bind)
        except BaseException:
            self._release_socket()
            raise
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.secure = curve_keys is not None
        self._authorized = None if curve_keys is None else curve_keys.authorized_dir
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker = Worker()
        self._swap: PendingLinkSwap | None = None
        """The SWAP being verified by the child, if any."""
        self._poller = zmq.Poller()
        self._errors: Counter[str] = Counter()
        self._requests = 0
        self._watchdog_events: deque[WatchdogEvent] = deque(maxlen=32)
        self._watchdog_count = 0
        self._reports: dict[str, dict[str, Any]] = {}
        """Job key (a session token, or "*" for swaps) -> kind -> the last report."""

    def session_lane(self, token: str) -> Controller | None:
        """The controller of session ``token`` (None if unknown), for embedding and tests."""
        return self._sessions.lane(token)

    def security_note(self) -> str:
        """How the link is protected, in words (for the start-up log)."""
        if self.secure and self._authorized is not None:
            return f"CURVE: encrypted, only the robots whose keys are in {self._authorized}"
        if self.secure:
            return "CURVE: encrypted, any robot that knows the server's public key (no --curve-authorized)"
        if is_local_endpoint(self.endpoint):
            return "plaintext, this machine only"
        return "plaintext on the network (--insecure): anyone who reaches it commands the robot"

    def journal_note(self) -> str:
        """Where sessions are journaled and how many a robot could resume, in words."""
        if self.lanes.root is None:
            return "no journal (--no-journal): a restart loses recorded episodes and adaptations"
        stored = self.lanes.stored()
        note = f"journal {self.lanes.root} ({stored} stored session(s) can resume)"
        return f"{note}; {self.lanes.restored}" if self.lanes.restored else note

    # ---- lifetime ---------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Answer requests until :meth:`stop` (from another thread or a signal handler).

        While no job runs, a blocking receive with a timeout waits for requests: faster per
        round trip than a ``zmq.Poller`` over the socket and the worker's pipe
        (bench/link_bench.py), which is used only while a job is in flight.
        """
        poller = self._poller
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._worker.wake_fd, zmq.POLLIN)
        scan_every = min(self.config.watchdog_timeout_s / 4, 0.1)
        self._socket.rcvtimeo = tick_ms = max(1, int(scan_every * 1000))
        next_scan = time.monotonic() + scan_every
        family, security = self._layout["family"], self.security_note()
        log.info("serving %s on %s (%s); %s", family, self.endpoint, security, self.journal_note())
        if not self.secure and not is_local_endpoint(self.endpoint):
            log.warning(
                "%s is reachable from the network without CURVE (--insecure)", self.endpoint
            )
        while not self._stop.is_set():
            if not self._worker.busy and self._swap is None:
                with contextlib.suppress(zmq.Again):  # the timeout: time to scan
                    self._handle(*self._receive(0))
            else:
                ready = dict(poller.poll(timeout=tick_ms))
                if self._socket in ready:
                    self._handle(*self._receive(zmq.NOBLOCK))
                if self._worker.wake_fd in ready:
                    self._finish_jobs()
                self._poll_swap(ready)
            if time.monotonic() >= next_scan:
                next_scan = time.monotonic() + scan_every
                self._scan()

    def _receive(self, flags: int) -> tuple[list[bytes], str | None]:
        """The next message's frames and, with CURVE, the sender's public key (Z85)."""
        if not self.secure:
            return self._socket.recv_multipart(flags), None
        frames = self._socket.recv_multipart(flags, copy=False)
        key = frames[-1].get("User-Id") if frames else None
        return [frame.bytes for frame in frames], None if key is None else str(key)

    def start(self) -> LinkServer:
        """Serve in a background thread (the socket moves to it); returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="link-server", daemon=True)
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Make serve_forever return within 0.1 s (safe from a signal handler)."""
        self._stop.set()

    def stop(self) -> None:
        """Stop serving, wait for the threads (up to 5 s each), close every session's lane
        (their journals stay) and release the socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._worker.close()
        self._sessions.close_all()
        self.lanes.release()
        self._release_socket()

    def __enter__(self) -> LinkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _release_socket(self) -> None:
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
        if not self._socket.closed:
            self._socket.close(linger=0)
            self._context.term()

    # ---- requests ---------------------------------------------------------------------------
    def _handle(self, frames: list[bytes], peer_key: str | None = None) -> None:
        """Answer one request (or defer its answer to the worker); never raises."""
        # The envelope: the routing frames up to and including the first empty one (a REQ
        # peer's is [identity, b""], behind a ZeroMQ proxy [proxy, identity, b""]); a DEALER
        # that leaves out the delimiter has only the identity the ROUTER added.
        try:
            split = frames.index(b"", 1) + 1
        except ValueError:
            split = 1
        envelope, body = frames[:split], frames[split:]
        self._requests += 1
        try:
            reply = self._dispatch(body, envelope, peer_key)
        except ProtocolError as error:
            reply = self._error_reply(envelope, error.code, error.message, error.seq)
        except Exception as error:
            log.exception("request failed")
            failure = f"{type(error).__name__}: {error}"
            reply = self._error_reply(envelope, ErrorCode.INTERNAL, failure, None)
        if reply is not None:
            self._send(envelope + encode(*reply))

    def _send(self, frames: list[bytes]) -> bool:
        """Send a reply without blocking; False when it cannot be delivered: its connection is
        gone (ZMQ_ROUTER_MANDATORY makes the socket say so) or not reading (queue full)."""
        try:
            send_frames(self._socket, frames, zmq.NOBLOCK)
        except zmq.Again:
            return False
        except zmq.ZMQError as error:
            if error.errno != zmq.EHOSTUNREACH:
                raise
            return False
        return True

    def _error_reply(
        self, envelope: list[bytes], code: ErrorCode, message: str, seq: int | None
    ) -> Reply:
        """An ERROR reply; the episode being recorded on this connection, if any, is dropped
        (the robot applies its safe action: the episode is no longer on-policy)."""
        self._errors[code.name] += 1
        session = self._sessions.on_connection(connection_of(envelope))
        if session is not None:
            self._sessions.drop_episode(session, f"an ERROR reply ({code.name}) on its connection")
        return error_header(code, message, seq), ()

    def _dispatch(
        self, body: list[bytes], envelope: list[bytes], peer_key: str | None
    ) -> Reply | None:
        message = decode_request(body, self.config.max_message_bytes)
        if message.type is MessageType.HELLO:
            self._on_hello(message, envelope, peer_key)
            return None
        session = self._sessions.get(message.fields["session"], connection_of(envelope))
        if session is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_SESSION,
                "unknown session on this connection (the server restarted, the session was "
                "evicted for a newer one or closed, or it is bound to another connection): "
                "send HELLO with resume",
                message.seq,
            )
        if message.seq <= session.last_seq:
            raise ProtocolError(
                ErrorCode.OUT_OF_ORDER,
                f"seq {message.seq} is not above the last accepted {session.last_seq}",
                message.seq,
            )
        self._sessions.touch(session, message.seq)
        return self._on_request(message, session, envelope)

    def _on_request(
        self, message: Message, session: Session, envelope: list[bytes]
    ) -> Reply | None:
        fields, seq, lane = message.fields, message.seq, session.lane
        if message.type is MessageType.STEP:
            return self._on_step(message, session)
        if message.type is MessageType.EPISODE_END:
            events_before = 0 if lane.recovery is None else len(lane.recovery.events)
            receipt = self._sessions.end_episode(
                session,
                read_reward(message),
                fields["terminated"],
                fields.get("interrupted", False),
            )
            episodes_ready, batch_ready = lane.batch_progress()
            ready = {"episodes_ready": episodes_ready, "batch_ready": batch_ready}
            if lane.recovery is not None:
                self._log_events(session, events_before)
                self._recover(session)
                ready["monitor"] = to_wire(lane.recovery.status())
            return {"type": MessageType.EPISODE, "seq": seq, **receipt, **ready}, ()
        if message.type is MessageType.ADAPT:
            return self._submit(message, session.id, lane.adapt, envelope)
        if message.type is MessageType.SWAP:
            return self._begin_swap(message, envelope)
        if message.type is MessageType.RESET:
            return self._submit(message, session.id, lane.reset, envelope)
        if message.type is MessageType.STATUS:
            status = {**lane.status(), "link": self.link_status(session.id)}
            return {"type": MessageType.STATUS_REPLY, "seq": seq, "status": to_wire(status)}, ()
        self._sessions.close(session, "said bye", ended=True)  # BYE, the only type left
        return {"type": MessageType.OK, "seq": seq}, ()

    def _on_hello(self, message: Message, envelope: list[bytes], peer_key: str | None) -> None:
        """Open or resume the session and send WELCOME; a WELCOME that cannot be delivered (the
        connection is gone: a HELLO the robot gave up on, read after its later HELLO) undoes
        the HELLO, so a session stays bound to the robot's newer connection."""
        fields = message.fields
        if fields["version"] != PROTOCOL_VERSION:
            raise ProtocolError(
                ErrorCode.BAD_VERSION,
                f"this server speaks protocol version {PROTOCOL_VERSION}, "
                f"the client asked for {fields['version']}",
                message.seq,
            )
        change = self._sessions.open(
            str(fields.get("client", "")),
            message.seq,
            fields.get("resume"),
            connection_of(envelope),
            peer_key,
        )
        session = change.session
        status = session.lane.status()
        steps, ready = int(status["adaptation_steps"]), int(status["episodes_ready"])
        header = {
            "type": MessageType.WELCOME,
            "seq": message.seq,
            "version": PROTOCOL_VERSION,
            "session": session.id,
            "resumed": session.origin != "initialization",
            "stream": session.stream,
            **self._layout,
            "policy": status["policy_id"],
            "policy_origin": session.origin,
            "adaptation_steps": steps,
            "episodes_ready": ready,
            "policy_note": policy_note(session.origin, steps, ready),
            "episodes_per_step": status["episodes_per_step"],
            "batch_unit": status["batch_unit"],
            "max_message_bytes": self.config.max_message_bytes,
            "watchdog_timeout_s": self.config.watchdog_timeout_s,
        }
        if not self._send(envelope + encode(header)):
            self._sessions.undo(change, "its WELCOME could not be delivered (connection gone)")

    def _on_step(self, message: Message, session: Session) -> Reply:
        observation = read_array(message, 0, self._observation_size, "observation")
        reward = read_reward(message)
        fields, lane = message.fields, session.lane
        self._sessions.before_act(
            session,
            reward,
            fields.get("done", False),
            fields.get("start", False),
            fields.get("interrupted", False),
            message.seq,
        )
        command = lane.act(observation, fields.get("deterministic", False))
        served = lane.served()
        self._sessions.after_act(session, observation, command, served)
        busy = self._busy()
        header = {
            "type": MessageType.ACTION,
            "seq": message.seq,
            "dtype": WIRE_DTYPE,
            "policy": lane.policy_id,
            "adapting": session.id in busy or "*" in busy,
            "safe": served == "safe",
        }
        return header, (command,)

    # ---- adapt, swap and reset in the worker ----------------------------------------------
    def _submit(
        self, message: Message, key: str, run: Callable[[], Any], envelope: list[bytes]
    ) -> Reply | None:
        busy = self._busy()
        running = f"this session's {busy[key]}" if key in busy else "a swap" if "*" in busy else ""
        if running:
            raise ProtocolError(
                ErrorCode.BUSY,
                f"{running} is running; retry when STATUS shows it done",
                message.seq,
            )
        wait = message.fields.get("wait", True)
        job = Job(message.type.value, key, run, envelope if wait else None, message.seq)
        self._worker.submit(job)
        if wait:
            self._waiting[connection_of(envelope)] += 1
            return None  # answered by _finish_jobs
        return {"type": STARTED_REPLY[message.type].value, "seq": message.seq}, ()

    def _recover(self, session: Session) -> None:
        """Run the adaptation the session's monitor made due (a drop, then K episodes), in the
        worker as an ADAPT would; left due while a job of this session or a swap is running."""
        lane, busy = session.lane, self._busy()
        recovery = lane.recovery
        if recovery is None or recovery.due is None or session.id in busy or "*" in busy:
            return
        episode = recovery.due

        def then(report: Any, error: BaseException | None) -> None:
            seen = len(recovery.events)
            if error is None:
                recovery.adapted(lane, report, episode)
            else:
                recovery.adaptation_failed(lane, f"{type(error).__name__}: {error}", episode)
            self._log_events(session, seen)

        self._worker.submit(Job(MessageType.ADAPT.value, session.id, lane.adapt, None, 0, then))

    def _log_events(self, session: Session, since: int) -> None:
        """Log the monitor events of ``session`` from index ``since`` on."""
        assert session.lane.recovery is not None
        for event in session.lane.recovery.events[since:]:
            detail = event.get("reason") or f"low episodes {event.get('low')}"
            log.info(
                "monitor of lane %d (%r): %s after episode %s: %s",
                session.stream,
                session.client,
                event["kind"],
                event["episode"],
                detail,
            )

    def _busy(self) -> dict[str, str]:
        """Job key -> kind of every job queued or running, the pending swap's ("*") included."""
        if self._swap is None:
            return self._worker.busy
        return {**self._worker.busy, "*": "swap"}

    def _begin_swap(self, message: Message, envelope: list[bytes]) -> Reply | None:
        """Send the SWAP's artifact to the verifier child; :meth:`_finish_swap` installs it."""
        if self._swap is not None:
            raise ProtocolError(
                ErrorCode.BUSY, "a swap is running; retry when STATUS shows it done", message.seq
            )
        wait = message.fields.get("wait", True)
        swap = PendingLinkSwap(-1, time.perf_counter(), envelope if wait else None, message.seq)
        try:
            swap = swap._replace(fd=self.lanes.begin_swap(str(message.fields["path"])))
        except (RuntimeError, ValueError) as error:  # an unusable path, or the verifier child
            # cannot be reached: a refused swap
            digest = self.lanes.artifact.digest
            self._end_swap(swap, SwapReport(False, str(error), digest, digest, 0.0))
            return None
        self._swap = swap
        self._poller.register(swap.fd, zmq.POLLIN)
        if wait:
            self._waiting[connection_of(envelope)] += 1
            return None  # answered by _finish_swap
        return {"type": STARTED_REPLY[message.type].value, "seq": message.seq}, ()

    def _poll_swap(self, ready: dict[Any, int]) -> None:
        """Finish the pending swap once the child has answered and no job is queued or running
        (jobs run in order); until then its descriptor leaves the poll, which would otherwise
        return at once while an adaptation runs."""
        swap = self._swap
        if swap is None:
            return
        if swap.fd in ready:
            self._poller.unregister(swap.fd)
            swap = self._swap = swap._replace(answered=True)
        if swap.answered and not self._worker.busy:
            self._finish_swap(swap)

    def _finish_swap(self, swap: PendingLinkSwap) -> None:
        """Install the verified candidate in every lane (this thread) and report the swap."""
        self._swap = None
        report = self.lanes.finish_swap([s.lane for s in self._sessions], swap.start)
        self._end_swap(swap, report)

    def _end_swap(self, swap: PendingLinkSwap, report: SwapReport) -> None:
        self._reports.setdefault("*", {})[MessageType.SWAP.value] = to_wire(report)
        if swap.reply_to is not None:
            header = {"type": MessageType.SWAPPED.value, "seq": swap.seq, "report": to_wire(report)}
            self._answer_deferred(swap.reply_to, header)

    def _finish_jobs(self) -> None:
        for job, result, error in self._worker.finished():
            report = to_wire(result)
            kept = report if error is None else {"error": str(error)}
            self._reports.setdefault(job.key, {})[job.kind] = kept
            if job.then is not None:
                try:
                    job.then(result, error)
                except Exception:  # the serving thread carries on (a session closed meanwhile)
                    log.exception("after the %s of %s", job.kind, shown(job.key))
            if job.reply_to is None:
                continue
            if error is not None:
                header = error_header(ErrorCode.INTERNAL, f"{job.kind} failed: {error}", job.seq)
            else:
                finished = FINISHED_REPLY[MessageType(job.kind)]
                header = {"type": finished.value, "seq": job.seq, "report": report}
            self._answer_deferred(job.reply_to, header)

    def _answer_deferred(self, envelope: list[bytes], header: dict[str, Any]) -> None:
        """The reply to a request that waited for its job; the robot's silence counts from
        now (the watchdog skips a connection while it waits)."""
        connection = connection_of(envelope)
        self._waiting[connection] -= 1
        if self._waiting[connection] <= 0:
            del self._waiting[connection]
        self._sessions.answered(connection)
        self._send(envelope + encode(header))

    # ---- watchdog and status ----------------------------------------------------------------
    def _scan(self) -> None:
        events = self._sessions.watchdog(self.config.watchdog_timeout_s, self._waiting)
        self._watchdog_events.extend(events)
        self._watchdog_count += len(events)

    def link_status(self, token: str | None = None) -> dict[str, Any]:
        """The link's part of STATUS: sessions (token prefixes only), watchdog events, error
        counts, and the last ADAPT/RESET report of session ``token`` and the last SWAP's."""
        now = time.monotonic()
        sessions = [
            {
                "session": shown(s.id),
                "stream": s.stream,
                "client": s.client,
                "silent": s.silent,
                "silent_s": round(now - s.last_seen, 3),
                "steps": s.steps,
                "policy_origin": s.origin,
                "adaptation_steps": s.lane.generation,
                "recording_steps": s.episode_steps if s.recording else None,
                "episodes_recorded": s.episodes_recorded,
                "episodes_dropped": s.episodes_dropped,
            }
            for s in self._sessions
        ]
        return {
            "endpoint": self.endpoint,
            "secure": self.secure,
            "journal": None if self.lanes.root is None else str(self.lanes.root),
            "requests": self._requests,
            "busy": {("all" if k == "*" else shown(k)): v for k, v in self._busy().items()} or None,
            "sessions": sessions,
            "watchdog_count": self._watchdog_count,
            "watchdog_events": [e._asdict() for e in self._watchdog_events],
            "errors": dict(self._errors),
            "last_reports": {**self._reports.get("*", {}), **self._reports.get(token or "", {})},
        }


def serve(
    artifact_path: str | Path,
    bind: str = "tcp://127.0.0.1:5555",
    *,
    curve_keys: CurveKeys | None = None,
    insecure: bool = False,
    config: ControllerConfig | None = None,
    link_config: LinkConfig | None = None,
    ready: Callable[[LinkServer], None] | None = None,
) -> None:
    """Load the artifact and serve it, one lane per robot session, until SIGINT/SIGTERM.

    ``config`` is the controller's (journal, safe action, ...): every lane runs with it, its
    journal in the lane's own directory under ``journal_dir`` (by default derived from the
    artifact). ``ready`` is called once the socket is bound (e.g. to print the endpoint).
    """
    from controller.link.lanes import Lanes  # torch and onnxruntime: only when serving

    check_bind(bind, curve_keys, insecure)  # before the (slower) artifact load
    lanes = Lanes.load(artifact_path, config)
    lanes.start_verifier()
    try:
        server = LinkServer(
            lanes, bind, curve_keys=curve_keys, insecure=insecure, config=link_config
        )
    except BaseException:
        lanes.release()
        raise
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGINT, signal.SIGTERM):
            previous[number] = signal.signal(number, lambda *_: server.request_stop())
    try:
        if ready is not None:
            ready(server)
        server.serve_forever()
    finally:
        server.stop()
        for number, handler in previous.items():
            signal.signal(number, handler)


def connection_of(envelope: list[bytes]) -> bytes:
    """The connection a request came on, which a session is bound to: the routing identity,
    or, behind proxies, all the routing frames of the envelope (each robot behind one proxy is
    its own connection)."""
    if len(envelope) <= 2:  # [identity, b""] from a REQ, [identity] from a bare DEALER
        return envelope[0]
    routing = envelope[:-1] if envelope[-1] == b"" else envelope
    return b"".join(len(frame).to_bytes(4, "big") + frame for frame in routing)


def free_tcp_endpoint() -> str:
    """A loopback endpoint whose port was free a moment ago, for a server in another process
    (tests and benches; in-process servers bind ``tcp://127.0.0.1:*`` instead)."""
    context = zmq.Context()
    socket = context.socket(zmq.REP)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    socket.close(linger=0)
    context.term()
    return f"tcp://127.0.0.1:{port}"
