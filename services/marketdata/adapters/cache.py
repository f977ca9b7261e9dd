"""The local history cache: Parquet files, the REST download, the replay source.

Layout: ``<cache_dir>/<timespan>/<SYMBOL>/<YYYY-MM-DD>.parquet``, one file per
symbol and New York day, with Polygon's aggregate columns ``t`` (window
start, ms, int64) and ``o h l c v vw`` as decimal **strings** (exactly the
digits the vendor sent; no float, no fixed scale to overflow) and ``n``
(int64). A day with no bars (a holiday) is an empty file, so that it counts
as fetched.

Prices are **unadjusted** (as traded), like the live feed, the gap-fill and
Polygon's flat files: a split must not make the cached history jump against
what the live feed publishes. Every file records that in its schema metadata
(``tradebus.basis: unadjusted``). Files written before the cache recorded it
were fetched split-adjusted from REST (those imported from flat files were
already unadjusted): such a file is *stale* (:meth:`ParquetCache.stale`);
``fetch`` fetches its day again, an import replaces it, and a replay refuses
it rather than mix the two bases.

Invariants:

- A file exists only complete: it is written to a hidden temporary name in
  the same directory, fsynced, then renamed over the final name (atomic on
  POSIX). Leftover temporaries of a killed run are removed before that day
  is written again, and never read.
- Resumable: a day whose file exists (and is not stale) is not fetched again.
- Every row was checked against the event contract when written, so a replay
  never meets a bar it cannot publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa  # type: ignore[import-untyped,unused-ignore]
import pyarrow.parquet as pq  # type: ignore[import-untyped,unused-ignore]

from libs.contract.envelope import Clock
from services.marketdata import metrics
from services.marketdata.domain.cache import (
    INTERVAL,
    CachedBar,
    CacheError,
    CacheFormatError,
    Timespan,
    bar_event,
    bar_payload,
    days_between,
    make_bar,
    merge_by_start,
    new_york_day,
    replay_offset_s,
)
from services.marketdata.feed import EventSink

log = logging.getLogger(__name__)

SOURCE = "marketdata/cache"

SCHEMA = pa.schema(
    [
        ("t", pa.int64()),
        ("o", pa.string()),
        ("h", pa.string()),
        ("l", pa.string()),
        ("c", pa.string()),
        ("v", pa.string()),
        ("vw", pa.string()),
        ("n", pa.int64()),
    ]
)
_PRICE_COLUMNS = ("o", "h", "l", "c", "v", "vw")
#: The price basis of every file written now (schema metadata ``tradebus.basis``).
BASIS = "unadjusted"


class FetchError(CacheError):
    """The REST API refused or failed a download; the message says why (never the key)."""


# ------------------------------------------------------------------ storage


class ParquetCache:
    """Day files of bars under ``root``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, timespan: Timespan, symbol: str, day: dt.date) -> Path:
        return self.root / timespan / symbol / f"{day.isoformat()}.parquet"

    def has(self, timespan: Timespan, symbol: str, day: dt.date) -> bool:
        return self.path(timespan, symbol, day).is_file()

    def basis(self, timespan: Timespan, symbol: str, day: dt.date) -> str:
        """``unadjusted`` or ``adjusted``: the prices of a cached day (its file must exist).

        Read from the file's metadata (no rows are read). A file without
        ``tradebus.basis`` predates it: from a flat file it is unadjusted,
        from REST (or anything else) it was fetched split-adjusted.
        """
        path = self.path(timespan, symbol, day)
        try:
            meta = pq.read_schema(path).metadata or {}
        except (OSError, pa.ArrowException) as e:
            raise CacheError(f"cannot read {path}: {e}") from e
        recorded = meta.get(b"tradebus.basis")
        if recorded is not None:
            return str(recorded.decode())
        origin = meta.get(b"tradebus.origin", b"").decode()
        return "unadjusted" if origin.startswith("flatfile:") else "adjusted"

    def stale(self, timespan: Timespan, symbol: str, day: dt.date) -> bool:
        """The cached day is not in :data:`BASIS` (to fetch or import again).

        The day must be cached, as for :meth:`basis`: every caller has found
        it already (:meth:`has`, :meth:`days`), so it is not looked up again.
        """
        return self.basis(timespan, symbol, day) != BASIS

    def days(self, timespan: Timespan, symbol: str) -> list[dt.date]:
        """Every day cached for ``symbol``, in order (temporaries ignored)."""
        folder = self.root / timespan / symbol
        out = []
        for p in folder.glob("*.parquet") if folder.is_dir() else ():
            with contextlib.suppress(ValueError):
                out.append(dt.date.fromisoformat(p.stem))
        return sorted(out)

    def write(
        self,
        timespan: Timespan,
        symbol: str,
        day: dt.date,
        bars: Sequence[CachedBar],
        *,
        origin: str,
    ) -> Path:
        """Write one day atomically (bars sorted by window start, one per window).

        Each bar is checked against the event contract first; a bad one raises
        :class:`CacheFormatError` and nothing is written.
        """
        rows = sorted(bars, key=lambda b: b.t)
        for prev, bar in itertools.pairwise(rows):
            if bar.t == prev.t:
                raise CacheFormatError(f"{symbol} {day}: two bars for window t={bar.t}")
        for bar in rows:
            bar_payload(symbol, timespan, bar, "cache")
        table = pa.table(
            {
                "t": [b.t for b in rows],
                "o": [str(b.o) for b in rows],
                "h": [str(b.h) for b in rows],
                "l": [str(b.l) for b in rows],
                "c": [str(b.c) for b in rows],
                "v": [str(b.v) for b in rows],
                "vw": [None if b.vw is None else str(b.vw) for b in rows],
                "n": [b.n for b in rows],
            },
            schema=SCHEMA.with_metadata(
                {
                    "tradebus.symbol": symbol,
                    "tradebus.day": day.isoformat(),
                    "tradebus.timespan": timespan,
                    "tradebus.origin": origin,
                    "tradebus.basis": BASIS,
                }
            ),
        )
        final = self.path(timespan, symbol, day)
        final.parent.mkdir(parents=True, exist_ok=True)
        self._remove_temporaries(final)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as f:
                pq.write_table(table, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    @staticmethod
    def _remove_temporaries(final: Path) -> None:
        for stale in final.parent.glob(f".{final.name}.*.tmp"):
            stale.unlink(missing_ok=True)

    def read(self, timespan: Timespan, symbol: str, day: dt.date) -> list[CachedBar]:
        """The bars of one cached day, in time order."""
        path = self.path(timespan, symbol, day)
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as e:
            raise CacheError(f"cannot read {path}: {e}") from e
        missing = [c for c in SCHEMA.names if c not in table.column_names]
        if missing:
            raise CacheError(f"{path} lacks column(s) {', '.join(missing)}")
        cols = {c: table.column(c).to_pylist() for c in SCHEMA.names}
        try:
            return [
                make_bar(**{c: cols[c][i] for c in SCHEMA.names}) for i in range(table.num_rows)
            ]
        except CacheFormatError as e:
            raise CacheError(f"{path}: {e}") from e

    def bars(self, timespan: Timespan, symbol: str, days: Iterable[dt.date]) -> Iterator[CachedBar]:
        """``symbol``'s bars over ``days`` (only those cached), one file at a time."""
        for day in days:
            if self.has(timespan, symbol, day):
                yield from self.read(timespan, symbol, day)


# ------------------------------------------------------------------ download


class AggsClient(Protocol):
    """What the download needs of ``massive.RESTClient``."""

    def list_aggs(
        self,
        ticker: str,
        multiplier: int,
        timespan: str,
        from_: str,
        to: str,
        adjusted: bool | None = None,
        sort: str | None = None,
        limit: int | None = None,
    ) -> Iterable[Any]: ...


class _DecimalJson:
    """The JSON module the REST client parses with: numbers become ``Decimal``.

    The official client parses with ``json.loads``, which would turn 190.16
    into a binary float; this keeps the vendor's digits.
    """

    @staticmethod
    def loads(text: str | bytes) -> Any:
        return json.loads(text, parse_float=Decimal)


def rest_client(api_key: str, base_url: str) -> AggsClient:
    """The official client, parsing numbers exactly, retrying 5xx/429 three times."""
    from massive import RESTClient  # type: ignore[import-untyped,unused-ignore]

    client: AggsClient = RESTClient(
        api_key, base=base_url.rstrip("/"), custom_json=_DecimalJson, retries=3
    )
    return client


@dataclass
class FetchResult:
    fetched_days: int = 0
    skipped_days: int = 0
    #: Days cached before in another price basis (split-adjusted), fetched again.
    refetched_days: int = 0
    bars: int = 0
    #: (symbol, day) not fetched because the day is not over yet.
    incomplete: list[tuple[str, dt.date]] = field(default_factory=list)


def _vendor_error(e: Exception) -> str:
    """The vendor's own words from an error response body (``error`` / ``message``)."""
    text = str(e)
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        body = json.loads(text)
        status = body.get("status", "")
        words = body.get("error") or body.get("message") or text
        return f"{status}: {words}" if status else str(words)
    return text[:300]


def fetch_day(client: AggsClient, symbol: str, day: dt.date, timespan: Timespan) -> list[CachedBar]:
    """Every bar of one symbol and New York day (the client follows ``next_url``).

    Unadjusted, like the live feed and the gap-fill: split-adjusted prices
    depend on the splits known on the day of the request, so a day fetched
    before a split and one fetched after it would not fit together.
    """
    from massive.exceptions import (  # type: ignore[import-untyped,unused-ignore]
        AuthError,
        BadResponse,
    )
    from urllib3.exceptions import HTTPError

    try:
        bars = []
        pages = client.list_aggs(
            symbol,
            1,
            timespan,
            day.isoformat(),
            day.isoformat(),
            adjusted=False,
            sort="asc",
            limit=50_000,
        )
        for agg in pages:
            bars.append(
                make_bar(
                    t=agg.timestamp,
                    o=agg.open,
                    h=agg.high,
                    l=agg.low,
                    c=agg.close,
                    v=agg.volume,
                    vw=agg.vwap,
                    n=agg.transactions,
                )
            )
    except BadResponse as e:
        words = _vendor_error(e)
        hint = " (check POLYGON_API_KEY)" if "api key" in words.lower() else ""
        raise FetchError(f"Polygon refused {symbol} {day}: {words}{hint}") from None
    except AuthError as e:
        raise FetchError(f"no Polygon API key: set POLYGON_API_KEY ({e})") from None
    except HTTPError as e:
        raise FetchError(f"Polygon unreachable for {symbol} {day}: {e}") from None
    except CacheFormatError as e:
        raise FetchError(f"Polygon sent a bad bar for {symbol} {day}: {e}") from None
    # A bar outside the requested day would land in the wrong file; one sent
    # twice (Polygon has listed a day's bars twice) is one bar.
    return list(dict.fromkeys(b for b in bars if new_york_day(b.t) == day))


Progress = Callable[[str, int], None]


def fetch(
    cache: ParquetCache,
    client: AggsClient,
    symbols: Sequence[str],
    start: dt.date,
    end: dt.date,
    *,
    timespan: Timespan = "minute",
    today: dt.date,
    progress: Progress | None = None,
) -> FetchResult:
    """Download what the cache lacks for ``symbols`` over ``start..end`` (weekdays).

    A day already cached is skipped (unless it is :meth:`~ParquetCache.stale`:
    then it is fetched again and replaced); a day that is not over in New York
    (``today`` or later) is not cached, since it would be incomplete.
    ``progress(label, bars)`` is called after each symbol-day.
    """
    result = FetchResult()
    for symbol in symbols:
        for day in days_between(start, end):
            label = f"{symbol} {day}"
            # Looked up once: whether to skip it, and whether a fetch replaces it.
            cached = day < today and cache.has(timespan, symbol, day)
            if day >= today:
                result.incomplete.append((symbol, day))
            elif cached and not cache.stale(timespan, symbol, day):
                result.skipped_days += 1
            else:
                bars = fetch_day(client, symbol, day, timespan)
                try:
                    cache.write(timespan, symbol, day, bars, origin="rest")
                except CacheFormatError as e:
                    raise FetchError(f"Polygon sent a bad bar for {label}: {e}") from None
                result.fetched_days += 1
                if cached:
                    result.refetched_days += 1
                    log.info("%s was cached split-adjusted: fetched again, unadjusted", label)
                result.bars += len(bars)
                log.debug("cached %s: %d bars", label, len(bars))
            if progress is not None:
                progress(label, result.bars)
    return result


# ------------------------------------------------------------------ replay


class CacheSource:
    """A :class:`~services.marketdata.feed.FeedSource` replaying the cache in time order.

    ``speed`` None publishes as fast as JetStream acknowledges (batches of
    ``batch``); a number publishes each window's bars at ``speed`` times the
    pace of the original (gaps included). Ends by itself when the cache is
    exhausted.
    """

    feed = "cache"

    def __init__(
        self,
        cache: ParquetCache,
        symbols: Sequence[str],
        start: dt.date,
        end: dt.date,
        *,
        timespan: Timespan = "minute",
        speed: float | None = None,
        clock: Clock,
        batch: int = 1000,
    ) -> None:
        if end < start:
            raise CacheError(f"--to {end} is before --from {start}")
        self.cache = cache
        self.symbols = tuple(symbols)
        self.start = start
        self.end = end
        self.timespan = timespan
        self.speed = speed
        self.clock = clock
        self.batch = batch
        self.published = 0
        self.finished = False

    def _plan(self) -> dict[str, list[dt.date]]:
        plan: dict[str, list[dt.date]] = {}
        for symbol in self.symbols:
            days = [
                d for d in self.cache.days(self.timespan, symbol) if self.start <= d <= self.end
            ]
            stale = [d for d in days if self.cache.stale(self.timespan, symbol, d)]
            if stale:
                listed = ", ".join(d.isoformat() for d in stale[:5])
                more = f" and {len(stale) - 5} more" if len(stale) > 5 else ""
                raise CacheError(
                    f"{symbol} {listed}{more} ({self.timespan}) were cached split-adjusted by an "
                    f"older fetch; the cache is unadjusted now: run tradebus marketdata fetch "
                    f"again for these days (it replaces them)"
                )
            if days:
                plan[symbol] = days
            else:
                log.warning("nothing cached for %s from %s to %s", symbol, self.start, self.end)
        if not plan:
            raise CacheError(
                f"nothing cached for {','.join(self.symbols)} ({self.timespan}) from {self.start} "
                f"to {self.end} under {self.cache.root}; try: tradebus marketdata fetch"
            )
        return plan

    def _bars(self) -> Iterator[tuple[str, CachedBar]]:
        plan = self._plan()
        streams = {s: self.cache.bars(self.timespan, s, days) for s, days in plan.items()}
        return merge_by_start(streams)

    async def run(self, sink: EventSink, stop: asyncio.Event) -> None:
        """Publish the cached bars in time order until done or ``stop``."""
        bars = self._bars()
        log.info(
            "replaying the %s cache for %s from %s to %s at %s",
            self.timespan,
            ",".join(self.symbols),
            self.start,
            self.end,
            "max speed" if self.speed is None else f"{self.speed:g}x",
        )
        if self.speed is None:
            await self._run_max(bars, sink, stop)
        else:
            await self._run_paced(bars, sink, stop, self.speed)
        self.finished = not stop.is_set()
        log.info("cache replay %s: %d bars", "done" if self.finished else "stopped", self.published)

    async def _send(self, sink: EventSink, batch: list[tuple[str, CachedBar]]) -> None:
        # Events are made now, so that ts_init is when they were published.
        events = [
            bar_event(symbol, self.timespan, bar, clock=self.clock, source=SOURCE)
            for symbol, bar in batch
        ]
        metrics.MESSAGES_IN.labels(channel=_channel(self.timespan)).inc(len(batch))
        await sink.publish(events)
        self.published += len(batch)
        metrics.CACHE_BARS_REPLAYED.inc(len(batch))
        metrics.CACHE_REPLAY_POSITION.set(batch[-1][1].t / 1000)

    async def _run_max(
        self, bars: Iterator[tuple[str, CachedBar]], sink: EventSink, stop: asyncio.Event
    ) -> None:
        batch: list[tuple[str, CachedBar]] = []
        for item in bars:
            batch.append(item)
            if len(batch) >= self.batch:
                await self._send(sink, batch)
                batch = []
                if stop.is_set():
                    return
        if batch:
            await self._send(sink, batch)

    async def _run_paced(
        self,
        bars: Iterator[tuple[str, CachedBar]],
        sink: EventSink,
        stop: asyncio.Event,
        speed: float,
    ) -> None:
        """Each window's bars together, ``speed`` times as fast as they happened."""
        # The clock starts with the first bar in hand (reading the first file
        # can take a while); from then on each window is due at its offset.
        began = 0.0
        first: int | None = None
        group: list[tuple[str, CachedBar]] = []

        async def flush() -> bool:
            """Publish ``group`` when it is due; False if stopped meanwhile."""
            assert first is not None
            due = began + replay_offset_s(group[0][1].t, first, speed)
            delay = due - time.monotonic()
            if delay > 0:
                if delay > 10:
                    log.info("next bars in %.0fs (%gx real time)", delay, speed)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
            if stop.is_set():
                return False
            await self._send(sink, group)
            return True

        for symbol, bar in bars:
            if first is None:
                first, began = bar.t, time.monotonic()
            if group and bar.t != group[0][1].t:
                if not await flush():
                    return
                group = []
            group.append((symbol, bar))
        if group:
            await flush()


def _channel(timespan: Timespan) -> str:
    return "second_bars" if INTERVAL[timespan] == "1s" else "minute_bars"
