"""The local history cache: exact Parquet round trip, atomic and resumable writes,
flat-file import by header name, the k-way merge and the replay source."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import time
from collections.abc import Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq  # type: ignore[import-untyped,unused-ignore]
import pytest

from libs.contract.codec import derived_id
from libs.contract.envelope import Event
from libs.contract.events import BarClosed
from libs.contract.subjects import subject_for
from services.marketdata.adapters.cache import CacheSource, ParquetCache, fetch
from services.marketdata.adapters.flatfiles import import_flatfiles
from services.marketdata.domain.cache import (
    CachedBar,
    CacheError,
    CacheFormatError,
    bar_event_id,
    days_between,
    make_bar,
    merge_by_start,
    new_york_day,
    parse_speed,
    replay_offset_s,
)

MON = dt.date(2024, 3, 4)
TUE = dt.date(2024, 3, 5)
OPEN_MON_MS = 1_709_562_600_000  # 2024-03-04 09:30 New York
OPEN_TUE_MS = OPEN_MON_MS + 86_400_000


def bar(t: int, price: str = "100.25", **kw: Any) -> CachedBar:
    return make_bar(
        t=t,
        o=kw.get("o", price),
        h=kw.get("h", price),
        l=kw.get("l", price),
        c=kw.get("c", price),
        v=kw.get("v", "100"),
        vw=kw.get("vw", price),
        n=kw.get("n", 3),
    )


def test_parquet_round_trip_keeps_every_digit(tmp_path: Path) -> None:
    cache = ParquetCache(tmp_path)
    bars = [
        make_bar(
            t=OPEN_MON_MS,
            o="190.1234",
            h="191.5",
            l="0.0001",
            c="190.10",
            v="123456789012345678",
            vw="190.123456789012",
            n=7,
        ),
        make_bar(t=OPEN_MON_MS + 60_000, o=5, h=5, l=5, c=5, v=0),  # no vwap, no count
        make_bar(
            t=OPEN_MON_MS + 120_000,
            o=Decimal("1E+2"),
            h="100.000",
            l="99.99",
            c="99.990",
            v="12.5",
        ),
    ]
    path = cache.write("minute", "AAPL", MON, list(reversed(bars)), origin="test")
    assert path == tmp_path / "minute" / "AAPL" / "2024-03-04.parquet"
    back = cache.read("minute", "AAPL", MON)
    assert back == bars  # sorted by window start, values equal
    # ...and the very digits, not just equal values (no float, no rescaling).
    assert [(str(b.o), str(b.c), str(b.v), str(b.vw)) for b in back] == [
        ("190.1234", "190.10", "123456789012345678", "190.123456789012"),
        ("5", "5", "0", "None"),
        ("1E+2", "99.990", "12.5", "None"),
    ]
    table = pq.read_table(path)
    assert table.schema.field("o").type == "string"
    assert table.schema.metadata[b"tradebus.origin"] == b"test"


def test_an_empty_day_is_cached_as_empty(tmp_path: Path) -> None:
    cache = ParquetCache(tmp_path)
    cache.write("minute", "AAPL", MON, [], origin="test")
    assert cache.has("minute", "AAPL", MON)
    assert cache.read("minute", "AAPL", MON) == []


def test_floats_and_bad_bars_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    with pytest.raises(CacheFormatError, match="float"):
        make_bar(t=1, o=1.5, h=2, l=1, c=2, v=1)
    with pytest.raises(CacheFormatError, match="not finite"):
        make_bar(t=1, o="NaN", h=2, l=1, c=2, v=1)
    cache = ParquetCache(tmp_path)
    with pytest.raises(CacheFormatError, match=r"AAPL bar at t=.*low"):
        cache.write(
            "minute", "AAPL", MON, [bar(OPEN_MON_MS), bar(OPEN_MON_MS + 60_000, l="-1")], origin="t"
        )
    with pytest.raises(CacheFormatError, match="two bars for window"):
        cache.write("minute", "AAPL", MON, [bar(OPEN_MON_MS), bar(OPEN_MON_MS)], origin="t")
    assert not cache.has("minute", "AAPL", MON)
    assert list(tmp_path.rglob("*")) in ([], [tmp_path / "minute"])


def test_a_write_that_dies_midway_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ParquetCache(tmp_path)
    cache.write("minute", "AAPL", MON, [bar(OPEN_MON_MS)], origin="first")

    def half_then_die(table: Any, where: Any) -> None:
        where.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", half_then_die)
    with pytest.raises(OSError, match="disk full"):
        cache.write("minute", "AAPL", MON, [bar(OPEN_MON_MS, "1")], origin="second")
    with pytest.raises(OSError, match="disk full"):
        cache.write("minute", "AAPL", TUE, [bar(OPEN_TUE_MS)], origin="second")
    # The old day is intact, the new day does not exist, no temporary is left.
    assert cache.read("minute", "AAPL", MON) == [bar(OPEN_MON_MS)]
    assert not cache.has("minute", "AAPL", TUE)
    assert sorted(p.name for p in (tmp_path / "minute" / "AAPL").iterdir()) == [
        "2024-03-04.parquet"
    ]


def test_a_killed_runs_temporary_is_never_read_and_is_cleaned(tmp_path: Path) -> None:
    cache = ParquetCache(tmp_path)
    folder = tmp_path / "minute" / "AAPL"
    folder.mkdir(parents=True)
    stale = folder / ".2024-03-05.parquet.4242.tmp"
    stale.write_bytes(b"PAR1 torn")
    assert not cache.has("minute", "AAPL", TUE)
    assert cache.days("minute", "AAPL") == []
    cache.write("minute", "AAPL", TUE, [bar(OPEN_TUE_MS)], origin="t")
    assert not stale.exists()
    assert cache.days("minute", "AAPL") == [TUE]


class FakeAggs:
    """A hand-written stand-in for the REST client's ``list_aggs`` (the port)."""

    def __init__(self, bars: dict[str, list[dict[str, Any]]]) -> None:
        self.bars = bars
        self.calls: list[tuple[str, str]] = []
        self.adjusted: set[bool | None] = set()

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
    ) -> Iterable[Any]:
        self.calls.append((ticker, from_))
        self.adjusted.add(adjusted)
        assert (multiplier, timespan, from_, sort) == (1, "minute", to, "asc")
        day = dt.date.fromisoformat(from_)
        for b in self.bars.get(ticker, []):
            if new_york_day(b["t"]) == day:
                yield type("Agg", (), {
                    "timestamp": b["t"], "open": b["o"], "high": b["h"], "low": b["l"],
                    "close": b["c"], "volume": b["v"], "vwap": b.get("vw"),
                    "transactions": b.get("n"),
                })()  # fmt: skip


