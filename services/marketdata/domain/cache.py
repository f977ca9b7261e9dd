"""The local history cache's pure parts: rows, days, ids, merge order, pacing.

A cached bar is Polygon's aggregate row (``t o h l c v vw n``, ``t`` the
window start in ms) with exact ``Decimal`` values. The cache holds one file
per symbol and New York trading day; replaying it merges the symbols' bars
into one time order and turns each into a :class:`BarClosed` whose id is
derived exactly as the live feed derives a minute bar's (:func:`bar_event_id`),
so a bar published live and again from the cache is one event.

Nothing here touches files, the network or the wall clock.
"""

from __future__ import annotations

import datetime as dt
import heapq
import math
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal

from pydantic import ValidationError

from libs.contract.codec import derived_id
from libs.contract.envelope import Clock
from libs.contract.events import BarClosed, BarPayload, FeedName
from libs.contract.sessions import new_york_time

MS_NS = 1_000_000

Timespan = Literal["minute", "second"]
TIMESPANS: tuple[Timespan, ...] = ("minute", "second")
#: Our bar interval for each Polygon timespan, and its length in ms.
INTERVAL: dict[Timespan, Literal["1m", "1s"]] = {"minute": "1m", "second": "1s"}
LENGTH_MS: dict[Timespan, int] = {"minute": 60_000, "second": 1_000}

#: Columns of a Polygon flat file of aggregates (``us_stocks_sip/minute_aggs_v1``)
#: that the import needs; others (``otc``...) are ignored. Read by name, never by
#: position: the vendor has reordered columns before.
FLATFILE_COLUMNS = ("ticker", "volume", "open", "close", "high", "low", "window_start")
FLATFILE_OPTIONAL = ("transactions", "vwap")


class CacheError(Exception):
    """The cache cannot do what was asked (nothing cached, a bad file, a failed download)."""


class CacheFormatError(ValueError):
    """A row that cannot be a bar (the message says which field and why)."""


@dataclass(frozen=True, slots=True)
class CachedBar:
    """One aggregate row: window start (ms) and exact values."""

    t: int
    o: Decimal
    h: Decimal
    l: Decimal  # noqa: E741 - Polygon's own field name
    c: Decimal
    v: Decimal
    vw: Decimal | None = None
    n: int | None = None


def exact(value: object, name: str) -> Decimal:
    """A finite ``Decimal`` from a decimal string, an int or a ``Decimal``.

    A float is refused: it has already been rounded to binary, so its digits
    are not the vendor's.
    """
    if isinstance(value, bool | float):
        raise CacheFormatError(f"{name}: {value!r} is a float, not an exact decimal")
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, str):
        try:
            d = Decimal(value.strip())
        except InvalidOperation as e:
            raise CacheFormatError(f"{name}: {value!r} is not a decimal") from e
    else:
        raise CacheFormatError(f"{name}: {value!r} is not a decimal")
    if not d.is_finite():
        raise CacheFormatError(f"{name}: {value!r} is not finite")
    return d


def _optional_int(value: object, name: str) -> int | None:
    if value is None or value == "":
        return None
    d = exact(value, name)
    if d != d.to_integral_value():
        raise CacheFormatError(f"{name}: {value!r} is not a whole number")
    return int(d)


def make_bar(
    *,
    t: object,
    o: object,
    h: object,
    l: object,  # noqa: E741 - Polygon's own field name
    c: object,
    v: object,
    vw: object = None,
    n: object = None,
) -> CachedBar:
    """A :class:`CachedBar` from raw values, checked (``CacheFormatError`` if not)."""
    start = _optional_int(t, "t")
    if start is None or start < 0:
        raise CacheFormatError(f"t: {t!r} is not a window start in ms")
    return CachedBar(
        t=start,
        o=exact(o, "o"),
        h=exact(h, "h"),
        l=exact(l, "l"),
        c=exact(c, "c"),
        v=exact(v, "v"),
        vw=None if vw is None or vw == "" else exact(vw, "vw"),
        n=_optional_int(n, "n"),
    )


