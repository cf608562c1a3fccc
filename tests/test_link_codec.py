"""The link's wire format: encoding round trips, every stateless check, and a decoder fuzz test."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.link.codec import (
    REQUEST_FIELDS,
    decode_request,
    encode,
    read_array,
    read_reward,
    to_wire,
    unpack_header,
)
from controller.link.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_HEADER_BYTES,
    ErrorCode,
    MessageType,
    ProtocolError,
)

OBS = 5


def step_body(observation: Any = None, **fields: Any) -> list[bytes]:
    header = {
        "type": "step",
        "seq": 7,
        "session": "s",
        "dtype": "<f4",
        "reward": 0.5,
        "done": False,
        **fields,
    }
    if observation is None:
        observation = np.arange(OBS, dtype="<f4")
    return [msgpack.packb(header), np.asarray(observation).tobytes()]


def code_of(body: list[bytes], observation_size: int = OBS) -> ErrorCode:
    with pytest.raises(ProtocolError) as caught:
        message = decode_request(body, DEFAULT_MAX_MESSAGE_BYTES)
        read_array(message, 0, observation_size, "observation")
        read_reward(message)
    return caught.value.code


def test_step_round_trip_reads_the_observation_without_copy() -> None:
    observation = np.linspace(-1, 1, OBS, dtype=np.float32)
    frames = encode(
        {"type": "step", "seq": 3, "session": "abc", "dtype": "<f4", "reward": -1.25, "done": True},
        [observation],
    )
    message = decode_request(frames, DEFAULT_MAX_MESSAGE_BYTES)
    assert message.type is MessageType.STEP and message.seq == 3
    decoded = read_array(message, 0, OBS, "observation")
    np.testing.assert_array_equal(decoded, observation)
    assert decoded.dtype == np.dtype("<f4") and not decoded.flags.writeable  # a view, no copy
    assert read_reward(message) == -1.25 and message.fields["done"] is True


def test_big_endian_and_float64_inputs_are_encoded_little_endian_float32() -> None:
    frames = encode({"type": "action", "seq": 1}, [np.array([1.5, -2.0], dtype=">f8")])
    assert frames[1] == np.array([1.5, -2.0], dtype="<f4").tobytes()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ([], ErrorCode.MALFORMED),
        ([b"\xc1"], ErrorCode.MALFORMED),  # 0xc1: never used in msgpack
        ([msgpack.packb([1, 2])], ErrorCode.MALFORMED),  # not a map
        ([msgpack.packb({"type": "status", "session": "s"})], ErrorCode.MALFORMED),  # no seq
        ([msgpack.packb({"type": "status", "seq": -1, "session": "s"})], ErrorCode.MALFORMED),
        ([msgpack.packb({"type": "status", "seq": True, "session": "s"})], ErrorCode.MALFORMED),
        ([msgpack.packb({"type": "launch", "seq": 1})], ErrorCode.UNKNOWN_TYPE),
        ([msgpack.packb({"seq": 1, "session": "s"})], ErrorCode.MALFORMED),  # no type
        ([msgpack.packb({"type": b"status", "seq": 1, "session": "s"})], ErrorCode.MALFORMED),
        ([msgpack.packb({b"type": "status", b"seq": 1, b"session": "s"})], ErrorCode.MALFORMED),
        ([msgpack.packb({"type": "action", "seq": 1})], ErrorCode.UNKNOWN_TYPE),  # a reply
        ([msgpack.packb({"type": "status", "seq": 1})], ErrorCode.MALFORMED),  # no session
        ([msgpack.packb({"type": "status", "seq": 1, "session": 5})], ErrorCode.MALFORMED),
        (step_body(done=1), ErrorCode.MALFORMED),  # an int is not a bool
        (step_body(reward="1.0"), ErrorCode.MALFORMED),
        (step_body()[:1], ErrorCode.MALFORMED),  # the observation frame is missing
        ([*step_body(), b""], ErrorCode.MALFORMED),  # one frame too many
        ([*step_body(), b"", b"", b""], ErrorCode.MALFORMED),  # more than MAX_BODY_FRAMES
        (step_body(np.arange(OBS - 1, dtype="<f4")), ErrorCode.WRONG_SIZE),  # truncated
        (step_body(np.arange(OBS + 1, dtype="<f4")), ErrorCode.WRONG_SIZE),
        ([*step_body(np.arange(OBS, dtype="<f4"))[:1], b"\x00" * 7], ErrorCode.WRONG_SIZE),
        (step_body(np.arange(OBS, dtype="<f8"), dtype="<f8"), ErrorCode.WRONG_DTYPE),
        (step_body(np.arange(OBS, dtype=">f4"), dtype=">f4"), ErrorCode.WRONG_DTYPE),
        (step_body(np.array([0, 0, np.nan, 0, 0], "<f4")), ErrorCode.NOT_FINITE),
        (step_body(np.array([0, 0, 0, 0, -np.inf], "<f4")), ErrorCode.NOT_FINITE),
        (step_body(reward=math.inf), ErrorCode.NOT_FINITE),
        (step_body(reward=math.nan), ErrorCode.NOT_FINITE),
        (step_body(reward=1e39), ErrorCode.NOT_FINITE),
        (step_body(reward=-(2.0**128 - 2.0**103)), ErrorCode.NOT_FINITE),  # rounds to -inf
        ([msgpack.packb({"type": "step", "pad": "x" * MAX_HEADER_BYTES})], ErrorCode.TOO_LARGE),
        ([*step_body()[:1], b"\x00" * DEFAULT_MAX_MESSAGE_BYTES], ErrorCode.TOO_LARGE),
    ],
)
def test_each_malformed_request_has_its_code(body: list[bytes], code: ErrorCode) -> None:
    assert code_of(body) is code


def test_an_error_keeps_the_requests_seq_once_it_is_known() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_request(step_body(done="yes"), DEFAULT_MAX_MESSAGE_BYTES)
    assert caught.value.seq == 7
    with pytest.raises(ProtocolError) as caught:
        decode_request([b"\xc1"], DEFAULT_MAX_MESSAGE_BYTES)
    assert caught.value.seq is None


def test_unknown_header_fields_are_ignored_for_forward_compatibility() -> None:
    message = decode_request(step_body(future_field=[1, 2, 3]), DEFAULT_MAX_MESSAGE_BYTES)
    assert message.type is MessageType.STEP


def test_every_request_type_decodes_with_its_required_fields() -> None:
    values = {str: "x", bool: True, int: 1, float: 0.5}
    for kind, fields in REQUEST_FIELDS.items():
        header: dict[str, Any] = {"type": kind.value, "seq": 1}
        header |= {n: values[types[0]] for n, (types, required) in fields.items() if required}
        body = [msgpack.packb(header)] + ([b"\x00" * 4] if kind is MessageType.STEP else [])
        assert decode_request(body, DEFAULT_MAX_MESSAGE_BYTES).type is kind


def test_reply_headers_may_exceed_the_request_limit_when_the_reader_allows() -> None:
    big = msgpack.packb({"type": "status_reply", "seq": 1, "status": {"x": "y" * 10_000}})
    with pytest.raises(ProtocolError):
        unpack_header(big)
    assert unpack_header(big, max_bytes=1 << 20)["seq"] == 1


def test_to_wire_turns_records_into_msgpack_types() -> None:
    from typing import NamedTuple

    class Timings(NamedTuple):
        total_s: float

    value = {"a": np.float32(1.5), "b": (np.arange(2), Timings(0.25)), "c": None}
    wire = to_wire(value)
    assert wire == {"a": 1.5, "b": [[0, 1], {"total_s": 0.25}], "c": None}
    assert msgpack.unpackb(msgpack.packb(wire)) == wire


# ---- fuzz: no input makes the decoder raise anything but ProtocolError ----------------------
_FIELD_NAMES = sorted({n for fields in REQUEST_FIELDS.values() for n in fields} | {"type", "seq"})
_INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what msgpack can carry
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    _INTS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.sampled_from([t.value for t in MessageType] + ["<f4", "<f8"]),
    st.lists(_INTS, max_size=3),
    st.dictionaries(st.text(max_size=3), _INTS, max_size=2),
)
_HEADERS = st.dictionaries(st.sampled_from(_FIELD_NAMES) | st.text(max_size=5), _VALUES)
_VALID_STEP = {
    "type": "step",
    "seq": 1,
    "session": "s",
    "dtype": "<f4",
    "reward": 0.0,
    "done": False,
}
_NEAR_STEPS = st.tuples(
    st.dictionaries(st.sampled_from(_FIELD_NAMES), _VALUES, max_size=3).map(
        lambda changes: msgpack.packb({**_VALID_STEP, **changes})
    ),
    st.lists(st.binary(max_size=60), min_size=1, max_size=2),
).map(lambda parts: [parts[0], *parts[1]])
_BODIES = st.one_of(
    _NEAR_STEPS,
    st.lists(st.binary(max_size=64), max_size=6),
    st.tuples(_HEADERS.map(msgpack.packb), st.lists(st.binary(max_size=40), max_size=4)).map(
        lambda parts: [parts[0], *parts[1]]
    ),
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_BODIES, observation_size=st.integers(min_value=1, max_value=12))
def test_decoder_fuzz_raises_only_protocol_errors(body: list[bytes], observation_size: int) -> None:
    try:
        message = decode_request(body, 512)
        if message.type is MessageType.STEP:
            read_array(message, 0, observation_size, "observation")
            read_reward(message)
        elif message.type is MessageType.EPISODE_END:
            read_reward(message)
    except ProtocolError as error:
        assert isinstance(error.code, ErrorCode) and error.message


# ---- docs/protocol.md stays the truth ------------------------------------------------------
DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()


def test_the_documented_error_codes_are_the_implemented_ones() -> None:
    rows = re.findall(r"^\| (\d+) \| `([A-Z_]+)` \|", DOC, flags=re.MULTILINE)
    assert [(int(code), name) for code, name in rows] == [(c.value, c.name) for c in ErrorCode]


def test_every_message_type_is_documented() -> None:
    for kind in MessageType:
        assert f'"{kind.value}"' in DOC, f"docs/protocol.md never names {kind.value!r}"
    for fields in REQUEST_FIELDS.values():
        for name in fields:
            assert f"`{name}`" in DOC, f"docs/protocol.md never explains the field {name!r}"


def test_the_documented_example_bytes_decode_as_stated() -> None:
    block = DOC.split("is\n\n```\n", 1)[1].split("```", 1)[0]
    header = msgpack.unpackb(bytes.fromhex(block.replace("\n", " ")))
    assert header == {
        "type": "step",
        "seq": 42,
        "session": "9f2c4e1a7b3d5f60a1b2c3d4e5f60718",
        "dtype": "<f4",
        "reward": -0.5,
        "done": False,
    }
    assert np.array([1.0, -2.0], "<f4").tobytes().hex(" ") in DOC
    assert f"| request header | {MAX_HEADER_BYTES} bytes |" in DOC
    assert f"default {DEFAULT_MAX_MESSAGE_BYTES};" in DOC


def test_rewards_that_round_to_a_finite_float32_are_accepted() -> None:
    """The largest finite float32, the same written with 8 digits (3.4028235e38, a float64
    above it that rounds down to it) and the last float64 below the overflow all pass."""
    for reward in (3.4028234663852886e38, 3.4028235e38, math.nextafter(2.0**128 - 2.0**103, 0)):
        message = decode_request(step_body(reward=reward), DEFAULT_MAX_MESSAGE_BYTES)
        assert read_reward(message) == reward
        assert np.isfinite(np.float32(reward))


def test_optional_fields_sent_as_nil_are_left_out_and_a_start_needs_no_reward() -> None:
    header = {"type": "step", "seq": 2, "session": "s", "dtype": "<f4", "start": True}
    observation = np.zeros(OBS, np.float32)
    message = decode_request(encode(header, [observation]), DEFAULT_MAX_MESSAGE_BYTES)
    assert read_reward(message) == 0.0 and "done" not in message.fields
    nil = {**header, "start": None, "reward": 1.0, "done": False, "deterministic": None}
    message = decode_request(encode(nil, [observation]), DEFAULT_MAX_MESSAGE_BYTES)
    assert "start" not in message.fields and "deterministic" not in message.fields
    with pytest.raises(ProtocolError, match="needs the field 'reward'"):
        decode_request(encode({**header, "start": False}, [observation]), 65536)
    both_nil = {**header, "reward": None, "done": None}
    message = decode_request(encode(both_nil, [observation]), DEFAULT_MAX_MESSAGE_BYTES)
    assert read_reward(message) == 0.0 and "done" not in message.fields
    with pytest.raises(ProtocolError, match="needs the field 'reward'"):  # done ends an episode
        decode_request(encode({**header, "done": True}, [observation]), 65536)
    with pytest.raises(ProtocolError, match="'session' must be str, got NoneType"):
        decode_request(encode({**header, "session": None}, [observation]), 65536)