def rest_bars(start_ms: int, n: int, price: str = "100.5") -> list[dict[str, Any]]:
    p = Decimal(price)
    return [
        {"t": start_ms + i * 60_000, "o": p, "h": p + 1, "l": p - 1, "c": p, "v": 10 + i}
        for i in range(n)
    ]


def test_fetch_is_resumable_and_skips_weekends_and_unfinished_days(tmp_path: Path) -> None:
    cache = ParquetCache(tmp_path)
    client = FakeAggs({"AAPL": rest_bars(OPEN_MON_MS, 3) + rest_bars(OPEN_TUE_MS, 2)})
    friday, sunday = dt.date(2024, 3, 1), dt.date(2024, 3, 3)
    first = fetch(cache, client, ["AAPL"], friday, MON, today=TUE)
    assert client.calls == [("AAPL", "2024-03-01"), ("AAPL", "2024-03-04")]  # no weekend
    assert (first.fetched_days, first.skipped_days, first.bars) == (2, 0, 3)
    assert cache.read("minute", "AAPL", dt.date(2024, 3, 1)) == []  # a day without bars
    client.calls.clear()
    second = fetch(cache, client, ["AAPL"], sunday, TUE, today=TUE)
    assert client.calls == []  # Monday is cached, Tuesday is not over yet
    assert (second.fetched_days, second.skipped_days, second.incomplete) == (0, 1, [("AAPL", TUE)])
    third = fetch(cache, client, ["AAPL"], sunday, TUE, today=dt.date(2024, 3, 6))
    assert client.calls == [("AAPL", "2024-03-05")]
    assert (third.fetched_days, third.skipped_days, third.bars) == (1, 1, 2)
    assert [b.v for b in cache.read("minute", "AAPL", TUE)] == [Decimal(10), Decimal(11)]