def from_flatfile_row(row: Mapping[str, str | None]) -> tuple[str, CachedBar]:
    """``(ticker, bar)`` from one flat-file CSV row, read by column name.

    ``window_start`` is in nanoseconds there (ms in the REST API).
    """
    missing = [c for c in FLATFILE_COLUMNS if c not in row]
    if missing:
        raise CacheFormatError(f"flat file lacks column(s) {', '.join(missing)}")
    ticker = (row["ticker"] or "").strip()
    if not ticker:
        raise CacheFormatError("ticker: empty")
    start_ns = _optional_int(row["window_start"], "window_start")
    if start_ns is None or start_ns < 0 or start_ns % MS_NS:
        raise CacheFormatError(f"window_start: {row['window_start']!r} is not a time in ns")
    return ticker, make_bar(
        t=start_ns // MS_NS,
        o=row["open"],
        h=row["high"],
        l=row["low"],
        c=row["close"],
        v=row["volume"],
        vw=row.get("vwap"),
        n=row.get("transactions"),
    )


def new_york_day(t_ms: int) -> dt.date:
    """The New York calendar day a window start falls on (how Polygon names days)."""
    return new_york_time(t_ms * MS_NS).date()


def days_between(start: dt.date, end: dt.date, *, weekdays_only: bool = True) -> list[dt.date]:
    """Every day from ``start`` to ``end`` inclusive (US equities: Monday to Friday)."""
    if end < start:
        raise ValueError(f"--to {end} is before --from {start}")
    out = []
    day = start
    while day <= end:
        if not weekdays_only or day.weekday() < 5:
            out.append(day)
        day += dt.timedelta(days=1)
    return out


def bar_event_id(symbol: str, interval: str, start_ms: int) -> uuid.UUID:
    """The id of a bar: exactly the live Polygon feed's for the same bar.

    The parts must stay those of ``adapters/polygon/parse.py:bar_id``
    (``polygon / bar / symbol / interval / window start ms``); a unit test holds
    the two together. Then a bar replayed from the cache while the live feed
    published it is one event, not two.
    """
    return derived_id("polygon", "bar", symbol, interval, start_ms)


def bar_payload(symbol: str, timespan: Timespan, bar: CachedBar, feed: FeedName) -> BarPayload:
    """The payload of ``bar``; :class:`CacheFormatError` if the contract refuses it."""
    start_ns = bar.t * MS_NS
    try:
        return BarPayload(
            symbol=symbol,
            interval=INTERVAL[timespan],
            open=bar.o,
            high=bar.h,
            low=bar.l,
            close=bar.c,
            volume=bar.v,
            vwap=bar.vw,
            trades=bar.n,
            start_ns=start_ns,
            end_ns=start_ns + LENGTH_MS[timespan] * MS_NS,
            feed=feed,
        )
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CacheFormatError(f"{symbol} bar at t={bar.t}: {where}: {first['msg']}") from None


def bar_event(
    symbol: str,
    timespan: Timespan,
    bar: CachedBar,
    *,
    clock: Clock,
    source: str,
    feed: FeedName = "cache",
) -> BarClosed:
    """The :class:`BarClosed` for a cached bar; it happened at the window's end."""
    payload = bar_payload(symbol, timespan, bar, feed)
    return BarClosed.create(
        payload,
        source=source,
        clock=clock,
        ts_event=payload.end_ns,
        event_id=bar_event_id(symbol, payload.interval, bar.t),
    )


def merge_by_start(
    streams: Mapping[str, Iterable[CachedBar]],
) -> Iterator[tuple[str, CachedBar]]:
    """A k-way merge of each symbol's bars (each in time order) into one time order.

    Ties (the same window for several symbols) go by symbol name, so the order
    is total and the same on every run. Memory holds one bar per symbol.
    """

    def keyed(symbol: str, bars: Iterable[CachedBar]) -> Iterator[tuple[int, str, CachedBar]]:
        last = -1
        for bar in bars:
            if bar.t < last:
                raise CacheFormatError(f"{symbol}: bars out of order at t={bar.t}")
            last = bar.t
            yield bar.t, symbol, bar

    for _t, symbol, bar in heapq.merge(
        *(keyed(s, b) for s, b in streams.items()), key=lambda x: (x[0], x[1])
    ):
        yield symbol, bar


_SPEED = re.compile(r"^(\d+(?:\.\d+)?)x?$")


def parse_speed(value: str) -> float | None:
    """``max`` (None: as fast as acks allow) or ``10x`` (ten times real time)."""
    text = value.strip().lower()
    if text == "max":
        return None
    m = _SPEED.fullmatch(text)
    speed = float(m.group(1)) if m else math.nan
    if not m or not math.isfinite(speed) or speed <= 0:
        raise ValueError(f"speed must look like 10x or max, got {value!r}")
    return speed


def replay_offset_s(t_ms: int, first_ms: int, speed: float) -> float:
    """Seconds after the replay's start at which the bar of window ``t_ms`` is due."""
    return (t_ms - first_ms) / 1000 / speed
