"""Polygon records -> our events (``TradePrinted``, ``QuoteUpdated``, ``BarClosed``).

- Prices and sizes are ``Decimal`` (see :mod:`.schemas` on why that is exact),
  times go from ms to ns, exchange ids, condition codes, indicators, tape and
  sequence numbers are kept. Quote sizes are passed on as Polygon sends them
  (round lots for stocks).
- Every event's id derives from its source record with
  :func:`libs.contract.codec.derived_id`, so a record seen twice (a
  reconnect, a gap-fill overlapping live bars) is published once (JetStream
  dedup) and recorded once:

  ========  ==============================================================
  trade     ``polygon / T / symbol / sequence`` (``trade id + time`` without one)
  quote     ``polygon / Q / symbol / sequence`` (``time + prices`` without one)
  bar       ``polygon / bar / symbol / interval / window start (ms)``: the
            same for a live ``AM`` bar and the REST bar of that minute
  ========  ==============================================================

- A frame is validated in one pass (:data:`~.schemas.WS_FRAME`); only when
  that fails is it taken apart event by event, so one bad event is rejected
  (and dead-lettered by the caller) while the rest of its frame goes through.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from libs.contract.codec import DecodeError, dead_letter, derived_id
from libs.contract.envelope import Clock, Event
from libs.contract.events import (
    BarClosed,
    BarPayload,
    MessageDeadLettered,
    QuotePayload,
    QuoteUpdated,
    TradePayload,
    TradePrinted,
)
from services.marketdata.adapters.polygon.schemas import (
    WS_EVENT,
    WS_FRAME,
    RestAgg,
    WsAggregate,
    WsEvent,
    WsQuote,
    WsStatus,
    WsTrade,
)

FEED = "polygon"
SERVICE = "marketdata"
MS = 1_000_000
MAX_NANOS = 2**63 - 1
INTERVAL_MS = {"1s": 1_000, "1m": 60_000}
#: Our channel names (metrics labels, settings) per Polygon prefix, and back.
CHANNEL_OF_PREFIX = {"T": "trades", "Q": "quotes", "A": "second_bars", "AM": "minute_bars"}
PREFIX_OF_CHANNEL = {v: k for k, v in CHANNEL_OF_PREFIX.items()}


def trade_id(symbol: str, sequence: int | None, venue_id: str | None, t_ms: int) -> uuid.UUID:
    if sequence is not None:
        return derived_id(FEED, "T", symbol, sequence)
    return derived_id(FEED, "T", symbol, "i", venue_id, t_ms)


def quote_id(rec: WsQuote) -> uuid.UUID:
    if rec.q is not None:
        return derived_id(FEED, "Q", rec.sym, rec.q)
    return derived_id(FEED, "Q", rec.sym, "t", rec.t, rec.bp, rec.ap, rec.bs, rec.as_)


def bar_id(symbol: str, interval: str, start_ms: int) -> uuid.UUID:
    """The id of a bar: the same whether it came live (``AM``/``A``) or from REST."""
    return derived_id(FEED, "bar", symbol, interval, start_ms)


def _nanos(ms: int) -> int:
    ns = ms * MS
    if not 0 <= ns <= MAX_NANOS:
        raise ValueError(f"timestamp {ms} ms is out of range")
    return ns


def _envelope(cls: type[Event], eid: uuid.UUID, ts_event: int, ts_init: int, source: str) -> Any:
    # The payload has been validated already and the envelope's fields are
    # ours (a UUID, range-checked ints, the source), so skip a second pass.
    return {
        "id": eid,
        "type": cls.model_fields["type"].default,
        "ts_event": ts_event,
        "ts_init": ts_init,
        "source": source,
        "correlation_id": eid,
        "causation_id": None,
    }


def trade_event(rec: WsTrade, *, source: str, ts_init: int) -> TradePrinted:
    payload = TradePayload(
        symbol=rec.sym,
        price=rec.p,
        size=rec.s,
        exchange=rec.x,
        trade_id=rec.i,
        conditions=rec.c,
        tape=rec.z,
        sequence=rec.q,
        feed=FEED,
    )
    eid = trade_id(rec.sym, rec.q, rec.i, rec.t)
    return TradePrinted.model_construct(
        **_envelope(TradePrinted, eid, _nanos(rec.t), ts_init, source), payload=payload
    )


def quote_event(rec: WsQuote, *, source: str, ts_init: int) -> QuoteUpdated:
    payload = QuotePayload(
        symbol=rec.sym,
        bid_price=rec.bp,
        bid_size=rec.bs,
        ask_price=rec.ap,
        ask_size=rec.as_,
        bid_exchange=rec.bx,
        ask_exchange=rec.ax,
        condition=rec.c,
        indicators=rec.i,
        tape=rec.z,
        sequence=rec.q,
        feed=FEED,
    )
    return QuoteUpdated.model_construct(
        **_envelope(QuoteUpdated, quote_id(rec), _nanos(rec.t), ts_init, source), payload=payload
    )


def bar_event(rec: WsAggregate, *, source: str, ts_init: int) -> BarClosed:
    interval = "1m" if rec.ev == "AM" else "1s"
    end_ns = _nanos(rec.e)
    payload = BarPayload(
        symbol=rec.sym,
        interval=interval,
        open=rec.o,
        high=rec.h,
        low=rec.l,
        close=rec.c,
        volume=rec.v,
        vwap=rec.vw,
        start_ns=_nanos(rec.s),
        end_ns=end_ns,
        feed=FEED,
    )
    return BarClosed.model_construct(
        **_envelope(BarClosed, bar_id(rec.sym, interval, rec.s), end_ns, ts_init, source),
        payload=payload,
    )


def rest_bar_event(
    symbol: str, rec: RestAgg, *, interval: str = "1m", source: str, ts_init: int
) -> BarClosed:
    """A REST aggregate as a bar, marked ``backfilled`` (its id equals the live bar's)."""
    end_ms = rec.t + INTERVAL_MS[interval]
    end_ns = _nanos(end_ms)
    payload = BarPayload(
        symbol=symbol,
        interval=interval,
        open=rec.o,
        high=rec.h,
        low=rec.l,
        close=rec.c,
        volume=rec.v,
        vwap=rec.vw,
        trades=rec.n,
        start_ns=_nanos(rec.t),
        end_ns=end_ns,
        feed=FEED,
        backfilled=True,
    )
    return BarClosed.model_construct(
        **_envelope(BarClosed, bar_id(symbol, interval, rec.t), end_ns, ts_init, source),
        payload=payload,
    )


@dataclass(frozen=True, slots=True)
class Rejected:
    """Part of a frame that could not be turned into an event."""

    raw: bytes
    reason: str  # malformed_json, not_an_array, invalid_event
    detail: str

    def dead_letter(self, *, market: str, source: str, clock: Clock) -> MessageDeadLettered:
        """The ``MessageDeadLettered`` for it (on ``deadletter.marketdata``)."""
        return dead_letter(
            service=SERVICE,
            subject=f"polygon.{market}",
            data=self.raw,
            error=DecodeError(self.reason, self.detail),
            clock=clock,
            source=source,
        )


@dataclass(slots=True)
class Parsed:
    """What one frame held, in frame order."""

    events: list[Event] = field(default_factory=list)
    statuses: list[WsStatus] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    #: Records per channel (``trades``, ``minute_bars``...), for metrics.
    counts: dict[str, int] = field(default_factory=dict)
    #: Event time (ns) of the newest data record in the frame.
    newest_ns: int | None = None


def _short(error: Exception) -> str:
    if isinstance(error, ValidationError):
        first = error.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {first['msg']}" if where else str(first["msg"])
    return str(error)


class FrameParser:
    """Turns WebSocket frames into events; ``source`` names us in the envelope."""

    def __init__(self, *, source: str, clock: Clock) -> None:
        self.source = source
        self.clock = clock

    def parse(self, frame: str | bytes) -> Parsed:
        data = frame.encode() if isinstance(frame, str) else frame
        raws: list[Any] | None = None
        invalid: dict[int, str] = {}
        records: Sequence[WsEvent | None]
        try:
            records = WS_FRAME.validate_json(data)
        except ValidationError:
            # Slow path: take the frame apart so only the bad events are lost.
            try:
                raws = orjson.loads(data)
            except orjson.JSONDecodeError as e:
                return Parsed(rejected=[Rejected(data, "malformed_json", str(e))])
            if not isinstance(raws, list):
                return Parsed(rejected=[Rejected(data, "not_an_array", type(raws).__name__)])
            records = []
            for i, raw in enumerate(raws):
                try:
                    records.append(WS_EVENT.validate_python(raw))
                except ValidationError as e:
                    records.append(None)
                    invalid[i] = _short(e)
        out = Parsed()
        ts_init = self.clock.now_ns()
        counts = out.counts
        newest = -1
        for index, rec in enumerate(records):
            if rec is None:
                assert raws is not None
                out.rejected.append(
                    Rejected(orjson.dumps(raws[index]), "invalid_event", invalid[index])
                )
                continue
            if isinstance(rec, WsStatus):
                out.statuses.append(rec)
                continue
            try:
                if isinstance(rec, WsTrade):
                    event: Event = trade_event(rec, source=self.source, ts_init=ts_init)
                    channel = "trades"
                elif isinstance(rec, WsQuote):
                    event = quote_event(rec, source=self.source, ts_init=ts_init)
                    channel = "quotes"
                else:
                    event = bar_event(rec, source=self.source, ts_init=ts_init)
                    channel = "minute_bars" if rec.ev == "AM" else "second_bars"
            except (ValidationError, ValueError) as e:
                # Valid for Polygon, not for our contract (a price of 0, a
                # symbol that is no subject token): this one event is rejected.
                if raws is None:
                    raws = orjson.loads(data)
                out.rejected.append(Rejected(orjson.dumps(raws[index]), "invalid_event", _short(e)))
                continue
            counts[channel] = counts.get(channel, 0) + 1
            out.events.append(event)
            if event.ts_event > newest:
                newest = event.ts_event
        if newest >= 0:
            out.newest_ns = newest
        return out


def statuses_text(statuses: Iterable[WsStatus]) -> str:
    """``status: message; ...`` for logs and status events (never holds the key)."""
    return "; ".join(f"{s.status}: {s.message}" if s.message else s.status for s in statuses)
