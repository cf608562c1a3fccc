"""Robot-side client of the link: numpy, pyzmq and msgpack only, for embedding in a robot.

``RobotClient.act(obs, reward, done)`` answers within its deadline, always: with the
controller's action, or with the safe action (zeros) when the server is slow, dead, restarting
or refuses the request. A fault closes the REQ socket and a background thread reopens it and
says HELLO again until the server answers: the "lazy pirate" pattern of the ZeroMQ guide
(https://zguide.zeromq.org/docs/chapter4/#Client-Side-Reliability-Lazy-Pirate-Pattern).
Faults are counted and passed to an optional callback. The wire format is docs/protocol.md.

This module must never import torch, onnxruntime or mujoco (tests/test_link_client.py checks).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import zmq

from controller.link.codec import encode, read_seq, unpack_header
from controller.link.protocol import (
    PROTOCOL_VERSION,
    WIRE_DTYPE,
    ErrorCode,
    MessageType,
    ProtocolError,
)
from controller.link.transport import send_frames

log = logging.getLogger(__name__)

_MAX_REPLY_HEADER = 1 << 20  # STATUS replies carry reports and session lists


class LinkError(Exception):
    """A request failed: raised by the management calls (adapt, swap, reset, status) and by
    the constructor; ``act`` and ``episode_end`` report it as a :class:`LinkFault` instead."""

    def __init__(self, message: str, kind: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        """A LinkFault kind, or ``disconnected`` (a reconnect is under way)."""
        self.code = code
        """The ERROR reply's code (``kind == "server_error"``), else None."""


class LinkFault(NamedTuple):
    """One fault seen by the client (passed to ``on_fault``)."""

    kind: str
    """timeout | server_error | bad_reply | non_finite_observation | layout_changed |
    new_session (after a reconnect the server no longer had this session: its adaptations and
    recorded episodes are gone, the initialization serves) | reconnected (not a fault: the
    link is back; ``message`` says after how long)."""
    message: str
    code: ErrorCode | None
    """The ERROR reply's code for ``server_error``, else None."""
    time: float
    """time.monotonic() when it happened."""


class Layout(NamedTuple):
    """What the server's WELCOME says about the artifact it serves."""

    observation_size: int
    action_size: int
    observation_names: tuple[str, ...]
    action_names: tuple[str, ...]
    action_low: np.ndarray
    """[A] float32 actuator lower bounds."""
    action_high: np.ndarray
    """[A] float32 actuator upper bounds."""


class ClientStats(NamedTuple):
    """Counters since the client was made."""

    steps: int
    """act() calls."""
    safe_actions: int
    """act() calls answered with the safe action."""
    reconnects: int
    faults: dict[str, int]
    """LinkFault.kind -> count (``reconnected`` excluded)."""
    connected: bool


def _receive(socket: zmq.Socket[bytes], timeout_ms: int) -> list[bytes] | None:
    """The next reply, or None after ``timeout_ms``. A receive timeout set on the socket costs
    less than a poll before each receive (``Socket.poll`` builds a Poller per call)."""
    if socket.rcvtimeo != timeout_ms:
        socket.rcvtimeo = timeout_ms
    try:
        return socket.recv_multipart()
    except zmq.Again:
        return None


def _code(fields: Mapping[str, Any]) -> ErrorCode | None:
    """The ErrorCode of an ERROR header, None if the code is missing or unknown."""
    try:
        return ErrorCode(int(fields.get("code")))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def layout_from_welcome(fields: Mapping[str, Any]) -> Layout:
    """The :class:`Layout` of a WELCOME header."""
    return Layout(
        observation_size=int(fields["observation_size"]),
        action_size=int(fields["action_size"]),
        observation_names=tuple(fields["observation_names"]),
        action_names=tuple(fields["action_names"]),
        action_low=np.asarray(fields["action_low"], dtype=np.float32),
        action_high=np.asarray(fields["action_high"], dtype=np.float32),
    )


