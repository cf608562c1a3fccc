"""The robot link's vocabulary: protocol version, message types, error codes and limits.

Everything here is specified for other languages in ``docs/protocol.md``; this module is the
single Python source of those constants, shared by the server, the robot-side client and the
tests. It imports nothing beyond the standard library so that the client stays light.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Final

PROTOCOL_VERSION: Final = 1
"""Bumped on any change a client written against an older docs/protocol.md would trip on."""

WIRE_DTYPE: Final = "<f4"
"""The one array encoding: little-endian IEEE-754 float32, numpy's spelling (docs/protocol.md)."""

MAX_HEADER_BYTES: Final = 4096
"""Largest msgpack header frame the server parses; a header is a handful of small fields."""

MAX_BODY_FRAMES: Final = 4
"""Most frames a request body may have (header plus arrays); STEP uses two."""

DEFAULT_MAX_MESSAGE_BYTES: Final = 65536
"""Default protocol limit on a request body (all frames): answered with TOO_LARGE above it.
64 KiB holds an observation of 16k floats, far above any locomotion robot's."""

DEFAULT_SOCKET_MAX_BYTES: Final = 1 << 20
"""Default hard per-frame limit set on the server socket (ZMQ_MAXMSGSIZE): libzmq drops the
connection of a peer that sends more, before the server sees the message, so no reply is
possible. It stops a stranger from making the server allocate without bound."""

FLOAT32_OVERFLOW: Final = 2.0**128 - 2.0**103
"""3.4028235677973366e38, half a unit above the largest finite float32 (2^128 - 2^104): a
float64 of this magnitude or more rounds to infinity as a float32 (ties to even), so the server
refuses it (NOT_FINITE) even where msgpack carried it as a float64; anything smaller rounds to
a finite float32 and is accepted."""

SEQ_MAX: Final = (1 << 64) - 1
"""Sequence numbers are unsigned 64-bit integers."""


class MessageType(StrEnum):
    """The ``type`` field of a header. Requests come from the robot, replies from the server."""

    # requests
    HELLO = "hello"
    STEP = "step"
    EPISODE_END = "episode_end"
    ADAPT = "adapt"
    SWAP = "swap"
    RESET = "reset"
    STATUS = "status"
    BYE = "bye"
    # replies
    WELCOME = "welcome"
    ACTION = "action"
    EPISODE = "episode"
    ADAPTING = "adapting"
    ADAPTED = "adapted"
    SWAPPING = "swapping"
    SWAPPED = "swapped"
    RESETTING = "resetting"
    RESET_DONE = "reset_done"
    STATUS_REPLY = "status_reply"
    OK = "ok"
    ERROR = "error"


REQUEST_TYPES: Final = frozenset(
    {
        MessageType.HELLO,
        MessageType.STEP,
        MessageType.EPISODE_END,
        MessageType.ADAPT,
        MessageType.SWAP,
        MessageType.RESET,
        MessageType.STATUS,
        MessageType.BYE,
    }
)


STARTED_REPLY: Final = {
    MessageType.ADAPT: MessageType.ADAPTING,
    MessageType.SWAP: MessageType.SWAPPING,
    MessageType.RESET: MessageType.RESETTING,
}
"""Reply to an ADAPT/SWAP/RESET sent with ``wait: false`` (the job has started)."""

FINISHED_REPLY: Final = {
    MessageType.ADAPT: MessageType.ADAPTED,
    MessageType.SWAP: MessageType.SWAPPED,
    MessageType.RESET: MessageType.RESET_DONE,
}
"""Reply to an ADAPT/SWAP/RESET sent with ``wait: true`` (the default), once it has ended."""


class ErrorCode(IntEnum):
    """The ``code`` of an ERROR reply (docs/protocol.md, "Errors"). Values never change meaning."""

    MALFORMED = 1
    """The message could not be parsed: bad envelope, header not a msgpack map, a field missing
    or of the wrong type, the wrong number of frames."""
    UNKNOWN_TYPE = 2
    """The header's ``type`` is not a request this protocol version knows."""
    BAD_VERSION = 3
    """HELLO asked for a protocol version this server does not speak."""
    UNKNOWN_SESSION = 4
    """The ``session`` is not (or no longer) known, e.g. the server restarted: send HELLO."""
    OUT_OF_ORDER = 5
    """``seq`` is not greater than the last one the server accepted in this session."""
    WRONG_DTYPE = 6
    """An array is declared with a dtype other than ``<f4``."""
    WRONG_SIZE = 7
    """An array frame's byte length does not match the layout given in WELCOME."""
    NOT_FINITE = 8
    """The observation or the reward holds NaN or infinity."""
    TOO_LARGE = 9
    """The request body is larger than ``max_message_bytes`` (or its header than 4 KiB)."""
    BUSY = 10
    """An adaptation, swap or reset is already running; retry when STATUS shows none busy."""
    INTERNAL = 11
    """The server failed unexpectedly while handling the request; it keeps serving."""
    EPISODE_TOO_LONG = 12
    """A STEP would make the episode being recorded longer than the WELCOME's ``horizon``."""


class ProtocolError(Exception):
    """A request or reply that breaks the protocol; carries the code of its ERROR reply."""

    def __init__(self, code: ErrorCode, message: str, seq: int | None = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.seq = seq
