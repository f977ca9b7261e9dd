"""Market prices for the paper broker: trades and bars from the recorded stream.

The feed reads ``md.trade.>`` and ``md.bar.>`` through its own pull consumer,
recreated at every (re)connection to start with the *last* message of each
subject (so the broker knows every symbol's last price at once) and then
follow new ones, taken together once they have gathered for
``market_data.linger_s``. Nothing is acknowledged: prices are not work
items, and a price missed while NATS was away is superseded by the next one.

A reconnection replays the last message of each subject, which the broker
has usually taken in already: applied again, a bar or trade from before an
order was placed could fill it at a price the market never came back to. So
the feed remembers, per symbol, the stream sequence of the last update it
handed on and skips what is not newer (a stream that was made anew, its
sequences starting over, resets that memory).

A message that does not decode is counted and skipped: the recorder
dead-letters it, the paper broker only needs prices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import nats.errors
import nats.js.errors
from nats.js import api as js_api

from libs.bus.client import Bus
from libs.bus.errors import BusError
from libs.bus.pull import PullFetcher, stream_seq
from libs.contract.codec import DecodeError, decode
from libs.contract.events import BarClosed, TradePrinted
from libs.contract.subjects import STREAM
from services.paper_broker import metrics
from services.paper_broker.domain.fill_model import MarketUpdate

log = logging.getLogger(__name__)

FETCH_BATCH = 512
FETCH_TIMEOUT_S = 1.0
RETRY_BACKOFF_S = 1.0
#: A consumer nobody pulls from for this long is removed by the server.
INACTIVE_THRESHOLD_S = 3600.0

OnUpdate = Callable[[MarketUpdate], None]


class PriceFeed(Protocol):
    """Where the paper broker's prices come from (NATS live; tests push them)."""

    async def run(
        self, on_update: OnUpdate, stop: asyncio.Event, on_price: OnUpdate | None = None
    ) -> None: ...


def to_update(data: bytes) -> MarketUpdate | None:
    """A trade or bar event as a market update; None for anything else.

    At its market time (``Event.market_ns``: no later than a few seconds
    after it was made), as the risk-gate and the ledgers take it: a print
    stamped hours ahead by a bad clock was "after the close" to the book,
    settled its market-on-close orders at a mid-day price and stayed the
    session's newest print. A bar so stamped ends then and is moved back
    whole (it keeps its length): begun when it was made, it was a bar wholly
    after an order placed during its minute, whose low it filled at a price
    from before the order (``PaperBook.on_market``)."""
    event = decode(data)
    if isinstance(event, TradePrinted):
        p = event.payload
        return MarketUpdate.trade(p.symbol, p.price, event.market_ns)
    if isinstance(event, BarClosed):
        b = event.payload
        end_ns = min(b.end_ns, event.market_ns)
        start_ns = min(b.start_ns, end_ns - max(b.end_ns - b.start_ns, 0))
        return MarketUpdate.bar(b.symbol, b.open, b.high, b.low, b.close, end_ns, start_ns)
    return None


class NatsPriceFeed:
    """Trades and bars from JetStream, reconnecting until stopped."""

    def __init__(
        self,
        *,
        url: str,
        name: str,
        user: str | None,
        password: str | None,
        subjects: Sequence[str],
        consumer: str,
        stream: str = STREAM,
        linger_s: float = 0.0,
    ) -> None:
        self.url = url
        self.name = name
        self.user = user
        self.password = password
        self.subjects = list(subjects)
        self.consumer = consumer
        self.stream = stream
        self.linger_s = linger_s
        self.connected = False
        #: Per symbol, the stream sequence of the last update handed on.
        self._applied: dict[str, int] = {}
        self._stream_created: object = None

    async def run(
        self, on_update: OnUpdate, stop: asyncio.Event, on_price: OnUpdate | None = None
    ) -> None:
        """Hand each new price to ``on_update`` until ``stop``. With
        ``on_price``, a symbol's first price, when it is history (stored before
        the feed connected: the broker was not there to trade on it), goes
        there instead: it sets the last price, it fills nothing. A resting
        order placed after that price must not be filled by it, and one placed
        before cannot tell (the broker was away)."""
        while not stop.is_set():
            try:
                await self._session(on_update, stop, on_price)
            except (BusError, nats.errors.Error, OSError, TimeoutError) as e:
                metrics.FEED_ERRORS.labels(cause=type(e).__name__).inc()
                log.warning("market data feed interrupted (%s: %s); retrying", type(e).__name__, e)
            self.connected = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RETRY_BACKOFF_S):
                    await stop.wait()

    async def _session(
        self, on_update: OnUpdate, stop: asyncio.Event, on_price: OnUpdate | None
    ) -> None:
        bus = await Bus.connect(self.url, name=self.name, user=self.user, password=self.password)
        async with bus:
            info = await bus.ensure_stream(name=self.stream)
            made_anew = self._stream_created is not None and info.created != self._stream_created
            if self._applied and (made_anew or info.state.last_seq < max(self._applied.values())):
                log.warning("stream %s was made anew: its prices are all new", self.stream)
                self._applied.clear()
            self._stream_created = info.created
            history_until = info.state.last_seq  # stored before this session
            # Symbols the broker had prices of before this session: what was
            # stored for them meanwhile is what it missed, and trades. For the
            # others, every stored message (one per subject: a trade, a bar) is
            # history the broker was not there for.
            known = set(self._applied)
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await bus.js.delete_consumer(self.stream, self.consumer)
            await bus.js.add_consumer(
                self.stream,
                js_api.ConsumerConfig(
                    durable_name=self.consumer,
                    filter_subjects=self.subjects,
                    deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT,
                    ack_policy=js_api.AckPolicy.NONE,
                    inactive_threshold=INACTIVE_THRESHOLD_S,
                ),
            )
            # libs.bus.pull with a linger: once a price has come, the next ones
            # gather on the server for linger_s and come in one pull (a wake-up
            # per price cost the broker about as much CPU as its orders did,
            # just when an order needed the cores: bench/order_path.py).
            fetcher = PullFetcher(bus, self.stream, self.consumer)
            await fetcher.start()
            self.connected = True
            log.info("paper broker prices from %s", ", ".join(self.subjects))
            try:
                while not stop.is_set():
                    msgs = await fetcher.fetch(
                        FETCH_BATCH, timeout=FETCH_TIMEOUT_S, linger=self.linger_s
                    )
                    for msg in msgs:
                        try:
                            update = to_update(msg.data)
                        except DecodeError:
                            metrics.FEED_ERRORS.labels(cause="undecodable").inc()
                            continue
                        if update is None or not msg.reply:
                            continue
                        seq = stream_seq(msg)
                        if not self._new(update, seq):
                            continue
                        stored = seq <= history_until and update.symbol not in known
                        if on_price is not None and stored:
                            metrics.MARKET_UPDATES_HISTORY.inc()
                            on_price(update)
                        else:
                            on_update(update)
            finally:
                # A pull subscription left open makes the connection's drain wait
                # out its whole timeout (30 s) on the way out.
                await fetcher.close()

    def _new(self, update: MarketUpdate, seq: int) -> bool:
        """Not an update already handed on (replayed after a reconnection)."""
        if seq <= self._applied.get(update.symbol, 0):
            metrics.MARKET_UPDATES_REPLAYED.inc()
            return False
        self._applied[update.symbol] = seq
        return True
