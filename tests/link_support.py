"""Shared helpers of the robot-link tests (tests/test_link_*.py): artifacts, servers, raw peers."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from controller.adaptation import AdaptationSettings
from meta_train.export import fresh_artifact

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_MS = 5000  # every blocking socket call in these tests gives up after this


def family_artifact(
    path: Path,
    family_name: str = "cheetah_velocity",
    *,
    episodes_per_step: int = 2,
    horizon: int = 20,
    seed: int = 0,
    step_size: float = 0.1,
) -> Path:
    """A freshly initialized artifact with the layout of ``family_name`` (small K, horizon)."""
    return fresh_artifact(
        path,
        family_name,
        seed=seed,
        episodes_per_step=episodes_per_step,
        horizon=horizon,
        settings=AdaptationSettings(step_size=step_size),
    )


class RawPeer:
    """A bare REQ socket speaking the protocol by hand, to send anything at all."""

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.REQ)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.seq = 0

    def request(self, frames: Sequence[bytes], timeout_ms: int = TIMEOUT_MS) -> list[bytes]:
        self.socket.send_multipart(list(frames))
        if not self.socket.poll(timeout_ms, zmq.POLLIN):
            raise TimeoutError(f"no reply within {timeout_ms} ms")
        return self.socket.recv_multipart()

    def call(
        self, header: dict[str, Any], *arrays: bytes, timeout_ms: int = TIMEOUT_MS
    ) -> tuple[dict[str, Any], list[bytes]]:
        """Send ``header`` (seq filled in when absent) and raw array frames; decoded reply."""
        if "seq" not in header:
            self.seq += 1
            header = {**header, "seq": self.seq}
        reply = self.request([msgpack.packb(header), *arrays], timeout_ms)
        return msgpack.unpackb(reply[0]), reply[1:]

    def hello(self, timeout_ms: int = TIMEOUT_MS) -> dict[str, Any]:
        reply, _ = self.call(
            {"type": "hello", "version": 1, "client": "raw"}, timeout_ms=timeout_ms
        )
        assert reply["type"] == "welcome", reply
        self.session = reply["session"]
        return reply

    def step(self, observation: np.ndarray, **fields: Any) -> tuple[dict[str, Any], list[bytes]]:
        header = {
            "type": "step",
            "session": self.session,
            "dtype": "<f4",
            "reward": 0.0,
            "done": False,
            **fields,
        }
        return self.call(header, np.asarray(observation, "<f4").tobytes())

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


def python_process(code: str, *args: str) -> subprocess.Popen[str]:
    """A fresh interpreter running ``code`` (cwd: the repository), output captured."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@contextmanager
def server_process(
    artifact: Path, endpoint: str, journal: Path, *extra: str
) -> Iterator[subprocess.Popen[str]]:
    """``python -m controller.link serve`` in its own process, once it is bound; killed on
    exit. Its log goes to ``journal``'s sibling ``server.log``."""
    journal.parent.mkdir(parents=True, exist_ok=True)
    with open(journal.parent / "server.log", "a") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controller.link",
                "serve",
                str(artifact),
                "--bind",
                endpoint,
                "--set",
                f"journal_dir={journal}",
                *extra,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        wait_for_line(process, "serving", timeout_s=60)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def sim_robot_process(
    endpoint: str, *args: str, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m controller.link sim-robot --connect ENDPOINT ARGS...``, run to its end."""
    command = [sys.executable, "-m", "controller.link", "sim-robot", "--connect", endpoint]
    return subprocess.run(
        [*command, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout_s
    )


def wait_for_line(process: subprocess.Popen[str], text: str, timeout_s: float = 30) -> str:
    """Read the process's output until a line contains ``text``; the output read so far."""
    assert process.stdout is not None
    seen = []
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line)
            if text in line:
                return "".join(seen)
    raise TimeoutError(f"no line with {text!r} within {timeout_s} s; output:\n{''.join(seen)}")
