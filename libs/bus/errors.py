"""Bus errors. nats-py's exceptions are mapped to these at one choke point.

BusError
├── BusUnavailable      could not connect / the connection is closed
├── PublishFailed       no publish ack before the deadline (retries spent)
│   └── NoStream        no stream captures the subject (asked not to wait for one)
├── StreamMismatch      the stream exists with a config we cannot accept
├── ControlLineTooLong  a publish line longer than the server takes (not sent)
└── DeliveryGap         a consumer without acks lost a message on the way
"""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors


class BusError(Exception):
    """Base of every bus error."""


class BusUnavailable(BusError):
    """NATS cannot be reached, or the connection has been closed."""


class PublishFailed(BusError):
    """A publish was not acknowledged by JetStream before its deadline."""


class NoStream(PublishFailed):
    """The server answered that no stream captures the subject (no
    responders), and the publisher asked not to wait for one to appear."""


class StreamMismatch(BusError):
    """The stream exists but with subjects or storage we did not ask for."""


class ControlLineTooLong(BusError):
    """A publish whose protocol line (its subject and sizes) is longer than
    the server's ``max_control_line``: not sent, as the server would close
    the connection for it (and nats-py would then close it for good).
    :attr:`subject` is the subject, :attr:`length` the line's bytes."""

    def __init__(self, subject: str, length: int, limit: int) -> None:
        self.subject = subject
        self.length = length
        shown = subject if len(subject) <= 80 else f"{subject[:60]}…{subject[-20:]}"
        super().__init__(
            f"not published to {shown}: a {length:,}-byte publish line is over NATS's "
            f"{limit:,}-byte max_control_line, for which the server closes the connection"
        )


class DeliveryGap(BusError):
    """A consumer that takes no acks delivered a message its reader never got
    (into a connection that dropped, past the client's pending limits, or to
    another reader of the same durable), or delivers again what it did (its
    state went back: a server killed outright). The server will not put it
    right: the reader must recreate the consumer where its own place is."""

    @classmethod
    def between(cls, durable: str, expected: int, delivered: int) -> DeliveryGap:
        """The gap of ``durable`` delivering ``delivered`` where ``expected`` was due."""
        if delivered > expected:
            what = f"{delivered - expected} never arrived here"
        else:
            what = f"its state went back: {expected - delivered} delivered again"
        return cls(f"consumer {durable} delivered message {delivered} after {expected - 1}: {what}")


#: Errors after which a publish is retried (with the same Nats-Msg-Id, so a
#: retry of a publish that did land is deduplicated by the server).
RETRYABLE_PUBLISH_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    asyncio.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
)
