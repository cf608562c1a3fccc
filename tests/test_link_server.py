"""The link server with a real Controller and real sockets: recording, faults, jobs, fuzz."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from link_support import RawPeer, family_artifact

from controller import Controller, ControllerConfig, load_artifact
from controller.link.lanes import Lanes
from controller.link.protocol import DEFAULT_MAX_MESSAGE_BYTES, ErrorCode
from controller.link.security import LinkSecurityError, is_local_endpoint
from controller.link.server import LinkConfig, LinkServer
from controller.monitor import MonitorSettings

K = 2
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A small first step keeps the KL of one step from a fresh initialization under max_kl.
    return family_artifact(tmp_path_factory.mktemp("link") / "init", step_size=0.01)


@pytest.fixture()
def lanes(artifact: Path) -> Lanes:
    return Lanes(load_artifact(artifact), ControllerConfig(seed=0))


@pytest.fixture()
def server(lanes: Lanes) -> Iterator[LinkServer]:
    config = LinkConfig(watchdog_timeout_s=0.3)
    with LinkServer(lanes, "tcp://127.0.0.1:*", config=config).start() as srv:
        yield srv


@pytest.fixture()
def peer(server: LinkServer) -> Iterator[RawPeer]:
    raw = RawPeer(server.endpoint)
    raw.hello()
    yield raw
    raw.close()


@pytest.fixture()
def controller(server: LinkServer, peer: RawPeer) -> Controller:
    """The lane (controller) of ``peer``'s session."""
    lane = server.session_lane(peer.session)
    assert lane is not None
    return lane


def observation(value: float = 0.0) -> np.ndarray:
    return np.full(17, value, dtype=np.float32)  # cheetah_velocity observes 17 values


def play(peer: RawPeer, rewards: list[float], offset: float = 0.0, **end: Any) -> dict[str, Any]:
    """One episode of len(rewards) steps; observation t is filled with offset + t."""
    for t in range(len(rewards)):
        reply, frames = peer.step(
            observation(offset + t), start=t == 0, reward=rewards[t - 1] if t else 0.0
        )
        assert reply["type"] == "action", reply
        assert len(frames[0]) == 4 * 6
    receipt, _ = peer.call(
        {
            "type": "episode_end",
            "session": peer.session,
            "reward": rewards[-1],
            "terminated": False,
            **end,
        }
    )
    return receipt


def test_welcome_carries_the_artifacts_layout(server: LinkServer, peer: RawPeer) -> None:
    welcome = peer.hello()
    assert (welcome["observation_size"], welcome["action_size"]) == (17, 6)
    assert len(welcome["observation_names"]) == 17 and welcome["family"] == "cheetah_velocity"
    assert welcome["action_low"] == [-1.0] * 6 and welcome["action_high"] == [1.0] * 6
    assert welcome["episodes_per_step"] == K and welcome["version"] == 1


