"""The demo source's pure parts: the seeded walk, bars, the order chain, the feed."""

from __future__ import annotations

import os
import uuid
from decimal import Decimal
from itertools import pairwise

import pytest

from libs.config import ConfigError, load_settings
from libs.contract.codec import decode, encode, order_id_for
from libs.contract.envelope import Event
from libs.contract.events import (
    BarClosed,
    FillReceived,
    OrderAccepted,
    OrderIntentCreated,
    RiskDecisionMade,
    SignalGenerated,
    SubmitOrder,
    TradePrinted,
)
from libs.contract.subjects import subject_for
from services.demo.config import DemoSettings
from services.demo.domain.bars import BarBuilder
from services.demo.domain.chain import ChainSpec, build_chain
from services.demo.domain.feed import MINUTE_NS, DemoFeed, FeedConfig, seeded_ids
from services.demo.domain.walk import RandomWalk

SECOND = 1_000_000_000
T0 = 28_333_333 * 60 * SECOND  # on a minute boundary (2023-11-14T22:13Z)
CHAIN_TYPES = [
    SignalGenerated,
    OrderIntentCreated,
    RiskDecisionMade,
    SubmitOrder,
    OrderAccepted,
    FillReceived,
]


def feed(seed: int = 7, *, chain_every_s: int = 5) -> DemoFeed:
    config = FeedConfig(
        symbols=("AAPL", "MSFT", "XYZ"),
        seed=seed,
        chain_every_ns=chain_every_s * SECOND,
        run="t",
    )
    return DemoFeed(config, ids=seeded_ids(seed))


