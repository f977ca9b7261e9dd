"""The synthetic market: determinism, the tick grid, bars consistent with trades."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal

import pytest

from libs.contract.codec import encode
from libs.contract.envelope import Event
from libs.contract.events import BarClosed, QuoteUpdated, TradePrinted
from libs.contract.subjects import subject_for
from services.marketdata.adapters.synthetic import SyntheticSource
from services.marketdata.domain.synthetic import (
    MINUTE_NS,
    SECOND_NS,
    SyntheticConfig,
    SyntheticMarket,
    parse_channels,
    record_id,
)

T0 = 1_709_562_600 * SECOND_NS  # 2024-03-04 14:30:00 UTC, on a minute
ALL = parse_channels("trades,quotes,second_bars,minute_bars")


def run(config: SyntheticConfig, times: Sequence[int]) -> list[Event]:
    market = SyntheticMarket(config)
    return [e for t in times for e in market.tick(t)]


def times(n: int, step_ns: int = 250_000_000, start: int = T0) -> list[int]:
    return [start + i * step_ns for i in range(n)]


def test_same_seed_same_events_byte_for_byte() -> None:
    config = SyntheticConfig(symbols=("AAPL", "MSFT", "ZZZ"), seed=11, channels=ALL)
    a = run(config, times(2000))
    b = run(config, times(2000))
    assert len(a) > 4000
    assert [encode(e) for e in a] == [encode(e) for e in b]


def test_another_seed_another_path_and_other_ids() -> None:
    a = run(SyntheticConfig(symbols=("AAPL",), seed=1), times(200))
    b = run(SyntheticConfig(symbols=("AAPL",), seed=2), times(200))
    assert {e.id for e in a}.isdisjoint({e.id for e in b})
    prices_a = [e.payload.price for e in a if isinstance(e, TradePrinted)]
    prices_b = [e.payload.price for e in b if isinstance(e, TradePrinted)]
    assert prices_a != prices_b


def test_ids_come_from_the_record_not_the_clock() -> None:
    """A rerun at other times publishes the same trade and quote ids and prices."""
    config = SyntheticConfig(symbols=("AAPL", "MSFT"), seed=5, channels=parse_channels("trades"))
    early = run(config, times(300))
    later = run(config, times(300, step_ns=7_000_000, start=T0 + 86_400 * SECOND_NS))
    assert [e.id for e in early] == [e.id for e in later]
    assert [e.payload.price for e in early] == [e.payload.price for e in later]
    first = early[0]
    assert isinstance(first, TradePrinted)
    assert first.id == record_id(5, "", "AAPL", "trade", first.payload.sequence or 0)
    assert len({e.id for e in early}) == len(early)


def test_run_salt_changes_the_ids_but_not_the_prices() -> None:
    plain = run(SyntheticConfig(symbols=("AAPL",), seed=3), times(50))
    salted = run(SyntheticConfig(symbols=("AAPL",), seed=3, run="r2"), times(50))
    assert {e.id for e in plain}.isdisjoint({e.id for e in salted})
    assert [e.payload for e in plain] == [e.payload for e in salted]


@pytest.mark.parametrize(("tick", "seed"), [("0.01", 1), ("0.05", 2), ("0.0001", 3), ("0.25", 4)])
def test_every_price_is_on_the_tick_grid(tick: str, seed: int) -> None:
    size = Decimal(tick)
    config = SyntheticConfig(
        symbols=("AAPL", "PENNY", "SPY"), seed=seed, channels=ALL, tick_size=size, volatility=0.01
    )
    events = run(config, times(3000, step_ns=SECOND_NS // 3))
    prices: list[Decimal] = []
    for e in events:
        if isinstance(e, TradePrinted):
            prices.append(e.payload.price)
        elif isinstance(e, QuoteUpdated):
            prices += [e.payload.bid_price, e.payload.ask_price]
            assert e.payload.bid_price < e.payload.ask_price
        elif isinstance(e, BarClosed):
            b = e.payload
            prices += [b.open, b.high, b.low, b.close]
    assert len(prices) > 9000
    for p in prices:
        assert isinstance(p, Decimal)
        assert p > 0
        assert p % size == 0, p


def test_trade_prints_inside_its_quote() -> None:
    events = run(SyntheticConfig(symbols=("AAPL", "MSFT"), seed=9), times(500))
    quotes: dict[str, QuoteUpdated] = {}
    checked = 0
    for e in events:
        if isinstance(e, QuoteUpdated):
            quotes[e.payload.symbol] = e
        elif isinstance(e, TradePrinted):
            q = quotes[e.payload.symbol].payload
            assert q.bid_price <= e.payload.price <= q.ask_price
            assert q.sequence is not None
            assert e.payload.sequence == q.sequence + 1
            checked += 1
    assert checked == 500


@pytest.mark.parametrize(("interval", "length"), [("1m", MINUTE_NS), ("1s", SECOND_NS)])
def test_bars_agree_with_the_trades_of_their_window(interval: str, length: int) -> None:
    """open = first trade, close = last, high/low the extremes, volume the sum, VWAP exact."""
    config = SyntheticConfig(symbols=("AAPL", "MSFT", "NVDA"), seed=21, channels=ALL)
    # Irregular steps, so windows hold different numbers of trades.
    ts = [T0 + 7]
    for i in range(4000):
        ts.append(ts[-1] + (97_000_000 if i % 5 else 1_300_000_000))
    events = run(config, ts)
    trades = [e for e in events if isinstance(e, TradePrinted)]
    bars = [e for e in events if isinstance(e, BarClosed) and e.payload.interval == interval]
    assert len(bars) >= 9
    by_window: dict[tuple[str, int], list[TradePrinted]] = defaultdict(list)
    for t in trades:
        by_window[(t.payload.symbol, t.ts_event - t.ts_event % length)].append(t)
    for bar in bars:
        b = bar.payload
        inside = by_window[(b.symbol, b.start_ns)]
        assert inside, "no bar without trades"
        assert b.start_ns % length == 0
        assert b.end_ns == b.start_ns + length
        assert bar.ts_event == b.end_ns
        assert bar.ts_init >= b.end_ns  # closed once time passed its end, never early
        assert b.open == inside[0].payload.price
        assert b.close == inside[-1].payload.price
        assert b.high == max(t.payload.price for t in inside)
        assert b.low == min(t.payload.price for t in inside)
        assert b.low <= min(b.open, b.close) <= max(b.open, b.close) <= b.high
        assert b.volume == sum(t.payload.size for t in inside)
        assert b.trades == len(inside)
        notional = sum(t.payload.price * t.payload.size for t in inside)
        assert b.vwap == (notional / b.volume).quantize(Decimal("0.0001"))
        assert subject_for(bar) == f"md.bar.{interval}.{b.symbol}"
    # Every window that had trades got exactly one bar (except those still open).
    last = ts[-1]
    windows = {(sym, start) for sym, start in by_window if start + length <= last}
    assert {(b.payload.symbol, b.payload.start_ns) for b in bars} == windows


def test_only_the_configured_channels() -> None:
    events = run(
        SyntheticConfig(symbols=("AAPL",), seed=1, channels=parse_channels("quotes")),
        times(400, step_ns=SECOND_NS),
    )
    assert {e.type for e in events} == {"QuoteUpdated"}
    assert {subject_for(e) for e in events} == {"md.quote.AAPL"}
    assert all(e.payload.feed == "synthetic" for e in events)


def test_refusals() -> None:
    with pytest.raises(ValueError, match="at least one symbol"):
        SyntheticConfig(symbols=(), seed=1)
    with pytest.raises(ValueError, match="repeat"):
        SyntheticConfig(symbols=("A", "A"), seed=1)
    with pytest.raises(ValueError, match="unknown channel 'trade'"):
        parse_channels("trade")
    with pytest.raises(ValueError, match="tick_size"):
        SyntheticConfig(symbols=("A",), seed=1, tick_size=Decimal(0))
    market = SyntheticMarket(SyntheticConfig(symbols=("A",), seed=1))
    market.tick(T0)
    with pytest.raises(ValueError, match="backwards"):
        market.tick(T0 - 1)


class ListSink:
    """A hand-written in-memory EventSink."""

    def __init__(self, stop_after: int, stop: asyncio.Event) -> None:
        self.events: list[Event] = []
        self.calls = 0
        self.stop_after = stop_after
        self.stop = stop

    async def publish(self, events: Sequence[Event]) -> None:
        self.calls += 1
        self.events.extend(events)
        if len(self.events) >= self.stop_after:
            self.stop.set()


class FixedClock:
    def __init__(self) -> None:
        self.now = T0

    def now_ns(self) -> int:
        self.now += 1_000_000
        return self.now


async def test_source_paces_and_stops_when_told() -> None:
    market = SyntheticMarket(SyntheticConfig(symbols=("AAPL", "MSFT"), seed=4))
    source = SyntheticSource(market, rate=2000, clock=FixedClock())
    stop = asyncio.Event()
    sink = ListSink(stop_after=200, stop=stop)
    await asyncio.wait_for(source.run(sink, stop), timeout=10)
    assert stop.is_set()
    assert len(sink.events) >= 200
    # What the source published is exactly the market's own sequence.
    again = SyntheticMarket(SyntheticConfig(symbols=("AAPL", "MSFT"), seed=4))
    expected = [e.id for _ in range(source.ticks) for e in again.tick(T0)]
    assert [e.id for e in sink.events] == expected


def test_a_symbol_the_contract_refuses_is_a_bad_setting_not_a_crash_at_the_first_tick() -> None:
    """TRADEBUS_SYMBOLS=AAPL MSFT (a space for a comma) was accepted, and the
    first tick's QuotePayload refused it: a traceback instead of exit 2. The
    settings refuse it now, for every source."""
    from libs.config import ConfigError, load_settings
    from libs.contract.envelope import WallClock
    from services.marketdata.config import MarketdataSettings
    from services.marketdata.main import build_source

    for bad in ("AAPL MSFT", "AAPL;MSFT", "SPY,T.*"):
        with pytest.raises(ConfigError, match="TRADEBUS_SYMBOLS"):
            load_settings(MarketdataSettings, source="synthetic", symbols=bad)
    with pytest.raises(ValueError, match="'AAPL MSFT'"):
        SyntheticConfig(symbols=("AAPL MSFT",), seed=1)
    ok = build_source(MarketdataSettings(source="synthetic", symbols="aapl,BRK.B"), WallClock())
    assert isinstance(ok, SyntheticSource)
    assert {e.payload.symbol for e in ok.market.tick(T0) + ok.market.tick(T0)} == {"AAPL", "BRK.B"}


class SteppedBackClock:
    """The wall clock, set back a second (NTP, a VM resumed) after 50 readings."""

    def __init__(self) -> None:
        self.readings = 0

    def now_ns(self) -> int:
        self.readings += 1
        back = SECOND_NS if self.readings > 50 else 0
        return T0 + self.readings * 1_000_000 - back


async def test_a_wall_clock_set_back_neither_stops_the_feed_nor_sends_time_back() -> None:
    market = SyntheticMarket(SyntheticConfig(symbols=("AAPL", "MSFT"), seed=4, channels=ALL))
    source = SyntheticSource(market, rate=2000, clock=SteppedBackClock())
    stop = asyncio.Event()
    sink = ListSink(stop_after=400, stop=stop)
    await asyncio.wait_for(source.run(sink, stop), timeout=10)
    assert len(sink.events) >= 400
    stamps = [e.ts_event for e in sink.events if not isinstance(e, BarClosed)]
    assert stamps == sorted(stamps)
