"""The robot-side client: import weight, deadlines, safe actions, lazy-pirate reconnects."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from link_support import family_artifact, python_process

from controller import ControllerConfig, load_artifact
from controller.link.client import LinkError, LinkFault, RobotClient
from controller.link.lanes import Lanes
from controller.link.server import LinkServer

pytestmark = pytest.mark.timeout(120)
OBS = np.zeros(17, dtype=np.float32)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return family_artifact(tmp_path_factory.mktemp("client") / "init", step_size=0.01)


@pytest.fixture()
def lanes(artifact: Path) -> Lanes:
    return Lanes(load_artifact(artifact), ControllerConfig(seed=0))


@pytest.fixture()
def server(lanes: Lanes) -> Iterator[LinkServer]:
    with LinkServer(lanes, "tcp://127.0.0.1:*").start() as srv:
        yield srv


def test_importing_the_client_loads_no_torch_onnxruntime_or_mujoco() -> None:
    code = (
        "import sys, controller.link.client, controller.link.codec\n"
        "heavy = sorted(m for m in ('torch', 'onnxruntime', 'mujoco', 'sim', 'pydantic')"
        " if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
    )
    process = python_process(code)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "heavy: []" in output, output


def test_act_returns_the_controllers_clipped_float32_action(server: LinkServer) -> None:
    with RobotClient(server.endpoint, deadline_ms=1000) as client:
        assert client.layout.observation_size == 17 and client.family == "cheetah_velocity"
        action = client.act(OBS)
        assert action.dtype == np.float32 and action.shape == (6,)
        assert np.all(np.abs(action) <= 1.0) and np.any(action != 0.0)
        assert client.policy_id and client.stats().safe_actions == 0


def test_a_wrong_sized_observation_is_a_programming_error(server: LinkServer) -> None:
    with RobotClient(server.endpoint, deadline_ms=1000) as client, pytest.raises(ValueError):
        client.act(np.zeros(16, np.float32))


def test_a_nan_observation_gets_the_safe_action_without_asking(server: LinkServer) -> None:
    faults: list[LinkFault] = []
    with RobotClient(server.endpoint, deadline_ms=1000, on_fault=faults.append) as client:
        requests = server.link_status()["requests"]
        bad = OBS.copy()
        bad[3] = np.nan
        np.testing.assert_array_equal(client.act(bad), np.zeros(6, np.float32))
        assert server.link_status()["requests"] == requests
        assert [f.kind for f in faults] == ["non_finite_observation"]


def test_dead_server_gives_safe_actions_within_the_deadline_then_reconnects(
    lanes: Lanes,
) -> None:
    server = LinkServer(lanes, "tcp://127.0.0.1:*").start()
    endpoint = server.endpoint
    faults: list[LinkFault] = []
    client = RobotClient(endpoint, deadline_ms=20, reconnect_interval_ms=50, on_fault=faults.append)
    try:
        assert np.any(client.act(OBS) != 0.0)
        server.stop()
        tick = time.perf_counter()
        action = client.act(OBS)
        assert time.perf_counter() - tick < 0.2  # 20 ms deadline, generous for a shared CPU
        np.testing.assert_array_equal(action, np.zeros(6, np.float32))
        tick = time.perf_counter()
        np.testing.assert_array_equal(client.act(OBS), np.zeros(6, np.float32))
        assert time.perf_counter() - tick < 0.005  # disconnected: no wait at all
        assert client.stats().faults == {"timeout": 1} and not client.stats().connected
        server = LinkServer(lanes, endpoint).start()  # restarted on the same endpoint
        deadline = time.monotonic() + 10
        while not client.stats().connected and time.monotonic() < deadline:
            client.act(OBS)
            time.sleep(0.01)
        assert np.any(client.act(OBS) != 0.0)
        stats = client.stats()
        assert stats.reconnects == 1 and stats.safe_actions >= 2
        assert [f.kind for f in faults] == ["timeout", "reconnected"]
    finally:
        client.close()
        server.stop()


def test_management_calls_raise_when_the_server_is_gone(lanes: Lanes) -> None:
    server = LinkServer(lanes, "tcp://127.0.0.1:*").start()
    client = RobotClient(server.endpoint, deadline_ms=20, timeout_ms=200)
    try:
        assert client.status()["family"] == "cheetah_velocity"
        server.stop()
        with pytest.raises(LinkError, match="no reply"):
            client.status()
        with pytest.raises(LinkError, match="not connected"):
            client.adapt()
    finally:
        client.close()


def test_no_server_at_startup_is_a_clear_error() -> None:
    with pytest.raises(LinkError, match="no WELCOME"):
        RobotClient("tcp://127.0.0.1:1", deadline_ms=5, timeout_ms=100)


class FakeServer:
    """A ROUTER that welcomes, then answers every STEP with a chosen action frame."""

    def __init__(self, action: bytes) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.action = action
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.socket.poll(50):
                continue
            identity, empty, header, *_ = self.socket.recv_multipart()
            request = msgpack.unpackb(header)
            reply: dict = {"seq": request["seq"]}
            frames = []
            if request["type"] == "hello":
                reply |= {
                    "type": "welcome",
                    "session": "s",
                    "observation_size": 17,
                    "action_size": 6,
                    "observation_names": ["o"] * 17,
                    "action_names": ["a"] * 6,
                    "action_low": [-1.0] * 6,
                    "action_high": [1.0] * 6,
                }
            elif request["type"] == "step":
                reply |= {"type": "action", "policy": "p", "adapting": False}
                frames = [self.action]
            else:
                reply |= {"type": "ok"}
            self.socket.send_multipart([identity, empty, msgpack.packb(reply), *frames])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.socket.close(linger=0)
        self.context.term()


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (np.full(6, 7.0, "<f4").tobytes(), np.ones(6, np.float32)),  # clipped on the robot too
        (np.full(6, np.nan, "<f4").tobytes(), np.zeros(6, np.float32)),  # never a NaN command
        (np.zeros(5, "<f4").tobytes(), np.zeros(6, np.float32)),  # wrong size: safe action
    ],
    ids=["too large", "NaN", "wrong size"],
)
def test_the_client_never_trusts_the_wire(action: bytes, expected: np.ndarray) -> None:
    server = FakeServer(action)
    try:
        with RobotClient(server.endpoint, deadline_ms=1000) as client:
            np.testing.assert_array_equal(client.act(OBS), expected)
    finally:
        server.close()
