"""The recorder's side of JetStream: its cursor consumer, fetches, direct reads.

The event store, not the consumer, is the source of truth for how far the
recorder got. Whenever a recorder becomes the writer it (re)creates its
durable consumer to start right after the last committed sequence, with
ack-all semantics: acking sequence N after committing it acknowledges
everything up to N, and nothing past it.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import nats.errors
import nats.js.errors

from libs.bus.client import Bus
from libs.bus.consumer import restart_consumer_at
from libs.bus.pull import PullFetcher, parse_ack_subject
from libs.continuity import refuse_a_reset_stream
from libs.contract.subjects import RECORDER_CONSUMER, STREAM
from libs.store.queries import Tail, last_seq_of
from services.recorder.domain.rows import StreamMessage

log = logging.getLogger(__name__)

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MICROSECOND = dt.timedelta(microseconds=1)


@dataclass(slots=True)
class Batch:
    """What one pull brought: messages, where to ack them, what is left."""

    messages: list[StreamMessage]
    ack_subject: str | None  # the reply subject of the highest sequence
    num_pending: int


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
        self._fetcher = PullFetcher(bus, stream, durable)

    async def start_at(self, tail: Tail | None) -> None:
        """Point the durable consumer right after the store's last row ``tail``
        (delete and recreate it).

        Refuses (:class:`~libs.bus.errors.StreamMismatch`) when the stream was
        reset while the store was kept (see
        :func:`~libs.continuity.refuse_a_reset_stream`).
        """
        info = await self.bus.ensure_stream(name=self.stream)
        await refuse_a_reset_stream(self.bus, info, tail, "recording")
        next_seq = last_seq_of(tail) + 1
        await self.close()
        await restart_consumer_at(
            self.bus,
            self.durable,
            next_seq,
            stream=self.stream,
            ack_wait_s=self.ack_wait_s,
            max_ack_pending=100_000,
            max_deliver=-1,
        )
        await self._fetcher.start()
        log.debug("pulling from %s.%s", self.stream, self.durable)
        log.info("recorder consumer starts at stream sequence %d", next_seq)

    async def fetch(self, batch: int, timeout: float, linger: float) -> Batch:
        """Up to ``batch`` messages; once the first arrived, the rest may gather
        for ``linger`` (see :class:`libs.bus.pull.PullFetcher`)."""
        msgs = await self._fetcher.fetch(batch, timeout, linger)
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
            # When the stream stored it (to the microsecond, as nats-py reads
            # it), as a fetched message has: an undecodable one's only time.
            ts_ns=0 if raw.time is None else (raw.time - EPOCH) // MICROSECOND * 1000,
        )

    async def close(self) -> None:
        await self._fetcher.close()
