"""The whole robot path in separate processes: sim robot <-> link <-> controller, and its faults."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from link_support import (
    REPO,
    family_artifact,
    python_process,
    server_process,
    sim_robot_process,
    wait_for_line,
)
from shipped import finished_artifact

from controller.link.client import RobotClient
from controller.link.server import free_tcp_endpoint
from controller.link.sim_robot import run_episode
from sim.families import get_family
from sim.tasks import VelocityTask

pytestmark = pytest.mark.timeout(240)
HORIZON = 30


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A small first step keeps the KL of one step from a fresh initialization under max_kl.
    root = tmp_path_factory.mktemp("e2e")
    return family_artifact(root / "init", horizon=HORIZON, step_size=0.01)


def test_sim_robot_process_adapts_through_a_server_process(artifact: Path, tmp_path: Path) -> None:
    endpoint = free_tcp_endpoint()
    with server_process(artifact, endpoint, tmp_path / "journal"):
        robot = sim_robot_process(
            endpoint,
            *("--target-velocity", "1.0", "--episodes", "2", "--adapted-episodes", "2"),
            *("--horizon", str(HORIZON), "--json"),
        )
    assert robot.returncode == 0, robot.stderr
    result = json.loads(robot.stdout)
    before, after = result["result"]["before"], result["result"]["after"]
    assert [e["recorded"] for e in before] == [True, True]
    assert all(e["length"] == HORIZON for e in before + after)
    assert result["adaptations_accepted"] == 1 and result["safe_actions"] == 0
    (report,) = result["result"]["adapt_reports"]
    assert {e["policy_id"] for e in after} == {report["policy_id"]} != {before[0]["policy_id"]}
    assert np.isfinite([result["velocity_error_before"], result["velocity_error_after"]]).all()


def test_server_killed_mid_episode_and_restarted_loses_no_recorded_episode(
    artifact: Path, tmp_path: Path
) -> None:
    endpoint, journal = free_tcp_endpoint(), tmp_path / "journal"
    family = get_family("cheetah_velocity")
    simulator, task = family.make_simulator(1, 1), VelocityTask(1.0)
    rng = np.random.default_rng(0)
    with server_process(artifact, endpoint, journal) as server:
        client = RobotClient(endpoint, deadline_ms=250, reconnect_interval_ms=100)
        recorded = [run_episode(client, simulator, task, rng, HORIZON).recorded for _ in range(2)]
        assert recorded == [True, True]
        observation = simulator.reset([task], rng)[0]
        for _ in range(5):  # mid-episode ...
            assert np.any(client.act(observation) != 0.0)
        server.send_signal(signal.SIGKILL)  # ... the server dies
        server.wait(timeout=10)
        for _ in range(5):
            tick = time.perf_counter()
            np.testing.assert_array_equal(client.act(observation), np.zeros(6, np.float32))
            assert time.perf_counter() - tick < 0.5
    with server_process(artifact, endpoint, journal):  # restarted on the same journal
        deadline = time.monotonic() + 30
        while not client.stats().connected and time.monotonic() < deadline:
            client.act(observation)
            time.sleep(0.02)
        assert client.stats().reconnects == 1
        assert np.any(client.act(observation) != 0.0)
        receipt = client.episode_end(0.0)
        assert receipt is not None and not receipt["recorded"]  # the interrupted one is dropped
        assert run_episode(client, simulator, task, rng, HORIZON).recorded
        status = client.status()
        assert status["episodes_ready"] == 3  # 2 from before the crash (the journal) + 1
        assert client.stats().faults["timeout"] == 1
        client.close()


ROBOT = """
import sys, time, numpy as np
from controller.link.client import RobotClient
client = RobotClient(sys.argv[1], deadline_ms=200)
for episode in range(2):
    for t in range(10):
        client.act(np.zeros(17, np.float32), 0.5)
    assert client.episode_end(0.5)["recorded"]