class RobotClient:
    """The robot's end of the link (one REQ socket; calls from several threads take turns).

    ``endpoint``: the server, e.g. ``tcp://127.0.0.1:5555``. ``deadline_ms``: the longest an
    ``act`` waits for its action (whole milliseconds, as ZeroMQ counts). ``server_public_key``:
    the server's CURVE public key (Z85) when it runs with CURVE; ``client_keys`` (public,
    secret): this robot's own pair, None: a fresh one (enough for servers that accept any key
    holder). ``timeout_ms`` bounds every other request but a waiting adapt/swap/reset
    (``adapt_timeout_ms``). The constructor says HELLO and raises :class:`LinkError` if the
    server does not answer within ``timeout_ms``; ``resume``: the token of this robot's earlier
    session to continue (its adapted policy and episodes), else a new session starts from the
    server's current initialization. ``welcome`` holds the WELCOME (``policy_note`` says which
    policy serves and why). The token (``session``) is a secret: do not log it.
    """

    def __init__(
        self,
        endpoint: str,
        deadline_ms: float,
        server_public_key: bytes | None = None,
        *,
        client_keys: tuple[bytes, bytes] | None = None,
        timeout_ms: int = 5000,
        adapt_timeout_ms: int = 120_000,
        reconnect_interval_ms: int = 100,
        on_fault: Callable[[LinkFault], None] | None = None,
        name: str = "robot",
        resume: str | None = None,
    ) -> None:
        if deadline_ms <= 0:
            raise ValueError(f"deadline_ms must be positive, got {deadline_ms}")
        self.endpoint, self.deadline_ms = endpoint, max(1, math.ceil(deadline_ms))
        self.timeout_ms, self.adapt_timeout_ms = timeout_ms, adapt_timeout_ms
        self.reconnect_interval_ms, self.on_fault, self._name = (
            reconnect_interval_ms,
            on_fault,
            name,
        )
        self._server_key = server_public_key
        if server_public_key is not None and client_keys is None:
            client_keys = zmq.curve_keypair()
        self._client_keys = client_keys
        self._context = zmq.Context()
        self._lock, self._stats_lock = threading.RLock(), threading.Lock()
        self._seq = itertools.count(1)
        self._closed = threading.Event()
        self._reconnector: threading.Thread | None = None
        self._episode_open = self._interrupted = False
        self._faults: Counter[str] = Counter()
        self._steps = self._safe_actions = self._reconnects = 0
        self.policy_id, self.adapting = "", False
        socket = self._new_socket()
        try:
            welcome = self._hello(socket, self.timeout_ms, resume=resume)
        except LinkError:
            socket.close(linger=0)
            self._context.term()
            raise
        self.layout = layout_from_welcome(welcome)
        self.welcome: dict[str, Any] = welcome
        self.session: str = welcome["session"]
        self.family = str(welcome.get("family", ""))
        self.safe_action = np.zeros(self.layout.action_size, dtype=np.float32)
        self._socket: zmq.Socket[bytes] | None = socket

    # ---- the control loop --------------------------------------------------------------
    def act(
        self,
        observation: np.ndarray,
        reward: float = 0.0,
        done: bool = False,
        *,
        deterministic: bool = False,
    ) -> np.ndarray:
        """[A] float32 action for ``observation`` [O] within ``deadline_ms``; the safe action
        (zeros) on any link fault, never an exception for one. ``reward`` and ``done`` are the
        outcome of the previous act() of this episode; ``done=True`` says that step ended the
        episode and ``observation`` starts the next. End an episode with no next observation
        (time limit, stop) with episode_end()."""
        obs = np.ascontiguousarray(observation, dtype=np.float32).reshape(-1)
        if obs.shape != (self.layout.observation_size,):
            raise ValueError(
                f"observation has {obs.size} values; the artifact expects "
                f"{self.layout.observation_size} ({', '.join(self.layout.observation_names)})"
            )
        with self._lock:
            self._steps += 1
            start, self._episode_open = not self._episode_open, True
            header: dict[str, Any] = {
                "type": MessageType.STEP,
                "session": self.session,
                "dtype": WIRE_DTYPE,
                "reward": float(reward),
                "done": bool(done),
            }
            if start:
                header["start"] = True
            if deterministic:
                header["deterministic"] = True
            try:
                if not (np.isfinite(obs).all() and math.isfinite(reward)):
                    self._interrupted = True
                    raise LinkError("observation or reward is NaN/inf", "non_finite_observation")
                fields, frames = self._exchange(header, obs, self.deadline_ms)
                action = self._read_action(fields, frames)
            except LinkError as error:
                self._report(error)
                self._safe_actions += 1
                return self.safe_action.copy()
            self.policy_id, self.adapting = str(fields.get("policy")), bool(fields.get("adapting"))
            return action

    def episode_end(self, reward: float, terminated: bool = False) -> dict[str, Any] | None:
        """Close the episode: ``reward`` of its last step; ``terminated`` True when the task
        ended it (a fall), False when it was cut off (time limit). The server's receipt
        ({"recorded": bool, "steps": int, "episodes_ready": int, "batch_ready": bool}), or None
        after a fault."""
        with self._lock:
            if not self._episode_open:
                return None
            self._episode_open = False
            header = {
                "type": MessageType.EPISODE_END,
                "session": self.session,
                "reward": float(reward),
                "terminated": bool(terminated),
            }
            if not math.isfinite(reward):  # the episode is unusable: have the server drop it
                self._report(LinkError(f"final reward is {reward}", "non_finite_observation"))
                self._interrupted, header["reward"] = True, 0.0
            try:
                fields, _ = self._exchange(header, None, self.timeout_ms)
            except LinkError as error:
                self._report(error)
                return None
            return {k: v for k, v in fields.items() if k not in ("type", "seq")}

    # ---- management ---------------------------------------------------------------------
    def adapt(self, wait: bool = True) -> dict[str, Any] | None:
        """One adaptation step on the K recorded episodes. ``wait``: block until its report
        (a dict: accepted, reason, kl, ...); else return None at once and keep acting (actions
        say ``adapting`` meanwhile; STATUS has the report after). Raises LinkError."""
        return self._job(MessageType.ADAPT, wait)

    def reset(self, wait: bool = True) -> None:
        """Serve the initialization again (drops the adaptations). Raises LinkError."""
        self._job(MessageType.RESET, wait)

    def swap(self, path: str, wait: bool = True) -> dict[str, Any] | None:
        """Serve the artifact at ``path`` (on the server's machine) as the initialization. The
        report (``wait``) says ``accepted: false`` with a reason when it is refused; serving
        then continues unchanged. Raises LinkError."""
        return self._job(MessageType.SWAP, wait, path=str(path))

    def status(self) -> dict[str, Any]:
        """The controller's status plus the link's (sessions, watchdog events, last reports)."""
        return dict(self._request({"type": MessageType.STATUS}, self.timeout_ms)["status"])

    def stats(self) -> ClientStats:
        with self._stats_lock:
            faults = {k: v for k, v in self._faults.items() if k != "reconnected"}
        return ClientStats(
            self._steps, self._safe_actions, self._reconnects, faults, self._socket is not None
        )

    def close(self) -> None:
        """Say BYE (so the server's watchdog does not report this robot) and release sockets."""
        self._closed.set()
        with self._lock:
            if self._socket is not None:
                with contextlib.suppress(LinkError):
                    bye = {"type": MessageType.BYE, "session": self.session}
                    self._exchange(bye, None, min(self.timeout_ms, 500))
            if self._socket is not None:
                self._socket.close(linger=0)
                self._socket = None
        if self._reconnector is not None:
            self._reconnector.join(timeout=5.0)
        self._context.term()

    def __enter__(self) -> RobotClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals ------------------------------------------------------------------------
    def _job(self, kind: MessageType, wait: bool, **fields: Any) -> dict[str, Any] | None:
        header = {"type": kind, "wait": wait, **fields}
        reply = self._request(header, self.adapt_timeout_ms if wait else self.timeout_ms)
        return reply.get("report") if wait else None

    def _request(self, header: dict[str, Any], timeout_ms: int) -> dict[str, Any]:
        with self._lock:
            header["session"] = self.session
            return self._exchange(header, None, timeout_ms)[0]

    def _exchange(
        self, header: dict[str, Any], array: np.ndarray | None, timeout_ms: int
    ) -> tuple[dict[str, Any], list[bytes]]:
        """One request and its reply on the live socket; LinkError on any fault."""
        socket = self._socket
        if socket is None:
            self._interrupted |= self._episode_open
            raise LinkError(f"not connected to {self.endpoint}; reconnecting", "disconnected")
        if self._interrupted:
            header["interrupted"] = True
        header["seq"] = seq = next(self._seq)
        send_frames(socket, encode(header, () if array is None else (array,)))
        frames = _receive(socket, timeout_ms)
        if frames is None:
            self._disconnect()
            raise LinkError(f"{header['type']}: no reply within {timeout_ms} ms", "timeout")
        try:
            fields = unpack_header(frames[0], _MAX_REPLY_HEADER)
            if read_seq(fields) != seq:
                raise ProtocolError(ErrorCode.MALFORMED, f"reply seq differs from {seq}")
        except ProtocolError as error:
            self._disconnect()
            raise LinkError(f"bad reply: {error.message}", "bad_reply") from None
        if fields.get("type") == MessageType.ERROR:
            code = _code(fields)
            self._interrupted |= self._episode_open  # the robot applies its own safe action
            if code is ErrorCode.UNKNOWN_SESSION:
                self._disconnect()  # a restarted server: HELLO again in the background
            message = f"server refused {header['type']}: {fields.get('message')}"
            raise LinkError(message, "server_error", code)
        if header.get("interrupted"):
            self._interrupted = False  # the server has dropped the interrupted episode
        return fields, frames[1:]

    def _read_action(self, fields: dict[str, Any], frames: list[bytes]) -> np.ndarray:
        size = self.layout.action_size
        if fields.get("type") != MessageType.ACTION or [len(f) for f in frames] != [4 * size]:
            raise LinkError(f"expected an action of {size} float32, got {fields}", "bad_reply")
        action = np.frombuffer(frames[0], dtype=WIRE_DTYPE)
        if not np.isfinite(action).all():
            raise LinkError("the server sent a non-finite action", "bad_reply")
        # Defence in depth: the controller clips already; a robot never trusts the wire.
        # (minimum/maximum: a fresh float32 array, cheaper than np.clip.)
        return np.minimum(np.maximum(action, self.layout.action_low), self.layout.action_high)

    def _report(self, error: LinkError) -> None:
        """Count a fault and call ``on_fault`` (not for acts while a reconnect runs)."""
        if error.kind == "disconnected":
            return
        with self._stats_lock:  # the reconnect thread reports too
            self._faults[error.kind] += 1
        level = logging.INFO if error.kind == "reconnected" else logging.WARNING
        log.log(level, "robot link %s: %s", error.kind, error)
        if self.on_fault is not None:
            self.on_fault(LinkFault(error.kind, str(error), error.code, time.monotonic()))

    def _disconnect(self) -> None:
        """Lazy pirate: drop the socket (a REQ socket that missed a reply is stuck) and let
        a background thread reconnect."""
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        self._interrupted |= self._episode_open
        alive = self._reconnector is not None and self._reconnector.is_alive()
        if not self._closed.is_set() and not alive:
            self._reconnector = threading.Thread(
                target=self._reconnect_loop, name="robot-link-reconnect", daemon=True
            )
            self._reconnector.start()

    def _reconnect_loop(self) -> None:
        began = time.monotonic()
        while not self._closed.is_set():
            socket = self._new_socket()
            try:
                welcome = self._hello(socket, self.reconnect_interval_ms, resume=self.session)
                layout = layout_from_welcome(welcome)
                if layout[:2] != self.layout[:2]:
                    message = f"server now serves (O, A) = {layout[:2]}, not {self.layout[:2]}"
                    raise LinkError(message, "layout_changed")
            except LinkError as error:
                socket.close(linger=0)
                if error.kind != "timeout":  # answered, but unusable: say why, keep trying
                    self._report(error)
                self._closed.wait(self.reconnect_interval_ms / 1000)
                continue
            with self._lock:
                self.session, self._socket = welcome["session"], socket
                self.welcome = welcome
                self._reconnects += 1
            back = LinkError(f"link back after {time.monotonic() - began:.3f} s", "reconnected")
            self._report(back)
            if not welcome.get("resumed"):
                self._report(LinkError(str(welcome.get("policy_note")), "new_session"))
            return

    def _new_socket(self) -> zmq.Socket[bytes]:
        socket: zmq.Socket[bytes] = self._context.socket(zmq.REQ)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RECONNECT_IVL, 10)  # ms; recover fast once the server is back
        if self._server_key is not None and self._client_keys is not None:
            socket.curve_serverkey = self._server_key
            socket.curve_publickey, socket.curve_secretkey = self._client_keys
        socket.connect(self.endpoint)
        return socket

    @property
    def horizon(self) -> int | None:
        """Most actions per recorded episode (WELCOME ``horizon``; None from an older server)."""
        horizon = self.welcome.get("horizon")
        return None if horizon is None else int(horizon)

    def _hello(self, socket: zmq.Socket[bytes], timeout_ms: int, resume: str | None) -> dict:
        header: dict[str, Any] = {
            "type": MessageType.HELLO,
            "seq": next(self._seq),
            "version": PROTOCOL_VERSION,
            "client": self._name,
        }
        if resume is not None:
            header["resume"] = resume
        send_frames(socket, encode(header))
        frames = _receive(socket, timeout_ms)
        if frames is None:
            raise LinkError(f"no WELCOME from {self.endpoint} within {timeout_ms} ms", "timeout")
        try:
            fields = unpack_header(frames[0], _MAX_REPLY_HEADER)
        except ProtocolError as error:
            raise LinkError(f"bad WELCOME: {error.message}", "bad_reply") from None
        if fields.get("type") == MessageType.ERROR:
            message = f"server refused HELLO: {fields.get('message')}"
            raise LinkError(message, "server_error", _code(fields))
        if fields.get("type") != MessageType.WELCOME:
            raise LinkError(f"expected WELCOME, got {fields.get('type')!r}", "bad_reply")
        return fields
