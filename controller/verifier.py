"""Artifact verification in a child process, so that a swap does not stall acting.

Loading and verifying an artifact (hashes, safetensors, the ONNX graph against the parameters)
is Python work that holds the interpreter lock: done by a thread of the serving process, it
delays the acting thread's ``act`` calls by up to the interpreter's switch interval each time.
:class:`Verifier` does it in a persistent child process instead; the calling thread only sends
a path and sleeps on a pipe until the answer comes. The answer is the artifact's digest, plus
the verified artifact itself only when the caller does not already hold one with that digest
(the digest covers every content hash, so equal digests mean equal artifacts).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, NamedTuple

from controller.artifact import Artifact, load_artifact

VERIFIER_NICENESS = 10
"""Added to the verifier process's niceness (lower priority than the serving process)."""


class Verified(NamedTuple):
    """A verified artifact: its digest, and itself unless the caller knew that digest."""

    digest: str
    artifact: Artifact | None


def _serve(connection: Connection) -> None:
    """The child: verify each (path, known digests) received; answer Verified or the error.

    It runs at a lower scheduling priority than the serving process, so that on a machine
    without a spare core its work yields to the acting thread.
    """
    with contextlib.suppress(OSError):
        os.nice(VERIFIER_NICENESS)
    while (request := connection.recv()) is not None:
        path, known = request
        try:
            artifact = load_artifact(path)
        except (ValueError, RuntimeError, OSError) as error:
            connection.send(("error", str(error)))
            continue
        connection.send(
            ("ok", Verified(artifact.digest, None if artifact.digest in known else artifact))
        )


class Verifier:
    """A child process that verifies artifacts; started on first use, one request at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._process: BaseProcess | None = None

    def verify(self, path: str | Path, known: frozenset[str] = frozenset()) -> Verified:
        """Load and verify the artifact at ``path`` in the child; ValueError says why not."""
        with self._lock:
            connection = self._start()
            try:
                connection.send((str(path), known))
                status, answer = connection.recv()
            except (EOFError, OSError) as error:  # the child died: start a new one next time
                self._stop()
                raise RuntimeError(f"the artifact verifier process failed: {error}") from error
        if status != "ok":
            raise ValueError(answer)
        return answer

    def start(self) -> None:
        """Start the child now (its imports take seconds) rather than at the first verify."""
        with self._lock:
            self._start()

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _start(self) -> Connection:
        if self._connection is None:
            context = multiprocessing.get_context("spawn")
            mine, theirs = context.Pipe()
            process: Any = context.Process(
                target=_serve, args=(theirs,), name="artifact-verifier", daemon=True
            )
            process.start()
            theirs.close()
            self._connection, self._process = mine, process
        return self._connection

    def _stop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(OSError, ValueError):
                self._connection.send(None)
            self._connection.close()
            self._connection = None
        if self._process is not None:
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
            self._process = None
