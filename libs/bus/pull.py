"""Low-latency pulls from a durable JetStream consumer.

nats-py's ``PullSubscription.fetch(batch)`` waits, once the first message has
arrived, for the whole batch or the timeout, so one lone message can sit for
the full timeout; and it costs a task, a timer and a uuid per message. Here
one pull request is kept open ahead of the caller (prefetch) and answered into
a callback subscription; :meth:`PullFetcher.fetch` returns as soon as
something has arrived (after an optional short ``linger`` to let a batch
fill), so a trickle is handled at once and a flood in big batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import nats.errors
import orjson
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from libs.bus.client import Bus

STATUS_HEADER = "Status"
#: Statuses that end a pull request: no messages, request expired, conflict.
TERMINAL_STATUSES = frozenset({"404", "408", "409"})


def parse_ack_subject(reply: str) -> tuple[int, int, int]:
    """(stream sequence, timestamp ns, pending) from a JetStream ack subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``,
    or the v2 form with ``<domain>.<account hash>`` after ``ACK`` and a token
    at the end. Parsing the tokens is exact (nats-py's metadata goes through a
    float datetime) and much cheaper per message.
    """
    tokens = reply.split(".")
    base = 0 if len(tokens) == 9 else 2
    return int(tokens[base + 5]), int(tokens[base + 7]), int(tokens[base + 8])


class PullFetcher:
    """Pulls from the durable consumer ``durable`` of ``stream``."""

    def __init__(self, bus: Bus, stream: str, durable: str) -> None:
        self.bus = bus
        self.stream = stream
        self.durable = durable
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._sub: Subscription | None = None
        self._inbox = ""
        self._buffer: list[Msg] = []
        self._remaining = 0  # messages the open pull request may still bring
        self._expires_at = 0.0
        self._signal = asyncio.Event()

    async def start(self) -> None:
        await self.close()
        self._inbox = self.bus.nc.new_inbox()
        self._buffer = []
        self._remaining = 0
        self._sub = await self.bus.nc.subscribe(
            self._inbox, cb=self._on_message, pending_msgs_limit=500_000
        )

    async def _on_message(self, msg: Msg) -> None:
        # A pull delivers its messages, then (if it ended short) one status.
        if not msg.data and msg.headers and STATUS_HEADER in msg.headers:
            if msg.headers[STATUS_HEADER] in TERMINAL_STATUSES:
                self._remaining = 0
                self._signal.set()
            return  # 100: idle heartbeat
        self._buffer.append(msg)
        self._remaining = max(0, self._remaining - 1)
        self._signal.set()

    async def _request(self, batch: int, timeout: float) -> None:
        self._remaining = batch
        # If the server never ends this request (it restarted, the connection
        # dropped), we stop waiting for it after its expiry and ask again.
        self._expires_at = time.monotonic() + timeout + 0.5
        request = orjson.dumps({"batch": batch, "expires": int(timeout * 1e9)})
        await self.bus.nc.publish(self._next_subject, request, reply=self._inbox)

    async def _wait(self, until: float) -> None:
        # Returns at once if something arrived since the last wait (the flag
        # is cleared only after waking, so no arrival is ever missed).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._signal.wait(), max(0.0, until - time.monotonic()))
        self._signal.clear()

    async def fetch(self, batch: int, timeout: float, linger: float = 0.0) -> list[Msg]:
        """Up to ``batch`` messages; empty when none came within ``timeout``.

        Once something has arrived, waits at most ``linger`` for more.
        """
        assert self._sub is not None, "start() first"
        if self._remaining and time.monotonic() >= self._expires_at:
            self._remaining = 0  # lost: no messages and no status will come
        if self._remaining == 0 and len(self._buffer) < batch:
            await self._request(batch - len(self._buffer), timeout)
        # A little past the server's own expiry, so its 408 normally wins.
        deadline = min(time.monotonic() + timeout + 0.5, self._expires_at)
        while not self._buffer and self._remaining and time.monotonic() < deadline:
            await self._wait(deadline)
        if linger > 0:
            lingering = time.monotonic() + linger
            while self._remaining and len(self._buffer) < batch and time.monotonic() < lingering:
                await self._wait(lingering)
        msgs, self._buffer = self._buffer[:batch], self._buffer[batch:]
        if self._remaining == 0:
            await self._request(batch, timeout)  # prefetch the next batch
        return msgs

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                await sub.unsubscribe()
