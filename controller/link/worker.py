"""The server's worker thread: adaptations, swaps and resets, one at a time, off the serving path.

The serving thread submits a job and keeps answering STEP requests; the worker runs it and
writes a byte to a pipe that the serving thread's ``zmq.Poller`` watches, so a finished job is
answered at once rather than at the next poll timeout. The controller allows ``adapt``, ``swap``
and ``reset`` from any thread while another one acts (controller/runtime.py, module docstring).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

log = logging.getLogger(__name__)


class Job(NamedTuple):
    """One request for the worker."""

    kind: str
    """adapt | swap | reset (the request's message type)."""
    key: str
    """What the job works on: a session's token (adapt, reset), or ``*`` (swap: all)."""
    run: Callable[[], Any]
    reply_to: list[bytes] | None
    """Envelope of a waiting request, answered when the job ends; None: nobody waits."""
    seq: int
    then: Callable[[Any, BaseException | None], None] | None = None
    """Called by the serving thread with the result (or the error) once the job has ended."""


class Finished(NamedTuple):
    """A job that ended, with its result or the exception it raised."""

    job: Job
    result: Any
    error: BaseException | None


class Worker:
    """A single background thread running :class:`Job`s in order; ``busy`` maps the key of
    each job queued or running to its kind."""

    def __init__(self) -> None:
        self.busy: dict[str, str] = {}
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._done: queue.Queue[Finished] = queue.Queue()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        self._thread = threading.Thread(target=self._work, name="link-worker", daemon=True)
        self._thread.start()

    @property
    def wake_fd(self) -> int:
        """File descriptor that becomes readable when a job has finished."""
        return self._read_fd

    def submit(self, job: Job) -> None:
        """Queue ``job``; the caller checks ``busy`` first (one job per key at a time)."""
        self.busy[job.key] = job.kind
        self._jobs.put(job)

    def finished(self) -> list[Finished]:
        """The jobs that ended since the last call (called by the serving thread)."""
        with contextlib.suppress(BlockingIOError):  # several wakes may share one read
            os.read(self._read_fd, 4096)
        ended = []
        while not self._done.empty():
            finished = self._done.get()
            ended.append(finished)
            self.busy.pop(finished.job.key, None)
        return ended

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop after the job in progress (waits up to ``timeout_s``) and close the pipe."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(timeout=timeout_s)
        if self._read_fd >= 0:
            os.close(self._read_fd)
            os.close(self._write_fd)
            self._read_fd = self._write_fd = -1

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                finished = Finished(job, job.run(), None)
            except Exception as error:  # reported to the requester; the server carries on
                log.exception("%s failed", job.kind)
                finished = Finished(job, None, error)
            self._done.put(finished)
            os.write(self._write_fd, b"\0")