def test_fetch_takes_a_bar_sent_twice_once_and_names_a_bar_it_cannot_cache(
    tmp_path: Path,
) -> None:
    """Polygon has answered a day with every bar listed twice (polygon-io/issues#92):
    cache.write's 'two bars for window' (a CacheFormatError, which the CLI does
    not catch) ended fetch in a traceback, at every rerun. A bar the contract
    refuses (a price of 0) did the same; now it is a FetchError naming the day."""
    from services.marketdata.adapters.cache import FetchError

    cache = ParquetCache(tmp_path)
    twice = rest_bars(OPEN_MON_MS, 3)
    result = fetch(cache, FakeAggs({"AAPL": twice + twice}), ["AAPL"], MON, MON, today=TUE)
    assert (result.fetched_days, result.bars) == (1, 3)
    assert [b.t for b in cache.read("minute", "AAPL", MON)] == [b["t"] for b in twice]

    differing = [twice[0], {**twice[0], "c": Decimal("100.75")}]
    zero = [{**twice[0], "o": Decimal(0)}]
    for bad in (differing, zero):
        with pytest.raises(FetchError, match="MSFT 2024-03-04"):
            fetch(cache, FakeAggs({"MSFT": bad}), ["MSFT"], MON, MON, today=TUE)
        assert not cache.has("minute", "MSFT", MON)


FLAT_HEADER = "ticker,volume,open,close,high,low,window_start,transactions"


def flat_row(ticker: str, t_ms: int, o: str, c: str, h: str, lo: str, v: str, n: str) -> str:
    return f"{ticker},{v},{o},{c},{h},{lo},{t_ms * 1_000_000},{n}"


def write_as_before_the_basis(
    cache: ParquetCache, symbol: str, day: dt.date, bars: list[CachedBar], origin: str
) -> None:
    """A day file as versions before ``tradebus.basis`` wrote it (REST ones adjusted)."""
    path = cache.write("minute", symbol, day, bars, origin=origin)
    table = pq.read_table(path)
    meta = {k: v for k, v in (table.schema.metadata or {}).items() if k != b"tradebus.basis"}
    pq.write_table(table.replace_schema_metadata(meta), path)


def test_fetch_asks_for_unadjusted_bars_and_records_the_basis(tmp_path: Path) -> None:
    cache = ParquetCache(tmp_path)
    client = FakeAggs({"AAPL": rest_bars(OPEN_MON_MS, 3)})
    fetch(cache, client, ["AAPL"], MON, MON, today=TUE)
    # As traded, like the live feed and the gap-fill: a split must not make
    # the cached days jump against each other or against the live bars.
    assert client.adjusted == {False}
    assert cache.basis("minute", "AAPL", MON) == "unadjusted"
    assert not cache.stale("minute", "AAPL", MON)


