"""The gateway's durable consumer of ``orders.cmd.>``.

Commands are handed to a dispatcher one by one, in stream order; the
dispatcher acknowledges each once its broker call is done (see
``gateway.py``), so a command taken by a gateway that then dies is delivered
again after ``ack_wait`` and a command is never lost. A message that is not
a valid event is dead-lettered and acknowledged; if the stream does not take
its dead letter within ``dead_letter_deadline_s``, it is handed back to be
dead-lettered again ``DEAD_LETTER_RETRY_S`` later, and the commands after it
are read on.

The consumer is created once. A new one starts ``max_submit_delay_s`` in the
past: commands that recent are still worth executing, older ones from a
stream that predates this gateway are not replayed at a broker.

The consumer is shared by every account, and its ``max_ack_pending`` caps
the commands out at once over all of them: a worker holds at most
``gateway.MAX_HELD`` (what comes beyond waits on the server), so
``MAX_ACK_PENDING`` is well above that, and one account whose broker is away
does not stop commands reaching the others until its backlog alone reaches
it. A consumer made with a lower cap (the old 1,000) is raised at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api as js_api

from libs import trace
from libs.bus.client import Bus
from libs.bus.consumer import EventConsumer, dead_letter_of
from libs.bus.errors import PublishFailed
from libs.bus.pull import PullFetcher, stream_seq
from libs.contract.codec import DecodeError, decode
from libs.contract.envelope import Clock
from libs.contract.events import AnyEvent, SubmitOrder
from libs.contract.subjects import ORDERS_CMD_ALL, STREAM
from services.broker_gateway import metrics

log = logging.getLogger(__name__)

FETCH_BATCH = 128
MAX_ACK_PENDING = 20_000
FETCH_TIMEOUT_S = 1.0
RETRY_PAUSE_S = 0.5
#: How long a command whose dead letter the stream did not take is handed
#: back for before it is dead-lettered again: each try holds the consumer,
#: so every account's commands, for up to the dead-letter deadline.
DEAD_LETTER_RETRY_S = 30.0


class DeadLetterDeadline:
    """How long the next dead letter's publish is retried: the deadline, or,
    once the stream has refused one (:class:`PublishFailed`), a single
    attempt until one is taken again.

    Each message handed back comes again every ``DEAD_LETTER_RETRY_S``, and
    each try held its consumer for the whole deadline: while the stream
    refused dead letters, a few such messages kept the commands behind them
    waiting most of the time. One attempt still finds out when the stream takes them again (a
    missing stream or subject answers at once), and a message whose dead
    letter it did not take is handed back as before, so none is lost.
    """

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self.refused = False

    async def attempt(self, publish: Callable[[float], Awaitable[object]]) -> None:
        """``publish(deadline_s)``; its PublishFailed is raised."""
        try:
            await publish(0.0 if self.refused else self.deadline_s)
        except PublishFailed:
            self.refused = True
            raise
        self.refused = False


async def hand_back(
    msg: Msg, what: str, error: PublishFailed, *, reason: str, retry_s: float
) -> None:
    """``msg``'s dead letter was not taken (``error``): said, counted
    (``tradebus_broker_dead_letters_not_taken_total{reason}``), and ``msg``
    handed back (nak) for ``retry_s``, to be dead-lettered when it comes
    again. A lost nak only means it comes back after the ack wait."""
    metrics.DEAD_LETTERS_NOT_TAKEN.labels(reason=reason).inc()
    log.warning(
        "%s: dead letter not taken (%s); handed back, dead-lettered again in %gs",
        what,
        error,
        retry_s,
    )
    with contextlib.suppress(nats.errors.Error):
        await msg.nak(delay=retry_s)


Dispatch = Callable[[AnyEvent, Msg], Awaitable[None]]
#: Publishes a command's dead letter, the error given as text.
DeadLetter = Callable[[Msg, str], Awaitable[None]]


def command_dead_letter(
    bus: Bus, *, service: str, clock: Clock, source: str, deadline_s: float
) -> DeadLetter:
    """How a worker dead-letters a command that failed too often: to
    ``deadletter.<service>``, with the command's bytes, subject and stream
    sequence, counted as ``reason="command_failed"``; retried for
    ``deadline_s``, one attempt while the stream refuses them
    (:class:`DeadLetterDeadline`)."""
    deadline = DeadLetterDeadline(deadline_s)

    async def dead(msg: Msg, error: str) -> None:
        record = dead_letter_of(msg, error, service=service, clock=clock, source=source)
        await deadline.attempt(lambda deadline_s: bus.publish(record, deadline_s=deadline_s))
        metrics.DEAD_LETTERS.labels(service=service, reason="command_failed").inc()

    return dead


class CommandConsumer:
    """Pull ``orders.cmd.>`` and hand each command to ``dispatch``."""

    def __init__(
        self,
        bus: Bus,
        *,
        durable: str,
        service: str,
        ack_wait_s: float,
        start_back_s: float,
        max_bytes: int,
        dead_letter_deadline_s: float = 5.0,
        dead_letter_retry_s: float = DEAD_LETTER_RETRY_S,
    ) -> None:
        self.bus = bus
        self.durable = durable
        self.ack_wait_s = ack_wait_s
        self.start_back_s = start_back_s
        self.max_bytes = max_bytes
        self.dead_letter_retry_s = dead_letter_retry_s
        self._deadline = DeadLetterDeadline(dead_letter_deadline_s)
        self._dead = EventConsumer(
            bus,
            service=service,
            durable=durable,
            dead_letter_deadline_s=dead_letter_deadline_s,
            on_dead_letter=lambda reason: metrics.DEAD_LETTERS.labels(
                service=service, reason=reason
            ).inc(),
        )

    async def ensure(self) -> None:
        try:
            info = await self.bus.js.consumer_info(STREAM, self.durable)
        except nats.js.errors.NotFoundError:
            pass
        else:
            # The consumer outlives a gateway: settings changed since it was
            # made are brought to it. An ack wait left as it was made would
            # have the server redeliver held commands on the old wait while
            # the workers keep them alive on the new one.
            config, changes = info.config, []
            pending = config.max_ack_pending
            if pending is not None and 0 < pending < MAX_ACK_PENDING:
                config.max_ack_pending = MAX_ACK_PENDING
                changes.append(f"max_ack_pending {pending} -> {MAX_ACK_PENDING}")
            if config.ack_wait != self.ack_wait_s:
                changes.append(f"ack_wait {config.ack_wait}s -> {self.ack_wait_s:g}s")
                config.ack_wait = self.ack_wait_s
            if changes:
                await self.bus.js.add_consumer(STREAM, config)
                log.info("updated consumer %s: %s", self.durable, ", ".join(changes))
            return
        since = dt.datetime.now(tz=dt.UTC) - dt.timedelta(seconds=self.start_back_s)
        await self.bus.js.add_consumer(
            STREAM,
            js_api.ConsumerConfig(
                durable_name=self.durable,
                filter_subject=ORDERS_CMD_ALL,
                deliver_policy=js_api.DeliverPolicy.BY_START_TIME,
                opt_start_time=since,
                ack_policy=js_api.AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait_s,
                max_ack_pending=MAX_ACK_PENDING,
                max_deliver=-1,
            ),
        )
        log.info("created consumer %s on %s from %s", self.durable, ORDERS_CMD_ALL, since)

    async def run(self, dispatch: Dispatch, stop: asyncio.Event) -> None:
        await self.ensure()
        # A prefetching pull (libs.bus.pull): a lone command is handed over the
        # moment it arrives (nats-py's fetch(128) would hold it for the timeout).
        fetcher = PullFetcher(self.bus, STREAM, self.durable)
        await fetcher.start()
        try:
            while not stop.is_set():
                try:
                    msgs = await fetcher.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT_S)
                except nats.js.errors.NotFoundError:
                    # Deleted, or lost with the server's data: made again from
                    # start_back_s ago (a command seen twice is a repeat: the
                    # broker keeps one order per client order id).
                    log.warning("command consumer %s is gone; recreating it", self.durable)
                    with contextlib.suppress(nats.errors.Error):
                        await self.ensure()
                    continue
                except nats.errors.Error as e:
                    # NATS is reconnecting; the client retries on its own.
                    log.warning("fetching commands failed (%s); retrying", e)
                    await asyncio.sleep(RETRY_PAUSE_S)  # back-off, not synchronisation
                    continue
                for msg in msgs:
                    arrived = time.time_ns() if trace.ON else 0
                    try:
                        event = decode(msg.data, max_bytes=self.max_bytes)
                    except DecodeError as e:
                        if await self._dead_lettered(msg, e):
                            # NATS away: redelivered after the ack wait and
                            # dead-lettered again (the same record: its
                            # message id makes the stream keep one).
                            with contextlib.suppress(nats.errors.Error):
                                await msg.ack()
                        continue
                    if trace.ON and isinstance(event, SubmitOrder):
                        trace.mark("gateway: command in", event.payload.order_id, arrived)
                    await dispatch(event, msg)
        finally:
            await fetcher.close()

    async def _dead_lettered(self, msg: Msg, error: DecodeError) -> bool:
        """Dead-letter a message that is not a command; False if the stream
        did not take the dead letter within the deadline.

        Then the message is handed back for ``dead_letter_retry_s`` (and
        dead-lettered when it comes again) and the consumer goes on: raised,
        the PublishFailed ended the gateway for every account.
        """
        try:
            await self._deadline.attempt(
                lambda deadline_s: self._dead.dead_letter(msg, error, deadline_s=deadline_s)
            )
        except PublishFailed as e:
            what = f"the message at stream sequence {stream_seq(msg)} on {msg.subject}"
            await hand_back(msg, what, e, reason=error.reason, retry_s=self.dead_letter_retry_s)
            return False
        return True
