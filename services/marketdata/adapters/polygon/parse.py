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
  trade     ``polygon / T / symbol / day / sequence`` (``trade id + time``
            without a sequence)
  quote     ``polygon / Q / symbol / day / sequence`` (``time + prices``
            without one)
  bar       ``polygon / bar / symbol / interval / window start (ms)``: the
            same for a live ``AM`` bar and the REST bar of that minute
  ========  ==============================================================

  ``day`` is the New York date of the record's SIP time ``t``
  (``2024-03-04``): Polygon's sequence numbers start again every trading
  day, so a sequence alone names a different print each day (and the
  recorder would suppress the later one as a duplicate). These functions are
  the only place trade and quote ids are made; anything else that turns
  Polygon trades or quotes into events must call them, so that the same
  print gets the same id whichever way it came.

- A frame is validated in one pass (:data:`~.schemas.WS_FRAME`); only when
  that fails is it taken apart event by event, so one bad event is rejected
  (and dead-lettered by the caller) while the rest of its frame goes through.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from hashlib import sha1
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError
from pydantic_core import to_json

from libs.contract.codec import DERIVED_ID_NAMESPACE, DecodeError, dead_letter
from libs.contract.envelope import Clock, Event, Frozen
from libs.contract.events import (
    BarClosed,
    BarPayload,
    MessageDeadLettered,
    QuotePayload,
    QuoteUpdated,
    TradePayload,
    TradePrinted,
)
from libs.contract.sessions import new_york_ns, new_york_time
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

M = TypeVar("M", bound=Frozen)
E = TypeVar("E", bound=Event)

FEED = "polygon"
SERVICE = "marketdata"
MS = 1_000_000
INTERVAL_MS = {"1s": 1_000, "1m": 60_000}
#: The bar interval of each aggregate prefix (``A``: per second, ``AM``: per minute).
INTERVAL_OF_PREFIX = {"AM": "1m", "A": "1s"}
#: Our channel names (metrics labels, settings) per Polygon prefix, and back.
CHANNEL_OF_PREFIX = {"T": "trades", "Q": "quotes", "A": "second_bars", "AM": "minute_bars"}
PREFIX_OF_CHANNEL = {v: k for k, v in CHANNEL_OF_PREFIX.items()}


_NAMESPACE = DERIVED_ID_NAMESPACE.bytes


def _derived(name: str) -> uuid.UUID:
    # derived_id(*parts) is uuid5(namespace, "/".join(str(p) for p in parts));
    # this is the same UUID from the joined name, built in half the time (it
    # runs once per record). tests/unit/test_polygon_parse.py checks they agree.
    digest = sha1(_NAMESPACE + name.encode()).digest()  # noqa: S324 - UUIDv5 is SHA-1 by definition
    return uuid.UUID(bytes=digest[:16], version=5)


def _midnight_ms(day: dt.date) -> int:
    # DST changes at 02:00 in New York, so midnight is never skipped or repeated.
    return new_york_ns(day, dt.time()) // MS


class _TradingDays:
    """The New York date (``YYYY-MM-DD``) of a time in ms since the epoch.

    It runs once per trade and quote, and records come a day at a time, so
    the bounds of the last day asked for are kept and a time inside them costs
    two comparisons.
    """

    __slots__ = ("_end", "_first", "_name")

    def __init__(self) -> None:
        self._first = self._end = 0
        self._name = ""

    def __call__(self, t_ms: int) -> str:
        if self._first <= t_ms < self._end:
            return self._name
        day = new_york_time(t_ms * MS).date()
        self._first = _midnight_ms(day)
        self._end = _midnight_ms(day + dt.timedelta(days=1))
        self._name = day.isoformat()
        return self._name


#: ``trading_day(t_ms)``: the New York date a Polygon SIP time falls on.
trading_day = _TradingDays()


def trade_id(symbol: str, sequence: int | None, venue_id: str | None, t_ms: int) -> uuid.UUID:
    """``derived_id("polygon", "T", symbol, day, sequence)`` (trade id and time without one).

    ``day`` is :data:`trading_day` of ``t_ms`` (the SIP time): sequence numbers
    restart every day.
    """
    if sequence is not None:
        return _derived(f"{FEED}/T/{symbol}/{trading_day(t_ms)}/{sequence}")
    return _derived(f"{FEED}/T/{symbol}/i/{venue_id}/{t_ms}")


def quote_id(rec: WsQuote) -> uuid.UUID:
    """``derived_id("polygon", "Q", symbol, day, sequence)`` (time and prices without one)."""
    if rec.q is not None:
        return _derived(f"{FEED}/Q/{rec.sym}/{trading_day(rec.t)}/{rec.q}")
    return _derived(f"{FEED}/Q/{rec.sym}/t/{rec.t}/{rec.bp}/{rec.ap}/{rec.bs}/{rec.as_}")


def bar_id(symbol: str, interval: str, start_ms: int) -> uuid.UUID:
    """The id of a bar: the same whether it came live (``AM``/``A``) or from REST."""
    return _derived(f"{FEED}/bar/{symbol}/{interval}/{start_ms}")


_new = object.__new__
_set = object.__setattr__


def _build(cls: type[M], values: dict[str, Any]) -> M:
    """An instance of ``cls`` from values already known to be valid.

    What ``model_construct`` does, minus its per-field bookkeeping (it runs
    twice per record). ``values`` must hold every field of ``cls``, in order;
    the venue schema has checked them against the contract's constraints
    (see :mod:`.schemas`), and the unit tests check that what is built here
    equals what the contract's own validation builds.
    """
    instance = _new(cls)
    _set(instance, "__dict__", values)
    _set(instance, "__pydantic_fields_set__", set(values))
    _set(instance, "__pydantic_extra__", None)
    _set(instance, "__pydantic_private__", None)
    return instance