def test_episodes_are_recorded_with_their_rewards_aligned(
    controller: Controller, peer: RawPeer
) -> None:
    receipt = play(peer, [1.0, 2.0, 3.0])
    assert receipt["type"] == "episode" and receipt["recorded"] and receipt["steps"] == 3
    (episode,) = controller.episodes()
    np.testing.assert_array_equal(episode.observations[:, 0], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(episode.rewards, [1.0, 2.0, 3.0])
    assert not episode.terminated


def test_done_on_a_step_ends_the_episode_as_terminated_and_starts_the_next(
    controller: Controller, peer: RawPeer
) -> None:
    peer.step(observation(0), start=True)
    peer.step(observation(1), reward=5.0)
    peer.step(observation(10), reward=6.0, done=True)  # a fall: observation 10 starts anew
    peer.step(observation(11), reward=7.0)
    peer.call({"type": "episode_end", "session": peer.session, "reward": 8.0, "terminated": True})
    first, second = controller.episodes()
    np.testing.assert_array_equal(first.rewards, [5.0, 6.0])
    np.testing.assert_array_equal(second.observations[:, 0], [10.0, 11.0])
    assert first.terminated and second.terminated


def _step_frames(peer: RawPeer, **changes: Any) -> list[bytes]:
    header = {
        "type": "step",
        "session": peer.session,
        "seq": peer.seq + 1,
        "dtype": "<f4",
        "reward": 0.0,
        "done": False,
        **changes,
    }
    return [msgpack.packb(header), observation(0.5).tobytes()]


MALFORMED = {
    "truncated observation": (
        lambda p: [_step_frames(p)[0], observation()[:-1].tobytes()],
        ErrorCode.WRONG_SIZE,
    ),
    "truncated header": (
        lambda p: [_step_frames(p)[0][:-3], observation().tobytes()],
        ErrorCode.MALFORMED,
    ),
    "too long observation": (
        lambda p: [_step_frames(p)[0], np.zeros(18, "<f4").tobytes()],
        ErrorCode.WRONG_SIZE,
    ),
    "float64 observation": (
        lambda p: [_step_frames(p, dtype="<f8")[0], np.zeros(17, "<f8").tobytes()],
        ErrorCode.WRONG_DTYPE,
    ),
    "NaN observation": (
        lambda p: [_step_frames(p)[0], observation(np.nan).tobytes()],
        ErrorCode.NOT_FINITE,
    ),
    "infinite reward": (lambda p: _step_frames(p, reward=float("inf")), ErrorCode.NOT_FINITE),
    "unknown type": (
        lambda p: [msgpack.packb({"type": "fly", "seq": p.seq + 1})],
        ErrorCode.UNKNOWN_TYPE,
    ),
    "oversized": (
        lambda p: [_step_frames(p)[0], b"\x00" * (DEFAULT_MAX_MESSAGE_BYTES + 4)],
        ErrorCode.TOO_LARGE,
    ),
    "repeated seq": (lambda p: _step_frames(p, seq=p.seq), ErrorCode.OUT_OF_ORDER),
    "old seq": (lambda p: _step_frames(p, seq=0), ErrorCode.OUT_OF_ORDER),
    "unknown session": (lambda p: _step_frames(p, session="f" * 32), ErrorCode.UNKNOWN_SESSION),
    "missing field": (
        lambda p: [msgpack.packb({"type": "step", "seq": p.seq + 1, "session": p.session})],
        ErrorCode.MALFORMED,
    ),
    "empty header": (lambda p: [b""], ErrorCode.MALFORMED),
    "bad version": (
        lambda p: [msgpack.packb({"type": "hello", "seq": 1, "version": 99})],
        ErrorCode.BAD_VERSION,
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_each_malformed_message_gets_an_error_and_the_server_keeps_serving(
    server: LinkServer, peer: RawPeer, case: str
) -> None:
    make, code = MALFORMED[case]
    peer.step(observation(), start=True)
    frames = make(peer)
    peer.seq += 1
    reply = msgpack.unpackb(peer.request(frames)[0])
    assert reply["type"] == "error" and reply["code"] == code and reply["name"] == code.name
    assert reply["message"]
    after, frames_after = peer.step(observation(0.25))
    assert after["type"] == "action" and np.isfinite(np.frombuffer(frames_after[0], "<f4")).all()
    assert server.link_status()["errors"] == {code.name: 1}


def test_an_error_mid_episode_drops_that_episode_only(
    controller: Controller, peer: RawPeer
) -> None:
    peer.step(observation(0), start=True)
    peer.step(observation(1), reward=1.0)
    reply, _ = peer.step(observation(np.nan), reward=1.0)
    assert reply["code"] == ErrorCode.NOT_FINITE
    peer.step(observation(3), reward=1.0)
    receipt, _ = peer.call(
        {"type": "episode_end", "session": peer.session, "reward": 1.0, "terminated": False}
    )
    assert not receipt["recorded"]
    assert play(peer, [1.0, 1.0])["recorded"]
    assert len(controller.episodes()) == 1 and controller.status()["episodes_discarded"] == 1


def test_interrupted_drops_the_episode_and_recording_resumes_at_the_next(
    controller: Controller, peer: RawPeer
) -> None:
    peer.step(observation(0), start=True)
    peer.step(observation(1), reward=1.0, interrupted=True)  # the robot applied a safe action
    peer.step(observation(2), reward=1.0)
    receipt, _ = peer.call(
        {"type": "episode_end", "session": peer.session, "reward": 1.0, "terminated": False}
    )
    assert not receipt["recorded"]
    assert play(peer, [1.0], offset=9)["recorded"]
    assert [e.length for e in controller.episodes()] == [1]


def test_steps_are_answered_while_an_adaptation_runs(server: LinkServer) -> None:
    robot, operator = RawPeer(server.endpoint), RawPeer(server.endpoint)
    robot.hello()
    operator.hello()
    lane = server.session_lane(robot.session)
    assert lane is not None
    adapt = lane.adapt

    def slow_adapt() -> Any:  # the real adaptation, taking at least 0.5 s
        time.sleep(0.5)
        return adapt()

    lane.adapt = slow_adapt  # type: ignore[method-assign]
    for _ in range(K):
        assert play(robot, [1.0, -1.0, 0.5])["recorded"]
    before = robot.step(observation(), start=True)[0]["policy"]
    robot.call(
        {"type": "episode_end", "session": robot.session, "reward": 0.0, "terminated": False}
    )
    started = time.monotonic()
    assert (
        robot.call({"type": "adapt", "session": robot.session, "wait": False})[0]["type"]
        == "adapting"
    )
    busy, _ = robot.call({"type": "adapt", "session": robot.session})
    assert busy["code"] == ErrorCode.BUSY
    other, _ = operator.call({"type": "adapt", "session": operator.session, "wait": False})
    assert other["type"] == "adapting"  # another session's lane: not busy
    latencies, flags = [], []
    while time.monotonic() - started < 0.4:
        tick = time.perf_counter()
        reply, _ = robot.step(observation(), reward=0.0)
        latencies.append(time.perf_counter() - tick)
        flags.append(reply["adapting"])
    assert all(flags) and max(latencies) < 0.1
    deadline = time.monotonic() + 10
    while server.link_status()["busy"] and time.monotonic() < deadline:
        time.sleep(0.02)
    report = server.link_status(robot.session)["last_reports"]["adapt"]
    assert report["accepted"], report
    after = robot.step(observation(), reward=0.0)[0]
    assert after["policy"] == report["policy_id"] != before and not after["adapting"]
    robot.close()
    operator.close()


@contextlib.contextmanager
def monitored(
    artifact: Path, settings: MonitorSettings
) -> Iterator[tuple[LinkServer, RawPeer, Controller]]:
    """A server whose sessions run ``settings``' monitor, a robot in session, and its lane."""
    lanes = Lanes(load_artifact(artifact), ControllerConfig(seed=0, monitor=settings))
    with LinkServer(lanes, "tcp://127.0.0.1:*").start() as server:
        robot = RawPeer(server.endpoint)
        robot.hello()
        lane = server.session_lane(robot.session)
        assert lane is not None
        try:
            yield server, robot, lane
        finally:
            robot.close()


def test_a_monitored_session_notices_a_drop_and_adapts_in_the_worker(artifact: Path) -> None:
    settings = MonitorSettings(window=4, decision_sd=5.0, min_sd=0.1, revert_z=None)
    with monitored(artifact, settings) as (server, robot, lane):
        adapt, threads = lane.adapt, []

        def adapt_here() -> Any:
            threads.append(threading.current_thread().name)
            return adapt()

        lane.adapt = adapt_here  # type: ignore[method-assign]
        initial = lane.status()["policy_id"]
        for _ in range(settings.window + 1):  # the reference, and one healthy watched
            receipt = play(robot, [1.0, 1.0, 1.0])
        assert receipt["monitor"]["state"] == "watching" and receipt["monitor"]["drops"] == 0
        first = play(robot, [-1.0, -1.0, -1.0])
        assert first["monitor"]["last_event"] is None  # one low episode is not a drop
        receipt = play(robot, [-1.0, -1.0, -1.0])
        monitor = receipt["monitor"]
        assert monitor["state"] == "collecting" and monitor["drops"] == 1
        assert monitor["last_event"]["kind"] == "drop" and monitor["adaptation_due"]
        assert monitor["last_event"]["low"] == [first["episode"], receipt["episode"]]
        assert receipt["episode"] == first["episode"] + 1 == settings.window + 2
        assert set(monitor) == documented_monitor_fields()
        deadline = time.monotonic() + 30  # K = 2 low episodes: the adaptation is due
        while lane.status()["adaptation_steps"] == 0 and time.monotonic() < deadline:
            robot.step(observation(), start=True)
            time.sleep(0.01)
        while server.link_status()["busy"] and time.monotonic() < deadline:
            time.sleep(0.01)
        robot.call(
            {"type": "episode_end", "session": robot.session, "reward": 0.0, "terminated": False}
        )
        status, _ = robot.call({"type": "status", "session": robot.session})
        monitor = status["status"]["monitor"]
        assert threads == ["link-worker"]  # off the serving thread
        assert monitor["last_event"]["kind"] == "adapted", monitor
        assert status["status"]["adaptation_steps"] == 1
        assert status["status"]["policy_id"] == monitor["last_event"]["policy_id"] != initial
        assert status["status"]["link"]["last_reports"]["adapt"]["accepted"]


def test_an_episode_of_the_old_policy_ending_after_the_recovery_is_not_watched(
    artifact: Path,
) -> None:
    """An episode played wholly by the initialization while the monitor's adaptation ran ends
    after the adapted policy is installed: it is not the adapted policy's, so it neither joins
    its reference nor cancels the judgement of the step (here: reverted, as it earns less)."""
    settings = MonitorSettings(window=4, decision_sd=5.0, min_sd=0.1)
    with monitored(artifact, settings) as (_, robot, lane):
        adapt, initial = lane.adapt, lane.policy_id

        def slow_adapt() -> Any:  # the real adaptation, taking at least 0.5 s
            time.sleep(0.5)
            return adapt()

        lane.adapt = slow_adapt  # type: ignore[method-assign]
        for _ in range(settings.window):
            play(robot, [1.0, 1.0, 1.0])
        play(robot, [-1.0, -1.0, -1.0])
        receipt = play(robot, [-1.0, -1.0, -1.0])  # a drop, with K = 2 low episodes: due
        assert receipt["monitor"]["adaptation_due"], receipt
        acted, _ = robot.step(observation(), start=True)  # the old policy acts
        assert acted["policy"] == initial and acted["adapting"], acted
        deadline = time.monotonic() + 30
        while lane.status()["adaptation_steps"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # the serving thread reports the job done
        end = {"type": "episode_end", "session": robot.session, "reward": -1.0}
        stale, _ = robot.call({**end, "terminated": False})
        assert stale["recorded"] and stale["monitor"]["last_event"]["kind"] == "adapted", stale
        assert stale["monitor"]["reference_episodes"] == 0  # not the adapted policy's
        for _ in range(settings.window):
            receipt = play(robot, [-2.0, -2.0, -2.0])  # below the batch the step was taken on
        assert receipt["monitor"]["last_event"]["kind"] == "reverted", receipt["monitor"]
        assert robot.step(observation(), start=True)[0]["policy"] == initial


def documented_monitor_fields() -> set[str]:
    """The first column of docs/protocol.md's table of the ``monitor`` map."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
    table = doc.split("| `monitor` field |", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE))


def test_an_unmonitored_session_says_nothing_of_a_monitor(peer: RawPeer) -> None:
    assert "monitor" not in play(peer, [1.0, 1.0])


def test_adapt_and_reset_with_wait_reply_when_done(controller: Controller, peer: RawPeer) -> None:
    for offset in range(K):
        play(peer, [1.0, 0.0, -1.0], offset=offset)
    initial = controller.status()["policy_id"]
    adapted, _ = peer.call({"type": "adapt", "session": peer.session})
    assert adapted["type"] == "adapted" and adapted["report"]["accepted"], adapted
    assert (
        adapted["report"]["policy_id"] != initial and len(adapted["report"]["episode_returns"]) == K
    )
    too_few, _ = peer.call({"type": "adapt", "session": peer.session})
    assert not too_few["report"]["accepted"] and "need" in too_few["report"]["reason"]
    assert peer.call({"type": "reset", "session": peer.session})[0]["type"] == "reset_done"
    assert controller.status()["policy_id"] == initial


def test_swap_refuses_a_corrupt_artifact_and_takes_a_compatible_one(
    tmp_path: Path, controller: Controller, peer: RawPeer
) -> None:
    corrupt = family_artifact(tmp_path / "corrupt", seed=1)
    (corrupt / "params.safetensors").write_bytes(b"garbage")
    swap = {"type": "swap", "session": peer.session}  # the first starts the verifier process
    refused, _ = peer.call({**swap, "path": str(corrupt)}, timeout_ms=60_000)
    assert refused["type"] == "swapped" and not refused["report"]["accepted"]
    assert peer.step(observation(), start=True)[0]["type"] == "action"  # still serving
    # an empty path is refused before it reaches the verifier child, which reads an empty
    # request as its stop (and a restarted child keeps every swap waiting for seconds)
    empty, _ = peer.call({**swap, "path": ""}, timeout_ms=60_000)
    assert not empty["report"]["accepted"] and "empty" in empty["report"]["reason"], empty
    other = family_artifact(tmp_path / "other", seed=2)
    swapped, _ = peer.call({**swap, "path": str(other)}, timeout_ms=60_000)
    assert swapped["report"]["accepted"], swapped
    assert peer.step(observation())[0]["policy"] == controller.status()["policy_id"]


def test_robots_are_served_while_a_swap_is_verified_and_then_serve_it(
    tmp_path: Path, lanes: Lanes, controller: Controller, peer: RawPeer
) -> None:
    """The verifier child is held stopped: the serving thread keeps answering STEP with the
    old policy (flagged adapting), refuses a second SWAP and an ADAPT as BUSY, and installs the
    candidate itself once the child answers."""
    lanes.start_verifier()
    child = lanes._verifier._process
    assert child is not None and child.pid is not None
    before = peer.step(observation(), start=True)[0]["policy"]
    other = family_artifact(tmp_path / "other", seed=3)
    os.kill(child.pid, signal.SIGSTOP)
    try:
        swap = {"type": "swap", "session": peer.session, "path": str(other), "wait": False}
        assert peer.call(swap)[0]["type"] == "swapping"
        for _ in range(3):
            action = peer.step(observation(), reward=1.0)[0]
            assert action["policy"] == before and action["adapting"]
        busy = peer.call(swap)[0]
        assert busy["type"] == "error" and busy["code"] == ErrorCode.BUSY
        adapt = peer.call({"type": "adapt", "session": peer.session, "wait": False})[0]
        assert adapt["type"] == "error" and adapt["code"] == ErrorCode.BUSY
        assert peer.call({"type": "status", "session": peer.session})[0]["status"]["link"][
            "busy"
        ] == {"all": "swap"}
    finally:
        os.kill(child.pid, signal.SIGCONT)
    deadline, report = time.monotonic() + 60, None
    while report is None and time.monotonic() < deadline:
        link = peer.call({"type": "status", "session": peer.session})[0]["status"]["link"]
        report = link["last_reports"].get("swap")
        time.sleep(0.01)
    assert report is not None and report["accepted"], report
    assert report["digest"] == load_artifact(other).digest
    action = peer.step(observation(), start=True)[0]
    assert action["policy"] != before and not action["adapting"]


def test_a_swap_reaches_every_session_and_the_next_one(
    tmp_path: Path, server: LinkServer, peer: RawPeer
) -> None:
    """One install serves every lane: each session, and a session opened after the swap,
    acts with the candidate (the same actions for the same observation)."""
    other = RawPeer(server.endpoint)
    other.hello()
    before = {p.step(observation(), start=True)[0]["policy"] for p in (peer, other)}
    candidate = family_artifact(tmp_path / "candidate", seed=4)
    swap = {"type": "swap", "session": peer.session, "path": str(candidate)}
    assert peer.call(swap, timeout_ms=60_000)[0]["report"]["accepted"]
    late = RawPeer(server.endpoint)
    late.hello()
    replies = [p.step(observation(0.5), start=True) for p in (peer, other, late)]
    policies = {reply["policy"] for reply, _ in replies}
    assert len(policies) == 1 and policies != before
    deterministic = [
        p.step(observation(0.5), deterministic=True)[1][0] for p in (peer, other, late)
    ]
    assert deterministic[0] == deterministic[1] == deterministic[2]
    for p in (other, late):
        p.close()


def test_watchdog_reports_a_silent_robot_and_keeps_its_state(
    server: LinkServer, controller: Controller, peer: RawPeer
) -> None:
    play(peer, [1.0, 2.0])
    peer.step(observation(), start=True)
    peer.step(observation(), reward=1.0)  # mid-episode, then silence
    deadline = time.monotonic() + 5
    while not server.link_status()["watchdog_count"] and time.monotonic() < deadline:
        time.sleep(0.05)
    status = server.link_status()
    (event,) = status["watchdog_events"]
    assert event["dropped_steps"] == 2 and event["silent_s"] > 0.3
    (session,) = status["sessions"]
    assert session["silent"] and session["episodes_recorded"] == 1
    assert controller.status()["episodes_ready"] == 1  # the recorded episode is kept
    assert peer.step(observation(), reward=1.0)[0]["type"] == "action"  # the robot is back
    assert not server.link_status()["sessions"][0]["silent"]


def test_network_binds_need_keys_or_insecure(lanes: Lanes) -> None:
    assert is_local_endpoint("tcp://127.0.0.1:5555") and is_local_endpoint("tcp://[::1]:1")
    assert is_local_endpoint("ipc:///tmp/x") and is_local_endpoint("tcp://localhost:5")
    assert not is_local_endpoint("tcp://0.0.0.0:5555") and not is_local_endpoint("tcp://*:1")
    with pytest.raises(LinkSecurityError, match="--insecure"):
        LinkServer(lanes, "tcp://0.0.0.0:*")
    with LinkServer(lanes, "tcp://0.0.0.0:*", insecure=True) as server:
        assert server.endpoint.startswith("tcp://0.0.0.0:")


_FRAME = st.binary(max_size=48)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_server_fuzz_every_message_gets_one_reply(server: LinkServer, data: st.DataObject) -> None:
    peer = RawPeer(server.endpoint)
    try:
        peer.hello()
        header = data.draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "type": st.sampled_from(["step", "episode_end", "status", "hello", "x"]),
                    "seq": st.integers(min_value=-1, max_value=2**64 - 1),
                    "session": st.sampled_from([peer.session, "nope"]),
                    "dtype": st.sampled_from(["<f4", "<f8", ""]),
                    "reward": st.floats(),
                    "done": st.booleans() | st.integers(min_value=-5, max_value=5),
                    "start": st.booleans(),
                    "version": st.integers(min_value=0, max_value=2),
                },
            )
        )
        frames = [msgpack.packb(header), *data.draw(st.lists(_FRAME, max_size=3))]
        reply = msgpack.unpackb(peer.request(frames, timeout_ms=2000)[0])
        assert reply["type"] in {"error", "action", "episode", "status_reply", "welcome"}
        peer.hello()  # a fresh session: the fuzzed seq may have been the highest possible
        assert peer.step(observation(), start=True)[0]["type"] == "action"
    finally:
        peer.close()
