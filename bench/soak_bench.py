"""Soak of the robot path: 4 sim-robot processes at 100 Hz against one ``adaptctl serve``.

For ``minutes`` (10 by default) each robot repeats "K episodes, adapt" on its own target
velocity; an operator session swaps the initialization ``swaps`` times between two artifacts;
the server is killed (SIGKILL) and restarted with the same arguments ``restarts`` times. It
reports steps served, late replies (an action later than one 10 ms period), episodes recorded,
episodes recovered after restarts, and adaptations; it checks that no completed episode was
lost (every episode answered ``recorded: true`` is in the server's journal) and that every
robot adapted. Run: ``.venv/bin/python -m bench soak``; the test suite runs a 1-minute one.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from controller.adaptation import AdaptationSettings
from controller.journal import JOURNAL_FILE, Journal
from controller.link.client import LinkError, RobotClient
from controller.link.lanes import LANES_DIR
from controller.link.server import free_tcp_endpoint
from meta_train.export import fresh_artifact

ROOT = Path(__file__).resolve().parent.parent
FAMILY, K, HORIZON, RATE_HZ = "cheetah_velocity", 4, 100, 100.0
VELOCITIES = (0.5, 1.0, 1.5, 2.0)


def start_server(artifact: Path, endpoint: str, journal: Path, log: Path) -> subprocess.Popen[str]:
    """``python -m controller.link serve`` once it is bound (its stderr appended to ``log``)."""
    with open(log, "a") as errors:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controller.link",
                "serve",
                str(artifact),
                "--bind",
                endpoint,
                "--journal-dir",
                str(journal),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "serving" not in line:
        process.kill()
        raise RuntimeError(f"the server did not start: {line!r}; see {log}")
    return process


def start_robot(endpoint: str, index: int, seconds: float, log: Path) -> subprocess.Popen[str]:
    """``python -m controller.link sim-robot`` soaking for ``seconds`` (stderr to ``log``)."""
    with open(log, "a") as errors:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controller.link",
                "sim-robot",
                "--connect",
                endpoint,
                "--target-velocity",
                str(VELOCITIES[index % len(VELOCITIES)]),
                "--episodes",
                str(K),
                "--adapted-episodes",
                "0",
                "--rate-hz",
                str(RATE_HZ),
                "--duration-s",
                str(seconds),
                "--deadline-ms",
                "50",
                "--seed",
                str(index),
                "--json",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )


class Operator:
    """Swaps the initialization between two artifacts at even intervals, over its own session."""

    def __init__(self, endpoint: str, paths: list[Path], swaps: int, seconds: float) -> None:
        self.endpoint, self.paths, self.swaps, self.seconds = endpoint, paths, swaps, seconds
        self.accepted = self.failed = 0
        self.thread = threading.Thread(target=self._run, name="soak-operator", daemon=True)

    def _run(self) -> None:
        client = RobotClient(
            self.endpoint, 50, timeout_ms=5000, adapt_timeout_ms=30_000, name="operator"
        )
        start = time.monotonic()
        for i in range(self.swaps):
            time.sleep(
                max(0.0, start + (i + 1) * self.seconds / (self.swaps + 1) - time.monotonic())
            )
            try:
                report = client.swap(str(self.paths[(i + 1) % 2])) or {}
                self.accepted += bool(report.get("accepted"))
            except LinkError:  # the server is restarting: this swap is lost, count it
                self.failed += 1
        client.close()


def journal_episodes(root: Path) -> int:
    """Episode records in every session journal under the server's journal root."""
    count = 0
    for lane in sorted((root / LANES_DIR).glob("*")):
        if (lane / JOURNAL_FILE).exists():
            journal = Journal(lane)
            count += sum(r.get("kind") == "episode" for r in journal.records)
            journal.close()
    return count


def bench_soak(
    minutes: float = 10.0, robots: int = 4, swaps: int = 50, restarts: int = 2
) -> dict[str, Any]:
    """Run the soak (see module docstring); print and return its figures."""
    seconds = minutes * 60.0
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        settings = AdaptationSettings(step_size=0.01)
        paths = [
            fresh_artifact(
                root / f"init{i}",
                FAMILY,
                seed=i,
                episodes_per_step=K,
                horizon=HORIZON,
                settings=settings,
            )
            for i in range(2)
        ]
        endpoint, journal, log = free_tcp_endpoint(), root / "journal", root / "server.log"
        server = start_server(paths[0], endpoint, journal, log)
        fleet = [start_robot(endpoint, i, seconds, root / f"robot{i}.log") for i in range(robots)]
        operator = Operator(endpoint, paths, swaps, seconds)
        operator.thread.start()
        began = time.monotonic()
        for n in range(restarts):
            time.sleep(max(0.0, began + (n + 1) * seconds / (restarts + 1) - time.monotonic()))
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=30)
            server = start_server(paths[0], endpoint, journal, log)
        outputs = [robot.communicate(timeout=seconds + 600)[0] for robot in fleet]
        operator.thread.join(timeout=120)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        if any(robot.returncode for robot in fleet):
            failed = [i for i, robot in enumerate(fleet) if robot.returncode]
            tail = (root / f"robot{failed[0]}.log").read_text()[-3000:]
            raise RuntimeError(f"sim-robots {failed} failed; robot {failed[0]}'s log:\n{tail}")
        results = [json.loads(output)["result"] for output in outputs]
        in_journal = journal_episodes(journal)
    return report(results, operator, in_journal, minutes, restarts)


def report(
    results: list[dict[str, Any]],
    operator: Operator,
    in_journal: int,
    minutes: float,
    restarts: int,
) -> dict[str, Any]:
    """The soak's figures and goals from the robots' results; printed."""
    episodes = [e for r in results for e in r["before"] + r["after"]]
    recorded = sum(e["recorded"] for e in episodes)
    adapted = [sum(bool(a.get("accepted")) for a in r["adapt_reports"]) for r in results]
    figures = {
        "minutes": minutes,
        "robots": len(results),
        "rate_hz": RATE_HZ,
        "server_restarts": restarts,
        "swaps_accepted": operator.accepted,
        "swaps_failed": operator.failed,
        "steps": sum(e["length"] for e in episodes),
        "steps_served": sum(e["length"] - e["safe_actions"] for e in episodes),
        "late_replies": sum(e.get("late", 0) for e in episodes),
        "episodes": len(episodes),
        "episodes_recorded": recorded,
        "episodes_in_journal": in_journal,
        "episodes_lost": max(0, recorded - in_journal),
        "episodes_recovered": sum(
            int(w.get("episodes_ready") or 0)
            for r in results
            for w in r["reconnects"]
            if w.get("policy_origin") == "restored"
        ),
        "sessions_restored": sum(
            w.get("policy_origin") == "restored" for r in results for w in r["reconnects"]
        ),
        "adaptations_per_robot": adapted,
    }
    figures["goals_met"] = {
        "zero_completed_episodes_lost": figures["episodes_lost"] == 0,
        "every_robot_adapted": all(n > 0 for n in adapted),
    }
    for key, value in figures.items():
        print(f"  {key:>26}: {value}")
    return figures


if __name__ == "__main__":
    bench_soak(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0)
