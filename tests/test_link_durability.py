"""kill -9 of a serving process at random points of a scripted robot run loses nothing done.

A completed episode is one whose EPISODE_END was answered ``recorded: true``; an accepted
adaptation is one whose ADAPT was answered ``accepted: true``. After the server is killed and
restarted with the same arguments, the robot resumes its session and STATUS must show every
one of them (the journal is on by default; here its directory is given explicitly).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from link_support import family_artifact, server_process

from controller.link.client import LinkError, RobotClient
from controller.link.protocol import ErrorCode
from controller.link.server import free_tcp_endpoint

K, HORIZON = 2, 12
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


class Ledger:
    """What the robot was told was done, and what was in flight when the server died."""

    def __init__(self) -> None:
        self.recorded = 0
        """Episodes answered recorded since the last answered adaptation."""
        self.accepted = 0
        self.policy = ""
        self.episode_in_flight = False
        self.adapt_in_flight = False


def scripted_run(client: RobotClient, rng: np.random.Generator, stop: threading.Event) -> Ledger:
    """Episodes of random length and an ADAPT after every K recorded ones, until ``stop``."""
    ledger = Ledger()
    while not stop.is_set():
        length = int(rng.integers(3, HORIZON + 1))
        for t in range(length):
            client.act(rng.normal(size=17).astype(np.float32), reward=float(t))
        ledger.episode_in_flight = True
        receipt = client.episode_end(1.0)
        if receipt is None:
            return ledger  # the server died during it: unknown
        ledger.episode_in_flight = False
        ledger.recorded += bool(receipt["recorded"])
        if ledger.recorded == K:
            ledger.adapt_in_flight = True
            try:
                report = client.adapt()
            except LinkError:
                return ledger
            ledger.adapt_in_flight = False
            assert report is not None
            ledger.recorded = 0
            if report["accepted"]:
                ledger.accepted, ledger.policy = ledger.accepted + 1, report["policy_id"]
    return ledger


def _status_once_resumed(client: RobotClient, deadline: float) -> dict:
    """STATUS, resuming again while the server says the session is bound elsewhere.

    Under load a reconnect's HELLO can time out at the client after the server answered it;
    a later HELLO then binds the session to the new socket, but the server may still read the
    late one afterwards and bind it back to the dead socket. The protocol's answer is
    UNKNOWN_SESSION and a HELLO with resume, which the client sends by itself."""
    while True:
        try:
            return client.status()
        except LinkError as error:
            if error.code is not ErrorCode.UNKNOWN_SESSION or time.monotonic() > deadline:
                raise
        while not client.stats().connected:
            assert time.monotonic() < deadline, "no reconnect after UNKNOWN_SESSION"
            time.sleep(0.02)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_at_a_random_point_loses_no_completed_episode_or_adaptation(
    tmp_path: Path, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    artifact = family_artifact(tmp_path / "init", horizon=HORIZON, step_size=0.01)
    endpoint, journal = free_tcp_endpoint(), tmp_path / "journal"
    stop = threading.Event()
    with server_process(artifact, endpoint, journal) as server:
        client = RobotClient(
            endpoint,
            deadline_ms=500,
            timeout_ms=3000,
            adapt_timeout_ms=5000,
            reconnect_interval_ms=50,
        )

        def kill() -> None:
            server.send_signal(signal.SIGKILL)
            stop.set()

        timer = threading.Timer(float(rng.uniform(0.5, 4.0)), kill)
        timer.start()
        ledger = scripted_run(client, rng, stop)
        timer.join()
        server.wait(timeout=10)
    with server_process(artifact, endpoint, journal) as restarted:
        deadline = time.monotonic() + 60
        while not (client.stats().reconnects and client.stats().connected):
            assert time.monotonic() < deadline and restarted.poll() is None, "no reconnect"
            client.act(np.zeros(17, np.float32))
            time.sleep(0.02)
        # restored from the journal (or, after a second reconnect, resumed from memory)
        assert client.welcome["policy_origin"] in ("restored", "resumed"), client.welcome
        status = _status_once_resumed(client, deadline)
        steps, ready = status["adaptation_steps"], status["episodes_ready"]
        if ledger.adapt_in_flight:  # it may or may not have happened before the kill
            assert steps in (ledger.accepted, ledger.accepted + 1), (steps, vars(ledger))
        else:
            assert steps == ledger.accepted, (status, vars(ledger))
            if ledger.accepted:
                assert status["policy_id"] == ledger.policy
            # an EPISODE_END in flight may have been recorded before the kill
            assert ready - ledger.recorded in ((0, 1) if ledger.episode_in_flight else (0,))
        client.close()
