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
