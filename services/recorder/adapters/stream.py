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

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from libs.bus.client import Bus
from libs.contract.subjects import RECORDER_CONSUMER, STREAM
from services.recorder.domain.rows import StreamMessage

log = logging.getLogger(__name__)


def to_stream_message(msg: Msg) -> StreamMessage:
    meta = msg.metadata
    return StreamMessage(
        seq=meta.sequence.stream,
        subject=msg.subject,
        data=msg.data,
        headers={str(k): str(v) for k, v in (msg.headers or {}).items()},
        ts_ns=int(meta.timestamp.timestamp() * 1e9) if meta.timestamp else 0,
    )


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
        self._sub: JetStreamContext.PullSubscription | None = None

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
        self._sub = await self.bus.js.pull_subscribe_bind(
            self.durable, stream=self.stream, pending_msgs_limit=200_000
        )
        log.info("recorder consumer starts at stream sequence %d", next_seq)

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """Up to ``batch`` messages; an empty list when none came in ``timeout``."""
        assert self._sub is not None, "start_at() first"
        try:
            return await self._sub.fetch(batch, timeout=timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            return []

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