def run(f: DemoFeed, ticks: int, step_ns: int = SECOND // 20) -> list[Event]:
    return [e for i in range(ticks) for e in f.tick(T0 + i * step_ns)]


# -------------------------------------------------------------------- walk


def test_walk_is_determined_by_its_seed() -> None:
    walk_a, walk_b, walk_c = (RandomWalk(["AAPL", "XYZ"], seed=s) for s in (1, 1, 2))
    path_a = [walk_a.step() for _ in range(500)]
    assert path_a == [walk_b.step() for _ in range(500)]
    assert path_a != [walk_c.step() for _ in range(500)]


def test_walk_prices_are_exact_cents_and_positive() -> None:
    walk = RandomWalk(["AAPL", "PENNY"], seed=3, volatility=0.05)
    prints = [walk.step() for _ in range(2000)]
    assert [p.symbol for p in prints[:4]] == ["AAPL", "PENNY", "AAPL", "PENNY"]
    assert [p.sequence for p in prints[:3]] == [1, 2, 3]
    for p in prints:
        assert isinstance(p.price, Decimal)
        assert p.price > 0
        assert p.price == p.price.quantize(Decimal("0.01"))
        assert p.size > 0
    assert walk.price("PENNY") == prints[-1].price


@pytest.mark.parametrize("symbols", [[], ["AAPL", "AAPL"]])
def test_walk_refuses_bad_symbol_lists(symbols: list[str]) -> None:
    with pytest.raises(ValueError, match="symbol"):
        RandomWalk(symbols, seed=1)


# -------------------------------------------------------------------- bars


def test_bar_closes_with_the_first_trade_after_its_minute() -> None:
    bars = BarBuilder("AAPL", MINUTE_NS)
    trades = [("10.00", 100, 0), ("10.50", 100, 10), ("9.50", 200, 30), ("10.20", 100, 59)]
    for price, size, s in trades:
        assert bars.add(Decimal(price), Decimal(size), T0 + s * SECOND) is None
    bar = bars.add(Decimal("11.00"), Decimal(1), T0 + 61 * SECOND)
    assert bar is not None
    assert (bar.start_ns, bar.end_ns) == (T0, T0 + MINUTE_NS)
    assert (bar.open, bar.high, bar.low, bar.close) == (
        Decimal("10.00"),
        Decimal("10.50"),
        Decimal("9.50"),
        Decimal("10.20"),
    )
    assert bar.volume == 500
    assert bar.trades == 4
    # (10*100 + 10.5*100 + 9.5*200 + 10.2*100) / 500
    assert bar.vwap == Decimal("9.9400")
    # The next bar is aligned to its own minute and starts with the 11.00 trade.
    later = bars.add(Decimal("12.00"), Decimal(1), T0 + 200 * SECOND)
    assert later is not None
    assert (later.start_ns, later.open, later.close) == (T0 + MINUTE_NS, Decimal(11), Decimal(11))


# ------------------------------------------------------------------- chain


def test_chain_links_every_event_to_its_parent_and_the_signal() -> None:
    spec = ChainSpec(
        ref="demo-t-1",
        strategy="demo-momentum",
        account="demo-paper",
        symbol="AAPL",
        side="buy",
        quantity=Decimal(25),
        price=Decimal("190.12"),
    )
    chain = build_chain(spec, now_ns=T0, ids=seeded_ids(1))
    events = list(chain.events)
    assert [type(e) for e in events] == CHAIN_TYPES
    signal = chain.signal
    assert signal.causation_id is None
    assert signal.correlation_id == signal.id
    for parent, child in pairwise(events):
        assert child.causation_id == parent.id
        assert child.correlation_id == signal.id
    assert len({e.id for e in events}) == 6
    # The order's own ids agree along the chain.
    order_id = chain.command.payload.order_id
    assert order_id == order_id_for(chain.intent.id)  # the contract's derivation
    assert chain.decision.payload.order_id == order_id
    assert chain.decision.payload.intent_id == chain.intent.id
    assert chain.command.payload.intent_id == chain.intent.id
    assert chain.accepted.payload.order_id == order_id
    assert chain.fill.payload.order_id == order_id
    assert chain.fill.payload.broker_order_id == chain.accepted.payload.broker_order_id
    assert chain.decision.payload.decision == "accepted"
    fill = chain.fill.payload
    assert (fill.quantity, fill.cumulative_quantity, fill.leaves_quantity) == (
        Decimal(25),
        Decimal(25),
        Decimal(0),
    )
    assert (fill.price, fill.status, fill.side) == (Decimal("190.12"), "complete", "buy")
    assert [e.source for e in events] == [
        "demo/strategy-runner",
        "demo/strategy-runner",
        "demo/risk-gate",
        "demo/risk-gate",
        "demo/broker-gateway",
        "demo/broker-gateway",
    ]
    assert subject_for(chain.command) == "orders.cmd.demo-paper"
    assert subject_for(chain.fill) == "broker.fill.demo-paper"


# -------------------------------------------------------------------- feed


def test_feed_is_deterministic_given_seed_ids_and_times() -> None:
    a, b = run(feed(7), 3000), run(feed(7), 3000)
    assert [e.model_dump() for e in a] == [e.model_dump() for e in b]
    other = run(feed(8), 3000)
    prices = [e.payload.price for e in a if isinstance(e, TradePrinted)]
    assert prices != [e.payload.price for e in other if isinstance(e, TradePrinted)]


def test_feed_emits_trades_bars_and_chains_on_schedule() -> None:
    f = feed(chain_every_s=5)
    events = run(f, 3000)  # 150 s at 20 trades/s
    trades = [e for e in events if isinstance(e, TradePrinted)]
    assert len(trades) == 3000
    assert {e.payload.feed for e in trades} == {"demo"}
    assert {e.payload.symbol for e in trades} == {"AAPL", "MSFT", "XYZ"}
    # Minute bars: two complete minutes per symbol closed within 150 s.
    bars = [e for e in events if isinstance(e, BarClosed)]
    assert len(bars) == 6
    assert {(b.payload.symbol, b.payload.start_ns) for b in bars} == {
        (s, T0 + m * MINUTE_NS) for s in ("AAPL", "MSFT", "XYZ") for m in (0, 1)
    }
    assert all(b.ts_event == b.payload.end_ns and b.payload.interval == "1m" for b in bars)
    # A chain with the first tick, then one every 5 s: 0, 5, ..., 145.
    signals = [i for i, e in enumerate(events) if isinstance(e, SignalGenerated)]
    assert len(signals) == f.chains == 30
    assert signals[0] == 1  # right after the first trade
    for i in signals:
        assert [type(e) for e in events[i : i + 6]] == CHAIN_TYPES
    fills = [e for e in events if isinstance(e, FillReceived)]
    assert len({e.payload.broker_order_id for e in fills}) == 30
    assert len({e.id for e in events}) == len(events)


def test_feed_events_are_valid_on_the_wire() -> None:
    for event in run(feed(), 400):
        assert decode(encode(event)) == event
        subject_for(event)


def test_seeded_ids_are_reproducible_uuid4s() -> None:
    a, b = seeded_ids(5), seeded_ids(5)
    ids = [a() for _ in range(100)]
    assert ids == [b() for _ in range(100)]
    assert len(set(ids)) == 100
    assert all(isinstance(i, uuid.UUID) and i.version == 4 for i in ids)


# ---------------------------------------------------------------- settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TRADEBUS_") or name in {"NATS_URL", "DATABASE_URL"}:
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_env")
def test_demo_settings_parse_rates_and_symbols(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load_settings(DemoSettings)
    assert (defaults.demo_rate, defaults.demo_symbols) == (20.0, ("AAPL", "MSFT", "NVDA", "SPY"))
    monkeypatch.setenv("TRADEBUS_DEMO_SYMBOLS", "aapl, spy")
    monkeypatch.setenv("TRADEBUS_DEMO_RATE", "50/s")
    s = load_settings(DemoSettings)
    assert (s.demo_rate, s.demo_symbols) == (50.0, ("AAPL", "SPY"))
    assert load_settings(DemoSettings, demo_rate="5", demo_symbols="TSLA").demo_rate == 5.0
    # A share class, as the contract and the strategies take it (md.trade.BRK~B).
    shares = load_settings(DemoSettings, demo_symbols="brk.b,BRK/A")
    assert shares.demo_symbols == ("BRK.B", "BRK/A")


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TRADEBUS_DEMO_RATE", "0/s"),
        ("TRADEBUS_DEMO_SYMBOLS", "AA PL"),
        ("TRADEBUS_DEMO_SYMBOLS", "AAPL,MD.>"),
        ("TRADEBUS_DEMO_SYMBOLS", ""),
    ],
)
def test_demo_settings_refuse_bad_values(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        load_settings(DemoSettings)


def test_an_option_chain_is_an_option_in_its_intent_and_command() -> None:
    """`tradebus demo --symbols O:...` records chains the audit trail reads as
    the risk-gate would have passed them: an O: symbol is an option."""
    spec = ChainSpec(
        ref="demo-t-2",
        strategy="demo-momentum",
        account="demo-paper",
        symbol="O:SPY241220P00720000",
        side="buy",
        quantity=Decimal(2),
        price=Decimal("5.25"),
    )
    chain = build_chain(spec, now_ns=T0, ids=seeded_ids(1))
    assert chain.intent.payload.asset_class == "option"
    assert chain.command.payload.asset_class == "option"
