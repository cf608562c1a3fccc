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

log = logging.getLogger(__name__)

_MAX_REPLY_HEADER = 1 << 20  # STATUS replies carry reports and session lists


class LinkError(Exception):
    """A management request (adapt, swap, status) failed; ``code`` is set for ERROR replies."""

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class LinkFault(NamedTuple):
    """One fault seen by the client (passed to ``on_fault``)."""

    kind: str
    """timeout | server_error | bad_reply | non_finite_observation | layout_changed |
    reconnected (not a fault: the link is back; ``message`` says after how long)."""
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
    """The robot's end of the link (one REQ socket; not for concurrent use from threads).

    ``endpoint``: the server, e.g. ``tcp://127.0.0.1:5555``. ``deadline_ms``: the longest an
    ``act`` waits for its action (ZeroMQ polls in whole milliseconds). ``server_public_key``:
    the server's CURVE public key (Z85, 40 bytes) when it runs with CURVE; ``client_keys``
    (public, secret) are this robot's own, None: a fresh pair (enough for servers that accept
    any key holder). ``timeout_ms``: the limit for every other request except a waiting adapt
    or swap (``adapt_timeout_ms``). The constructor says HELLO and raises :class:`LinkError`
    if the server does not answer within ``timeout_ms``.
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
    ) -> None:
        if deadline_ms <= 0:
            raise ValueError(f"deadline_ms must be positive, got {deadline_ms}")
        self.endpoint = endpoint
        self.deadline_ms = max(1, math.ceil(deadline_ms))
        self.timeout_ms = timeout_ms
        self.adapt_timeout_ms = adapt_timeout_ms
        self.reconnect_interval_ms = reconnect_interval_ms
        self.on_fault = on_fault
        self._server_key = server_public_key
        if server_public_key is not None and client_keys is None:
            client_keys = zmq.curve_keypair()
        self._client_keys = client_keys
        self._name = name
        self._context = zmq.Context()
        self._lock = threading.RLock()
        self._stats_lock = threading.Lock()
        self._seq = itertools.count(1)
        self._closed = threading.Event()
        self._reconnector: threading.Thread | None = None
        self._episode_open = False
        self._interrupted = False
        self._faults: Counter[str] = Counter()
        self._steps = self._safe_actions = self._reconnects = 0
        self.policy_id = ""
        self.adapting = False
        socket = self._new_socket()
        try:
            welcome = self._hello(socket, self.timeout_ms, resume=None)
        except LinkError:
            socket.close(linger=0)
            self._context.term()
            raise
        self.layout = layout_from_welcome(welcome)
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
        """[A] float32 action for ``observation`` [O], within ``deadline_ms``, never raising
        for a link fault. ``reward`` and ``done`` are the outcome of the previous act() of this
        episode; ``done=True`` says that step ended the episode and ``observation`` starts the
        next one. End an episode without a next one (time limit, stop) with episode_end()."""
        obs = np.ascontiguousarray(observation, dtype=np.float32).reshape(-1)
        if obs.shape != (self.layout.observation_size,):
            raise ValueError(
                f"observation has {obs.size} values; the artifact expects "
                f"{self.layout.observation_size} ({', '.join(self.layout.observation_names)})"
            )
        with self._lock:
            self._steps += 1
            start = not self._episode_open
            self._episode_open = True
            if not (np.isfinite(obs).all() and math.isfinite(reward)):
                self._interrupted = True
                self._fault("non_finite_observation", "observation or reward is NaN/inf")
                return self._safe()
            header: dict[str, Any] = {
                "type": MessageType.STEP.value,
                "seq": 0,
                "session": self.session,
                "dtype": WIRE_DTYPE,
                "reward": float(reward),
                "done": bool(done),
            }
            if start:
                header["start"] = True
            if deterministic:
                header["deterministic"] = True
            reply = self._exchange(header, obs, self.deadline_ms)
            if reply is None:
                return self._safe()
            fields, frames = reply
            action = self._read_action(fields, frames)
            if action is None:
                return self._safe()
            self.policy_id = str(fields.get("policy", ""))
            self.adapting = bool(fields.get("adapting", False))
            return action

    def episode_end(self, reward: float, terminated: bool = False) -> dict[str, Any] | None:
        """Close the episode: ``reward`` of its last step; ``terminated`` True when the task
        ended it (a fall), False when it was cut off (time limit). Returns the server's
        receipt ({"recorded": bool, "steps": int, "episodes": int, ...}) or None on a fault."""
        with self._lock:
            if not self._episode_open:
                return None
            self._episode_open = False
            if not math.isfinite(reward):
                self._interrupted = True
                self._fault("non_finite_observation", f"final reward is {reward}")
                reward = 0.0
            header = {
                "type": MessageType.EPISODE_END.value,
                "seq": 0,
                "session": self.session,
                "reward": float(reward),
                "terminated": bool(terminated),
            }
            reply = self._exchange(header, None, self.timeout_ms)
            if reply is None or reply[0].get("type") != MessageType.EPISODE.value:
                return None
            return {k: v for k, v in reply[0].items() if k not in ("type", "seq")}

    # ---- management ---------------------------------------------------------------------
    def adapt(self, wait: bool = True) -> dict[str, Any] | None:
        """Ask the controller for one adaptation step on its K recorded episodes. ``wait``:
        block until its report comes back (returned as a dict: accepted, reason, kl, ...);
        else return None at once and keep acting (action replies say ``adapting`` meanwhile,
        STATUS holds the report afterwards). Raises LinkError."""
        header = {"type": MessageType.ADAPT.value, "wait": wait}
        fields = self._request(header, self.adapt_timeout_ms if wait else self.timeout_ms)
        return fields.get("report") if wait else None

    def reset(self, wait: bool = True) -> None:
        """Serve the initialization again (drops the adaptations). Raises LinkError."""
        header = {"type": MessageType.RESET.value, "wait": wait}
        self._request(header, self.adapt_timeout_ms if wait else self.timeout_ms)

    def swap(self, path: str, wait: bool = True) -> dict[str, Any] | None:
        """Replace the served initialization by the artifact at ``path`` on the server's
        machine. Returns the swap report (``wait``; its ``accepted`` is False with a reason
        when the artifact is refused, serving then continues unchanged) or None."""
        header = {"type": MessageType.SWAP.value, "path": str(path), "wait": wait}
        fields = self._request(header, self.adapt_timeout_ms if wait else self.timeout_ms)
        return fields.get("report") if wait else None

    def status(self) -> dict[str, Any]:
        """The controller's status plus the link's (sessions, watchdog events, last reports)."""
        return dict(self._request({"type": MessageType.STATUS.value}, self.timeout_ms)["status"])

    def stats(self) -> ClientStats:
        with self._lock:
            return ClientStats(
                self._steps,
                self._safe_actions,
                self._reconnects,
                {k: v for k, v in self._faults.items() if k != "reconnected"},
                self._socket is not None,
            )

    def close(self) -> None:
        """Say BYE (so the server's watchdog does not report this robot) and release sockets."""
        self._closed.set()
        with self._lock:
            if self._socket is not None:
                header = {"type": MessageType.BYE.value, "seq": 0, "session": self.session}
                self._exchange(header, None, min(self.timeout_ms, 500), report=False)
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
    def _safe(self) -> np.ndarray:
        self._safe_actions += 1
        return self.safe_action.copy()

    def _request(self, header: dict[str, Any], timeout_ms: int) -> dict[str, Any]:
        with self._lock:
            if self._socket is None:
                raise LinkError(f"not connected to {self.endpoint}; reconnecting in the background")
            header["seq"] = 0
            header["session"] = self.session
            reply = self._exchange(header, None, timeout_ms, report=False, raise_errors=True)
            assert reply is not None  # raise_errors=True raises instead of returning None
            return reply[0]

    def _exchange(
        self,
        header: dict[str, Any],
        array: np.ndarray | None,
        timeout_ms: int,
        *,
        report: bool = True,
        raise_errors: bool = False,
    ) -> tuple[dict[str, Any], list[bytes]] | None:
        """One request and its reply on the live socket, with every fault handled."""
        socket = self._socket
        if socket is None:
            if self._episode_open:
                self._interrupted = True
            if raise_errors:
                raise LinkError(f"not connected to {self.endpoint}")
            return None
        if self._interrupted:
            header["interrupted"] = True
        header["seq"] = seq = next(self._seq)
        socket.send_multipart(encode(header, () if array is None else (array,)))
        frames = _receive(socket, timeout_ms)
        if frames is None:
            self._disconnect("timeout", f"no reply within {timeout_ms} ms (seq {seq})", report)
            if raise_errors:
                raise LinkError(f"{header['type']} got no reply within {timeout_ms} ms")
            return None
        try:
            fields = unpack_header(frames[0], _MAX_REPLY_HEADER)
            if read_seq(fields) != seq:
                raise ProtocolError(ErrorCode.MALFORMED, f"reply seq differs from {seq}")
        except ProtocolError as error:
            self._disconnect("bad_reply", error.message, report)
            if raise_errors:
                raise LinkError(f"bad reply from the server: {error.message}") from None
            return None
        if fields.get("type") == MessageType.ERROR.value:
            self._on_error(fields, report, raise_errors)
            return None
        if header.get("interrupted"):
            self._interrupted = False  # the server has dropped the interrupted episode
        return fields, frames[1:]

    def _on_error(self, fields: dict[str, Any], report: bool, raise_errors: bool) -> None:
        """Handle an ERROR reply; raises LinkError with ``raise_errors``."""
        code = _code(fields)
        message = str(fields.get("message", "no message"))
        if self._episode_open:
            self._interrupted = True  # the robot applies an action the server did not send
        if code is ErrorCode.UNKNOWN_SESSION:
            self._disconnect("server_error", message, report, code)
        elif report:
            self._fault("server_error", message, code)
        if raise_errors:
            raise LinkError(f"server refused: {message}", code)

    def _read_action(self, fields: dict[str, Any], frames: list[bytes]) -> np.ndarray | None:
        size = self.layout.action_size
        if (
            fields.get("type") != MessageType.ACTION.value
            or len(frames) != 1
            or (len(frames[0]) != 4 * size)
        ):
            self._fault("bad_reply", f"expected an action of {size} float32, got {fields}")
            return None
        action = np.frombuffer(frames[0], dtype=WIRE_DTYPE)
        if not np.isfinite(action).all():
            self._fault("bad_reply", "the server sent a non-finite action")
            return None
        # Defence in depth: the controller clips already; a robot never trusts the wire.
        # (minimum/maximum: a fresh float32 array, a few µs cheaper than np.clip.)
        return np.minimum(np.maximum(action, self.layout.action_low), self.layout.action_high)

    def _fault(self, kind: str, message: str, code: ErrorCode | None = None) -> None:
        with self._stats_lock:  # the reconnect thread reports too
            self._faults[kind] += 1
        fault = LinkFault(kind, message, code, time.monotonic())
        log.warning("robot link %s: %s", kind, message)
        if self.on_fault is not None:
            self.on_fault(fault)

    def _disconnect(
        self, kind: str, message: str, report: bool, code: ErrorCode | None = None
    ) -> None:
        """Lazy pirate: drop the socket (a REQ socket that missed a reply is stuck) and let
        the background thread reconnect."""
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        if self._episode_open:
            self._interrupted = True
        if report:
            self._fault(kind, message, code)
        if not self._closed.is_set() and (
            self._reconnector is None or not self._reconnector.is_alive()
        ):
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
            except LinkError as error:
                socket.close(linger=0)
                self._closed.wait(self.reconnect_interval_ms / 1000)
                if error.code is not None:  # answered, but refused: say why, keep trying
                    self._fault("server_error", str(error), error.code)
                continue
            layout = layout_from_welcome(welcome)
            if layout[:2] != self.layout[:2]:
                socket.close(linger=0)
                self._fault(
                    "layout_changed", f"server now serves {layout[:2]}, not {self.layout[:2]}"
                )
                self._closed.wait(self.reconnect_interval_ms / 1000)
                continue
            with self._lock:
                self.session = welcome["session"]
                self._socket = socket
                self._reconnects += 1
            self._fault("reconnected", f"link back after {time.monotonic() - began:.3f} s")
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

    def _hello(self, socket: zmq.Socket[bytes], timeout_ms: int, resume: str | None) -> dict:
        header: dict[str, Any] = {
            "type": MessageType.HELLO.value,
            "seq": next(self._seq),
            "version": PROTOCOL_VERSION,
            "client": self._name,
        }
        if resume is not None:
            header["resume"] = resume
        socket.send_multipart(encode(header))
        frames = _receive(socket, timeout_ms)
        if frames is None:
            raise LinkError(f"no WELCOME from {self.endpoint} within {timeout_ms} ms")
        try:
            fields = unpack_header(frames[0], _MAX_REPLY_HEADER)
        except ProtocolError as error:
            raise LinkError(f"bad WELCOME from {self.endpoint}: {error.message}") from None
        if fields.get("type") == MessageType.ERROR.value:
            raise LinkError(f"server refused HELLO: {fields.get('message')}", _code(fields))
        if fields.get("type") != MessageType.WELCOME.value:
            raise LinkError(f"expected WELCOME, got {fields.get('type')!r}")
        return fields
