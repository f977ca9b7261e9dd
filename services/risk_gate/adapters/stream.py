"""The risk-gate's durable JetStream consumer.

The store, not the consumer, says how far the gate got: on every (re)start
the durable ``risk-gate`` consumer is recreated to deliver from right after
the last sequence the rebuild folded in, filtered to what the gate reads.
Its pending count at creation is the backlog the gate replays without
deciding anything (those intents may have been decided already, and their
decisions are in that backlog); past it, the gate is live, and the consumer
is recreated once more without the gate's own subjects.

The gate acks all up to the last message it handled and skips anything at
or below its place, so a message the server delivered and the gate never
got (into a connection that dropped, to another reader of the durable) would
be acked with the next one and never read: :meth:`RiskStream.fetch` checks
that each delivery is the one after the last (consumer sequence) and raises
:class:`~libs.bus.errors.DeliveryGap` otherwise, which ends the gate's cycle:
it starts again from the store, where that message is not yet.
"""

from __future__ import annotations

import logging

from nats.aio.msg import Msg

from libs.bus.client import Bus
from libs.bus.consumer import restart_consumer_at
from libs.bus.errors import DeliveryGap
from libs.bus.pull import PullFetcher, consumer_seq
from libs.continuity import refuse_a_reset_stream
from libs.contract.subjects import STREAM
from libs.store.queries import Tail, last_seq_of

log = logging.getLogger(__name__)

#: The durable name; NATS permissions allow the risk-gate user only this one.
DURABLE = "risk-gate"

#: What the gate publishes (NATS permissions let no one else publish there).
OWN_SUBJECTS = ("risk.>", "orders.cmd.>")

#: What the gate reads while it rebuilds and catches up: prices, intents, the
#: broker, operators, and its own output (a previous run's decisions, which
#: must not be made twice). Prices are trades, bars and the option marks
#: marketdata makes from quotes (``md.mark.>``), not quotes themselves: most
#: of the feed, and NATS wildcards cannot pick the options' out of
#: ``md.quote.>`` (a token is matched whole). Of the broker, what ends orders,
#: fills them and the connection, and a flatten's closing orders
#: (``broker.close.>``: open orders the gate sent no command for); not its
#: acks (``broker.ack.>``), which change nothing the gate decides on (see
#: ``RELEVANT_TYPES`` in ``domain/evolve.py``).
FILTER_SUBJECTS = (
    "md.trade.>",
    "md.bar.>",
    "md.mark.>",
    "strategy.intent.>",
    *OWN_SUBJECTS,
    "broker.fill.>",
    "broker.reject.>",
    "broker.cancel.>",
    "broker.close.>",
    "broker.conn.>",
    "control.>",
)

#: What the gate reads once live: its own output it applies as it publishes
#: it, so the copies coming back would only cost a delivery each.
LIVE_SUBJECTS = tuple(s for s in FILTER_SUBJECTS if s not in OWN_SUBJECTS)


class RiskStream:
    """The gate's consumer: recreated at a start sequence, then fetched from."""

    def __init__(self, bus: Bus, *, stream: str = STREAM, ack_wait_s: float = 30.0) -> None:
        self.bus = bus
        self.stream = stream
        self.ack_wait_s = ack_wait_s
        self._fetcher = PullFetcher(bus, stream, DURABLE)
        #: The consumer sequence the next delivery must have.
        self._expected = 1

    async def start_at(self, tail: Tail | None) -> int:
        """Deliver from right after the store's last row ``tail``; returns how
        many messages were already there.

        Refuses (:class:`~libs.bus.errors.StreamMismatch`) when the stream was
        reset while the store was kept: the gate would skip the new stream's
        first intents (see :func:`~libs.continuity.refuse_a_reset_stream`).
        """
        info = await self.bus.ensure_stream(name=self.stream)
        await refuse_a_reset_stream(self.bus, info, tail, "deciding")
        next_seq = last_seq_of(tail) + 1
        first = info.state.first_seq
        if first > next_seq and info.state.messages:
            log.warning(
                "the stream starts at %d but the store ends at %d: sequences in between are "
                "in neither (trimmed before they were recorded?)",
                first,
                next_seq - 1,
            )
        backlog = await self._recreate(next_seq, FILTER_SUBJECTS)
        log.info("risk-gate consumer starts at sequence %d with %d to replay", next_seq, backlog)
        return backlog

    async def go_live(self, next_seq: int) -> None:
        """Deliver from ``next_seq`` on, without the gate's own output.

        Whatever was fetched but not handled yet is dropped and delivered
        again by the new consumer.
        """
        await self._recreate(next_seq, LIVE_SUBJECTS)
        log.info("risk-gate consumer live from sequence %d", next_seq)

    async def _recreate(self, next_seq: int, subjects: tuple[str, ...]) -> int:
        await self.close()
        created = await restart_consumer_at(
            self.bus,
            DURABLE,
            next_seq,
            stream=self.stream,
            filter_subjects=list(subjects),
            ack_wait_s=self.ack_wait_s,
            max_ack_pending=50_000,
            max_deliver=-1,
        )
        await self._fetcher.start()
        self._expected = 1  # a new consumer: its deliveries count from 1
        return int(created.num_pending or 0)

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """Up to ``batch`` messages, as soon as any arrived; empty after ``timeout``.

        :class:`~libs.bus.errors.DeliveryGap` if a delivery before them never
        arrived here.
        """
        msgs = await self._fetcher.fetch(batch, timeout)
        for msg in msgs:
            delivered = consumer_seq(msg.reply)
            if delivered != self._expected:
                raise DeliveryGap.between(DURABLE, self._expected, delivered)
            self._expected = delivered + 1
        return msgs

    async def close(self) -> None:
        await self._fetcher.close()
