"""Option marks from quotes (``services/marketdata/domain/marks.py``): which
quotes make a ``MarkUpdated``, the per-symbol throttle, and its settings."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from decimal import Decimal
from itertools import count
from typing import Literal

import pytest

from libs.bus.errors import PublishFailed
from libs.config import ConfigError, load_settings
from libs.contract.codec import decode, derived_id, encode
from libs.contract.envelope import Event
from libs.contract.events import (
    FeedStatusChanged,
    FeedStatusPayload,
    MarkUpdated,
    QuotePayload,
    QuoteUpdated,
    TradePayload,
    TradePrinted,
)
from libs.contract.subjects import subject_for
from services.marketdata.config import MarketdataSettings
from services.marketdata.domain.marks import FEED_LOST, MarkPolicy, OptionMarks, midpoint
from services.marketdata.feed import EventSink
from services.marketdata.main import flush_every_s, run_source
from services.marketdata.sink import JetStreamSink

D = Decimal
MS = 1_000_000
S = 1_000_000_000
T0 = 1_773_154_800 * S
OPTION = "O:SPY241220P00720000"
OTHER = "O:SPY241220C00600000"
#: A contract of a class quoted in nickels under $3 (SPY's trade in pennies at every price).
NICKEL = "O:AAPL241220C00100000"
POLICY = MarkPolicy(min_interval_ns=S, min_change=D("0.01"), refresh_ns=30 * S)
_seq = count(1)


class At:
    def __init__(self, ns: int) -> None:
        self.ns = ns

    def now_ns(self) -> int:
        return self.ns


def quote(
    symbol: str,
    bid: str,
    ask: str,
    t: int = T0,
    *,
    bid_size: str = "5",
    ask_size: str = "7",
    seen: int | None = None,
    feed: Literal["polygon", "synthetic"] = "polygon",
) -> QuoteUpdated:
    """A quote at exchange time ``t``, made (``ts_init``) at ``seen`` (``t`` + 1 ms)."""
    event = QuoteUpdated.create(
        QuotePayload(
            symbol=symbol,
            bid_price=D(bid),
            bid_size=D(bid_size),
            ask_price=D(ask),
            ask_size=D(ask_size),
            sequence=next(_seq),
            feed=feed,
        ),
        source="marketdata/test",
        clock=At(seen if seen is not None else t + MS),
        ts_event=t,
    )
    return event


def due(marks: OptionMarks, now: int) -> list[MarkUpdated]:
    """The marks that fall due at ``now``."""
    made = marks.due(now).events
    assert all(isinstance(m, MarkUpdated) for m in made)
    return [m for m in made if isinstance(m, MarkUpdated)]


def status(
    name: str,
    feed: Literal["polygon", "synthetic"] = "polygon",
    market: Literal["stocks", "options"] | None = None,
) -> FeedStatusChanged:
    return FeedStatusChanged.create(
        FeedStatusPayload.model_validate(
            {"feed": feed, "status": name, "message": "options: x", "market": market}
        ),
        source="marketdata/test",
        clock=At(T0),
    )


def trade(symbol: str, price: str, t: int = T0) -> TradePrinted:
    return TradePrinted.create(
        TradePayload(symbol=symbol, price=D(price), size=D(1), feed="polygon"),
        source="marketdata/test",
        clock=At(t),
    )


def test_an_option_quote_makes_a_mark_at_its_midpoint_and_an_equity_quote_none() -> None:
    marks = OptionMarks(POLICY)
    q = quote(OPTION, "9.71", "9.81")
    m = marks.on_quote(q)
    assert isinstance(m, MarkUpdated)
    p = m.payload
    assert (p.symbol, p.price, p.bid_price, p.ask_price) == (
        OPTION,
        D("9.76"),
        D("9.71"),
        D("9.81"),
    )
    assert (p.basis, p.feed) == ("quote_mid", "polygon")
    # What it came from: the quote, by its id and its time; made when the quote was.
    assert (m.causation_id, m.correlation_id) == (q.id, q.correlation_id)
    assert (m.ts_event, m.ts_init, m.source) == (q.ts_event, q.ts_init, q.source)
    assert m.id == derived_id("marketdata", "mark", q.id)
    assert subject_for(m) == f"md.mark.{OPTION}"
    assert decode(encode(m)) == m

    batch: list[Event] = [quote("AAPL", "190.15", "190.17"), trade("AAPL", "190.16")]
    marked = marks.with_marks(batch)
    assert marked.events is batch, "no option quote: the batch goes out as it came"
    assert (marked.marks, dict(marked.skipped)) == (0, {})


def test_each_mark_follows_its_quote_in_the_batch() -> None:
    marks = OptionMarks(POLICY)
    equity = quote("AAPL", "190.15", "190.17")
    a, b = quote(OPTION, "9.71", "9.81"), quote(OTHER, "1.00", "1.10")
    t = trade(OPTION, "9.75")
    marked = marks.with_marks([equity, a, t, b])
    assert [type(e).__name__ for e in marked.events] == [
        "QuoteUpdated",
        "QuoteUpdated",
        "MarkUpdated",
        "TradePrinted",
        "QuoteUpdated",
        "MarkUpdated",
    ]
    assert [e.causation_id for e in marked.events if isinstance(e, MarkUpdated)] == [a.id, b.id]
    assert marked.marks == 2


@pytest.mark.parametrize(
    ("bid", "ask", "sizes", "reason"),
    [
        ("0", "0.05", ("5", "7"), "one_sided"),  # no bid (a far out-of-the-money put)
        ("1.00", "0", ("5", "7"), "one_sided"),  # no ask
        ("1.00", "1.10", ("0", "7"), "one_sided"),  # a bid of zero size
        ("1.00", "1.10", ("5", "0"), "one_sided"),
        ("1.10", "1.00", ("5", "7"), "crossed"),
    ],
)
def test_a_one_sided_or_crossed_quote_makes_no_mark(
    bid: str, ask: str, sizes: tuple[str, str], reason: str
) -> None:
    marks = OptionMarks(POLICY)
    q = quote(OPTION, bid, ask, bid_size=sizes[0], ask_size=sizes[1])
    assert marks.on_quote(q) == reason
    marked = marks.with_marks([quote(OPTION, bid, ask, bid_size=sizes[0], ask_size=sizes[1])])
    assert (marked.marks, dict(marked.skipped)) == (0, {reason: 1})
    # Nothing was taken for a mark: the next good quote is the symbol's first.
    assert isinstance(marks.on_quote(quote(OPTION, "1.00", "1.10", T0 + MS)), MarkUpdated)


def test_a_locked_quote_is_a_mark_at_its_price() -> None:
    m = OptionMarks(POLICY).on_quote(quote(OPTION, "2.05", "2.05"))
    assert isinstance(m, MarkUpdated)
    assert m.payload.price == D("2.05")


def test_within_the_interval_the_newest_quote_is_held_and_marked_when_it_ends() -> None:
    marks = OptionMarks(POLICY)
    first = marks.on_quote(quote(OPTION, "2.00", "2.10", T0))
    assert isinstance(first, MarkUpdated)
    # A burst within the second: held back, the newest replacing the older.
    assert marks.on_quote(quote(OPTION, "2.20", "2.30", T0 + 200 * MS)) == "throttled"
    last = quote(OPTION, "2.40", "2.50", T0 + 400 * MS)
    assert marks.on_quote(last) == "throttled"
    assert marks.held == 1
    assert due(marks, T0 + 999 * MS) == []
    [held] = due(marks, T0 + S)
    # The last quote of the burst, at its own (market) time, made now.
    assert (held.payload.price, held.causation_id) == (D("2.45"), last.id)
    assert (held.ts_event, held.ts_init) == (last.ts_event, T0 + S)
    assert held.id == derived_id("marketdata", "mark", last.id)
    assert (marks.held, due(marks, T0 + 10 * S)) == (0, [])
    # The next interval runs from the end of this one (the held mark's slot),
    # not from its quote's time: one mark per second, however they come.
    assert marks.on_quote(quote(OPTION, "2.60", "2.70", T0 + 1999 * MS)) == "throttled"
    assert isinstance(marks.on_quote(quote(OPTION, "2.60", "2.70", T0 + 2 * S)), MarkUpdated)


def test_a_busy_contract_gets_one_mark_per_interval() -> None:
    """Quotes every 10 ms for 10 s, each a new price, the due marks looked at
    every 10 ms: 10 marks, one per second, each the newest quote then."""
    marks = OptionMarks(POLICY)
    made: list[MarkUpdated] = []
    for k in range(1000):
        t = T0 + k * 10 * MS
        made += due(marks, t)
        bid = D("2.00") + D("0.01") * k
        m = marks.on_quote(quote(OPTION, str(bid), str(bid + D("0.10")), t))
        if isinstance(m, MarkUpdated):
            made.append(m)
    made += due(marks, T0 + 10 * S)
    assert len(made) == 11  # at 0, 1, ..., 10 s
    assert [m.ts_init for m in made[1:]] == [T0 + k * S for k in range(1, 11)]
    assert all(m.ts_event == m.ts_init - 10 * MS for m in made[1:]), "the newest held"


def test_a_quote_after_the_interval_is_a_mark_at_once() -> None:
    marks = OptionMarks(POLICY)
    marks.on_quote(quote(OPTION, "2.00", "2.10", T0))
    assert marks.on_quote(quote(OPTION, "2.20", "2.30", T0 + 500 * MS)) == "throttled"
    m = marks.on_quote(quote(OPTION, "2.30", "2.40", T0 + S))
    assert isinstance(m, MarkUpdated)
    assert m.payload.price == D("2.35")
    assert marks.held == 0, "the held quote is older than the mark: dropped"
    assert due(marks, T0 + 5 * S) == []


def test_symbols_are_throttled_apart() -> None:
    marks = OptionMarks(POLICY)
    assert isinstance(marks.on_quote(quote(OPTION, "2.00", "2.10", T0)), MarkUpdated)
    assert isinstance(marks.on_quote(quote(OTHER, "5.00", "5.10", T0 + MS)), MarkUpdated)


def test_an_unchanged_midpoint_is_no_mark_until_the_refresh() -> None:
    marks = OptionMarks(POLICY)
    marks.on_quote(quote(OPTION, "10.00", "10.20", T0))  # 10.10
    # Within 1 % of 10.10 (a size change, a wider spread around the same mid).
    assert marks.on_quote(quote(OPTION, "10.00", "10.20", T0 + 2 * S)) == "unchanged"
    assert marks.on_quote(quote(OPTION, "9.95", "10.30", T0 + 3 * S)) == "unchanged"
    assert due(marks, T0 + 29 * S) == []
    refreshed = marks.on_quote(quote(OPTION, "10.00", "10.20", T0 + 30 * S))
    assert isinstance(refreshed, MarkUpdated)
    assert refreshed.ts_event == T0 + 30 * S
    # A move of 1 % or more is a mark (once the interval has passed).
    assert marks.on_quote(quote(OPTION, "10.09", "10.29", T0 + 31 * S)) == "unchanged"  # 0.99 %
    assert isinstance(marks.on_quote(quote(OPTION, "10.11", "10.31", T0 + 32 * S)), MarkUpdated)


def test_a_quote_back_at_the_mark_or_unmarkable_drops_the_held_one() -> None:
    marks = OptionMarks(POLICY)
    marks.on_quote(quote(OPTION, "2.00", "2.10", T0))  # 2.05
    assert marks.on_quote(quote(OPTION, "2.40", "2.50", T0 + 100 * MS)) == "throttled"
    assert marks.on_quote(quote(OPTION, "2.00", "2.10", T0 + 200 * MS)) == "unchanged"
    assert due(marks, T0 + 2 * S) == [], "the market is back where the mark says"
    marks.on_quote(quote(OPTION, "2.40", "2.50", T0 + 2100 * MS))  # a mark at 2.45
    assert marks.on_quote(quote(OPTION, "3.00", "3.10", T0 + 2200 * MS)) == "throttled"
    assert marks.on_quote(quote(OPTION, "0", "3.10", T0 + 2300 * MS)) == "one_sided"
    assert due(marks, T0 + 5 * S) == [], "the held quote is no longer the market"


def test_a_quote_older_than_the_last_mark_makes_none() -> None:
    marks = OptionMarks(POLICY)
    marks.on_quote(quote(OPTION, "2.00", "2.10", T0))
    assert marks.on_quote(quote(OPTION, "3.00", "3.10", T0 - S)) == "out_of_order"


def test_the_same_quote_twice_makes_the_same_mark() -> None:
    """A reconnect can hand the same quote over again: it makes the same mark
    id (JetStream keeps one), or none."""
    q = quote(OPTION, "2.00", "2.10")
    a, b = OptionMarks(POLICY).on_quote(q), OptionMarks(POLICY).on_quote(q)
    assert isinstance(a, MarkUpdated)
    assert a == b
    no_interval = OptionMarks(MarkPolicy(min_interval_ns=0, min_change=D(0), refresh_ns=S))
    assert isinstance(no_interval.on_quote(q), MarkUpdated)
    again = no_interval.on_quote(q)
    assert isinstance(again, MarkUpdated)
    assert again.id == a.id


def test_with_no_interval_and_no_change_every_good_quote_is_a_mark() -> None:
    marks = OptionMarks(
        MarkPolicy(min_interval_ns=0, min_change=D(0), refresh_ns=0, max_standing_ns=0)
    )
    quotes = [quote(OPTION, "2.00", "2.10", T0 + k * MS) for k in range(5)]
    marked = marks.with_marks(quotes)
    assert marked.marks == 5
    assert len(marked.events) == 10


@pytest.mark.parametrize(
    ("bid", "ask", "mid"),
    [
        ("9.71", "9.81", "9.76"),
        ("0.05", "0.10", "0.075"),
        ("1", "2", "1.5"),
        # A 13th place is rounded (half even) to the contract's 12, within the quote.
        ("0.000000000001", "0.000000000002", "0.000000000002"),
        ("0.000000000002", "0.000000000003", "0.000000000002"),
    ],
)
def test_midpoint_is_exact_to_the_contracts_places(bid: str, ask: str, mid: str) -> None:
    got = midpoint(D(bid), D(ask))
    assert got == D(mid)
    assert D(bid) <= got <= D(ask)
    # (Some of these spreads are wider than the default limit: not the point here.)
    m = OptionMarks(replace(POLICY, max_spread=D(0))).on_quote(quote(OPTION, bid, ask))
    assert isinstance(m, MarkUpdated)
    assert m.payload.price == D(mid)


@pytest.mark.parametrize(
    ("bid", "ask", "wide"),
    [
        ("0.05", "5.00", True),  # a midpoint of 2.525 that is no price
        ("0.74", "1.26", True),  # 0.52 > 0.5 x 1.00
        ("0.75", "1.25", False),  # 0.50: at the limit is not wider than it
        ("2.50", "2.55", False),
        ("2.05", "2.05", False),  # locked
    ],
)
def test_a_quote_wider_than_the_max_spread_makes_no_mark(bid: str, ask: str, wide: bool) -> None:
    marks = OptionMarks(POLICY)  # max_spread 0.5 (the default): half the midpoint
    marked = marks.with_marks([quote(OPTION, bid, ask)])
    if wide:
        assert (marked.marks, dict(marked.skipped)) == (0, {"wide_spread": 1})
    else:
        assert (marked.marks, dict(marked.skipped)) == (1, {})
    # 0: no limit.
    assert isinstance(
        OptionMarks(replace(POLICY, max_spread=D(0))).on_quote(quote(OPTION, bid, ask)),
        MarkUpdated,
    )


@pytest.mark.parametrize(
    ("symbol", "bid", "ask", "wide"),
    [
        # Cheap contracts quoted a tick or two wide: wide by the relative limit
        # (0.05 x 0.10 is 67 % of its 0.075 midpoint), but the market can quote
        # them no narrower, and they are marked.
        (NICKEL, "0.05", "0.10", False),  # one nickel
        (NICKEL, "0.05", "0.15", False),  # two nickels: 100 % of 0.10
        (NICKEL, "0.01", "0.02", False),  # one penny
        (NICKEL, "0.01", "0.03", False),  # two pennies
        (NICKEL, "0.10", "0.20", False),  # two nickels (on the dime grid, but under $3 no tick is)
        # Three ticks and more are wide: the tick is the coarsest grid both prices are on.
        (NICKEL, "0.05", "0.20", True),  # three nickels: 0.15 > 0.10 and > 0.0625
        (NICKEL, "0.01", "0.04", True),  # three pennies
        (NICKEL, "0.02", "0.10", True),  # quoted in pennies (0.02 is no nickel): eight of them
        # From $3 the coarsest tick is a dime; there the relative limit is the wider anyway.
        (NICKEL, "3.00", "3.20", False),
        # The contract's largest prices, wide: no overflow finding their tick.
        (NICKEL, "0.000000000001", "9" * 26 + ".999999999999", True),
        # SPY's, QQQ's and IWM's contracts trade in pennies at every price (as
        # the gate counts them): a quote on the nickel grid is as many pennies wide.
        (OPTION, "0.05", "0.10", True),  # five pennies: 67 % of 0.075
        (OPTION, "0.05", "0.15", True),  # ten pennies
        (OPTION, "0.05", "0.07", False),  # two pennies
        (OPTION, "0.01", "0.04", True),  # three pennies
        ("O:QQQ241220C00500000", "0.05", "0.10", True),
        ("O:IWM241220C00200000", "0.05", "0.07", False),
        (OPTION, "3.00", "3.20", False),  # the relative limit, wider from $3
        # An adjusted SPY contract (its own root) is no penny class that we know of.
        ("O:SPY1241220P00720000", "0.05", "0.15", False),
    ],
)
def test_a_quote_a_tick_or_two_wide_is_a_mark_whatever_its_relative_spread(
    symbol: str, bid: str, ask: str, wide: bool
) -> None:
    marks = OptionMarks(POLICY)  # max_spread 0.5 and max_spread_ticks 2 (the defaults)
    marked = marks.with_marks([quote(symbol, bid, ask)])
    if wide:
        assert (marked.marks, dict(marked.skipped)) == (0, {"wide_spread": 1})
    else:
        assert (marked.marks, dict(marked.skipped)) == (1, {})
        mark = marked.events[1]
        assert isinstance(mark, MarkUpdated)
        assert mark.payload.price == midpoint(D(bid), D(ask))


def test_the_ticks_allowed_are_a_setting_of_the_policy() -> None:
    one = replace(POLICY, max_spread_ticks=1)
    assert isinstance(OptionMarks(one).on_quote(quote(NICKEL, "0.05", "0.10")), MarkUpdated)
    assert OptionMarks(one).on_quote(quote(NICKEL, "0.05", "0.15")) == "wide_spread"
    # 0: the relative limit alone, as before.
    none = replace(POLICY, max_spread_ticks=0)
    assert OptionMarks(none).on_quote(quote(NICKEL, "0.05", "0.10")) == "wide_spread"
    # No relative limit is no limit at all, ticks or not.
    off = replace(POLICY, max_spread=D(0), max_spread_ticks=0)
    assert isinstance(OptionMarks(off).on_quote(quote(OPTION, "0.05", "4.00")), MarkUpdated)


def test_a_wide_quote_drops_the_held_and_the_standing_quote() -> None:
    """A wide quote is the market now: the quote held back and the standing one
    are no longer what it quotes; the last mark stays and ages."""
    marks = OptionMarks(STANDING)
    marks.on_quote(quote(OPTION, "2.50", "2.55", T0))
    assert marks.on_quote(quote(OPTION, "2.70", "2.75", T0 + 100 * MS)) == "throttled"
    assert marks.on_quote(quote(OPTION, "0.05", "5.00", T0 + 200 * MS)) == "wide_spread"
    assert (marks.held, marks.standing) == (0, 0)
    assert due(marks, T0 + 2 * S) == due(marks, T0 + 60 * S) == []
    # A late wide quote (older than the last mark's) is out of order, and ends nothing.
    marks.on_quote(quote(OPTION, "2.60", "2.65", T0 + 3 * S))
    assert marks.on_quote(quote(OPTION, "0.05", "5.00", T0 + 2 * S)) == "out_of_order"
    assert marks.standing == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_interval_ns": -1}, "negative"),
        ({"min_change": D(1)}, "min_change"),
        ({"min_change": D("-0.1")}, "min_change"),
        ({"min_interval_ns": 2 * S, "refresh_ns": S}, "shorter"),
        ({"max_standing_ns": -1}, "negative"),
        ({"max_spread": D(2)}, "max_spread"),
        ({"max_spread": D("-0.1")}, "max_spread"),
        ({"max_spread_ticks": -1}, "max_spread_ticks"),
        ({"refresh_ns": 30 * S, "max_standing_ns": 29 * S}, "would ever be re-marked"),
        ({"min_interval_ns": 0, "refresh_ns": 0, "max_standing_ns": S}, "need a refresh_ns"),
    ],
)
def test_a_policy_that_makes_no_sense_is_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MarkPolicy(**kwargs)  # type: ignore[arg-type]


def test_settings_give_the_policy_and_name_the_offending_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = load_settings(MarketdataSettings).mark_policy()
    assert defaults == MarkPolicy(
        min_interval_ns=S,
        min_change=D("0.001"),
        refresh_ns=30 * S,
        max_standing_ns=300 * S,
        max_spread=D("0.5"),
        max_spread_ticks=2,
    )
    monkeypatch.setenv("TRADEBUS_MARK_MIN_INTERVAL_S", "0.25")
    monkeypatch.setenv("TRADEBUS_MARK_MIN_CHANGE", "0.02")
    monkeypatch.setenv("TRADEBUS_MARK_REFRESH_S", "5")
    monkeypatch.setenv("TRADEBUS_MARK_MAX_STANDING_S", "60")
    monkeypatch.setenv("TRADEBUS_MARK_MAX_SPREAD", "0.25")
    monkeypatch.setenv("TRADEBUS_MARK_MAX_SPREAD_TICKS", "1")
    assert load_settings(MarketdataSettings).mark_policy() == MarkPolicy(
        min_interval_ns=S // 4,
        min_change=D("0.02"),
        refresh_ns=5 * S,
        max_standing_ns=60 * S,
        max_spread=D("0.25"),
        max_spread_ticks=1,
    )
    monkeypatch.setenv("TRADEBUS_MARK_MAX_SPREAD", "0")
    assert load_settings(MarketdataSettings).mark_policy().max_spread == 0
    for name, value, says in (
        ("TRADEBUS_MARK_REFRESH_S", "0.1", "shorter than TRADEBUS_MARK_MIN_INTERVAL_S"),
        ("TRADEBUS_MARK_MAX_STANDING_S", "4", "shorter than TRADEBUS_MARK_REFRESH_S"),
        ("TRADEBUS_MARK_MAX_STANDING_S", "-1", "greater than or equal to 0"),
        ("TRADEBUS_MARK_MAX_STANDING_S", "100000", "less than or equal to 86400"),
        ("TRADEBUS_MARK_MAX_SPREAD", "2", "less than 2"),
        ("TRADEBUS_MARK_MAX_SPREAD", "-0.5", "greater than or equal to 0"),
        ("TRADEBUS_MARK_MAX_SPREAD", "inf", "finite"),
        ("TRADEBUS_MARK_MAX_SPREAD_TICKS", "-1", "greater than or equal to 0"),
        ("TRADEBUS_MARK_MAX_SPREAD_TICKS", "1.5", "integer"),
        ("TRADEBUS_MARK_MAX_SPREAD_TICKS", "two", "integer"),
        ("TRADEBUS_MARK_MAX_SPREAD_TICKS", "101", "less than or equal to 100"),
        ("TRADEBUS_MARK_MIN_CHANGE", "1.5", "less than 1"),
        ("TRADEBUS_MARK_MIN_CHANGE", "NaN", "finite"),
        ("TRADEBUS_MARK_MIN_INTERVAL_S", "-1", "greater than or equal to 0"),
    ):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            with pytest.raises(ConfigError) as info:
                load_settings(MarketdataSettings)
        assert f"{name}: " in str(info.value), info.value
        assert says in str(info.value), info.value
    # Above 0 but less than a nanosecond: refused here, naming the variable,
    # not by MarkPolicy (a ValueError) once the service has connected.
    with monkeypatch.context() as m:
        m.setenv("TRADEBUS_MARK_MIN_INTERVAL_S", "0")
        m.setenv("TRADEBUS_MARK_REFRESH_S", "1e-12")
        with pytest.raises(ConfigError, match="TRADEBUS_MARK_REFRESH_S: "):
            load_settings(MarketdataSettings).mark_policy()


def test_ids_are_never_reused_across_quotes() -> None:
    marks = OptionMarks(
        MarkPolicy(min_interval_ns=0, min_change=D(0), refresh_ns=0, max_standing_ns=0)
    )
    made = [marks.on_quote(quote(OPTION, "2.00", "2.10", T0 + k)) for k in range(50)]
    ids = {m.id for m in made if isinstance(m, MarkUpdated)}
    assert len(ids) == 50
    assert all(isinstance(i, uuid.UUID) for i in ids)


# ------------------------------------------------------------ standing quotes

STANDING = MarkPolicy(
    min_interval_ns=S, min_change=D("0.01"), refresh_ns=30 * S, max_standing_ns=90 * S
)


def test_a_standing_quote_is_re_marked_every_refresh_at_the_time_it_is_made() -> None:
    """Polygon sends nothing while the quote does not change: the quote still
    stands, so it is marked again once the refresh has passed since the last
    mark, at the time the re-mark is made, naming the same quote."""
    marks = OptionMarks(STANDING)
    q = quote(OPTION, "2.50", "2.55", T0)
    first = marks.on_quote(q)
    assert isinstance(first, MarkUpdated)
    assert marks.standing == 1
    assert due(marks, T0 + 29 * S) == []
    at = T0 + 30 * S + 7 * MS  # the flusher looks a little after it falls due
    [again] = due(marks, at)
    p = again.payload
    assert (p.symbol, p.price, p.bid_price, p.ask_price) == (
        OPTION,
        D("2.525"),
        D("2.50"),
        D("2.55"),
    )
    assert (again.causation_id, again.correlation_id) == (q.id, q.correlation_id)
    assert (again.ts_event, again.ts_init) == (at, at), "this quote stood at this time"
    assert again.id == derived_id("marketdata", "mark", q.id, "stood", 1)
    assert decode(encode(again)) == again
    # The next one a refresh after this one, not after the quote.
    assert due(marks, T0 + 60 * S) == []
    [third] = due(marks, at + 30 * S)
    assert third.id == derived_id("marketdata", "mark", q.id, "stood", 2)
    assert len({first.id, again.id, third.id}) == 3
    done = marks.due(at + 31 * S)
    assert (done.marks, done.remarks) == (0, 0)


def test_re_marks_stop_after_the_longest_standing_and_a_new_quote_starts_again() -> None:
    marks = OptionMarks(STANDING)  # 30 s refresh, 90 s at most
    marks.on_quote(quote(OPTION, "2.50", "2.55", T0))
    made = [m.ts_event for t in range(1, 200) for m in due(marks, T0 + t * S)]
    assert made == [T0 + 30 * S, T0 + 60 * S, T0 + 90 * S]
    assert marks.standing == 0
    ended = OptionMarks(STANDING)
    ended.on_quote(quote(OPTION, "2.50", "2.55", T0))
    assert dict(ended.due(T0 + 91 * S).ended) == {"max_standing": 1}
    # The market quotes it again: a mark, and it stands again.
    fresh = quote(OPTION, "2.60", "2.65", T0 + 200 * S)
    assert isinstance(marks.on_quote(fresh), MarkUpdated)
    [again] = due(marks, T0 + 230 * S)
    assert again.causation_id == fresh.id


def test_the_newest_quote_stands_even_when_it_made_no_mark() -> None:
    """A quote whose midpoint did not move (a new bid and ask around the same
    mid) is the market's quote now: it is the one re-marked, and the standing
    time runs from it."""
    marks = OptionMarks(STANDING)
    marks.on_quote(quote(OPTION, "10.00", "10.20", T0))
    due(marks, T0 + 30 * S)
    newer = quote(OPTION, "9.95", "10.25", T0 + 50 * S)
    assert marks.on_quote(newer) == "unchanged"
    [again] = due(marks, T0 + 60 * S)
    assert (again.causation_id, again.payload.bid_price, again.payload.ask_price) == (
        newer.id,
        D("9.95"),
        D("10.25"),
    )
    assert again.id == derived_id("marketdata", "mark", newer.id, "stood", 0)
    # Up to 90 s from the newer quote, not from the first one.
    made = [m.ts_event for t in range(61, 200) for m in due(marks, T0 + t * S)]
    assert made == [T0 + 90 * S, T0 + 120 * S]
    assert marks.standing == 0


@pytest.mark.parametrize(("bid", "ask"), [("0", "2.55"), ("2.60", "2.50")])
def test_a_one_sided_or_crossed_quote_ends_the_standing(bid: str, ask: str) -> None:
    marks = OptionMarks(STANDING)
    marks.on_quote(quote(OPTION, "2.50", "2.55", T0))
    assert isinstance(marks.on_quote(quote(OPTION, bid, ask, T0 + 5 * S)), str)
    assert (marks.standing, due(marks, T0 + 60 * S)) == (0, [])


@pytest.mark.parametrize(("bid", "ask"), [("0", "2.55"), ("2.60", "2.50")])
def test_a_late_one_sided_or_crossed_quote_ends_nothing(bid: str, ask: str) -> None:
    """A one-sided or crossed quote older than the last mark is out of order, as
    a late wide one is: the newer quotes held back and standing are still the
    market (it used to drop them, as a current one-sided quote does)."""
    marks = OptionMarks(STANDING)
    marks.on_quote(quote(OPTION, "2.50", "2.55", T0 + 3 * S))
    assert marks.on_quote(quote(OPTION, "2.70", "2.75", T0 + 3100 * MS)) == "throttled"
    assert marks.on_quote(quote(OPTION, bid, ask, T0 + 2 * S)) == "out_of_order"
    assert (marks.held, marks.standing) == (1, 1)
    [held] = due(marks, T0 + 5 * S)
    assert held.payload.price == D("2.725")


@pytest.mark.parametrize(("bid", "ask"), [("2.90", "2.95"), ("0", "2.95"), ("2.60", "2.50")])
def test_a_quote_older_than_the_held_or_standing_one_changes_nothing(bid: str, ask: str) -> None:
    """A quote newer than the last mark but older than the quote held back (or
    standing) is late too: it must neither replace the newer quote, whose mark
    would then be a price the market had already left, nor end it."""
    marks = OptionMarks(STANDING)
    marks.on_quote(quote(OPTION, "2.50", "2.55", T0))
    newer = quote(OPTION, "2.70", "2.75", T0 + 500 * MS)
    assert marks.on_quote(newer) == "throttled"
    assert marks.on_quote(quote(OPTION, bid, ask, T0 + 300 * MS)) == "out_of_order"
    assert (marks.held, marks.standing) == (1, 1)
    [held] = due(marks, T0 + S)
    assert (held.causation_id, held.payload.price) == (newer.id, D("2.725"))
    # A standing quote that made no mark (unchanged) is the market too.
    unchanged = quote(OPTION, "2.70", "2.75", T0 + 5 * S)
    assert marks.on_quote(unchanged) == "unchanged"
    assert marks.on_quote(quote(OPTION, bid, ask, T0 + 4 * S)) == "out_of_order"
    [remark] = due(marks, T0 + 31 * S)
    assert remark.causation_id == unchanged.id


@pytest.mark.parametrize("lost", sorted(FEED_LOST))
def test_a_disconnect_or_a_gap_of_the_feed_ends_the_standing(lost: str) -> None:
    marks = OptionMarks(STANDING)
    other = quote(OTHER, "1.00", "1.10", T0, feed="synthetic")
    marks.with_marks([quote(OPTION, "2.50", "2.55", T0), other])
    assert marks.standing == 2
    lost_status = status(lost)
    marked = marks.with_marks([lost_status])
    assert (list(marked.events), marked.marks) == ([lost_status], 0)
    assert dict(marked.ended) == {"feed_lost": 1}
    # The other feed's quote still stands; the lost feed's is not re-marked.
    assert [m.causation_id for m in due(marks, T0 + 30 * S)] == [other.id]


@pytest.mark.parametrize("lost", sorted(FEED_LOST))
def test_a_loss_of_the_stocks_connection_leaves_the_option_quotes_standing(lost: str) -> None:
    """Polygon's stocks and options are separate connections: what the stocks
    one lost is no option quote; the options one's loss ends them."""
    marks = OptionMarks(STANDING)
    marks.with_marks([quote(OPTION, "2.50", "2.55", T0)])
    stocks_lost = status(lost, market="stocks")
    marked = marks.with_marks([stocks_lost])
    assert (list(marked.events), dict(marked.ended)) == ([stocks_lost], {})
    assert marks.standing == 1
    assert marks.with_marks([status(lost, market="options")]).ended == {"feed_lost": 1}
    assert due(marks, T0 + 30 * S) == []


