"""The event contract's dead letters: raw bytes kept exactly, stable ids, and a
dead letter that always fits."""

from __future__ import annotations

import base64

from libs.contract.codec import (
    DEFAULT_MAX_BYTES,
    HEADERS_CUT,
    DecodeError,
    dead_letter,
    decode,
    derived_id,
    encode,
)
from libs.contract.events import MessageDeadLettered
from libs.contract.subjects import subject_for
from tests.unit.contract_samples import StepClock

# ---------------------------------------------------------------- dead letter


RAW = bytes(range(256)) + b'{"not": "an event"}\x00\xff'


def make_dead_letter(data: bytes = RAW, stream_seq: int | None = 42) -> MessageDeadLettered:
    return dead_letter(
        service="risk-gate",
        subject="strategy.intent.mean_rev",
        data=data,
        error=DecodeError("malformed_json", "expected value at line 1 column 1"),
        clock=StepClock(),
        source="risk-gate-1",
        headers={"Nats-Msg-Id": "abc"},
        stream_seq=stream_seq,
    )


def test_dead_letter_keeps_raw_bytes_exactly() -> None:
    record = make_dead_letter()

    decoded = decode(encode(record))

    assert isinstance(decoded, MessageDeadLettered)
    assert base64.b64decode(decoded.payload.raw_b64, validate=True) == RAW
    assert decoded.payload.raw_size == len(RAW)
    assert decoded.payload.error == "malformed_json: expected value at line 1 column 1"
    assert decoded.payload.headers == {"Nats-Msg-Id": "abc"}
    assert decoded.payload.stream_seq == 42
    assert subject_for(decoded) == "deadletter.risk-gate"


def test_dead_letter_id_is_stable_per_stream_seq() -> None:
    first, again = make_dead_letter(stream_seq=42), make_dead_letter(stream_seq=42)
    other = make_dead_letter(stream_seq=43)

    assert first.id == again.id
    assert first.id == derived_id("deadletter", "risk-gate", "strategy.intent.mean_rev", 42)
    assert other.id != first.id
    assert first.correlation_id == first.id


def test_dead_letter_id_without_stream_seq_follows_the_whole_message() -> None:
    prefix = b"x" * 5000
    first = make_dead_letter(prefix + b"1", stream_seq=None)
    again = make_dead_letter(prefix + b"1", stream_seq=None)
    other = make_dead_letter(prefix + b"2", stream_seq=None)

    assert first.id == again.id
    assert other.id != first.id, "messages differing only after 4 KiB must not collide"


def test_a_dead_letter_always_fits_and_says_what_it_cut() -> None:
    """A message at JetStream's limits (1 MiB of data, 64 KiB of headers of
    control characters, which JSON writes six bytes each) that failed with
    a broker's 1 MiB error page: its dead letter decodes under the default
    limit and keeps what identifies the original. The error and headers were
    copied whole: 3 MiB, over NATS's max payload (MaxPayloadError, never
    retried: the consumer stopped on that message for ever)."""
    headers = {"Nats-Msg-Id": "abc", "Big": "\x01" * 40_000}
    headers |= {f"H-{i:03d}": "x" * 100 for i in range(200)}
    record = dead_letter(
        service="broker-gateway",
        subject="orders.submit.acct-a",
        data=b"{" * (1024 * 1024),
        error="HTTPError: " + "<html>" * 200_000,
        clock=StepClock(),
        source="broker-gateway-1",
        headers=headers,
        stream_seq=7,
    )

    wire = encode(record)
    assert len(wire) <= DEFAULT_MAX_BYTES, len(wire)
    decoded = decode(wire)
    assert isinstance(decoded, MessageDeadLettered)
    kept = decoded.payload
    assert (kept.original_subject, kept.stream_seq) == ("orders.submit.acct-a", 7)
    assert kept.headers["Nats-Msg-Id"] == "abc"
    assert kept.headers[HEADERS_CUT].startswith("kept "), kept.headers[HEADERS_CUT]
    assert "of 202 headers" in kept.headers[HEADERS_CUT]
    assert kept.error.startswith("HTTPError: <html>")
    assert kept.error.endswith("(error cut: 1200011 characters)")
