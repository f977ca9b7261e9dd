"""Option marks from quotes (``services/marketdata/domain/marks.py``): which
quotes make a ``MarkUpdated``, the per-symbol throttle, and its settings."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from libs.config import ConfigError, load_settings
from libs.contract.codec import decode, derived_id, encode
from libs.contract.envelope import Event
from libs.contract.events import (
    MarkUpdated,
    TradePayload,
    TradePrinted,
)
from libs.contract.subjects import subject_for
from services.marketdata.config import MarketdataSettings
from services.marketdata.domain.marks import MarkPolicy, OptionMarks, midpoint
from tests.unit.option_marks_inputs import (
    MS,
    OPTION,
    OTHER,
    POLICY,
    STANDING,
    T0,
    At,
    D,
    S,
    due,
    quote,
)

#: A contract of a class quoted in nickels under $3 (SPY's trade in pennies at every price).
NICKEL = "O:AAPL241220C00100000"


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
