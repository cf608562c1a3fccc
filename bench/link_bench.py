"""Robot-link benchmark: action round trips through the link next to a bare pyzmq echo.

Goals, measured in one run: link round-trip p50 <= 1.5x the echo's and p99 <= 300 µs;
a 1 kHz control loop held for ``duration_s`` (60 s by default) with no more replies later than
1 ms than the echo has. The link server and the echo each run in their own process, as a robot
and its controller would; the robot side is the real ``RobotClient`` (encoding, checks and
all), the echo side a bare REQ socket sending the very same frames (msgpack header + the
observation's float32 bytes). Uses a freshly initialized HalfCheetah-velocity artifact.
Run: ``.venv/bin/python -m bench.link_bench [--duration-s 60]``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from bench.runtime_bench import FAMILY, HORIZON, fresh_artifact
from controller.link.client import RobotClient
from controller.link.codec import encode
from controller.link.server import free_tcp_endpoint
from controller.link.transport import send_frames
from sim.families import get_family

PERIOD_S = 0.001  # the 1 kHz control loop
ECHO = """
import sys, zmq
context = zmq.Context()
socket = context.socket(zmq.REP)
socket.bind(sys.argv[1])
print("ready", flush=True)
while True:
    socket.send_multipart(socket.recv_multipart())
"""


def _start(command: list[str], ready: str) -> subprocess.Popen[str]:
    """A child process, once it printed a line containing ``ready``."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    for line in process.stdout:
        if ready in line:
            return process
    raise RuntimeError(f"{command[:4]} exited before it was ready ({process.wait()})")


def _percentiles(microseconds: np.ndarray) -> dict[str, float]:
    p50, p99, p999 = np.percentile(microseconds, [50, 99, 99.9])
    return {"p50_us": float(p50), "p99_us": float(p99), "p99.9_us": float(p999)}


def round_trips(call: Callable[[], Any], calls: int, warmup: int = 500) -> np.ndarray:
    """Microseconds of each of ``calls`` back-to-back calls (after ``warmup`` untimed ones)."""
    for _ in range(warmup):
        call()
    out = np.empty(calls)
    for i in range(calls):
        start = time.perf_counter_ns()
        call()
        out[i] = time.perf_counter_ns() - start
    return out / 1e3


def control_loop(call: Callable[[], Any], duration_s: float) -> dict[str, Any]:
    """Call once per 1 ms tick for ``duration_s``: replies later than 1 ms, and missed ticks.

    Sleeps until 0.2 ms before each tick, then spins to it: ``time.sleep`` alone wakes up to
    ~0.1 ms late on Linux, and spinning the whole period would starve the server of a core.
    """
    ticks = int(duration_s / PERIOD_S)
    late, missed, worst = 0, 0, 0.0
    start = time.perf_counter()
    for i in range(ticks):
        tick = start + i * PERIOD_S
        if time.perf_counter() > tick + PERIOD_S:
            missed += 1  # the previous reply overran this whole period
            continue
        if (gap := tick - time.perf_counter()) > 2e-4:
            time.sleep(gap - 2e-4)
        while time.perf_counter() < tick:
            pass
        sent = time.perf_counter()
        call()
        latency = time.perf_counter() - sent
        late += latency > PERIOD_S
        worst = max(worst, latency)
    return {"ticks": ticks, "late_replies": late, "missed_ticks": missed, "worst_us": worst * 1e6}


