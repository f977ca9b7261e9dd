"""Low-latency pulls from a durable JetStream consumer.

nats-py's ``PullSubscription.fetch(batch)`` waits, once the first message has
arrived, for the whole batch or the timeout, so one lone message can sit for
the full timeout; and it costs a task, a timer and a uuid per message. Here
one pull request is kept open ahead of the caller (prefetch) and answered into
a callback subscription; :meth:`PullFetcher.fetch` returns as soon as
something has arrived, so a trickle is handled at once and a flood in big
batches.

A reader that prefers fewer, larger batches to promptness (the recorder)
passes a ``linger``: then only the first message is long-polled for; the rest
is left to pile up on the server for ``linger`` and taken in one ``no_wait``
pull. An open pull request would instead bring every message on its own, and
each one costs both processes a wake-up.

A consumer that vanished (deleted, or lost with the server's data) serves
no pull request ("no responders", or nothing at all); after
:data:`LOST_BEFORE_CHECK` such requests in a row the fetcher looks the
consumer up, and :meth:`PullFetcher.fetch` raises
``nats.js.errors.NotFoundError`` if it is gone, instead of waiting on for
ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import nats.errors
import orjson
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy

from libs.bus.client import Bus

log = logging.getLogger(__name__)

STATUS_HEADER = "Status"
#: Pull requests that may go unanswered in a row (no message and no status
#: but "no responders" by their expiry) before the consumer is looked up: a
#: live consumer ends every request with a status, one that is gone (deleted,
#: or lost with the server's data) does not, and waiting on would stall the
#: reader silently.
LOST_BEFORE_CHECK = 2
#: The status of a request nobody serves (here: a consumer that is not there).
NO_RESPONDERS = "503"
#: Statuses that end a pull request: no messages, request expired, conflict.
TERMINAL_STATUSES = frozenset({"404", "408", "409"})
#: How long a close may wait for the consumer's ack policy, to give back
#: what it had prefetched.
GIVE_BACK_TIMEOUT = 1.0


def _ack_tokens(reply: str) -> tuple[list[str], int]:
    """The ack subject's tokens, and where the v1 tokens start in them."""
    tokens = reply.split(".")
    return tokens, 0 if len(tokens) == 9 else 2


def parse_ack_subject(reply: str) -> tuple[int, int, int]:
    """(stream sequence, timestamp ns, pending) from a JetStream ack subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``,
    or the v2 form with ``<domain>.<account hash>`` after ``ACK`` and a token
    at the end. Parsing the tokens is exact (nats-py's metadata goes through a
    float datetime) and much cheaper per message.
    """
    tokens, base = _ack_tokens(reply)
    return int(tokens[base + 5]), int(tokens[base + 7]), int(tokens[base + 8])


def stream_seq(msg: Msg) -> int:
    """The stream sequence of a message JetStream delivered (from its ack
    subject); 0 for a message without one (a plain NATS message)."""
    return parse_ack_subject(msg.reply)[0] if msg.reply else 0