async def test_days_cached_split_adjusted_are_fetched_again_not_mixed(tmp_path: Path) -> None:
    # Monday was fetched (adjusted) by an older version; Tuesday came from a
    # flat file (unadjusted already). Monday's prices were divided by 10.
    cache = ParquetCache(tmp_path)
    write_as_before_the_basis(cache, "NVDA", MON, [bar(OPEN_MON_MS, "120.00")], "rest")
    flat = [bar(OPEN_TUE_MS, "1210.00")]
    write_as_before_the_basis(cache, "NVDA", TUE, flat, "flatfile:2024-03-05.csv.gz")
    assert cache.stale("minute", "NVDA", MON)
    assert not cache.stale("minute", "NVDA", TUE)
    refused = ListSink()
    with pytest.raises(CacheError, match=r"NVDA 2024-03-04 \(minute\) were cached split-adj"):
        await CacheSource(cache, ["NVDA"], MON, TUE, clock=Clock()).run(refused, asyncio.Event())
    assert refused.batches == []

    client = FakeAggs({"NVDA": rest_bars(OPEN_MON_MS, 1, price="1200.00")})
    result = fetch(cache, client, ["NVDA"], MON, TUE, today=dt.date(2024, 3, 6))
    assert client.calls == [("NVDA", "2024-03-04")]  # Tuesday is kept
    assert (result.fetched_days, result.refetched_days, result.skipped_days) == (1, 1, 1)
    assert not cache.stale("minute", "NVDA", MON)
    sink = ListSink()
    await CacheSource(cache, ["NVDA"], MON, TUE, clock=Clock()).run(sink, asyncio.Event())
    closes = [e.payload.close for b in sink.batches for e in b]
    assert closes == [Decimal("1200.00"), Decimal("1210.00")]


def test_a_flatfile_import_replaces_a_day_cached_split_adjusted(tmp_path: Path) -> None:
    cache = ParquetCache(tmp_path / "cache")
    write_as_before_the_basis(cache, "AAPL", MON, [bar(OPEN_MON_MS, "50.00")], "rest")
    path = tmp_path / "2024-03-04.csv"
    row = flat_row("AAPL", OPEN_MON_MS, "100", "100", "100", "100", "10", "1")
    path.write_text(f"{FLAT_HEADER}\n{row}\n")
    result = import_flatfiles(cache, [path])
    assert (result.written_days, result.skipped_days) == (1, 0)
    assert cache.read("minute", "AAPL", MON)[0].c == Decimal(100)
    assert cache.basis("minute", "AAPL", MON) == "unadjusted"


def test_flatfile_import_reads_columns_by_name(tmp_path: Path) -> None:
    # Columns reordered and one extra, gzipped, two days and three tickers.
    text = "\n".join(
        [
            "window_start,otc,high,ticker,low,open,close,volume,transactions",
            f"{OPEN_MON_MS * 1_000_000},,190.50,AAPL,189.9,190.01,190.2,1200,31",
            f"{OPEN_MON_MS * 1_000_000},,420.1,MSFT,419.5,420,419.75,800,12",
            f"{(OPEN_MON_MS + 60_000) * 1_000_000},,190.7,AAPL,190.1,190.2,190.65,900,20",
            f"{OPEN_TUE_MS * 1_000_000},,191,AAPL,190,190.5,190.9,50,2",
            f"{OPEN_MON_MS * 1_000_000},,10,ZZZZ,10,10,10,5,1",
        ]
    )
    path = tmp_path / "2024-03-04.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    cache = ParquetCache(tmp_path / "cache")
    result = import_flatfiles(cache, [path], symbols={"AAPL", "MSFT"})
    assert (result.rows, result.ignored_rows, result.written_days) == (5, 1, 3)
    aapl = cache.read("minute", "AAPL", MON)
    assert aapl == [
        make_bar(t=OPEN_MON_MS, o="190.01", h="190.50", l="189.9", c="190.2", v="1200", n=31),
        make_bar(t=OPEN_MON_MS + 60_000, o="190.2", h="190.7", l="190.1", c="190.65", v=900, n=20),
    ]
    assert str(aapl[0].h) == "190.50"
    assert cache.days("minute", "AAPL") == [MON, TUE]
    assert cache.read("minute", "MSFT", MON)[0].c == Decimal("419.75")
    assert not cache.has("minute", "ZZZZ", MON)
    # Importing again skips what is there, unless asked to replace it.
    again = import_flatfiles(cache, [path], symbols={"AAPL", "MSFT"})
    assert (again.written_days, again.skipped_days) == (0, 3)
    assert import_flatfiles(cache, [path], symbols={"MSFT"}, replace=True).written_days == 1


