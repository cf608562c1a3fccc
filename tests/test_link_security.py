"""CURVE on the link: only a client with the right keys gets an action."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
from link_support import REPO, RawPeer, family_artifact

from controller import ControllerConfig, load_artifact
from controller.link.client import LinkError, RobotClient
from controller.link.lanes import Lanes
from controller.link.security import (
    CurveKeys,
    LinkSecurityError,
    load_key_pair,
    load_public_key,
    make_curve_keys,
)
from controller.link.server import LinkServer

pytestmark = pytest.mark.timeout(120)
OBS = np.zeros(17, dtype=np.float32)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """server.key(_secret), robot.key(_secret) and other.key(_secret) authorized,
    stranger.key(_secret) not."""
    root = tmp_path_factory.mktemp("keys")
    make_curve_keys(root, "server")
    make_curve_keys(root, "stranger")
    make_curve_keys(root, "other")
    _, robot_secret = make_curve_keys(root, "robot")
    authorized = root / "authorized"
    authorized.mkdir()
    for name in ("robot", "other"):
        (authorized / f"{name}.key").write_bytes((root / f"{name}.key").read_bytes())
    assert robot_secret.name == "robot.key_secret"
    return root


@pytest.fixture(scope="module")
def lanes(tmp_path_factory: pytest.TempPathFactory) -> Lanes:
    artifact = family_artifact(tmp_path_factory.mktemp("secure") / "init")
    return Lanes(load_artifact(artifact), ControllerConfig(journal=False))


@pytest.fixture()
def server(lanes: Lanes, keys: Path) -> Iterator[LinkServer]:
    curve = CurveKeys(
        server_secret_file=keys / "server.key_secret", authorized_dir=keys / "authorized"
    )
    # A network bind is allowed because CURVE protects it.
    with LinkServer(lanes, "tcp://0.0.0.0:*", curve_keys=curve).start() as srv:
        yield srv


def loopback(server: LinkServer) -> str:
    return server.endpoint.replace("0.0.0.0", "127.0.0.1")


def test_an_authorized_robot_gets_actions(server: LinkServer, keys: Path) -> None:
    server_key = load_public_key(keys / "server.key")
    robot = load_key_pair(keys / "robot.key_secret")
    with RobotClient(loopback(server), 2000, server_key, client_keys=robot) as client:
        assert np.any(client.act(OBS) != 0.0)
        assert client.status()["link"]["secure"] is True


def test_a_session_resumes_only_with_the_key_that_opened_it(server: LinkServer, keys: Path) -> None:
    server_key = load_public_key(keys / "server.key")
    robot = load_key_pair(keys / "robot.key_secret")
    other = load_key_pair(keys / "other.key_secret")
    with RobotClient(loopback(server), 2000, server_key, client_keys=robot) as first:
        token = first.session
        with RobotClient(
            loopback(server), 2000, server_key, client_keys=other, resume=token
        ) as impostor:  # an authorized robot, but not the one that opened the session
            assert not impostor.welcome["resumed"] and impostor.session != token
        with RobotClient(
            loopback(server), 2000, server_key, client_keys=robot, resume=token
        ) as again:  # the same robot on a new connection
            assert again.welcome["resumed"] and again.session == token


@pytest.mark.parametrize("who", ["stranger", "wrong server key", "no curve"])
def test_a_client_without_the_right_keys_gets_no_action(
    server: LinkServer, keys: Path, who: str
) -> None:
    endpoint = loopback(server)
    if who == "no curve":  # a plain REQ socket: the handshake never completes
        peer = RawPeer(endpoint)
        try:
            with pytest.raises(TimeoutError):
                peer.call({"type": "hello", "version": 1}, timeout_ms=300)
        finally:
            peer.close()
        return
    server_key = load_public_key(keys / "server.key")
    client_keys = load_key_pair(keys / "stranger.key_secret")
    if who == "wrong server key":
        server_key = load_public_key(keys / "stranger.key")
        client_keys = load_key_pair(keys / "robot.key_secret")
    with pytest.raises(LinkError, match="no WELCOME"):
        RobotClient(endpoint, 50, server_key, client_keys=client_keys, timeout_ms=300)


def test_unusable_keys_are_refused_with_a_reason(lanes: Lanes, keys: Path) -> None:
    public_only = CurveKeys(server_secret_file=keys / "server.key")
    with pytest.raises(LinkSecurityError, match="only a public key"):
        LinkServer(lanes, "tcp://127.0.0.1:*", curve_keys=public_only)
    missing = CurveKeys(
        server_secret_file=keys / "server.key_secret", authorized_dir=keys / "nowhere"
    )
    with pytest.raises(LinkSecurityError, match="does not exist"):
        LinkServer(lanes, "tcp://127.0.0.1:*", curve_keys=missing)
    assert zmq.has("curve")


def test_the_serve_command_refuses_a_network_bind_without_keys(tmp_path: Path) -> None:
    artifact = family_artifact(tmp_path / "init")
    command = [
        sys.executable,
        "-m",
        "controller.link",
        "serve",
        str(artifact),
        "--bind",
        "tcp://0.0.0.0:0",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "--insecure" in result.stderr and "Traceback" not in result.stderr


def test_the_start_up_note_tells_the_two_curve_modes_apart(
    server: LinkServer, lanes: Lanes, keys: Path
) -> None:
    assert f"only the robots whose keys are in {keys / 'authorized'}" in server.security_note()
    open_door = CurveKeys(server_secret_file=keys / "server.key_secret")
    with LinkServer(lanes, "tcp://127.0.0.1:*", curve_keys=open_door) as any_key:
        assert "any robot that knows the server's public key" in any_key.security_note()