@pytest.mark.parametrize("kept", ["connected", "authenticated", "subscribed", "stale", "recovered"])
def test_a_status_that_loses_nothing_keeps_the_quote_standing(kept: str) -> None:
    """``stale`` too: the connection is up, and silence is what an unchanged
    quote looks like (a dead connection is a disconnect)."""
    marks = OptionMarks(STANDING)
    marks.with_marks([quote(OPTION, "2.50", "2.55", T0), status(kept)])
    assert len(due(marks, T0 + 30 * S)) == 1


def test_a_quote_from_before_a_re_mark_reaching_us_after_it_is_marked_at_its_time() -> None:
    """The re-mark said the old quote still stood at 30 s; a new quote made at
    29.995 s and received after it must not be ignored as older by the gate:
    its mark takes the re-mark's time (the later in the stream wins a tie)."""
    marks = OptionMarks(STANDING)
    marks.on_quote(quote(OPTION, "2.50", "2.55", T0))
    [remark] = due(marks, T0 + 30 * S)
    late = quote(OPTION, "2.70", "2.75", T0 + 30 * S - 5 * MS)
    assert marks.on_quote(late) == "throttled"  # the re-mark took the interval's slot
    [mark] = due(marks, T0 + 31 * S)
    assert (mark.causation_id, mark.payload.price) == (late.id, D("2.725"))
    assert mark.ts_event == remark.ts_event == T0 + 30 * S
    # Made at once (no interval) it is the same.
    at_once = OptionMarks(MarkPolicy(min_interval_ns=0, min_change=D("0.01"), refresh_ns=30 * S))
    at_once.on_quote(quote(OPTION, "2.50", "2.55", T0))
    due(at_once, T0 + 30 * S)
    m = at_once.on_quote(quote(OPTION, "2.70", "2.75", T0 + 30 * S - 5 * MS))
    assert isinstance(m, MarkUpdated)
    assert m.ts_event == T0 + 30 * S
    # A quote made after the re-mark keeps its own time.
    m = at_once.on_quote(quote(OPTION, "2.90", "2.95", T0 + 31 * S))
    assert isinstance(m, MarkUpdated)
    assert m.ts_event == T0 + 31 * S