def test_flatfile_import_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    cache = ParquetCache(tmp_path / "cache")
    no_window = tmp_path / "a.csv"
    no_window.write_text("ticker,volume,open,close,high,low\nAAPL,1,1,1,1,1\n")
    with pytest.raises(CacheError, match="no column window_start"):
        import_flatfiles(cache, [no_window])
    bad_row = tmp_path / "b.csv"
    bad_row.write_text(
        FLAT_HEADER
        + "\n"
        + flat_row("AAPL", OPEN_MON_MS, "1", "1", "1", "1", "1", "1")
        + "\n"
        + flat_row("AAPL", OPEN_MON_MS + 60_000, "x", "1", "1", "1", "1", "1")
        + "\n"
    )
    with pytest.raises(CacheError, match=r"b\.csv:3: o: 'x' is not a decimal"):
        import_flatfiles(cache, [bad_row])
    assert not cache.has("minute", "AAPL", MON)


def test_merge_is_time_ordered_across_symbols_with_ties_by_symbol() -> None:
    streams = {
        "MSFT": iter([bar(1000), bar(3000), bar(4000)]),
        "AAPL": iter([bar(1000), bar(2000), bar(4000), bar(9000)]),
        "NVDA": iter([bar(500)]),
        "EMPTY": iter([]),
    }
    merged = [(s, b.t) for s, b in merge_by_start(streams)]
    assert merged == [
        ("NVDA", 500),
        ("AAPL", 1000),
        ("MSFT", 1000),
        ("AAPL", 2000),
        ("MSFT", 3000),
        ("AAPL", 4000),
        ("MSFT", 4000),
        ("AAPL", 9000),
    ]
    with pytest.raises(CacheFormatError, match="out of order"):
        list(merge_by_start({"AAPL": [bar(2000), bar(1000)]}))


def test_speed_and_schedule() -> None:
    assert parse_speed("max") is None
    assert parse_speed("10x") == 10.0
    assert parse_speed("0.5x") == 0.5
    for bad in ("0x", "fast", "-2x", "x"):
        with pytest.raises(ValueError, match="10x or max"):
            parse_speed(bad)
    assert replay_offset_s(OPEN_MON_MS + 60_000, OPEN_MON_MS, 10.0) == 6.0
    assert days_between(dt.date(2024, 3, 1), MON) == [dt.date(2024, 3, 1), MON]
    with pytest.raises(ValueError, match="before"):
        days_between(TUE, MON)


def test_a_speed_the_replay_cannot_keep_is_refused_with_the_settings() -> None:
    """0x matched the settings' pattern and was refused only when the source
    was built: a ValueError traceback instead of exit 2 naming the variable."""
    from libs.config import ConfigError, load_settings
    from services.marketdata.config import MarketdataSettings

    for bad in ("0x", "0.0x", "00x"):
        with pytest.raises(ConfigError, match="TRADEBUS_CACHE_SPEED: speed must look like 10x"):
            load_settings(MarketdataSettings, source="cache", cache_from=MON, cache_speed=bad)
    for good in ("max", "10x", "0.5x"):
        settings = load_settings(MarketdataSettings, cache_speed=good)
        assert settings.cache_speed == good


def test_cache_bar_ids_are_the_live_feeds() -> None:
    from services.marketdata.adapters.polygon.parse import bar_id

    assert bar_event_id("AAPL", "1m", OPEN_MON_MS) == bar_id("AAPL", "1m", OPEN_MON_MS)
    assert bar_event_id("AAPL", "1m", OPEN_MON_MS) == derived_id(
        "polygon", "bar", "AAPL", "1m", OPEN_MON_MS
    )


class ListSink:
    def __init__(self) -> None:
        self.batches: list[list[Event]] = []
        self.at: list[float] = []

    async def publish(self, events: Sequence[Event]) -> None:
        self.batches.append(list(events))
        self.at.append(time.monotonic())