def _envelope(
    cls: type[E], eid: uuid.UUID, ts_event: int, ts_init: int, source: str, payload: Frozen
) -> E:
    return _build(
        cls,
        {
            "id": eid,
            "type": cls.__name__,
            "ts_event": ts_event,
            "ts_init": ts_init,
            "source": source,
            "correlation_id": eid,
            "causation_id": None,
            "payload": payload,
        },
    )


def trade_event(rec: WsTrade, *, source: str, ts_init: int) -> TradePrinted:
    """The ``TradePrinted`` of a ``T`` record."""
    payload = _build(
        TradePayload,
        {
            "symbol": rec.sym,
            "price": rec.p,
            "size": rec.s,
            "exchange": rec.x,
            "trade_id": rec.i,
            "conditions": rec.c,
            "tape": rec.z,
            "sequence": rec.q,
            "feed": FEED,
            "backfilled": False,
        },
    )
    eid = trade_id(rec.sym, rec.q, rec.i, rec.t)
    return _envelope(TradePrinted, eid, rec.t * MS, ts_init, source, payload)


def quote_event(rec: WsQuote, *, source: str, ts_init: int) -> QuoteUpdated:
    """The ``QuoteUpdated`` of a ``Q`` record."""
    payload = _build(
        QuotePayload,
        {
            "symbol": rec.sym,
            "bid_price": rec.bp,
            "bid_size": rec.bs,
            "ask_price": rec.ap,
            "ask_size": rec.as_,
            "bid_exchange": rec.bx,
            "ask_exchange": rec.ax,
            "condition": rec.c,
            "indicators": rec.i,
            "tape": rec.z,
            "sequence": rec.q,
            "feed": FEED,
        },
    )
    return _envelope(QuoteUpdated, quote_id(rec), rec.t * MS, ts_init, source, payload)


def bar_event(rec: WsAggregate, *, source: str, ts_init: int) -> BarClosed:
    """The ``BarClosed`` of an ``A`` (1s) or ``AM`` (1m) record."""
    interval = INTERVAL_OF_PREFIX[rec.ev]
    payload = _build(
        BarPayload,
        {
            "symbol": rec.sym,
            "interval": interval,
            "open": rec.o,
            "high": rec.h,
            "low": rec.l,
            "close": rec.c,
            "volume": rec.v,
            "vwap": rec.vw,
            "trades": None,
            "start_ns": rec.s * MS,
            "end_ns": rec.e * MS,
            "feed": FEED,
            "backfilled": False,
        },
    )
    eid = bar_id(rec.sym, interval, rec.s)
    return _envelope(BarClosed, eid, rec.e * MS, ts_init, source, payload)


def rest_bar_event(
    symbol: str, rec: RestAgg, *, interval: str = "1m", source: str, ts_init: int
) -> BarClosed:
    """A REST aggregate as a bar, marked ``backfilled`` (its id equals the live bar's).

    Validated in full (not a hot path; the REST schema does not carry the
    contract's constraints): a bar our contract refuses raises ``ValidationError``.
    """
    end_ms = rec.t + INTERVAL_MS[interval]
    payload = BarPayload(
        symbol=symbol,
        interval="1s" if interval == "1s" else "1m",
        open=rec.o,
        high=rec.h,
        low=rec.l,
        close=rec.c,
        volume=rec.v,
        vwap=rec.vw,
        trades=rec.n,
        start_ns=rec.t * MS,
        end_ns=end_ms * MS,
        feed=FEED,
        backfilled=True,
    )
    return BarClosed.create(
        payload,
        source=source,
        clock=_At(ts_init),
        ts_event=end_ms * MS,
        event_id=bar_id(symbol, interval, rec.t),
    )


def rest_bar_rejected(
    symbol: str, rec: RestAgg, error: ValidationError, *, interval: str = "1m"
) -> Rejected:
    """A REST aggregate our contract refuses (:func:`rest_bar_event` raised
    ``error``), to be dead-lettered as a WebSocket event would be."""
    # pydantic's JSON writer, not orjson's: an integer past 64 bits (a
    # likely reason for the refusal) is beyond orjson, which would raise.
    return Rejected(
        to_json({"ticker": symbol, "interval": interval, **rec.model_dump(mode="json")}),
        "invalid_event",
        f"REST {interval} bar of {symbol} at {rec.t}: {_short(error)}",
    )


class _At:
    """A clock stopped at one instant (``ts_init`` of a batch)."""

    def __init__(self, ns: int) -> None:
        self.ns = ns

    def now_ns(self) -> int:
        return self.ns


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
        source = self.source
        events = out.events
        counts = out.counts
        for index, rec in enumerate(records):
            if rec is None:
                assert raws is not None
                bad = Rejected(orjson.dumps(raws[index]), "invalid_event", invalid[index])
                out.rejected.append(bad)
                continue
            if isinstance(rec, WsTrade):
                events.append(trade_event(rec, source=source, ts_init=ts_init))
            elif isinstance(rec, WsQuote):
                events.append(quote_event(rec, source=source, ts_init=ts_init))
            elif isinstance(rec, WsAggregate):
                events.append(bar_event(rec, source=source, ts_init=ts_init))
            else:
                out.statuses.append(rec)
                continue
            channel = CHANNEL_OF_PREFIX[rec.ev]
            counts[channel] = counts.get(channel, 0) + 1
        if events:
            out.newest_ns = max(e.ts_event for e in events)
        return out


def statuses_text(statuses: Iterable[WsStatus]) -> str:
    """``status: message; ...`` for logs and status events (never holds the key)."""
    return "; ".join(f"{s.status}: {s.message}" if s.message else s.status for s in statuses)
