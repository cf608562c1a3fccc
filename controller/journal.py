"""Recording episodes, and the append-only journal that makes them survive a crash.

The :class:`Recorder` keeps the episode in progress of each stream (a robot, or one of N parallel
simulations) in memory and hands out finished episodes. The :class:`Journal` appends one framed
record per finished episode (and per adaptation, reset or swap) to ``journal.bin`` and fsyncs it,
so a crash loses at most the episodes still in progress. :func:`replay` turns the records back
into the controller's state. Recording itself is controller/recording.py. The format is documented in ``docs/artifact.md``, "The journal".
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import msgpack
import numpy as np
import torch

JOURNAL_FILE = "journal.bin"
STATE_DIR_VARIABLE = "ADAPTCTL_STATE_DIR"
"""Environment variable naming the directory of default journals (see :func:`state_dir`)."""
JOURNAL_VERSION = 1
_MAGIC = b"ACJ1"
_HEADER = struct.Struct("<4sII")  # magic, payload length, CRC-32 of the payload


class JournalError(RuntimeError):
    """The journal cannot be opened or read (the message says what to do)."""


def state_dir() -> Path:
    """Where default journals live: ``$ADAPTCTL_STATE_DIR``, else ``$XDG_STATE_HOME/adaptctl``,
    else ``~/.local/state/adaptctl``."""
    explicit = os.environ.get(STATE_DIR_VARIABLE)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "adaptctl"


def default_journal_dir(family: str, digest: str) -> Path:
    """The journal directory of an artifact when none is configured: one per artifact
    (family and the first 16 hex digits of its digest) under :func:`state_dir`."""
    return state_dir() / "journals" / f"{family}-{digest[:16]}"


class RecordedEpisode(NamedTuple):
    """One finished episode of one stream, as recorded (L = its length)."""

    episode_id: int
    stream: int
    policy_id: str
    """Id of the policy that acted (see ``runtime.policy_id``); on-policy iff it is serving."""
    observations: np.ndarray
    """[L, O] float32."""
    actions: np.ndarray
    """[L, A] float32: the Gaussian sample before clipping (what the log-probability needs)."""
    rewards: np.ndarray
    """[L] float32."""
    terminated: bool
    """True when the last step ended the episode (done); False when it was cut (time limit)."""

    @property
    def length(self) -> int:
        return int(self.rewards.shape[0])

    def episode_return(self) -> float:
        return float(self.rewards.sum(dtype=np.float64))


def encode_array(array: np.ndarray) -> dict[str, Any]:
    array = np.ascontiguousarray(array)
    return {"dtype": array.dtype.str, "shape": list(array.shape), "data": array.tobytes()}


def decode_array(encoded: dict[str, Any]) -> np.ndarray:
    flat = np.frombuffer(encoded["data"], dtype=np.dtype(encoded["dtype"]))
    return flat.reshape(encoded["shape"]).copy()


def episode_record(episode: RecordedEpisode) -> dict[str, Any]:
    return {
        "kind": "episode",
        "id": episode.episode_id,
        "stream": episode.stream,
        "policy": episode.policy_id,
        "terminated": episode.terminated,
        "observations": encode_array(episode.observations),
        "actions": encode_array(episode.actions),
        "rewards": encode_array(episode.rewards),
    }


def adaptation_record(
    before: str,
    after: str | None,
    params: Mapping[str, torch.Tensor] | None,
    consumed: Sequence[RecordedEpisode],
    reason: str,
    kl: float | None,
) -> dict[str, Any]:
    """The record of one adaptation on the episodes ``consumed``: accepted when ``after`` (the
    new policy id) is given, with why (``reason``) and its mean KL.

    An accepted one carries the new parameters, so that a restarted controller can serve them.
    """
    encoded = None if params is None else {k: encode_array(v.numpy()) for k, v in params.items()}
    return {
        "kind": "adaptation",
        "accepted": after is not None,
        "from": before,
        "policy": before if after is None else after,
        "consumed": [e.episode_id for e in consumed],
        "params": encoded,
        "time": time.time(),
        "reason": reason,
        "kl": kl,
    }


def _episode_from_record(record: dict[str, Any]) -> RecordedEpisode:
    return RecordedEpisode(
        episode_id=int(record["id"]),
        stream=int(record["stream"]),
        policy_id=str(record["policy"]),
        observations=decode_array(record["observations"]),
        actions=decode_array(record["actions"]),
        rewards=decode_array(record["rewards"]),
        terminated=bool(record["terminated"]),
    )


class Journal:
    """``journal.bin`` in ``directory``: framed msgpack records, appended and fsync'd.

    Opening reads every record, drops a torn last frame (a write cut by a crash) and takes an
    exclusive lock, so two controllers never interleave their records in one journal.
    """

    def __init__(self, directory: str | Path, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.path = self.directory / JOURNAL_FILE
        self.fsync = fsync
        self.torn_bytes = 0
        self._lock = threading.Lock()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a+b")  # noqa: SIM115 -- held open for the lifetime
        except OSError as error:
            raise JournalError(f"cannot open the journal {self.path}: {error}") from error
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            raise JournalError(
                f"the journal {self.path} is in use by another controller; give each "
                "controller its own journal_dir"
            ) from None
        self.records = self._read_and_repair()
        if not self.records:
            self.append({"kind": "header", "version": JOURNAL_VERSION, "time": time.time()})
        elif self.records[0].get("version", 0) > JOURNAL_VERSION:
            raise JournalError(
                f"the journal {self.path} has format version {self.records[0]['version']}, newer "
                f"than this controller reads ({JOURNAL_VERSION}); upgrade adaptctl or use a new "
                "journal_dir"
            )

    def _read_and_repair(self) -> list[dict[str, Any]]:
        self._file.seek(0)
        data = self._file.read()
        records, offset = _frames(data, str(self.path))
        if offset < len(data):  # a torn last frame: the crash interrupted its write
            self.torn_bytes = len(data) - offset
            self._file.truncate(offset)
            self._sync()
        return records

    def append(self, record: dict[str, Any], sync: bool = True) -> None:
        """Append one record; it is on disk (fsync'd) when this returns. ``sync=False``: written
        to the file but not fsync'd, so that it costs no disk wait; the next synced record (of
        this file, after it) makes it durable too."""
        payload = msgpack.packb(record, use_bin_type=True)
        frame = _HEADER.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            try:
                self._file.seek(0, os.SEEK_END)
                self._file.write(frame)
                if sync:
                    self._sync()
                else:
                    self._file.flush()
            except (OSError, ValueError) as error:  # ValueError: the file was closed
                raise JournalError(
                    f"could not append a {record.get('kind')} record to {self.path}: {error}; "
                    "it is kept in memory only (check the disk, or run without a journal_dir)"
                ) from error

    def _sync(self) -> None:
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
                self._file.close()


def _frames(data: bytes, name: str) -> tuple[list[dict[str, Any]], int]:
    """The records of the intact frames, and the offset where they end (a torn tail after).

    A damaged frame followed by more data is not a torn write but corruption: refuse it rather
    than silently dropping the good records after it.
    """
    records: list[dict[str, Any]] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        magic, length, crc = _HEADER.unpack_from(data, offset)
        end = offset + _HEADER.size + length
        payload = data[offset + _HEADER.size : end]
        if magic == _MAGIC and end <= len(data) and zlib.crc32(payload) == crc:
            records.append(msgpack.unpackb(payload, raw=False))
            offset = end
            continue
        if _intact_frame_after(data, offset):
            raise JournalError(
                f"the journal {name} is corrupt at byte {offset} (checksum mismatch) with "
                "intact records after it; move it aside to start a new journal"
            )
        break
    return records, offset


def _intact_frame_after(data: bytes, offset: int) -> bool:
    """Whether an intact frame starts anywhere after ``offset`` (only on the error path)."""
    start = data.find(_MAGIC, offset + 1)
    while start != -1 and start + _HEADER.size <= len(data):
        _, length, crc = _HEADER.unpack_from(data, start)
        payload = data[start + _HEADER.size : start + _HEADER.size + length]
        if len(payload) == length and zlib.crc32(payload) == crc:
            return True
        start = data.find(_MAGIC, start + 1)
    return False


class Recovered(NamedTuple):
    """The controller's state at the end of a journal."""

    adapted_params: dict[str, np.ndarray] | None
    """The adapted parameters serving at the end, or None for the initialization."""
    policy_id: str
    """Id of the policy serving at the end (the initialization's when nothing is resumed)."""
    adaptations: int
    """Accepted adaptation steps from the initialization to that policy."""
    episodes: list[RecordedEpisode]
    """Finished episodes not yet consumed by an adaptation, oldest first."""
    next_episode_id: int
    swapped_to: str | None = None
    """The initial policy of the artifact the journal's last swap or reset installed, when it
    is not the initialization replayed onto (what descends from it is not restored)."""