def test_a_held_quote_is_marked_before_a_re_mark_and_not_re_marked_with_it() -> None:
    marks = OptionMarks(STANDING)
    marks.on_quote(quote(OPTION, "2.50", "2.55", T0))
    due(marks, T0 + 30 * S)  # a re-mark, slot 30 s
    held = quote(OPTION, "2.70", "2.75", T0 + 30 * S + 200 * MS)
    assert marks.on_quote(held) == "throttled"
    # A look as late as the held quote's slot (31 s) plus the refresh finds
    # both due: the held quote is marked, and not re-marked in the same look.
    [mark] = due(marks, T0 + 61 * S)
    assert (mark.causation_id, mark.id) == (held.id, derived_id("marketdata", "mark", held.id))
    [again] = due(marks, T0 + 62 * S)
    assert again.causation_id == held.id
    assert again.id == derived_id("marketdata", "mark", held.id, "stood", 1)


def test_re_mark_ids_are_the_same_after_a_restart_and_new_after_a_reconnect() -> None:
    """A restart (a new OptionMarks) that sees the same quote stand in the same
    refresh period makes the same re-mark, stored once; within one process a
    quote seen again after a disconnect gets re-marks with ids of their own."""
    q = quote(OPTION, "2.50", "2.55", T0)
    a, b = OptionMarks(STANDING), OptionMarks(STANDING)
    a.on_quote(q)
    b.on_quote(q)
    [ra] = due(a, T0 + 30 * S)
    [rb] = due(b, T0 + 31 * S)
    assert ra.id == rb.id
    assert ra.ts_event != rb.ts_event
    made = {ra.id}
    a.with_marks([status("disconnected")])
    assert due(a, T0 + 61 * S) == []
    a.on_quote(q)  # the same quote handed over again after the reconnect
    for t in (65, 80):
        made |= {m.id for m in due(a, T0 + t * S)}
    assert len(made) == 2, "the re-mark at 65 s is in period 2, new"


