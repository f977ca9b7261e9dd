"""The subjects the strategy-runner's consumer reads: bars of the intervals
its strategies take, nothing more, and never two overlapping filters."""

from __future__ import annotations

from services.strategy_runner.adapters.stream import BROKER_SUBJECTS, filter_subjects


def test_bars_of_the_intervals_taken_and_every_interval_where_one_takes_all() -> None:
    subjects = filter_subjects(
        ["a", "b"],
        {"AAPL": {"1m"}, "MSFT": {"1m", "1s"}, "SPY": {None, "1m"}},
        live=True,
    )
    assert subjects == [
        "md.bar.1m.AAPL",
        "md.trade.AAPL",
        "md.quote.AAPL",
        "md.mark.AAPL",
        "md.bar.1m.MSFT",
        "md.bar.1s.MSFT",
        "md.trade.MSFT",
        "md.quote.MSFT",
        "md.mark.MSFT",
        "md.bar.*.SPY",
        "md.trade.SPY",
        "md.quote.SPY",
        "md.mark.SPY",
        "risk.decision.a.denied",
        "risk.decision.a",
        "risk.decision.b.denied",
        "risk.decision.b",
        *BROKER_SUBJECTS,
    ]
    assert len(set(subjects)) == len(subjects)


def test_while_catching_up_the_strategies_own_signals_and_intents_too() -> None:
    subjects = filter_subjects(["a"], {"AAPL": {"1m"}})
    assert "strategy.signal.a" in subjects
    assert "strategy.intent.a" in subjects


def test_an_option_s_underlying_is_read_for_its_prices_not_its_quotes() -> None:
    """The underlyings of the strategies' option contracts (``marked``):
    their trades, the bars of the intervals the strategies take and their
    marks mark the shares an exercise books to a strategy; their quotes,
    which mark nothing, are not read. A symbol also traded (QQQ) is read as
    before, its bars of both strategies' intervals, once."""
    call, put = "O:SPY261211C00600000", "O:QQQ261211P00500000"
    subjects = filter_subjects(
        ["opt", "qqq"],
        {call: {"1m"}, put: {"1m"}, "QQQ": {"1s"}},
        live=True,
        marked={"SPY": {"1m"}, "QQQ": {"1m"}},
    )
    spy = [s for s in subjects if s.endswith(".SPY")]
    assert spy == ["md.bar.1m.SPY", "md.trade.SPY", "md.mark.SPY"]
    qqq = [s for s in subjects if s.endswith(".QQQ")]
    assert qqq == [
        "md.bar.1m.QQQ",
        "md.bar.1s.QQQ",
        "md.trade.QQQ",
        "md.quote.QQQ",
        "md.mark.QQQ",
    ]
    assert f"md.quote.{call}" in subjects
    assert len(set(subjects)) == len(subjects)
