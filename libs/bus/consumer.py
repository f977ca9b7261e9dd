"""Durable pull consumers with strict decoding and dead-lettering.

:func:`ensure_consumer` declares a durable pull consumer idempotently.
:class:`EventConsumer` fetches batches, decodes each message strictly, hands
good events to a handler and acks them after it returns; a message that does
not decode is published to ``deadletter.<service>`` (raw bytes, subject,
error), then acked, so one bad message never stops the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api as js_api

from libs.bus.client import PUBLISH_DEADLINE, Bus
from libs.bus.errors import DeliveryGap
from libs.bus.pull import PullFetcher, consumer_seq, stream_seq
from libs.contract.codec import DecodeError, dead_letter, decode
from libs.contract.envelope import Clock, WallClock
from libs.contract.events import AnyEvent, MessageDeadLettered
from libs.contract.subjects import STREAM

log = logging.getLogger(__name__)

FETCH_TIMEOUT = 1.0

Handler = Callable[[AnyEvent, Msg], Awaitable[None]]
DeadLetterHook = Callable[[str], None]


async def ensure_consumer(
    bus: Bus,
    durable: str,
    *,
    filter_subject: str | None = None,
    stream: str = STREAM,
    ack_policy: js_api.AckPolicy = js_api.AckPolicy.EXPLICIT,
    deliver_policy: js_api.DeliverPolicy = js_api.DeliverPolicy.ALL,
    opt_start_seq: int | None = None,
    ack_wait_s: float = 30.0,
    max_ack_pending: int = 20_000,
) -> js_api.ConsumerInfo:
    """Create the durable consumer if it does not exist; return its info."""
    try:
        info: js_api.ConsumerInfo = await bus.js.consumer_info(stream, durable)
        return info
    except nats.js.errors.NotFoundError:
        pass
    config = js_api.ConsumerConfig(
        durable_name=durable,
        filter_subject=filter_subject,
        ack_policy=ack_policy,
        deliver_policy=deliver_policy,
        opt_start_seq=opt_start_seq,
        ack_wait=ack_wait_s,
        max_ack_pending=max_ack_pending,
        max_deliver=-1,
    )
    return await bus.js.add_consumer(stream, config)


async def restart_consumer_at(
    bus: Bus,
    durable: str,
    start_seq: int,
    *,
    stream: str = STREAM,
    filter_subjects: list[str] | None = None,
    ack_policy: js_api.AckPolicy = js_api.AckPolicy.ALL,
    ack_wait_s: float | None = None,
    max_ack_pending: int | None = None,
    max_deliver: int | None = None,
) -> js_api.ConsumerInfo:
    """Delete ``durable`` (if any) and create it again to deliver from ``start_seq``.

    For services whose position lives in the event store, not in the
    consumer: each start points the consumer right after what they rebuilt.
    """
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await bus.js.delete_consumer(stream, durable)
    config = js_api.ConsumerConfig(
        durable_name=durable,
        deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=max(1, start_seq),
        filter_subjects=filter_subjects,
        ack_policy=ack_policy,
        ack_wait=ack_wait_s,
        max_ack_pending=max_ack_pending,
        max_deliver=max_deliver,
    )
    info: js_api.ConsumerInfo = await bus.js.add_consumer(stream, config)
    return info


def header_dict(msg: Msg) -> dict[str, str]:
    return {str(k): str(v) for k, v in (msg.headers or {}).items()}


def dead_letter_of(
    msg: Msg, error: DecodeError | str, *, service: str, clock: Clock, source: str
) -> MessageDeadLettered:
    """The dead letter of ``msg`` (its bytes, subject, headers and stream
    sequence) for ``deadletter.<service>``: a message that does not decode,
    or one a service gave up on (``error`` its text)."""
    return dead_letter(
        service=service,
        subject=msg.subject,
        data=msg.data,
        error=error,
        clock=clock,
        source=source,
        headers=header_dict(msg),
        stream_seq=stream_seq(msg) or None,
    )


class EventConsumer:
    """Pull, decode, handle, ack; dead-letter what does not decode."""

    def __init__(
        self,
        bus: Bus,
        *,
        service: str,
        durable: str,
        filter_subject: str | None = None,
        stream: str = STREAM,
        batch: int = 256,
        max_bytes: int = 256 * 1024,
        clock: Clock | None = None,
        on_dead_letter: DeadLetterHook | None = None,
        dead_letter_deadline_s: float = PUBLISH_DEADLINE,
    ) -> None:
        self.bus = bus
        self.service = service
        self.durable = durable
        self.filter_subject = filter_subject
        self.stream = stream
        self.batch = batch
        self.max_bytes = max_bytes
        self.clock = clock or WallClock()
        self.on_dead_letter = on_dead_letter
        #: How long a dead letter's publish is retried before
        #: :class:`~libs.bus.errors.PublishFailed` stops :meth:`run` (the
        #: message is neither handled nor acked: the reader's retry sees it
        #: again).
        self.dead_letter_deadline_s = dead_letter_deadline_s
        self._acks = True

    async def run(self, handler: Handler, *, stop: asyncio.Event | None = None) -> None:
        """Consume until ``stop`` is set (or forever); each message is handled
        as soon as it arrives (see :mod:`libs.bus.pull`)."""
        info = await ensure_consumer(
            self.bus, self.durable, filter_subject=self.filter_subject, stream=self.stream
        )
        # A consumer that takes no acks (its reader keeps its place elsewhere)
        # gets none: each would still cost a write here and a read there.
        self._acks = info.config.ack_policy != js_api.AckPolicy.NONE
        # Without acks nothing is redelivered, so a message the server sent
        # and this reader never got is lost: each must be the one after the
        # last (consumer sequence), or the reader is told (DeliveryGap).
        expected = info.delivered.consumer_seq + 1 if info.delivered else 1
        fetcher = PullFetcher(self.bus, self.stream, self.durable)
        await fetcher.start()
        try:
            while stop is None or not stop.is_set():
                try:
                    msgs = await fetcher.fetch(self.batch, timeout=FETCH_TIMEOUT)
                except nats.errors.ConnectionClosedError:
                    return
                for msg in msgs:
                    if not self._acks:
                        delivered = consumer_seq(msg.reply)
                        if delivered != expected:
                            raise DeliveryGap.between(self.durable, expected, delivered)
                        expected = delivered + 1
                    await self._one(msg, handler)
        finally:
            await fetcher.close()

    async def _one(self, msg: Msg, handler: Handler) -> None:
        try:
            event = decode(msg.data, max_bytes=self.max_bytes)
        except DecodeError as e:
            await self.dead_letter(msg, e)
            if self._acks:
                await msg.ack()
            return
        await handler(event, msg)
        if self._acks:
            await msg.ack()

    async def dead_letter(
        self, msg: Msg, error: DecodeError, *, deadline_s: float | None = None
    ) -> None:
        """Publish ``msg``'s dead letter, retried for ``deadline_s`` (else
        :attr:`dead_letter_deadline_s`)."""
        record = dead_letter_of(
            msg, error, service=self.service, clock=self.clock, source=self.service
        )
        log.warning("dead-lettered message on %s: %s", msg.subject, error)
        if deadline_s is None:
            deadline_s = self.dead_letter_deadline_s
        await self.bus.publish(record, deadline_s=deadline_s)
        if self.on_dead_letter is not None:
            self.on_dead_letter(error.reason)
