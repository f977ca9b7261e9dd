"""Bytes on the wire <-> events, and the dead-letter record for what won't decode.

Decoding is strict: the envelope and payload must match the models exactly
(``extra="forbid"``), and a message larger than the configured limit is
refused before it is parsed. A refusal is a :class:`DecodeError`; callers turn
it into a :class:`MessageDeadLettered` with :func:`dead_letter` and move on.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import uuid
from collections.abc import Mapping

from pydantic import ValidationError

from libs.contract.envelope import Clock, Event
from libs.contract.events import (
    EVENT_ADAPTER,
    AnyEvent,
    DeadLetterPayload,
    MessageDeadLettered,
)

#: Default ceiling on one encoded event (NATS itself allows 1 MiB).
DEFAULT_MAX_BYTES = 256 * 1024

#: Most raw bytes a dead letter carries on the bus (the recorder's row keeps
#: them all). Small enough that the dead letter itself always decodes.
MAX_DEAD_LETTER_RAW = 64 * 1024

#: Most characters of error text a dead letter carries (a broker's error can
#: hold a whole HTML page).
MAX_DEAD_LETTER_ERROR = 4 * 1024

#: Most characters of header names and values a dead letter carries.
#: JetStream stores up to 64 KiB of headers, and JSON writes a control
#: character in six bytes: copied whole, they and the error could take a dead
#: letter past what it is decoded with (:data:`DEFAULT_MAX_BYTES`), even past
#: NATS's max payload, and a publish refused for its size is never retried:
#: the consumer would stop on that message. With the raw bytes' base64 (88
#: KiB) and the error, a dead letter stays under 170 KiB whatever it holds.
MAX_DEAD_LETTER_HEADERS = 8 * 1024

#: The header a dead letter adds when it kept only some of the original's.
HEADERS_CUT = "Tradebus-Headers-Cut"

#: The original's dedup id, kept before any other header.
_MSG_ID_HEADER = "Nats-Msg-Id"

#: Namespace for ids derived from a stream position (dead letters, gaps).
DERIVED_ID_NAMESPACE = uuid.UUID("6f0f3c47-3b0e-4c7b-9a57-2f1d0b7f0a11")


class DecodeError(ValueError):
    """A message that is not a valid event. ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode(event: Event) -> bytes:
    """Canonical JSON bytes of an event (Decimals as strings)."""
    return event.model_dump_json().encode()


def decode(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> AnyEvent:
    """Decode one event, or raise :class:`DecodeError` saying why not."""
    if len(data) > max_bytes:
        raise DecodeError("oversized", f"{len(data)} bytes > limit {max_bytes}")
    try:
        return EVENT_ADAPTER.validate_json(data)
    except ValidationError as e:
        errors = e.errors(include_url=False, include_input=False)
        if not errors:
            raise DecodeError("invalid_event", str(e)) from e
        first = errors[0]
        reason = "malformed_json" if first["type"] == "json_invalid" else "invalid_event"
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"]
        raise DecodeError(reason, f"{where}: {message}" if where else message) from e


def derived_id(*parts: object) -> uuid.UUID:
    """A deterministic id from parts, so that retries produce the same event."""
    return uuid.uuid5(DERIVED_ID_NAMESPACE, "/".join(str(p) for p in parts))


@functools.lru_cache(maxsize=4096)  # asked for several times per intent; a uuid5 is a SHA-1
def order_id_for(intent_id: uuid.UUID) -> uuid.UUID:
    """The order id (and broker client order id) an accepted intent gets.

    Part of the contract: the risk-gate derives it from the intent's id, so
    the strategy side knows each intent's order id from the start and needs
    only the gate's denials, not its acceptances (``risk.decision.<strategy>
    .denied``, see :class:`~libs.contract.events.RiskDecisionMade`).
    """
    return derived_id("risk-gate", "order", intent_id)


def _bounded_error(error: str) -> str:
    if len(error) <= MAX_DEAD_LETTER_ERROR:
        return error
    return f"{error[:MAX_DEAD_LETTER_ERROR]}... (error cut: {len(error)} characters)"


def _bounded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` whole if they fit in :data:`MAX_DEAD_LETTER_HEADERS`; else
    those that fit (``Nats-Msg-Id`` first, then in order, skipping any too
    big) and :data:`HEADERS_CUT` saying what was left out."""
    total = sum(len(k) + len(v) for k, v in headers.items())
    if total <= MAX_DEAD_LETTER_HEADERS:
        return dict(headers)
    kept: dict[str, str] = {}
    dropped: list[str] = []
    room = MAX_DEAD_LETTER_HEADERS
    for name, value in sorted(headers.items(), key=lambda h: h[0] != _MSG_ID_HEADER):
        if len(name) + len(value) <= room:
            kept[name] = value
            room -= len(name) + len(value)
        else:
            dropped.append(name[:64])
    shown = ", ".join(dropped[:8]) + (", ..." if len(dropped) > 8 else "")
    kept[HEADERS_CUT] = (
        f"kept {len(kept)} of {len(headers)} headers "
        f"({MAX_DEAD_LETTER_HEADERS - room} of {total} characters); left out: {shown}"
    )
    return kept


def dead_letter(
    *,
    service: str,
    subject: str,
    data: bytes,
    error: DecodeError | str,
    clock: Clock,
    source: str,
    headers: Mapping[str, str] | None = None,
    stream_seq: int | None = None,
) -> MessageDeadLettered:
    """The dead-letter event for a message that could not be decoded.

    The raw bytes ride along whole up to :data:`MAX_DEAD_LETTER_RAW` (so the
    dead letter itself fits in a NATS message); past that they are cut and
    ``truncated`` says so. The error text and the headers are bounded too
    (:data:`MAX_DEAD_LETTER_ERROR`, :data:`MAX_DEAD_LETTER_HEADERS`), each
    saying what it cut; the stream sequence and subject always identify the
    original. Its id derives from where the message was found (stream sequence, or the
    bytes themselves), so redelivering the same bad message dead-letters it
    once.
    """
    # Without a stream position the key is a digest of the whole message: two
    # different messages must never share an id, or the second would be
    # deduplicated away (Nats-Msg-Id) and never recorded.
    key = stream_seq if stream_seq is not None else "sha256:" + hashlib.sha256(data).hexdigest()
    return MessageDeadLettered.create(
        DeadLetterPayload(
            service=service,
            original_subject=subject,
            error=_bounded_error(str(error)),
            raw_b64=base64.b64encode(data[:MAX_DEAD_LETTER_RAW]).decode(),
            raw_size=len(data),
            truncated=len(data) > MAX_DEAD_LETTER_RAW,
            headers=_bounded_headers(headers or {}),
            stream_seq=stream_seq,
        ),
        source=source,
        clock=clock,
        event_id=derived_id("deadletter", service, subject, key),
    )
