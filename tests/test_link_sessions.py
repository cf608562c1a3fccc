"""Session semantics, token handling, the dirty-episode rule and the horizon, over real sockets."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from link_support import RawPeer, family_artifact

from controller import ControllerConfig, load_artifact
from controller.link.lanes import LANES_DIR, Lanes, token_hash
from controller.link.protocol import DEFAULT_MAX_MESSAGE_BYTES, ErrorCode
from controller.link.server import LinkConfig, LinkServer

K, HORIZON = 2, 20
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sessions")
    return family_artifact(root / "init", horizon=HORIZON, step_size=0.01)


def start_server(artifact: Path, **config: Any) -> LinkServer:
    lanes = Lanes(load_artifact(artifact), ControllerConfig(seed=0, **config))
    link = LinkConfig(watchdog_timeout_s=0.3)
    return LinkServer(lanes, "tcp://127.0.0.1:*", config=link).start()


@pytest.fixture()
def server(artifact: Path) -> Iterator[LinkServer]:
    with start_server(artifact) as srv:
        yield srv


def robot(server: LinkServer, **hello: Any) -> tuple[RawPeer, dict[str, Any]]:
    peer = RawPeer(server.endpoint)
    welcome, _ = peer.call({"type": "hello", "version": 1, "client": "robot", **hello})
    assert welcome["type"] == "welcome", welcome
    peer.session = welcome["session"]
    return peer, welcome


def observation(value: float = 0.0) -> np.ndarray:
    return np.full(17, value, dtype=np.float32)


def end(peer: RawPeer, reward: float = 1.0) -> dict[str, Any]:
    header = {"type": "episode_end", "session": peer.session, "reward": reward, "terminated": False}
    return peer.call(header)[0]


def play(peer: RawPeer, steps: int = 3, **flags: Any) -> dict[str, Any]:
    for t in range(steps):
        reply, _ = peer.step(observation(t), start=t == 0, reward=1.0, **flags)
        assert reply["type"] == "action", reply
    return end(peer)


def adapt(peer: RawPeer) -> dict[str, Any]:
    reply, _ = peer.call({"type": "adapt", "session": peer.session})
    assert reply["type"] == "adapted", reply
    return dict(reply["report"])


def test_a_new_session_starts_from_the_initialization_not_another_robots_policy(
    server: LinkServer,
) -> None:
    first, welcome = robot(server)
    initial = welcome["policy"]
    assert welcome["policy_origin"] == "initialization" and welcome["adaptation_steps"] == 0
    assert not welcome["resumed"] and "initialization" in welcome["policy_note"]
    for _ in range(K):
        assert play(first)["recorded"]
    report = adapt(first)
    assert report["accepted"] and report["step"] == 0 and report["policy_id"] != initial

    second, welcome = robot(server)
    assert welcome["policy"] == initial and welcome["adaptation_steps"] == 0
    assert welcome["policy_origin"] == "initialization" and welcome["episodes_ready"] == 0
    assert second.step(observation(), start=True)[0]["policy"] == initial
    for _ in range(K):
        assert play(second)["recorded"]
    assert adapt(second)["step"] == 0  # its own first step, from the initialization

    again, welcome = robot(server, resume=first.session)  # the first robot, reconnected
    assert welcome["resumed"] and welcome["policy_origin"] == "resumed"
    assert welcome["session"] == first.session and welcome["adaptation_steps"] == 1
    assert welcome["policy"] == report["policy_id"]
    for peer in (first, second, again):
        peer.close()


def test_a_token_works_only_on_the_connection_it_is_bound_to(server: LinkServer) -> None:
    owner, _ = robot(server)
    owner.step(observation(0), start=True)
    owner.step(observation(1), reward=1.0)
    thief, _ = robot(server)
    for request in ({"type": "status"}, {"type": "bye"}, {"type": "adapt"}):
        reply, _ = thief.call({**request, "session": owner.session})
        assert reply["code"] == ErrorCode.UNKNOWN_SESSION, reply
    stolen, _ = thief.call(
        {"type": "step", "session": owner.session, "dtype": "<f4", "reward": 0.0, "done": False},
        observation().tobytes(),
    )
    assert stolen["code"] == ErrorCode.UNKNOWN_SESSION
    owner.step(observation(2), reward=1.0)
    receipt = end(owner)  # the owner's episode was not touched by the thief's errors
    assert receipt["recorded"] and receipt["steps"] == 3
    for peer in (owner, thief):
        peer.close()


def test_a_hello_for_another_session_drops_the_episode_its_connection_was_recording(
    server: LinkServer,
) -> None:
    peer, _ = robot(server)
    first = peer.session
    peer.step(observation(0), start=True)
    peer.step(observation(1), reward=1.0)
    other, _ = peer.call({"type": "hello", "version": 1})  # unbinds the first session
    assert other["type"] == "welcome" and other["session"] != first, other
    again, _ = peer.call({"type": "hello", "version": 1, "resume": first})
    assert again["resumed"], again
    peer.step(observation(2), reward=1.0)  # no start: it would continue the old episode
    receipt = end(peer)
    assert not receipt["recorded"] and "HELLO" in receipt["reason"], receipt
    lane = server.session_lane(first)
    assert lane is not None and lane.episodes() == []
    assert play(peer)["recorded"]  # the next episode records again
    peer.close()


def test_status_watchdog_and_logs_show_only_a_token_prefix(
    server: LinkServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    silent, _ = robot(server)
    silent.step(observation(), start=True)  # then silence: the watchdog reports it
    watcher, _ = robot(server)
    events: list[Any] = []
    for _ in range(100):
        reply, _ = watcher.call({"type": "status", "session": watcher.session})
        events = reply["status"]["link"]["watchdog_events"]
        if events:
            break
        watcher.socket.poll(50)
    assert events and events[0]["session"] == silent.session[:8]
    lane = server.session_lane(watcher.session)
    assert lane is not None
    adapt = lane.adapt
    lane.adapt = lambda: (time.sleep(0.5), adapt())[1]  # type: ignore[method-assign]
    watcher.call({"type": "adapt", "session": watcher.session, "wait": False})
    reply, _ = watcher.call({"type": "status", "session": watcher.session})
    assert reply["status"]["link"]["busy"] == {watcher.session[:8]: "adapt"}
    wire = msgpack.packb(reply)
    text = caplog.text + str(reply)
    for token in (silent.session, watcher.session):
        assert token.encode() not in wire and token not in text
        assert token[:8] in text
    for peer in (silent, watcher):
        peer.close()


def _step_header(peer: RawPeer, **changes: Any) -> dict[str, Any]:
    return {
        "type": "step",
        "session": peer.session,
        "seq": peer.seq + 1,
        "dtype": "<f4",
        "reward": 1.0,
        "done": False,
        **changes,
    }


DIRTY = {
    "out of order": (
        lambda p: [msgpack.packb(_step_header(p, seq=p.seq)), observation().tobytes()],
        "OUT_OF_ORDER",
    ),
    "malformed": (lambda p: [msgpack.packb({"type": "step", "seq": p.seq + 1})], "MALFORMED"),
    "too large": (
        lambda p: [msgpack.packb(_step_header(p)), b"\0" * (DEFAULT_MAX_MESSAGE_BYTES + 4)],
        "TOO_LARGE",
    ),
    "unknown type": (lambda p: [msgpack.packb({"type": "fly", "seq": p.seq + 1})], "UNKNOWN_TYPE"),
    "reward beyond float32": (
        lambda p: [msgpack.packb(_step_header(p, reward=1e39)), observation().tobytes()],
        "NOT_FINITE",
    ),
    "observation overflowing the policy": (
        lambda p: [msgpack.packb(_step_header(p)), observation(3e38).tobytes()],
        "safe",
    ),
}


@pytest.mark.parametrize("case", sorted(DIRTY))
def test_any_error_or_safe_action_inside_an_episode_drops_it(server: LinkServer, case: str) -> None:
    peer, _ = robot(server)
    lane = server.session_lane(peer.session)
    assert lane is not None
    make, outcome = DIRTY[case]
    peer.step(observation(0), start=True)
    peer.step(observation(1), reward=1.0)
    frames = make(peer)
    peer.seq += 1
    reply = msgpack.unpackb(peer.request(frames)[0])
    if outcome == "safe":
        assert reply["type"] == "action" and reply["safe"] is True
    else:
        assert reply["name"] == outcome, reply
    if case == "reward beyond float32":
        assert "float32" in reply["message"] and "3.4028235677973366e+38" in reply["message"]
    peer.step(observation(2), reward=1.0)  # the robot carries on
    receipt = end(peer)
    assert not receipt["recorded"] and receipt["reason"], receipt
    assert lane.episodes() == []
    assert play(peer)["recorded"]  # the next episode records again
    peer.close()


def test_mean_action_episodes_feed_no_adaptation_unless_allowed(artifact: Path) -> None:
    with start_server(artifact) as server:
        peer, _ = robot(server)
        receipt = play(peer, deterministic=True)
        assert not receipt["recorded"] and "mean action" in receipt["reason"]
        peer.close()
    with start_server(artifact, adapt_on_mean_actions=True) as server:
        peer, _ = robot(server)
        assert play(peer, deterministic=True)["recorded"]
        peer.close()


def test_the_welcome_carries_the_horizon_and_longer_episodes_are_refused(
    server: LinkServer,
) -> None:
    peer, welcome = robot(server)
    assert welcome["horizon"] == HORIZON
    receipt = play(peer, steps=HORIZON)
    assert receipt["recorded"] and receipt["steps"] == HORIZON
    for t in range(HORIZON):
        peer.step(observation(t), start=t == 0, reward=1.0)
    reply, frames = peer.step(observation(), reward=1.0)  # action HORIZON + 1
    assert reply["name"] == "EPISODE_TOO_LONG" and not frames
    assert f"horizon={HORIZON}" in reply["message"]
    assert not end(peer)["recorded"]
    peer.close()


def test_a_restarted_server_restores_the_session_its_robot_resumes(
    artifact: Path, tmp_path: Path
) -> None:
    journal = {"journal_dir": tmp_path / "journal"}
    with start_server(artifact, **journal) as server:
        peer, _ = robot(server)
        for _ in range(K):
            play(peer)
        adapted = adapt(peer)["policy_id"]
        assert play(peer)["recorded"]
        token = peer.session
        peer.close()
    with start_server(artifact, **journal) as server:
        assert "1 stored session(s) can resume" in server.journal_note()
        peer, welcome = robot(server, resume=token)
        assert welcome["resumed"] and welcome["policy_origin"] == "restored"
        assert welcome["session"] == token and welcome["policy"] == adapted
        assert welcome["adaptation_steps"] == 1 and welcome["episodes_ready"] == 1
        assert "restored from the journal" in welcome["policy_note"]
        stranger, welcome = robot(server, resume="0" * 32)  # not a token it ever gave
        assert welcome["policy_origin"] == "initialization" and welcome["policy"] != adapted
        assert not (tmp_path / "journal" / LANES_DIR / token_hash("0" * 32)).exists()
        for other in (peer, stranger):
            other.close()
    with start_server(artifact, journal=False) as server:
        assert "no journal" in server.journal_note()
        peer, welcome = robot(server, resume=token)
        assert not welcome["resumed"] and welcome["adaptation_steps"] == 0
        peer.close()


def test_a_swap_survives_a_restart_with_what_sessions_adapted_from_it(
    artifact: Path, tmp_path: Path
) -> None:
    """Restarted with the same arguments after a SWAP, the server serves the swapped-in
    artifact: a session adapted from it resumes adapted, a new one starts from it. Swapped
    back, or with the swapped-in artifact gone, the artifact given serves, and the log says
    why."""
    journal = {"journal_dir": tmp_path / "journal"}
    candidate = family_artifact(tmp_path / "candidate", horizon=HORIZON, seed=5)
    swap = {"type": "swap", "path": str(candidate)}
    with start_server(artifact, **journal) as server:
        first, hello = robot(server)
        started_policy = hello["policy"]
        reply = first.call({**swap, "session": first.session}, timeout_ms=60_000)[0]
        assert reply["report"]["accepted"], reply
        swapped_policy = first.step(observation(), start=True)[0]["policy"]
        assert swapped_policy != started_policy
        for _ in range(K):
            play(first)
        adapted = adapt(first)["policy_id"]
        token = first.session
        first.close()
    with start_server(artifact, **journal) as server:
        assert "swapped in before the restart" in server.journal_note()
        peer, welcome = robot(server, resume=token)
        assert welcome["policy_origin"] == "restored" and welcome["policy"] == adapted
        assert welcome["adaptation_steps"] == 1
        new, welcome = robot(server)
        assert welcome["policy"] == swapped_policy
        back = {"type": "swap", "path": str(artifact), "session": new.session}
        assert new.call(back, timeout_ms=60_000)[0]["report"]["accepted"]
        for other in (peer, new):
            other.close()
    with start_server(artifact, **journal) as server:
        assert "swapped in" not in server.journal_note()
        new, welcome = robot(server)
        assert welcome["policy"] == started_policy
        reply = new.call({**swap, "session": new.session}, timeout_ms=60_000)[0]
        assert reply["report"]["accepted"]
        new.close()
    (candidate / "params.safetensors").write_bytes(b"gone")
    with start_server(artifact, **journal) as server:
        assert "cannot serve" in server.journal_note()
        new, welcome = robot(server)
        assert welcome["policy"] == started_policy
        new.close()


def test_a_step_flagged_done_and_start_records_the_episode_it_ends(server: LinkServer) -> None:
    """done says the previous action ended the episode by a terminal state: that episode is
    recorded as terminated even when the STEP also says start."""
    peer, _ = robot(server)
    peer.step(observation(), start=True)  # no reward or done: a start needs neither
    for t in range(3):
        assert peer.step(observation(t), reward=1.0)[0]["type"] == "action"
    peer.step(observation(), reward=2.0, done=True, start=True)
    lane = server.session_lane(peer.session)
    assert lane is not None
    (episode,) = lane.episodes()
    assert episode.length == 4 and episode.terminated and episode.rewards[-1] == 2.0
    peer.close()


def test_the_start_up_log_says_how_the_link_is_protected(
    artifact: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="controller.link.server")
    lanes = Lanes(load_artifact(artifact), ControllerConfig(seed=0, journal=False))
    for bind, insecure, words in (
        ("tcp://127.0.0.1:*", False, "plaintext, this machine only"),
        ("tcp://0.0.0.0:*", True, "plaintext on the network (--insecure)"),
    ):
        caplog.clear()
        with LinkServer(lanes, bind, insecure=insecure).start():
            deadline = time.monotonic() + 10
            while "serving" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.02)
        assert words in caplog.text
        assert ("reachable from the network without CURVE" in caplog.text) == insecure


def test_a_session_that_said_bye_cannot_be_resumed(artifact: Path, tmp_path: Path) -> None:
    with start_server(artifact, journal_dir=tmp_path / "journal") as server:
        peer, _ = robot(server)
        play(peer)
        token = peer.session
        assert peer.call({"type": "bye", "session": token})[0]["type"] == "ok"
        again, welcome = robot(server, resume=token)
        assert not welcome["resumed"] and welcome["session"] != token
        for other in (peer, again):
            other.close()


def test_robots_behind_a_zeromq_proxy_are_answered_and_kept_apart(server: LinkServer) -> None:
    import threading

    import zmq

    # a broker between the robots and the server, as zmq.proxy(ROUTER, DEALER) builds one:
    # each request reaches the server as [proxy, robot, b"", header, ...]
    context = zmq.Context()
    control = context.socket(zmq.PAIR)
    control.bind("inproc://proxy-control")
    ports: list[int] = []
    ready = threading.Event()
    broker = threading.Thread(
        target=_proxy, args=(context, server.endpoint, ports, ready), daemon=True
    )
    broker.start()
    assert ready.wait(10)
    first, _ = robot_at(f"tcp://127.0.0.1:{ports[0]}")
    second, _ = robot_at(f"tcp://127.0.0.1:{ports[0]}")
    assert first.session != second.session  # the second HELLO did not unbind the first
    for peer in (first, second, first):
        reply, frames = peer.step(observation(), start=True)
        assert reply["type"] == "action" and len(frames) == 1, reply
    status, _ = first.call({"type": "status", "session": first.session})
    assert len(status["status"]["link"]["sessions"]) == 2
    for peer in (first, second):
        peer.close()
    control.send(b"TERMINATE")
    broker.join(10)
    control.close(linger=0)
    context.term()


def _proxy(context: Any, endpoint: str, ports: list[int], ready: Any) -> None:
    """A ROUTER/DEALER broker to ``endpoint``, until TERMINATE on its control socket; its
    sockets live in this thread."""
    import zmq

    frontend, backend = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    control = context.socket(zmq.PAIR)
    control.connect("inproc://proxy-control")
    ports.append(frontend.bind_to_random_port("tcp://127.0.0.1"))
    backend.connect(endpoint)
    ready.set()
    zmq.proxy_steerable(frontend, backend, None, control)
    for socket in (frontend, backend, control):
        socket.close(linger=0)


def robot_at(endpoint: str) -> tuple[RawPeer, dict[str, Any]]:
    peer = RawPeer(endpoint)
    welcome, _ = peer.call({"type": "hello", "version": 1, "client": "behind a proxy"})
    assert welcome["type"] == "welcome", welcome
    peer.session = welcome["session"]
    return peer, welcome


def test_a_robot_waiting_for_a_slow_job_is_not_reported_silent(
    server: LinkServer, artifact: Path
) -> None:
    peer, _ = robot(server)
    # the first swap starts the verifier process: seconds, beyond the 0.3 s watchdog timeout
    start = time.monotonic()
    swapped, _ = peer.call(
        {"type": "swap", "session": peer.session, "path": str(artifact)}, timeout_ms=60_000
    )
    assert swapped["report"]["accepted"], swapped
    waited = time.monotonic() - start
    time.sleep(0.15)  # a scan after the reply: the silence counts from the reply
    status, _ = peer.call({"type": "status", "session": peer.session})
    link = status["status"]["link"]
    assert waited > 0.3 and link["watchdog_count"] == 0, (waited, link["watchdog_events"])
    peer.close()


def test_a_resume_without_a_name_keeps_the_robots_name(server: LinkServer) -> None:
    first, _ = robot(server, client="arm-7")
    second = RawPeer(server.endpoint)  # the robot reconnects on a new socket
    welcome, _ = second.call({"type": "hello", "version": 1, "resume": first.session})
    assert welcome["resumed"], welcome
    second.session = welcome["session"]
    status, _ = second.call({"type": "status", "session": second.session})
    names = [s["client"] for s in status["status"]["link"]["sessions"]]
    assert names == ["arm-7"], names
    for peer in (first, second):
        peer.close()
