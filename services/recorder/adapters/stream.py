"""The recorder's side of JetStream: its cursor consumer, fetches, direct reads.

The event store, not the consumer, is the source of truth for how far the
recorder got. Whenever a recorder becomes the writer it (re)creates its
durable consumer to start right after the last committed sequence, with
ack-all semantics: acking sequence N after committing it acknowledges
everything up to N, and nothing past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import nats.errors
import nats.js.errors
import orjson
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api as js_api

from libs.bus.client import Bus
from libs.contract.subjects import RECORDER_CONSUMER, STREAM
from services.recorder.domain.rows import StreamMessage

log = logging.getLogger(__name__)


STATUS_HEADER = "Status"
#: Statuses that end a pull request: no messages, request expired, conflict.
TERMINAL_STATUSES = frozenset({"404", "408", "409"})
#: Once a batch has started arriving, how long to wait for the rest.
LINGER_S = 0.005


@dataclass(slots=True)
class Batch:
    """What one pull brought: messages, where to ack them, what is left."""

    messages: list[StreamMessage]
    ack_subject: str | None  # the reply subject of the highest sequence
    num_pending: int


def parse_ack_subject(reply: str) -> tuple[int, int, int]:
    """(stream sequence, timestamp ns, pending) from a JetStream ack subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``,
    or the v2 form with ``<domain>.<account hash>`` after ``ACK`` and a token
    at the end. Parsing the tokens directly is exact (nats-py's metadata goes
    through a float datetime) and much cheaper per message.
    """
    tokens = reply.split(".")
    base = 0 if len(tokens) == 9 else 2
    return int(tokens[base + 5]), int(tokens[base + 7]), int(tokens[base + 8])


class RecorderStream:
    """The durable consumer plus direct reads of single stream positions."""

    def __init__(
        self,
        bus: Bus,
        *,
        stream: str = STREAM,
        durable: str = RECORDER_CONSUMER,
        ack_wait_s: float = 30.0,
    ) -> None:
        self.bus = bus
        self.stream = stream
        self.durable = durable
        self.ack_wait_s = ack_wait_s
        self._sub: Subscription | None = None
        self._inbox = ""
        self._buffer: list[Msg] = []
        self._remaining = 0  # messages the open pull request may still bring
        self._expires_at = 0.0
        self._signal = asyncio.Event()

    @property
    def _next_subject(self) -> str:
        return f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.durable}"

    async def start_at(self, next_seq: int) -> None:
        """Point the durable consumer at ``next_seq`` (delete and recreate it)."""
        await self.bus.ensure_stream(name=self.stream)
        await self.close()
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.bus.js.delete_consumer(self.stream, self.durable)
        config = js_api.ConsumerConfig(
            durable_name=self.durable,
            deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=next_seq,
            ack_policy=js_api.AckPolicy.ALL,
            ack_wait=self.ack_wait_s,
            max_ack_pending=100_000,
            max_deliver=-1,
        )
        await self.bus.js.add_consumer(self.stream, config)
        self._inbox = self.bus.nc.new_inbox()
        self._buffer = []
        self._remaining = 0
        self._sub = await self.bus.nc.subscribe(
            self._inbox, cb=self._on_message, pending_msgs_limit=500_000
        )
        log.info("recorder consumer starts at stream sequence %d", next_seq)

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
        self._signal.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._signal.wait(), max(0.0, until - time.monotonic()))

    async def fetch(self, batch: int, timeout: float, linger: float = LINGER_S) -> Batch:
        """Up to ``batch`` messages; empty when none came within ``timeout``.

        One pull request is kept open ahead of the caller (prefetch), so the
        next batch streams in while this one is decoded and written. A plain
        pull request answered into a callback subscription: nats-py's
        ``fetch`` costs a task, a timer and a uuid per message, which was a
        third of the recorder's time. Once something has arrived, we wait at
        most ``linger`` for more, so a trickle is recorded promptly.
        """
        assert self._sub is not None, "start_at() first"
        if self._remaining and time.monotonic() >= self._expires_at:
            self._remaining = 0  # lost: no messages and no status will come
        if self._remaining == 0 and len(self._buffer) < batch:
            await self._request(batch - len(self._buffer), timeout)
        # A little past the server's own expiry, so its 408 normally wins.
        deadline = min(time.monotonic() + timeout + 0.5, self._expires_at)
        while not self._buffer and self._remaining and time.monotonic() < deadline:
            await self._wait(deadline)
        lingering = time.monotonic() + linger
        while self._remaining and len(self._buffer) < batch and time.monotonic() < lingering:
            await self._wait(lingering)
        msgs, self._buffer = self._buffer[:batch], self._buffer[batch:]
        if self._remaining == 0:
            await self._request(batch, timeout)  # prefetch the next batch
        out: list[StreamMessage] = []
        top_seq, top_reply, pending = 0, None, 0
        for m in msgs:
            seq, ts_ns, left = parse_ack_subject(m.reply)
            out.append(StreamMessage(seq, m.subject, m.data, m.headers or {}, ts_ns))
            if seq > top_seq:
                top_seq, top_reply, pending = seq, m.reply, left
        return Batch(out, top_reply, pending)

    async def ack_all(self, ack_subject: str) -> None:
        """Acknowledge everything up to the message ``ack_subject`` belongs to."""
        await self.bus.nc.publish(ack_subject, b"+ACK")

    async def read(self, seq: int) -> StreamMessage | None:
        """The message at ``seq`` read directly from the stream; None if gone."""
        try:
            raw = await self.bus.js.get_msg(self.stream, seq=seq, direct=True)
        except nats.js.errors.NotFoundError:
            return None
        return StreamMessage(
            seq=seq,
            subject=raw.subject or "",
            data=raw.data or b"",
            headers={str(k): str(v) for k, v in (raw.headers or {}).items()},
        )

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                await sub.unsubscribe()
