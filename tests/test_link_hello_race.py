"""A HELLO the robot gave up on, read by the server after the robot's later HELLO, over real
ZeroMQ sockets: it must not take the session's binding from the newer connection."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from link_support import TIMEOUT_MS, family_artifact

from controller import ControllerConfig, load_artifact
from controller.link.lanes import Lanes
from controller.link.server import LinkServer

pytestmark = pytest.mark.timeout(120)

DISCONNECT_S = 0.3
"""Time for the server's I/O thread to see a closed connection's end."""


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return family_artifact(tmp_path_factory.mktemp("race") / "init")


@pytest.fixture()
def server(artifact: Path) -> Iterator[LinkServer]:
    """A server driven by the test, one request at a time, so that the order in which it
    handles requests is the test's (no serving thread)."""
    lanes = Lanes(load_artifact(artifact), ControllerConfig(seed=0, journal=False))
    with LinkServer(lanes, "tcp://127.0.0.1:*") as srv:
        yield srv


@pytest.fixture()
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)  # closes the sockets a failed test left open


def connect(context: zmq.Context[zmq.Socket[bytes]], server: LinkServer) -> zmq.Socket[bytes]:
    socket = context.socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(server.endpoint)
    return socket


def delivered(server: LinkServer) -> list[bytes]:
    """The next request the server's socket holds, not yet handled."""
    assert server._socket.poll(TIMEOUT_MS, zmq.POLLIN), "no request reached the server"
    frames, _ = server._receive(zmq.NOBLOCK)
    return frames


def reply(socket: zmq.Socket[bytes]) -> dict[str, Any]:
    assert socket.poll(TIMEOUT_MS, zmq.POLLIN), "no reply"
    return dict(msgpack.unpackb(socket.recv_multipart()[0]))


def call(server: LinkServer, socket: zmq.Socket[bytes], header: dict[str, Any]) -> dict[str, Any]:
    socket.send(msgpack.packb(header))
    server._handle(delivered(server))
    return reply(socket)


def hello(seq: int, resume: str | None = None) -> dict[str, Any]:
    header: dict[str, Any] = {"type": "hello", "seq": seq, "version": 1, "client": "arm"}
    return header if resume is None else {**header, "resume": resume}


@pytest.mark.parametrize(
    ("stale_seq", "newer_seq"),
    [(3, 4), (1, 1)],
    ids=["one counter across connections", "counter restarted per connection"],
)
def test_a_stale_hello_answered_last_leaves_the_session_on_the_newer_connection(
    server: LinkServer, context: zmq.Context[zmq.Socket[bytes]], stale_seq: int, newer_seq: int
) -> None:
    first = connect(context, server)
    token = call(server, first, hello(1))["session"]
    status = {"type": "status", "seq": 2, "session": token}
    assert call(server, first, status)["type"] == "status_reply"
    first.close()  # the robot lost this connection

    stale = connect(context, server)  # its HELLO reaches the server, the robot times out
    stale.send(msgpack.packb(hello(stale_seq, token)))
    stale_hello = delivered(server)
    stale.close()
    time.sleep(DISCONNECT_S)

    newer = connect(context, server)  # the robot's next try, answered first
    welcome = call(server, newer, hello(newer_seq, token))
    assert welcome["type"] == "welcome" and welcome["resumed"], welcome
    server._handle(stale_hello)  # the server reaches the stale HELLO only now

    status = {"type": "status", "seq": newer_seq + 1, "session": token}
    answer = call(server, newer, status)
    assert answer["type"] == "status_reply", answer
    link = answer["status"]["link"]
    assert len(link["sessions"]) == 1 and link["sessions"][0]["policy_origin"] == "resumed"
    newer.close()


def test_a_new_session_whose_welcome_cannot_be_delivered_is_not_kept(
    server: LinkServer, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    robot = connect(context, server)
    token = call(server, robot, hello(1))["session"]
    gone = connect(context, server)
    gone.send(msgpack.packb(hello(1)))
    frames = delivered(server)
    gone.close()
    time.sleep(DISCONNECT_S)
    server._handle(frames)
    answer = call(server, robot, {"type": "status", "seq": 2, "session": token})
    assert [s["session"] for s in answer["status"]["link"]["sessions"]] == [token[:8]]
    robot.close()


def test_a_client_that_restarts_its_counter_per_connection_resumes(
    artifact: Path, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    lanes = Lanes(load_artifact(artifact), ControllerConfig(seed=0, journal=False))
    token: str | None = None
    with LinkServer(lanes, "tcp://127.0.0.1:*").start() as server:
        for attempt in range(3):
            socket = connect(context, server)
            header = hello(1, token)
            socket.send(msgpack.packb(header))
            welcome = reply(socket)
            assert welcome["type"] == "welcome" and welcome["resumed"] == (attempt > 0)
            token = welcome["session"]
            for seq in range(2, 5):
                socket.send(msgpack.packb({"type": "status", "seq": seq, "session": token}))
                assert reply(socket)["type"] == "status_reply"
            socket.close()