def test_without_re_marks_nothing_stands() -> None:
    marks = OptionMarks(MarkPolicy(refresh_ns=30 * S, max_standing_ns=0))
    marks.on_quote(quote(OPTION, "2.50", "2.55", T0))
    assert (marks.standing, due(marks, T0 + 30 * S)) == (0, [])


class FlushSink:
    """What run_source needs of the sink: its marks and publish_due."""

    def __init__(self, fail: bool = False, policy: MarkPolicy = POLICY) -> None:
        self.marks = OptionMarks(policy)
        self.fail = fail
        self.flushes = 0
        self.flushed = asyncio.Event()

    async def publish(self, events: object) -> None:
        raise AssertionError("not called here")

    async def publish_due(self, now_ns: int, *, final: bool = False) -> int:
        self.flushes += 1
        self.flushed.set()
        if self.fail:
            raise PublishFailed("no ack for the due marks")
        return 0


async def test_run_source_stops_both_tasks_and_raises_a_failure_as_itself() -> None:
    """The source and the flusher of held marks run together: the source's end
    stops the flusher; a failure of either stops the other and is raised as
    itself (main turns a BusError into exit 1, not a group of exceptions)."""

    class Ends:
        """Ends once the flusher has looked for due marks."""

        async def run(self, sink: EventSink, stop: asyncio.Event) -> None:
            assert isinstance(sink, FlushSink)
            await sink.flushed.wait()

    class Fails:
        async def run(self, sink: EventSink, stop: asyncio.Event) -> None:
            raise PublishFailed("no ack")

    class Waits:
        async def run(self, sink: EventSink, stop: asyncio.Event) -> None:
            await stop.wait()

    sink = FlushSink()
    await run_source(Ends(), sink, asyncio.Event(), At(T0), flush_every_s=0.01)  # type: ignore[arg-type]
    assert sink.flushes >= 1
    with pytest.raises(PublishFailed, match="no ack"):
        await run_source(Fails(), FlushSink(), asyncio.Event(), At(T0), flush_every_s=0.01)  # type: ignore[arg-type]
    stop = asyncio.Event()
    with pytest.raises(PublishFailed, match="due marks"):
        await run_source(Waits(), FlushSink(fail=True), stop, At(T0), flush_every_s=0.01)  # type: ignore[arg-type]
    assert stop.is_set()


