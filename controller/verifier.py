"""Artifact verification in a child process, so that a swap does not stall acting.

Loading and verifying an artifact (hashes, safetensors, the ONNX graph against the parameters)
is Python work that holds the interpreter lock: done by a thread of the serving process, it
delays the acting thread's ``act`` calls by up to the interpreter's switch interval each time.
:class:`Verifier` does it in a persistent child process instead; the calling thread only sends
a path and sleeps on a pipe until the answer comes. The answer is the artifact's digest, plus
the verified artifact itself only when the caller does not already hold one with that digest
(the digest covers every content hash, so equal digests mean equal artifacts).
:meth:`Verifier.request` and :meth:`Verifier.answer` split the round trip for a caller that
waits on the pipe itself (a serving loop's poll) instead of sleeping in a thread.

The child must not take a core from the serving process either: it runs under the idle
scheduling class (``SCHED_IDLE``, where Linux has it; else at the lowest niceness), so it runs
only on a core nothing else wants and never preempts the acting thread when it wakes, and with
one torch and BLAS thread, so it never occupies more than one core.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import struct
import threading
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, NamedTuple

import torch
from threadpoolctl import threadpool_limits

from controller.artifact import Artifact, load_artifact

_LENGTH = struct.Struct("<Q")
"""The byte length of a message, written before it."""
_KNOWN, _ARTIFACT, _ERROR = b"k", b"a", b"e"
"""An answer's first byte: a digest the caller knows follows, the pickled artifact, or why
the artifact cannot serve. A request is the path and the known digests, NUL-separated (neither
a path nor a hex digest holds a NUL); an empty request stops the child. Known digests, the
common answer of a swap back, need no pickling either way."""
_FIRST_READ = 1 << 16
"""Bytes asked for by the first read of a message."""

VERIFIER_NICENESS = 19
"""The verifier's niceness where the idle scheduling class is not available."""


class Verified(NamedTuple):
    """A verified artifact: its digest, and itself unless the caller knew that digest."""

    digest: str
    artifact: Artifact | None


def lowest_priority() -> str:
    """Put this process in the idle scheduling class (else the lowest niceness); which one."""
    idle = getattr(os, "SCHED_IDLE", None)
    if idle is not None:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, idle, os.sched_param(0))
            return "idle"
    with contextlib.suppress(OSError):
        os.nice(VERIFIER_NICENESS - os.nice(0))
    return f"nice {os.nice(0)}"


def _serve(connection: Connection) -> None:
    """The child: verify each path received; answer its digest, the artifact, or the error.

    At the lowest scheduling priority and on one thread (module docstring), so that its work
    yields to the serving process.
    """
    lowest_priority()
    torch.set_num_threads(1)
    threadpool_limits(1)
    fd = connection.fileno()
    while True:
        try:
            request = _receive(fd)
            if not request:  # stop
                return
            path, *known = request.decode().split("\0")
            try:
                artifact = load_artifact(path)
            except (ValueError, RuntimeError, OSError) as error:
                _send(fd, _ERROR + str(error).encode())
                continue
            if artifact.digest in known:
                _send(fd, _KNOWN + artifact.digest.encode())
            else:
                _send(fd, _ARTIFACT + pickle.dumps(artifact, protocol=pickle.HIGHEST_PROTOCOL))
        except (EOFError, BrokenPipeError):  # the serving process closed its end
            return


def _send(fd: int, data: bytes) -> None:
    """Write ``data`` after its length, in one write when the pipe takes it."""
    view = memoryview(_LENGTH.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _receive(fd: int) -> bytes:
    """Read one message of :func:`_send`; EOFError when the other end closed.

    A short message (a path, a digest) comes in one read, so the waiting thread takes the
    interpreter lock once when it wakes rather than once per part of the message.
    """
    data = os.read(fd, _FIRST_READ)
    while 0 < len(data) < _LENGTH.size:
        data += os.read(fd, _LENGTH.size - len(data))
    if not data:
        raise EOFError("the other end closed the pipe")
    size = _LENGTH.unpack_from(data)[0] + _LENGTH.size
    if len(data) == size:
        return data[_LENGTH.size :]
    parts, have = [data], len(data)
    while have < size:
        part = os.read(fd, size - have)
        if not part:
            raise EOFError("the other end closed the pipe mid-message")
        parts.append(part)
        have += len(part)
    return b"".join(parts)[_LENGTH.size :]


class Verifier:
    """A child process that verifies artifacts; started on first use, one request at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._process: BaseProcess | None = None
        self._outstanding = False
        """A request was sent and its answer not read yet."""

    def verify(self, path: str | Path, known: frozenset[str] = frozenset()) -> Verified:
        """Load and verify the artifact at ``path`` in the child; ValueError says why not."""
        with self._lock:
            self._request(path, known)
            return self._answer()

    def request(self, path: str | Path, known: frozenset[str] = frozenset()) -> int:
        """Send ``path`` to the child without waiting; :meth:`answer` takes the result.

        Returns the file descriptor that becomes readable when the answer starts to arrive
        (for ``select`` or a ``zmq.Poller``). One request at a time: RuntimeError while
        another is unanswered.
        """
        with self._lock:
            return self._request(path, known)

    def answer(self) -> Verified:
        """The answer to the last :meth:`request` (blocks until it comes); ValueError says why
        the artifact cannot serve, RuntimeError that the child failed."""
        with self._lock:
            return self._answer()

    def _request(self, path: str | Path, known: frozenset[str]) -> int:
        if not str(path) or "\0" in str(path):  # the child reads an empty request as "stop"
            raise ValueError(f"artifact path {str(path)!r} is empty or holds a NUL character")
        if self._outstanding:
            raise RuntimeError("another artifact is being verified; retry when it is done")
        fd = self._start().fileno()
        try:
            _send(fd, "\0".join((str(path), *known)).encode())
        except OSError as error:  # the child died: start a new one next time
            self._stop()
            raise RuntimeError(f"the artifact verifier process failed: {error}") from error
        self._outstanding = True
        return fd

    def _answer(self) -> Verified:
        if not self._outstanding or self._connection is None:
            raise RuntimeError("no artifact is being verified")
        self._outstanding = False
        try:
            answer = _receive(self._connection.fileno())
        except (EOFError, OSError) as error:  # the child died: start a new one next time
            self._stop()
            raise RuntimeError(f"the artifact verifier process failed: {error}") from error
        kind, body = answer[:1], answer[1:]
        if kind == _KNOWN:
            return Verified(body.decode(), None)
        if kind == _ARTIFACT:
            artifact = pickle.loads(body)
            return Verified(artifact.digest, artifact)
        raise ValueError(body.decode())

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
        self._outstanding = False
        if self._connection is not None:
            with contextlib.suppress(OSError, ValueError):
                _send(self._connection.fileno(), b"")
            self._connection.close()
            self._connection = None
        if self._process is not None:
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
            self._process = None