print("recorded", flush=True)
for t in range(5):  # mid-episode, then silent until killed
    client.act(np.zeros(17, np.float32), 0.5)
time.sleep(600)
"""


def test_a_vanished_robot_is_noticed_and_its_episodes_kept(artifact: Path, tmp_path: Path) -> None:
    endpoint = free_tcp_endpoint()
    with server_process(artifact, endpoint, tmp_path / "journal", "--watchdog-timeout-s", "0.5"):
        robot = python_process(ROBOT, endpoint)
        try:
            wait_for_line(robot, "recorded", timeout_s=60)
            time.sleep(0.2)
        finally:
            os.kill(robot.pid, signal.SIGKILL)
            robot.wait(timeout=10)
        with RobotClient(endpoint, deadline_ms=200, name="operator") as operator:
            deadline = time.monotonic() + 10
            while True:  # the watchdog scans a few times per timeout
                link = operator.status()["link"]
                events = [e for e in link["watchdog_events"] if e["client"] == "robot"]
                if events:
                    break
                assert time.monotonic() < deadline, link
                time.sleep(0.1)
            (event,) = events
            assert event["dropped_steps"] > 0
            (robot_session,) = [s for s in link["sessions"] if s["client"] == "robot"]
            assert robot_session["silent"] and robot_session["episodes_recorded"] == 2
            # Its episodes are its own: another robot's lane has none of them.
            assert operator.status()["episodes_ready"] == 0


@pytest.mark.slow
def test_a_meta_trained_artifact_tracks_the_target_velocity_better_after_adapting(
    tmp_path: Path,
) -> None:
    usable, reason = finished_artifact("cheetah_velocity")
    if not usable:
        pytest.skip(reason)
    shipped = REPO / "artifacts" / "cheetah_velocity"
    from controller.link.sim_robot import run_sim_robot

    endpoint = free_tcp_endpoint()
    with server_process(shipped, endpoint, tmp_path / "journal"):
        result = run_sim_robot(
            endpoint, "cheetah_velocity", VelocityTask(1.37), episodes_per_step=20
        )
    summary = result.summary()
    assert summary["adaptations_accepted"] == 1, result.adapt_reports
    assert summary["velocity_error_after"] < summary["velocity_error_before"], summary


def test_a_monitoring_server_process_recovers_a_damaged_sim_robot_process(tmp_path: Path) -> None:
    """``adaptctl serve --monitor`` and ``adaptctl sim-robot --damage-at``, as a user runs them
    (short episodes and a small K and window, so that it takes seconds)."""
    usable, reason = finished_artifact("cheetah_damage")
    if not usable:
        pytest.skip(reason)
    endpoint = free_tcp_endpoint()
    monitor = ("--set", "episodes_per_step=4", "--set", "monitor={window: 8, revert_z: null}")
    monitor += ("--set", "seed=0")
    shipped = REPO / "artifacts" / "cheetah_damage"
    with server_process(shipped, endpoint, tmp_path / "journal", "--monitor", *monitor):
        deployment = ("--damage-at", "12", "--adapted-episodes", "12", "--horizon", "50")
        body = ("--motor", "bthigh=0", "--motor", "fthigh=0")
        robot = sim_robot_process(endpoint, *deployment, *body, timeout_s=180)
    assert robot.returncode == 0, robot.stderr
    lines = robot.stdout.splitlines()
    assert sum(line.lstrip().startswith("healthy return") for line in lines) == 12
    summary = dict(line.strip().split(": ", 1) for line in lines if ": " in line)
    assert summary["false_alarms"] == "0", robot.stdout
    assert int(summary["drop_noticed_after"]) <= 4, robot.stdout
    log = (tmp_path / "server.log").read_text()
    assert "('sim-robot:cheetah_damage'): drop after episode" in log, log
    # K = 4 episodes make a noisy step that the KL bound may refuse; either way the server took it
    assert re.search(r"cheetah_damage'\): (adapted|rejected) after episode", log), log