def _interleaved_round_trips(
    paths: dict[str, Callable[[], Any]], calls: int, rounds: int = 10
) -> dict[str, np.ndarray]:
    """Round trips of each path, in alternating blocks: on a machine shared with other work,
    a load spike then hits both paths alike instead of whichever ran at the time."""
    blocks: dict[str, list[np.ndarray]] = {name: [] for name in paths}
    for index in range(rounds):
        for name, call in paths.items():
            blocks[name].append(
                round_trips(call, calls // rounds, warmup=500 if index == 0 else 50)
            )
    return {name: np.concatenate(samples) for name, samples in blocks.items()}


def _interleaved_loops(
    paths: dict[str, Callable[[], Any]], duration_s: float, segment_s: float = 1.0
) -> dict[str, dict[str, Any]]:
    """:func:`control_loop` of each path for ``duration_s`` in total, alternating segments."""
    totals: dict[str, dict[str, Any]] = {}
    for _ in range(max(1, round(duration_s / segment_s))):
        for name, call in paths.items():
            segment = control_loop(call, min(segment_s, duration_s))
            total = totals.setdefault(name, dict.fromkeys(segment, 0))
            for key, value in segment.items():
                total[key] = max(total[key], value) if key == "worst_us" else total[key] + value
    return totals


class EpisodeActs:
    """``client.act`` once per call, in episodes of ``HORIZON`` steps (the server refuses a
    longer one): every HORIZON-th call says ``done``, which ends the episode and starts the
    next in the same round trip, as a robot's loop does."""

    def __init__(self, client: RobotClient, observation: np.ndarray) -> None:
        self.client, self.observation, self.calls = client, observation, 0

    def __call__(self) -> None:
        self.calls += 1
        self.client.act(self.observation, 0.0, done=self.calls % HORIZON == 0)


class _StandInSocket:
    """Answers a RobotClient's STEP requests with pre-encoded ACTION replies, no network: what
    the client's own work costs (encode, checks, decode) without the round trip."""

    def __init__(self, replies: list[list[bytes]]) -> None:
        self.rcvtimeo = -1
        self._replies = iter(replies)

    def send(self, frame: bytes, flags: int = 0) -> None:
        pass

    def recv_multipart(self) -> list[bytes]:
        return next(self._replies)


def _block_minimum(call: Callable[[], Any], blocks: int, per_block: int) -> float:
    """Microseconds per call: the fastest of ``blocks`` blocks of ``per_block`` calls (the
    least disturbed by the machine's other work)."""
    best = math.inf
    for _ in range(blocks):
        start = time.perf_counter_ns()
        for _ in range(per_block):
            call()
        best = min(best, (time.perf_counter_ns() - start) / per_block / 1e3)
    return best


def in_process_costs(artifact: Path, blocks: int = 40, per_block: int = 1000) -> dict[str, float]:
    """The Python work of one STEP on each side, without sockets in between.

    Server: a LinkServer (not serving) handles pre-encoded STEP requests of one session,
    episodes of 200 steps, as its serving thread would: decode, checks, ``Controller.act``,
    recording and the ACTION reply (sent to a peer that does not exist, which ZeroMQ drops);
    without a journal, so that an episode's fsync does not enter the STEP's cost.
    Client: ``RobotClient.act`` on a stand-in socket that returns pre-encoded ACTION replies.
    """
    from controller import ControllerConfig, load_artifact
    from controller.link.lanes import Lanes
    from controller.link.protocol import PROTOCOL_VERSION, MessageType
    from controller.link.server import LinkServer

    observation = np.zeros(get_family(FAMILY).observation_size, np.float32)
    envelope = [b"bench-robot", b""]
    costs = {}
    lanes = Lanes(load_artifact(artifact), ControllerConfig(seed=0, journal=False))
    server = LinkServer(lanes, "tcp://127.0.0.1:*")
    # ZeroMQ drops the replies to the peer that does not exist, as the docstring says; the
    # server's own ROUTER_MANDATORY would make each send fail and undo the HELLO
    server._socket.setsockopt(zmq.ROUTER_MANDATORY, 0)
    try:
        hello = {"type": MessageType.HELLO, "seq": 1, "version": PROTOCOL_VERSION}
        server._handle(envelope + encode(hello))
        session = next(iter(server._sessions)).id
        seq = itertools.count(2)

        def server_step() -> None:
            n = next(seq)
            header = {
                "type": MessageType.STEP,
                "seq": n,
                "session": session,
                "dtype": "<f4",
                "reward": 0.0,
                "done": n % 200 == 0,
            }
            frames = encode(header, [observation])
            server._handle(envelope + frames)

        def encode_only() -> None:
            header = {
                "type": MessageType.STEP,
                "seq": 2,
                "session": session,
                "dtype": "<f4",
                "reward": 0.0,
                "done": False,
            }
            encode(header, [observation])

        encoding = _block_minimum(encode_only, blocks, per_block)
        reply = [*envelope, *encode({"type": MessageType.ACTION, "seq": 2}, [observation[:6]])]
        costs["send_multipart_us"] = _block_minimum(
            lambda: server._socket.send_multipart(reply), blocks, per_block
        )
        costs["send_frames_us"] = _block_minimum(
            lambda: send_frames(server._socket, reply), blocks, per_block
        )
        costs["server_step_us"] = _block_minimum(server_step, blocks, per_block) - encoding
        server.start()  # for the client's HELLO
        with RobotClient(server.endpoint, deadline_ms=100) as client:
            server.stop()
            start = next(client._seq)
            action = {"type": MessageType.ACTION, "dtype": "<f4"}
            zeros = np.zeros(client.layout.action_size, np.float32)
            replies = [
                encode({**action, "seq": start + 1 + i}, [zeros]) for i in range(blocks * per_block)
            ]
            real, client._socket = client._socket, _StandInSocket(replies)  # type: ignore[assignment]
            try:
                costs["client_act_us"] = _block_minimum(
                    lambda: client.act(observation, 0.0), blocks, per_block
                )
            finally:
                client._socket = None
                if real is not None:
                    real.close(linger=0)
    finally:
        server.stop()
    return costs


def bench_link(duration_s: float = 60.0, calls: int = 20_000) -> dict[str, Any]:
    """Round-trip percentiles over ``calls`` calls and a 1 kHz loop of ``duration_s`` seconds,
    for the link and for the echo; prints a table and returns the numbers."""
    family = get_family(FAMILY)
    observation = np.zeros(family.observation_size, np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        artifact = fresh_artifact(Path(tmp) / "init", family, seed=0)
        link_endpoint, echo_endpoint = free_tcp_endpoint(), free_tcp_endpoint()
        server = _start(
            [
                sys.executable,
                "-m",
                "controller.link",
                "serve",
                str(artifact),
                "--bind",
                link_endpoint,
            ],
            "serving",
        )
        echo = _start([sys.executable, "-c", ECHO, echo_endpoint], "ready")
        try:
            result = _measure(link_endpoint, echo_endpoint, observation, duration_s, calls)
        finally:
            for process in (server, echo):
                process.terminate()
                process.wait(timeout=10)
        result["in_process"] = in_process_costs(artifact)
    _print(result)
    return result


def _measure(
    link_endpoint: str, echo_endpoint: str, observation: np.ndarray, duration_s: float, calls: int
) -> dict[str, Any]:
    context = zmq.Context()
    echo = context.socket(zmq.REQ)
    echo.connect(echo_endpoint)
    header = {
        "type": "step",
        "seq": 1,
        "session": "0" * 32,
        "dtype": "<f4",
        "reward": 0.0,
        "done": False,
    }
    frames = encode(header, [observation])  # the same bytes a link STEP carries

    def echo_call() -> None:
        echo.send_multipart(frames)
        echo.recv_multipart()

    # A generous deadline: lateness is counted here, not turned into safe actions.
    with RobotClient(link_endpoint, deadline_ms=100) as client:
        paths: dict[str, Callable[[], Any]] = {
            "link": EpisodeActs(client, observation),
            "echo": echo_call,
        }
        trips = {k: _percentiles(v) for k, v in _interleaved_round_trips(paths, calls).items()}
        loops = _interleaved_loops(paths, duration_s)
        safe_actions = client.stats().safe_actions
    echo.close(linger=0)
    context.term()
    result = {
        "calls": calls,
        "request_bytes": sum(len(f) for f in frames),
        "round_trip": trips,
        "p50_ratio": trips["link"]["p50_us"] / trips["echo"]["p50_us"],
        "control_loop_1khz": {"duration_s": duration_s, **loops},
        "link_safe_actions": safe_actions,
    }
    return result


def _print(result: dict[str, Any]) -> None:
    print(f"round trip over tcp loopback, {result['calls']} calls, {result['request_bytes']} B")
    print(f"{'path':<6} {'p50 µs':>9} {'p99 µs':>9} {'p99.9 µs':>9}")
    for name, trip in result["round_trip"].items():
        print(f"{name:<6} {trip['p50_us']:>9.1f} {trip['p99_us']:>9.1f} {trip['p99.9_us']:>9.1f}")
    link_p99 = result["round_trip"]["link"]["p99_us"]
    print(
        f"link/echo p50 ratio {result['p50_ratio']:.2f} (goal <= 1.5); link p99 {link_p99:.0f} µs "
        "(goal <= 300)"
    )
    loop = result["control_loop_1khz"]
    print(f"\n1 kHz control loop, {loop['duration_s']:g} s")
    print(f"{'path':<6} {'ticks':>7} {'> 1 ms':>7} {'missed':>7} {'worst µs':>9}")
    for name in ("link", "echo"):
        row = loop[name]
        print(
            f"{name:<6} {row['ticks']:>7} {row['late_replies']:>7} {row['missed_ticks']:>7} "
            f"{row['worst_us']:>9.0f}"
        )
    print(f"safe actions from the link client: {result['link_safe_actions']}")
    costs = result["in_process"]
    print(
        f"\nin-process work per STEP (fastest of 40 blocks of 1000): server "
        f"{costs['server_step_us']:.1f} µs, client {costs['client_act_us']:.1f} µs; sending the "
        f"4-frame ACTION reply: pyzmq send_multipart {costs['send_multipart_us']:.1f} µs, "
        f"send_frames {costs['send_frames_us']:.1f} µs"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=60.0, help="1 kHz loop length.")
    parser.add_argument("--calls", type=int, default=20_000, help="Round trips per path.")
    options = parser.parse_args()
    bench_link(options.duration_s, options.calls)
