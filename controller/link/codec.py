"""Encoding and checking of link messages: a msgpack header frame plus raw float32 frames.

A message body is a list of ZeroMQ frames ``[header, *arrays]`` (docs/protocol.md,
"Encoding"). The header is a msgpack map with string keys; each array is its own frame of
little-endian float32 values, never inside msgpack, so the server reads an observation with one
``np.frombuffer`` and no copy. Decoding is split in two so that the server can check the
session and sequence number (its own state) between the stateless header checks and the array
checks; every failure raises :class:`ProtocolError` with the code of the ERROR reply to send.
Needs only numpy and msgpack: the robot-side client imports it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import PurePath
from typing import Any, NamedTuple

import msgpack
import numpy as np

from controller.link.protocol import (
    FLOAT32_OVERFLOW,
    MAX_BODY_FRAMES,
    MAX_HEADER_BYTES,
    REQUEST_TYPES,
    SEQ_MAX,
    WIRE_DTYPE,
    ErrorCode,
    MessageType,
    ProtocolError,
)

_NUMBER = (int, float)

# Per request type: field -> (accepted Python types after msgpack decoding, required).
# Unknown extra fields are ignored so that a newer client can talk to an older server.
REQUEST_FIELDS: dict[MessageType, dict[str, tuple[tuple[type, ...], bool]]] = {
    MessageType.HELLO: {
        "version": ((int,), True),
        "resume": ((str,), False),
        "client": ((str,), False),
    },
    MessageType.STEP: {
        "session": ((str,), True),
        "dtype": ((str,), True),
        "reward": (_NUMBER, True),
        "done": ((bool,), True),
        "start": ((bool,), False),
        "interrupted": ((bool,), False),
        "deterministic": ((bool,), False),
    },
    MessageType.EPISODE_END: {
        "session": ((str,), True),
        "reward": (_NUMBER, True),
        "terminated": ((bool,), True),
        "interrupted": ((bool,), False),
    },
    MessageType.ADAPT: {"session": ((str,), True), "wait": ((bool,), False)},
    MessageType.SWAP: {
        "session": ((str,), True),
        "path": ((str,), True),
        "wait": ((bool,), False),
    },
    MessageType.RESET: {"session": ((str,), True), "wait": ((bool,), False)},
    MessageType.STATUS: {"session": ((str,), True)},
    MessageType.BYE: {"session": ((str,), True)},
}
_UNUSED_AT_START = ("reward", "done")
"""STEP fields that a STEP with ``start`` and without ``done`` may leave out or send as nil
(the previous episode, if any, is dropped, so nothing reads them)."""

_REQUESTS = {kind.value: kind for kind in REQUEST_TYPES}  # a dict lookup beats MessageType(kind)

ARRAY_FRAMES: dict[MessageType, int] = {MessageType.STEP: 1}
"""Array frames that follow the header, per request type (STEP: the observation)."""


class Message(NamedTuple):
    """A decoded message whose header passed the stateless checks."""

    type: MessageType
    seq: int
    fields: dict[str, Any]
    """The header map as decoded (all required fields present and of the right type)."""
    frames: tuple[bytes, ...]
    """The raw array frames after the header, not yet checked (see :func:`read_arrays`)."""


def encode(header: Mapping[str, Any], arrays: Sequence[np.ndarray] = ()) -> list[bytes]:
    """Frames of one message: the msgpack header, then each array as raw ``<f4`` bytes."""
    frames = [msgpack.packb(header, use_bin_type=True)]
    for array in arrays:
        frames.append(np.ascontiguousarray(array, dtype=WIRE_DTYPE).tobytes())
    return frames


def unpack_header(frame: bytes, max_bytes: int = MAX_HEADER_BYTES) -> dict[str, Any]:
    """The header map of a frame; MALFORMED or TOO_LARGE if it is not a msgpack map of at most
    ``max_bytes`` (requests: 4 KiB; the client allows larger replies such as STATUS)."""
    if len(frame) > max_bytes:
        raise ProtocolError(
            ErrorCode.TOO_LARGE, f"header of {len(frame)} bytes exceeds {max_bytes}"
        )
    try:
        # The length limits bound what a hostile frame can make msgpack allocate.
        header = msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=True,
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_array_len=max_bytes,
            max_map_len=max_bytes,
            max_ext_len=0,
        )
    except Exception as error:  # msgpack raises a dozen exception types on garbage input
        raise ProtocolError(ErrorCode.MALFORMED, f"header is not msgpack: {error}") from None
    if not isinstance(header, dict):
        raise ProtocolError(
            ErrorCode.MALFORMED, f"header must be a msgpack map, got {type(header).__name__}"
        )
    for key in header:
        if not isinstance(key, str):
            raise ProtocolError(
                ErrorCode.MALFORMED,
                f"header keys must be msgpack str, got {type(key).__name__} {key!r}",
            )
    return header


def read_seq(header: Mapping[str, Any]) -> int:
    """The header's sequence number, an unsigned 64-bit integer."""
    seq = header.get("seq")
    if type(seq) is not int or not 0 <= seq <= SEQ_MAX:
        raise ProtocolError(
            ErrorCode.MALFORMED, f"seq must be an integer in [0, 2^64), got {seq!r}"
        )
    return seq