def consumer_seq(reply: str) -> int:
    """The consumer sequence from a JetStream ack subject (one more for each
    message the consumer delivered, redeliveries included)."""
    tokens, base = _ack_tokens(reply)
    return int(tokens[base + 6])


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
        self._lost = 0  # pull requests in a row that nothing answered
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
            status = msg.headers[STATUS_HEADER]
            if status == NO_RESPONDERS:
                # Nobody serves the request: no such consumer (or JetStream is
                # not up yet). Not an answer: the request runs to its expiry
                # (which paces the asking) and then counts as unanswered.
                return
            self._lost = 0
            if status in TERMINAL_STATUSES:
                self._remaining = 0
                self._signal.set()
            return  # 100: idle heartbeat
        self._lost = 0
        self._buffer.append(msg)
        self._remaining = max(0, self._remaining - 1)
        self._signal.set()

    async def _request(self, batch: int, timeout: float, *, no_wait: bool = False) -> None:
        self._remaining = batch
        # If the server never ends this request (it restarted, the connection
        # dropped), we stop waiting for it after its expiry and ask again.
        self._expires_at = time.monotonic() + timeout + 0.5
        # A no_wait request brings what is there now, then ends (404 or 408).
        body: dict[str, int | bool] = {"batch": batch}
        if no_wait:
            body["no_wait"] = True
        else:
            body["expires"] = int(timeout * 1e9)
        try:
            await self.bus.nc.publish(self._next_subject, orjson.dumps(body), reply=self._inbox)
        except nats.errors.Error:
            self._remaining = 0  # never sent: nothing will answer it; the next fetch asks again
            raise

    async def _check_consumer(self) -> None:
        """:data:`LOST_BEFORE_CHECK` requests in a row went unanswered (no
        message and no status but "no responders" by their expiry): make sure
        the consumer still exists (``nats.js.errors.NotFoundError`` if not:
        the caller's recovery recreates it, or refuses a reset stream)."""
        self._lost = 0
        await self.bus.js.consumer_info(self.stream, self.durable)

    async def _wait(self, until: float) -> None:
        # Returns at once if something arrived since the last wait (the flag
        # is cleared only after waking, so no arrival is ever missed).
        if not self._signal.is_set():
            # asyncio.timeout, not wait_for: no extra task per wait (3.11).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, until - time.monotonic())):
                    await self._signal.wait()
        self._signal.clear()

    async def _until_arrival(self, timeout: float) -> None:
        # A little past the server's own expiry, so its 408 normally wins.
        deadline = min(time.monotonic() + timeout + 0.5, self._expires_at)
        while not self._buffer and self._remaining and time.monotonic() < deadline:
            await self._wait(deadline)

    async def fetch(self, batch: int, timeout: float, linger: float = 0.0) -> list[Msg]:
        """Up to ``batch`` messages; empty when none came within ``timeout``.

        With ``linger``, once the first message has arrived the rest is left
        to gather on the server for ``linger`` and taken in one pull.
        """
        assert self._sub is not None, "start() first"
        if self._remaining and time.monotonic() >= self._expires_at:
            self._remaining = 0  # expired unanswered: no messages and no status will come
            self._lost += 1
        if self._lost >= LOST_BEFORE_CHECK:
            await self._check_consumer()
        if linger > 0:
            return await self._gather(batch, timeout, linger)
        if self._remaining == 0 and len(self._buffer) < batch:
            await self._request(batch - len(self._buffer), timeout)
        await self._until_arrival(timeout)
        msgs, self._buffer = self._buffer[:batch], self._buffer[batch:]
        if self._remaining == 0:
            await self._prefetch(batch, timeout)
        return msgs

    async def _gather(self, batch: int, timeout: float, linger: float) -> list[Msg]:
        if not self._buffer:
            if self._remaining == 0:
                await self._request(1, timeout)  # long-poll for the first message only
            await self._until_arrival(timeout)
            if not self._buffer:
                return []
            if self._remaining == 0:
                # Nothing is being delivered now: what comes next waits on
                # the server, to be taken below in one pull.
                await asyncio.sleep(linger)
        if len(self._buffer) < batch and self._remaining == 0:
            await self._request(batch - len(self._buffer), timeout, no_wait=True)
        # Whatever request is open here is a no_wait one: it ends at once.
        while self._remaining and time.monotonic() < self._expires_at:
            await self._wait(self._expires_at)
        msgs, self._buffer = self._buffer[:batch], self._buffer[batch:]
        if len(msgs) == batch and self._remaining == 0:
            # A backlog: ask for the next batch while this one is written.
            await self._prefetch(batch, timeout, no_wait=True)
        return msgs

    async def _prefetch(self, batch: int, timeout: float, *, no_wait: bool = False) -> None:
        """Ask for the next batch ahead of the caller. Should the request not
        go out (NATS away and the client's outgoing buffer full, or the
        connection closed), the batch just taken is still the caller's: the
        error is left to the next fetch's own request. (try: free when
        nothing is raised; a fetch is a message on a trickle.)"""
        try:
            await self._request(batch, timeout, no_wait=no_wait)
        except nats.errors.Error as e:
            log.debug("prefetching from %s failed: %r", self.durable, e)

    async def close(self) -> None:
        """Stop pulling; what was prefetched and not fetched goes back.

        Unfetched messages of an explicit-ack consumer are nak'd, so the
        next reader has them at once, not after the ack wait (the gateway's
        commands: 10 s). Its ack policy is looked up then, only when such
        messages are left: a close costs nothing more otherwise. Messages
        still on their way when the subscription ends are not seen and come
        back after the ack wait, as before.
        """
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                await sub.unsubscribe()
        left, self._buffer = self._buffer, []
        if left and self.bus.nc.is_connected:
            await self._give_back(left)

    async def _give_back(self, msgs: list[Msg]) -> None:
        try:
            async with asyncio.timeout(GIVE_BACK_TIMEOUT):
                info = await self.bus.js.consumer_info(self.stream, self.durable)
            if info.config.ack_policy != AckPolicy.EXPLICIT:
                return  # none: never redelivered; all: a nak would not be per message
            for msg in msgs:
                await msg.nak()
        except (nats.errors.Error, TimeoutError) as e:
            # Not given back: redelivered after the ack wait, as before.
            log.debug("giving %d prefetched back to %s failed: %r", len(msgs), self.durable, e)
