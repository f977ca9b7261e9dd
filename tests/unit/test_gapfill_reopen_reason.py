"""A gap reopened after a restart is waited for as the last run waited for it
(pure domain, times in ns): given up on only where that run was waiting for
REST to build its bars; elsewhere a bar REST lacks is a window without trades."""

from __future__ import annotations

from services.marketdata.domain.gapfill import MINUTE_NS, UNSTATED, Filled, GapFiller, Unstated

S = 1_000_000_000
T0 = 1_700_000_040 * S  # a minute boundary


def minute(i: int) -> int:
    return T0 + i * MINUTE_NS


def restarted(waiting_from_ns: int | Unstated | None) -> GapFiller:
    """AAPL's newest bar on the stream is minute 2; the last run left its gap
    open from minute 3; restarted and subscribed at 20:10."""
    f = GapFiller(["AAPL"], lag_ns=300 * S, recheck_ns=30 * S)
    f.seed("AAPL", minute(2))
    f.reopen("AAPL", minute(3), waiting_from_ns=waiting_from_ns)
    f.on_subscribed(minute(20) + 10 * S)
    return f


def fill_once(f: GapFiller, rest: list[int]) -> Filled:
    now = minute(20) + 10 * S
    [w] = f.windows(now, now)
    f.missing(w, rest, lambda s: s)
    return f.filled(w, rest, now)


def test_a_gap_not_awaiting_rest_whose_end_had_no_trades_is_not_given_up_on() -> None:
    f = restarted(None)
    assert f.awaiting_rest() == {}
    # REST has minutes 3 to 5 (the close after 5): 6-14 closed over the lag
    # ago, no trades; 15-19 are recent and waited for, as in any fill.
    assert fill_once(f, [minute(3), minute(4), minute(5)]) == Filled(waiting_from_ns=minute(15))
    assert f.awaiting_rest() == {"AAPL": minute(15)}


def test_a_gap_awaiting_rest_is_given_up_on_from_where_it_waited() -> None:
    f = restarted(minute(5))
    assert f.awaiting_rest() == {"AAPL": minute(5)}
    assert fill_once(f, [minute(3)]) == Filled(
        waiting_from_ns=minute(15), given_up_from_ns=minute(5)
    )


def test_a_gap_whose_reason_was_not_stated_is_waited_for_from_its_start() -> None:
    f = restarted(UNSTATED)
    assert f.awaiting_rest() == {"AAPL": minute(3)}
    assert fill_once(f, []) == Filled(waiting_from_ns=minute(15), given_up_from_ns=minute(3))


def test_awaiting_rest_names_only_open_gaps_and_clears_when_rest_has_the_bars() -> None:
    f = restarted(minute(3))
    rest = [minute(i) for i in range(3, 20)]
    assert fill_once(f, rest) == Filled()
    assert f.open_gaps() == {}
    assert f.awaiting_rest() == {}