class EndsAfterAFlush:
    """A source that ends once the flusher has looked for due marks."""

    async def run(self, sink: EventSink, stop: asyncio.Event) -> None:
        assert isinstance(sink, FlushSink)
        await sink.flushed.wait()


class EndsAtOnce:
    async def run(self, sink: EventSink, stop: asyncio.Event) -> None:
        return None


async def test_standing_quotes_are_looked_at_without_an_interval_too() -> None:
    """Nothing is held back without an interval, but standing quotes fall due:
    the flusher runs unless both are off."""
    remarks_only = MarkPolicy(min_interval_ns=0, min_change=D(0), refresh_ns=30 * S)
    sink = FlushSink(policy=remarks_only)
    await asyncio.wait_for(
        run_source(EndsAfterAFlush(), sink, asyncio.Event(), At(T0), flush_every_s=0.01),  # type: ignore[arg-type]
        timeout=5,
    )
    assert sink.flushes >= 1
    neither = FlushSink(policy=MarkPolicy(min_interval_ns=0, refresh_ns=S, max_standing_ns=0))
    await run_source(EndsAtOnce(), neither, asyncio.Event(), At(T0), flush_every_s=0.01)  # type: ignore[arg-type]
    assert neither.flushes == 0


class PublishedBus:
    """What JetStreamSink needs of the bus: publish_many, every event kept."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish_many(self, events: list[Event], *, window: int) -> int:
        self.events += events
        return len(events)


async def test_a_quote_held_when_the_source_ends_is_still_marked() -> None:
    """On SIGTERM the flusher takes its last look at once, while the source
    still publishes what it had parsed; and a quote held back then is not due
    yet. The last quote of the burst is the contract's market: it is marked
    once the source has ended, not lost with the process."""
    bus = PublishedBus()
    sink = JetStreamSink(bus, marks=OptionMarks(POLICY))  # type: ignore[arg-type]
    last = quote(OPTION, "2.20", "2.30", T0 + 200 * MS)

    class Drains:
        async def run(self, sink: EventSink, stop: asyncio.Event) -> None:
            await sink.publish([quote(OPTION, "2.00", "2.10", T0)])
            stop.set()
            await sink.publish([last])  # parsed before the stop, published after it

    await run_source(Drains(), sink, asyncio.Event(), At(T0 + 300 * MS), flush_every_s=0.01)
    marks = [e for e in bus.events if isinstance(e, MarkUpdated)]
    assert [m.causation_id for m in marks][1:] == [last.id]
    assert bus.events[-1] == marks[-1], "after its quote"


def test_the_flusher_looks_every_half_interval_or_half_refresh() -> None:
    assert flush_every_s(MarketdataSettings(mark_min_interval_s=0.4)) == 0.2
    assert flush_every_s(MarketdataSettings(mark_min_interval_s=0, mark_refresh_s=1)) == 0.5
    assert flush_every_s(MarketdataSettings(mark_min_interval_s=0)) == 1.0  # at most 1 s
