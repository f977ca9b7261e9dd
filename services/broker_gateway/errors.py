"""Broker errors. Every adapter maps its venue's errors to these, at one place.

BrokerError
├── BrokerUnavailable     not connected, the connection broke, or no answer in time:
│   │                     the call may be retried once connected (submit is idempotent)
│   ├── AnswerUnread      the call reached the broker, which may have acted on it, but
│   │                     its answer was not read (none in time, or one we cannot parse)
│   ├── AuthenticationFailed  the broker refused our credentials
│   └── RateLimited       the broker answered 429: retry after a pause (its Retry-After)
├── OrderRefused          the broker said no to an order (its code and reason)
├── OrderNotFound         no such order at the broker
└── NotCancelable         the order can no longer be canceled (filled, canceled)
"""

from __future__ import annotations


class BrokerError(Exception):
    """Base of every broker error."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached right now; retry once connected."""


class AnswerUnread(BrokerUnavailable):
    """The broker may have acted on the call, but its answer was not read:
    none came in time, or it could not be parsed. Retried as any
    ``BrokerUnavailable``, except where a repeat is not harmless (a close-all)."""


class AuthenticationFailed(BrokerUnavailable):
    """The broker refused the credentials (retried: keys may be rotated)."""


class RateLimited(BrokerUnavailable):
    """The broker is there but will not serve us now (HTTP 429): back off.

    ``retry_after_s`` is the wait it asked for (``Retry-After``), if it did.
    """

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class OrderRefused(BrokerError):
    """The broker refused an order; ``code`` is the venue's, as a string."""

    def __init__(self, reason: str, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class OrderNotFound(BrokerError):
    """The broker knows no such order."""


class NotCancelable(BrokerError):
    """The order is past canceling (already filled or canceled)."""