def replay(records: list[dict[str, Any]], init_policy_id: str, resume: bool) -> Recovered:
    """Replay the journal's records onto a controller serving ``init_policy_id``.

    The adapted policy is resumed only when its chain of adaptations starts from this very
    initialization; otherwise the initialization serves, and episodes collected by another
    policy stay history, never used as on-policy data. Without ``resume`` nothing is restored.
    Each change of the serving policy (an accepted adaptation, a swap, a reset) forgets the
    unconsumed episodes of other policies, as the running controller did when it changed.
    """
    if not resume:
        next_id = 1 + max((int(r["id"]) for r in records if r.get("kind") == "episode"), default=-1)
        return Recovered(None, init_policy_id, 0, [], next_id)
    pending: dict[int, RecordedEpisode] = {}
    root, current, params, steps, next_id = init_policy_id, init_policy_id, None, 0, 0
    for record in records:
        kind = record.get("kind")
        if kind == "episode":
            episode = _episode_from_record(record)
            pending[episode.episode_id] = episode
            next_id = max(next_id, episode.episode_id + 1)
        elif kind == "adaptation":
            for episode_id in record["consumed"]:
                pending.pop(int(episode_id), None)
            if record["accepted"] and record["from"] == current:
                current, steps = record["policy"], steps + 1
                params = {k: decode_array(v) for k, v in record["params"].items()}
                pending = _of_policy(pending, current)
        elif kind in ("reset", "swap"):
            root = current = record["policy"]
            params, steps = None, 0
            pending = _of_policy(pending, current)
    swapped_to = None if root == init_policy_id else root
    if swapped_to is not None or params is None:
        params, current, steps = None, init_policy_id, 0
    return Recovered(params, current, steps, list(pending.values()), next_id, swapped_to)


def _of_policy(episodes: dict[int, RecordedEpisode], policy_id: str) -> dict[int, RecordedEpisode]:
    return {key: e for key, e in episodes.items() if e.policy_id == policy_id}
