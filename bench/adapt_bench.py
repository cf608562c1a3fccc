"""ADAPT beside serving: one robot's action round trips while another session's adaptation runs.

A link server, in its own process as deployed (journaling to a temporary directory), serves two
sessions of one fresh HalfCheetah-velocity artifact (K = 20 episodes of 200 steps, the paper's).
Each round, the *recorder* session plays K episodes (random observations and rewards), then sends
ADAPT and waits for its report in a thread; meanwhile the *actor* session times back-to-back
STEP round trips until the report arrives. The actor then times as many round trips with nothing
else running. Rounds alternate the two conditions, so that a load spike of the machine hits both
alike. The adaptation runs in the server's worker thread while its serving thread answers the
actor: what it costs the actor is the interpreter lock and the cores the step's torch and numpy
work takes. Run: ``.venv/bin/python -m bench adapt [--rounds 40]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.link_bench import _percentiles, _start
from bench.runtime_bench import EPISODES, FAMILY, HORIZON
from controller.link.client import RobotClient
from controller.link.server import free_tcp_endpoint
from meta_train.export import fresh_artifact
from sim.families import get_family


def _play_batch(
    client: RobotClient,
    observation_size: int,
    episodes: int,
    horizon: int,
    rng: np.random.Generator,
) -> None:
    """``episodes`` episodes of ``horizon`` steps on ``client``: one batch for an ADAPT."""
    for _ in range(episodes):
        for step in range(horizon):
            reward = float(rng.normal()) if step else 0.0
            client.act(rng.normal(size=observation_size).astype(np.float32), reward)
        client.episode_end(float(rng.normal()))


class _Actor:
    """Times STEP round trips on one session, closing its episode (untimed) every ``horizon``
    steps, as the server requires."""

    def __init__(self, client: RobotClient, observation_size: int, horizon: int) -> None:
        self.client, self.horizon, self.steps = client, horizon, 0
        self.observation = np.zeros(observation_size, np.float32)

    def _trip(self) -> float:
        if self.steps == self.horizon:
            self.client.episode_end(0.0)
            self.steps = 0
        self.steps += 1
        start = time.perf_counter_ns()
        self.client.act(self.observation, 0.0)
        return (time.perf_counter_ns() - start) / 1e3

    def until(self, done: threading.Event) -> list[float]:
        """Microseconds of back-to-back round trips until ``done`` is set (at least one)."""
        out = [self._trip()]
        while not done.is_set():
            out.append(self._trip())
        return out

    def calls(self, count: int) -> list[float]:
        return [self._trip() for _ in range(count)]


def _measure(
    endpoint: str, observation_size: int, rounds: int, episodes: int, horizon: int
) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    during: list[float] = []
    idle: list[float] = []
    adapt_s: list[float] = []
    accepted = 0
    # A generous deadline: latency is measured here, not turned into safe actions.
    with (
        RobotClient(endpoint, deadline_ms=1000, name="recorder") as recorder,
        RobotClient(endpoint, deadline_ms=1000, name="actor") as client,
    ):
        actor = _Actor(client, observation_size, horizon)
        actor.calls(500)  # warm-up
        for _ in range(rounds):
            _play_batch(recorder, observation_size, episodes, horizon, rng)
            done = threading.Event()
            reports: list[dict[str, Any] | None] = []

            def adapt(done: threading.Event = done, reports: list = reports) -> None:
                try:
                    reports.append(recorder.adapt(wait=True))
                finally:
                    done.set()

            thread = threading.Thread(target=adapt)
            start = time.perf_counter()
            thread.start()
            trips = actor.until(done)
            thread.join()
            adapt_s.append(time.perf_counter() - start)
            accepted += bool(reports and reports[0] and reports[0].get("accepted"))
            during.extend(trips)
            idle.extend(actor.calls(len(trips)))
        safe_actions = client.stats().safe_actions
    result: dict[str, Any] = {
        "rounds": rounds,
        "episodes_per_adapt": episodes,
        "horizon": horizon,
        "adapt_s": {
            "median": float(np.median(adapt_s)),
            "min": float(np.min(adapt_s)),
            "max": float(np.max(adapt_s)),
        },
        "adaptations_accepted": accepted,
        "actor_safe_actions": safe_actions,
    }
    for name, samples in (("during_adapt", during), ("idle", idle)):
        values = np.asarray(samples)
        result[name] = {"calls": len(values), "max_us": float(values.max()), **_percentiles(values)}
    return result


def bench_adapt(
    rounds: int = 40, episodes: int = EPISODES, horizon: int = HORIZON
) -> dict[str, Any]:
    """Round-trip percentiles of the actor during the recorder's ADAPTs and without them."""
    family = get_family(FAMILY)
    with tempfile.TemporaryDirectory() as tmp:
        artifact = fresh_artifact(
            Path(tmp) / "init", FAMILY, episodes_per_step=episodes, horizon=horizon
        )
        endpoint = free_tcp_endpoint()
        command = [sys.executable, "-m", "controller.link", "serve", str(artifact)]
        command += ["--bind", endpoint, "--journal-dir", str(Path(tmp) / "journal")]
        server = _start(command, "serving")
        try:
            result = _measure(endpoint, family.observation_size, rounds, episodes, horizon)
        finally:
            server.terminate()
            server.wait(timeout=10)
    _print(result)
    return result


def _print(result: dict[str, Any]) -> None:
    timing = result["adapt_s"]
    print(
        f"{result['rounds']} ADAPTs of {result['episodes_per_adapt']} episodes x "
        f"{result['horizon']} steps: median {timing['median']:.3f} s "
        f"({timing['min']:.3f}-{timing['max']:.3f}), {result['adaptations_accepted']} accepted"
    )
    print(
        f"{'actor round trip':<18} {'calls':>7} {'p50 µs':>9} {'p99 µs':>9} {'p99.9 µs':>9} "
        f"{'max µs':>9}"
    )
    for name in ("during_adapt", "idle"):
        row = result[name]
        print(
            f"{name:<18} {row['calls']:>7} {row['p50_us']:>9.1f} {row['p99_us']:>9.1f} "
            f"{row['p99.9_us']:>9.1f} {row['max_us']:>9.0f}"
        )
    during, idle = result["during_adapt"], result["idle"]
    print(
        f"during/idle: p50 {during['p50_us'] / idle['p50_us']:.2f}, "
        f"p99 {during['p99_us'] / idle['p99_us']:.2f}; actor safe actions "
        f"{result['actor_safe_actions']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args(argv)
    bench_adapt(args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