def decode_request(body: Sequence[bytes], max_message_bytes: int) -> Message:
    """Stateless checks of a request body: size, header, seq, type and header fields."""
    total = sum(map(len, body))
    if total > max_message_bytes:
        raise ProtocolError(
            ErrorCode.TOO_LARGE, f"request of {total} bytes exceeds the {max_message_bytes} limit"
        )
    if not body:
        raise ProtocolError(ErrorCode.MALFORMED, "empty request: a header frame is required")
    if len(body) > MAX_BODY_FRAMES:
        raise ProtocolError(
            ErrorCode.MALFORMED, f"{len(body)} frames; a request has at most {MAX_BODY_FRAMES}"
        )
    header = unpack_header(body[0])
    seq = read_seq(header)
    kind = header.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(
            ErrorCode.MALFORMED,
            f"a request needs the field 'type', a msgpack str; got {type(kind).__name__}",
            seq,
        )
    message_type = _REQUESTS.get(kind)
    if message_type is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown request type {kind!r}", seq)
    header = _check_fields(message_type, header, seq)
    expected = ARRAY_FRAMES.get(message_type, 0)
    if len(body) - 1 != expected:
        raise ProtocolError(
            ErrorCode.MALFORMED,
            f"{kind} carries {expected} array frame(s) after the header, got {len(body) - 1}",
            seq,
        )
    return Message(message_type, seq, header, tuple(body[1:]))


def _check_fields(message_type: MessageType, header: dict[str, Any], seq: int) -> dict[str, Any]:
    """``header`` checked against the type's fields; an optional field sent as nil is taken as
    left out (removed). A STEP with ``start`` and without ``done`` needs no reward or done
    (nothing uses them); with ``done`` true the reward ends the episode, so it is required."""
    fields = REQUEST_FIELDS[message_type]
    starts = (
        message_type is MessageType.STEP
        and header.get("start") is True
        and header.get("done") is not True
    )

    def optional(name: str) -> bool:
        return not fields.get(name, (0, True))[1] or (starts and name in _UNUSED_AT_START)

    header = {k: v for k, v in header.items() if v is not None or not optional(k)}
    for name, (types, _required) in fields.items():
        if name not in header:
            if not optional(name):
                raise ProtocolError(
                    ErrorCode.MALFORMED, f"{message_type} needs the field {name!r}", seq
                )
            continue
        value = header[name]
        # bool is an int subclass in Python; msgpack keeps them apart, and so do we.
        is_bool_mismatch = isinstance(value, bool) and bool not in types
        if is_bool_mismatch or not isinstance(value, types):
            allowed = "/".join(t.__name__ for t in types)
            raise ProtocolError(
                ErrorCode.MALFORMED,
                f"{message_type} field {name!r} must be {allowed}, got {type(value).__name__}",
                seq,
            )
    return header


def read_array(message: Message, index: int, size: int, name: str) -> np.ndarray:
    """Array frame ``index`` as a read-only float32 [size] view; checks dtype, size, finiteness."""
    dtype = message.fields.get("dtype")
    if dtype != WIRE_DTYPE:
        raise ProtocolError(
            ErrorCode.WRONG_DTYPE,
            f"arrays must be little-endian float32 (dtype {WIRE_DTYPE!r}), got {dtype!r}",
            message.seq,
        )
    frame = message.frames[index]
    if len(frame) != 4 * size:
        raise ProtocolError(
            ErrorCode.WRONG_SIZE,
            f"{name} frame has {len(frame)} bytes; expected {size} float32 = {4 * size} bytes",
            message.seq,
        )
    array = np.frombuffer(frame, dtype=WIRE_DTYPE)
    if not np.isfinite(array).all():
        index = int(np.flatnonzero(~np.isfinite(array))[0])
        raise ProtocolError(
            ErrorCode.NOT_FINITE,
            f"{name}[{index}] is {array[index]}; every entry must be a finite float32",
            message.seq,
        )
    return array


def read_reward(message: Message) -> float:
    """The header's ``reward`` (0 when left out): one that rounds to a finite float32
    (|reward| < FLOAT32_OVERFLOW)."""
    reward = float(message.fields.get("reward", 0.0))
    if not (math.isfinite(reward) and abs(reward) < FLOAT32_OVERFLOW):
        raise ProtocolError(
            ErrorCode.NOT_FINITE,
            f"reward is {reward!r}; it must round to a finite float32 "
            f"(|reward| < {FLOAT32_OVERFLOW!r})",
            message.seq,
        )
    return reward


def error_header(code: ErrorCode, message: str, seq: int | None) -> dict[str, Any]:
    """Header of an ERROR reply."""
    return {
        "type": MessageType.ERROR.value,
        "seq": seq,
        "code": int(code),
        "name": code.name,
        "message": message,
    }


def to_wire(value: Any) -> Any:
    """A report or status value turned into msgpack-friendly types (maps, lists, scalars)."""
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, Enum):
        return to_wire(value.value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): to_wire(item) for key, item in value.items()}
    if hasattr(value, "_asdict"):  # NamedTuple records
        return to_wire(value._asdict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_wire({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if hasattr(value, "model_dump"):  # pydantic models
        return to_wire(value.model_dump())
    if isinstance(value, list | tuple | set | frozenset):
        return [to_wire(item) for item in value]
    return str(value)