class Clock:
    def now_ns(self) -> int:
        return 1_800_000_000_000_000_000


def two_day_cache(root: Path) -> ParquetCache:
    cache = ParquetCache(root)
    for day, start in ((MON, OPEN_MON_MS), (TUE, OPEN_TUE_MS)):
        cache.write("minute", "AAPL", day, [bar(start + i * 60_000) for i in range(3)], origin="t")
        cache.write(
            "minute", "MSFT", day, [bar(start + i * 60_000, "50") for i in (1, 2)], origin="t"
        )
    return cache


async def test_replay_at_max_publishes_every_bar_in_time_order(tmp_path: Path) -> None:
    cache = two_day_cache(tmp_path)
    source = CacheSource(
        cache, ["MSFT", "AAPL", "NONE"], MON, TUE, speed=None, clock=Clock(), batch=4
    )
    sink = ListSink()
    await source.run(sink, asyncio.Event())
    events = [e for b in sink.batches for e in b]
    assert [len(b) for b in sink.batches] == [4, 4, 2]
    assert source.finished
    got = [(e.payload.symbol, e.payload.start_ns // 1_000_000) for e in events]
    want = sorted(
        [("AAPL", s + i * 60_000) for s in (OPEN_MON_MS, OPEN_TUE_MS) for i in range(3)]
        + [("MSFT", s + i * 60_000) for s in (OPEN_MON_MS, OPEN_TUE_MS) for i in (1, 2)],
        key=lambda x: (x[1], x[0]),
    )
    assert got == want
    for e in events:
        assert isinstance(e, BarClosed)
        assert e.payload.feed == "cache"
        assert e.id == bar_event_id(e.payload.symbol, "1m", e.payload.start_ns // 1_000_000)
        assert e.ts_event == e.payload.end_ns == e.payload.start_ns + 60 * 10**9
        assert subject_for(e) == f"md.bar.1m.{e.payload.symbol}"


async def test_replay_at_speed_keeps_the_pace_and_stops(tmp_path: Path) -> None:
    cache = ParquetCache(tmp_path)
    start = OPEN_MON_MS
    cache.write("second", "AAPL", MON, [bar(start + i * 1000) for i in range(4)], origin="t")
    cache.write("second", "MSFT", MON, [bar(start + 2000)], origin="t")
    source = CacheSource(
        cache, ["AAPL", "MSFT"], MON, MON, timespan="second", speed=20.0, clock=Clock()
    )
    sink = ListSink()
    before = time.monotonic()
    await source.run(sink, asyncio.Event())
    assert [[e.payload.symbol for e in b] for b in sink.batches] == [
        ["AAPL"],
        ["AAPL"],
        ["AAPL", "MSFT"],  # one window, one publish
        ["AAPL"],
    ]
    # 1 s of market time at 20x = 50 ms: window i is due 50*i ms after the
    # replay's clock starts (no earlier than ``before``). Due times, not gaps:
    # a window published late on a loaded host is followed by one on time,
    # sooner than 50 ms after it, as it should be.
    since = [round(at - before, 4) for at in sink.at]
    assert all(s >= 0.05 * i - 0.001 for i, s in enumerate(since)), since
    # Stopped: it returns without publishing the rest.
    stop = asyncio.Event()
    stop.set()
    stopped = ListSink()
    source = CacheSource(cache, ["AAPL"], MON, MON, timespan="second", speed=1.0, clock=Clock())
    await asyncio.wait_for(source.run(stopped, stop), timeout=5)
    assert not source.finished
    assert stopped.batches == []


async def test_replay_of_nothing_says_what_to_do(tmp_path: Path) -> None:
    source = CacheSource(ParquetCache(tmp_path), ["AAPL"], MON, TUE, clock=Clock())
    with pytest.raises(CacheError, match=r"nothing cached for AAPL.*tradebus marketdata fetch"):
        await source.run(ListSink(), asyncio.Event())
