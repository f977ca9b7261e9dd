"""Gap-fill windows and missing bars (pure domain, times in ns)."""

from __future__ import annotations

import pytest

from services.marketdata.domain.gapfill import (
    MINUTE_NS,
    Filled,
    GapFiller,
    GapWindow,
    time_ordered,
)

M = MINUTE_NS
T0 = 1_700_000_040 * 1_000_000_000  # a minute boundary
S = 1_000_000_000


def minute(i: int) -> int:
    return T0 + i * M


def start(bar: int) -> int:
    return bar


def live(filler: GapFiller, symbol: str, *minutes: int) -> None:
    for i in minutes:
        assert filler.admit(symbol, minute(i))


def test_no_gap_before_the_first_subscription_or_without_a_disconnect() -> None:
    f = GapFiller(["AAPL"])
    f.on_disconnect(minute(1))  # never subscribed: nothing of ours was missed
    assert f.windows(minute(5)) == []
    f.on_subscribed(minute(5))
    assert f.windows(minute(9)) == []


def test_drop_in_the_middle_of_a_minute_fills_the_closed_minutes_after_the_last_bar() -> None:
    f = GapFiller(["AAPL", "MSFT"])
    f.on_subscribed(minute(0))
    live(f, "AAPL", 0, 1, 2)
    live(f, "MSFT", 0, 1)
    f.on_disconnect(minute(3) + 20 * S)  # in the middle of minute 3
    windows = f.windows(minute(7) + 5 * S)  # back in minute 7: minutes up to 6 are closed

    assert windows == [
        GapWindow("AAPL", minute(3), minute(6), windows[0].generation),
        GapWindow("MSFT", minute(2), minute(6), windows[1].generation),
    ]
    assert windows[0].bars == 4


def test_missing_bars_are_those_not_published_in_time_order_once() -> None:
    f = GapFiller(["AAPL"])
    f.on_subscribed(minute(0))
    live(f, "AAPL", 0, 1)
    f.on_disconnect(minute(2) + 1)
    [w] = f.windows(minute(8))
    live(f, "AAPL", 5)  # a late live bar arrived while REST was asked

    rest = [minute(i) for i in (7, 3, 1, 5, 4, 4, 8, 2)]  # unordered, a repeat, edges
    missing = f.missing(w, rest, start)

    assert missing == [minute(i) for i in (2, 3, 4, 7)]
    # They are in the ledger now: neither a second fetch nor the live bar passes.
    assert f.missing(w, rest, start) == []
    assert not f.admit("AAPL", minute(3))
    assert f.last_published("AAPL") == minute(7)


def test_back_within_the_same_minute_leaves_nothing_to_fill() -> None:
    f = GapFiller(["AAPL"])
    f.on_subscribed(minute(0))
    live(f, "AAPL", 0, 1, 2)
    f.on_disconnect(minute(3) + 5 * S)
    assert f.windows(minute(3) + 50 * S) == []
    assert f.open_gaps() == {}


def test_symbol_without_any_bar_is_filled_from_the_session_start() -> None:
    f = GapFiller(["AAPL"])
    f.on_subscribed(minute(4) + 30 * S)
    f.on_disconnect(minute(6))
    [w] = f.windows(minute(9))
    assert (w.first_start_ns, w.last_start_ns) == (minute(4), minute(8))


def test_a_failed_fill_keeps_the_gap_and_a_second_outage_keeps_its_start() -> None:
    f = GapFiller(["AAPL"])
    f.on_subscribed(minute(0))
    live(f, "AAPL", 0)
    f.on_disconnect(minute(1) + 1)
    [first] = f.windows(minute(4))
    # The fetch failed (no filled()); the feed drops again later, after live bars.
    live(f, "AAPL", 4, 5)
    f.on_disconnect(minute(6) + 1)
    [second] = f.windows(minute(9))
    assert (second.first_start_ns, second.last_start_ns) == (minute(1), minute(8))
    assert first.first_start_ns == second.first_start_ns
    rest = [minute(i) for i in range(0, 9)]
    assert f.missing(second, rest, start) == [minute(i) for i in (1, 2, 3, 6, 7, 8)]
    f.filled(second)
    assert f.open_gaps() == {}


def test_an_outage_during_a_fill_reopens_the_gap_after_that_window() -> None:
    f = GapFiller(["AAPL"])
    f.on_subscribed(minute(0))
    live(f, "AAPL", 0)
    f.on_disconnect(minute(1) + 1)
    [w] = f.windows(minute(4))
    f.on_disconnect(minute(5) + 1)  # dropped again while REST was being asked
    f.missing(w, [minute(i) for i in range(1, 4)], start)
    f.filled(w)
    assert f.open_gaps() == {"AAPL": minute(4)}
    [w2] = f.windows(minute(8))
    assert (w2.first_start_ns, w2.last_start_ns) == (minute(4), minute(7))


def test_the_window_reaches_back_at_most_max_gap() -> None:
    f = GapFiller(["AAPL"], max_gap_ns=10 * M)
    f.on_subscribed(minute(0))
    live(f, "AAPL", 0)
    f.on_disconnect(minute(1))
    [w] = f.windows(minute(100) + 7 * S)
    assert (w.first_start_ns, w.last_start_ns) == (minute(90), minute(99))


def test_seed_opens_a_gap_from_a_bar_published_before_we_started() -> None:
    f = GapFiller(["AAPL"])
    f.seed("AAPL", minute(3))
    f.on_subscribed(minute(10) + 2 * S)
    [w] = f.windows(minute(10) + 2 * S)
    assert (w.first_start_ns, w.last_start_ns) == (minute(4), minute(9))
    assert not f.admit("AAPL", minute(3))


def test_reopen_restores_a_gap_left_open_before_the_newest_bar_and_skips_what_was_published() -> (
    None
):
    f = GapFiller(["AAPL", "MSFT"])
    f.seed("AAPL", minute(5))  # the newest bar on the stream
    # The last run left AAPL's gap open from minute 1; minutes 4 and 5 came live.
    f.reopen("AAPL", minute(1), [minute(4), minute(5)])
    f.reopen("TSLA", minute(1))  # no longer configured: ignored
    assert f.open_gaps() == {"AAPL": minute(1)}
    f.on_subscribed(minute(8) + 2 * S)
    [w] = f.windows(minute(8) + 2 * S)
    assert (w.first_start_ns, w.last_start_ns) == (minute(1), minute(7))
    fetched = [minute(i) for i in range(1, 8)]
    assert f.missing(w, fetched, start) == [minute(i) for i in (1, 2, 3, 6, 7)]
    f.filled(w)
    assert f.open_gaps() == {}


def test_reopen_keeps_an_earlier_gap_already_open() -> None:
    f = GapFiller(["AAPL"])
    f.seed("AAPL", minute(0))  # gap from minute 1
    f.reopen("AAPL", minute(3))
    assert f.open_gaps() == {"AAPL": minute(1)}


def test_old_ledger_entries_are_pruned_beyond_retention() -> None:
    f = GapFiller(["AAPL"], max_gap_ns=5 * M, retention_ns=10 * M)
    for i in range(200):
        assert f.admit("AAPL", minute(i))
    assert f.published("AAPL", minute(199))
    assert not f.published("AAPL", minute(100))


def test_time_ordered_merges_symbols_by_window_start() -> None:
    bars = [("MSFT", minute(2)), ("AAPL", minute(3)), ("AAPL", minute(2)), ("MSFT", minute(1))]
    assert time_ordered(bars, start) == [
        ("MSFT", minute(1)),
        ("AAPL", minute(2)),
        ("MSFT", minute(2)),
        ("AAPL", minute(3)),
    ]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="positive"):
        GapFiller(["AAPL"], interval_ns=0)


def test_a_second_bar_filler_counts_and_closes_in_seconds() -> None:
    f = GapFiller(["AAPL"], interval_ns=S, max_gap_ns=60 * S)
    f.on_subscribed(T0 + S // 2)
    for i in range(10):
        assert f.admit("AAPL", T0 + i * S)
    f.on_disconnect(T0 + 10 * S + S // 3)
    # Back 30.5 s later: seconds 10 to 39 are closed, 40 is in progress.
    [window] = f.windows(T0 + 40 * S + S // 2)
    assert (window.first_start_ns, window.last_start_ns) == (T0 + 10 * S, T0 + 39 * S)
    assert window.bars == 30
    rows = [T0 + i * S for i in (5, 10, 11, 39, 40)]
    assert f.missing(window, rows, start) == [T0 + 10 * S, T0 + 11 * S, T0 + 39 * S]
    f.filled(window)
    assert f.open_gaps() == {}


def test_bars_not_final_at_the_reconnect_are_left_open_and_filled_once_final() -> None:
    f = GapFiller(["AAPL", "MSFT"], settle_ns=30 * S)
    f.on_subscribed(minute(0))
    live(f, "AAPL", 0)
    live(f, "MSFT", 0)
    f.on_disconnect(minute(1) + 20 * S)
    reconnect = minute(5) + 10 * S  # minute 4 closed 10 s ago: not final

    first = f.windows(reconnect, reconnect)
    assert [(w.symbol, w.first_start_ns, w.last_start_ns, w.final) for w in first] == [
        ("AAPL", minute(1), minute(3), False),
        ("MSFT", minute(1), minute(3), False),
    ]
    for w in first:
        f.filled(w)
    assert f.open_gaps() == {"AAPL": minute(4), "MSFT": minute(4)}
    assert f.final_at(reconnect) == minute(5) + 30 * S
    assert f.windows(reconnect, minute(5) + 29 * S) == [], "not yet"
    live(f, "AAPL", 4)  # its live bar came meanwhile

    second = f.windows(reconnect, minute(5) + 30 * S)
    assert [(w.symbol, w.first_start_ns, w.last_start_ns, w.final) for w in second] == [
        ("AAPL", minute(4), minute(4), True),
        ("MSFT", minute(4), minute(4), True),
    ]
    assert f.missing(second[0], [minute(4)], start) == [], "the live bar stands"
    assert f.missing(second[1], [minute(4)], start) == [minute(4)]
    for w in second:
        f.filled(w)
    assert f.open_gaps() == {}
    assert f.final_at(reconnect) is None


def test_a_gap_with_no_final_bar_yet_gets_no_window_and_stays_open() -> None:
    f = GapFiller(["AAPL"], settle_ns=30 * S)
    f.on_subscribed(minute(0))
    live(f, "AAPL", 0, 1)
    f.on_disconnect(minute(2) + 50 * S)
    reconnect = minute(3) + 5 * S  # only minute 2 closed, 5 s ago

    assert f.windows(reconnect, reconnect) == []
    assert f.open_gaps() == {"AAPL": minute(2)}
    assert f.final_at(reconnect) == minute(3) + 30 * S
    [w] = f.windows(reconnect, minute(3) + 30 * S)
    assert (w.first_start_ns, w.last_start_ns, w.final) == (minute(2), minute(2), True)


def test_disconnects_count_the_outages_a_fill_may_have_gone_stale_by() -> None:
    f = GapFiller(["AAPL"])
    f.on_disconnect(minute(1))  # never subscribed: not an outage of ours
    assert f.disconnects == 0
    f.on_subscribed(minute(1))
    f.on_disconnect(minute(2))
    f.on_disconnect(minute(3))
    assert f.disconnects == 2


def test_a_negative_settle_is_refused() -> None:
    with pytest.raises(ValueError, match="settle_ns"):
        GapFiller(["AAPL"], settle_ns=-1)


def rest_lag_filler(**kw: int) -> GapFiller:
    f = GapFiller(["AAPL", "MSFT"], lag_ns=300 * S, recheck_ns=30 * S, **kw)
    f.on_subscribed(minute(0))
    live(f, "AAPL", 0)
    live(f, "MSFT", 0)
    f.on_disconnect(minute(1) + 20 * S)
    return f


def test_a_bar_rest_has_not_built_yet_keeps_the_gap_open_from_it_and_is_fetched_again() -> None:
    f = rest_lag_filler()
    reconnect = minute(5) + 10 * S
    aapl, msft = f.windows(reconnect, reconnect)
    assert (aapl.first_start_ns, aapl.last_start_ns) == (minute(1), minute(4))
    live(f, "AAPL", 4)  # a late live bar: it does not say REST has minute 3
    # REST has AAPL's minutes 1 and 2 only: 3 may be a minute it has not
    # built yet. MSFT's minute 4 says REST has built 2 and 3: no trades then.
    assert f.missing(aapl, [minute(1), minute(2)], start) == [minute(1), minute(2)]
    assert f.missing(msft, [minute(1), minute(4)], start) == [minute(1), minute(4)]
    assert f.filled(aapl, [minute(1), minute(2)], reconnect) == Filled(waiting_from_ns=minute(3))
    assert f.filled(msft, [minute(1), minute(4)], reconnect) == Filled()
    assert f.open_gaps() == {"AAPL": minute(3)}
    assert f.final_at(reconnect) == reconnect + 30 * S

    again = reconnect + 30 * S
    [w] = f.windows(reconnect, again)
    assert (w.symbol, w.first_start_ns, w.last_start_ns) == ("AAPL", minute(3), minute(4))
    assert f.missing(w, [minute(3)], start) == [minute(3)]
    assert f.filled(w, [minute(3)], again) == Filled()
    assert f.open_gaps() == {}
    assert f.final_at(reconnect) is None


def test_a_bar_rest_never_builds_is_taken_as_no_trades_once_it_closed_the_lag_ago() -> None:
    f = rest_lag_filler()
    reconnect = minute(5) + 10 * S
    rest = [minute(1), minute(2)]  # and nothing more, ever
    passes = []
    now = reconnect
    while True:
        windows = {w.symbol: w for w in f.windows(reconnect, now)}
        if "MSFT" in windows:
            f.filled(windows["MSFT"], [minute(4)], now)
        w = windows["AAPL"]
        f.missing(w, rest, start)
        passes.append((now, f.filled(w, rest, now), f.open_gaps()))
        due = f.final_at(reconnect)
        if due is None:
            break
        assert due > now
        now = due
    # Fetched again every 30 s until minute 3 closed 300 s ago (at minute 9),
    # then minute 4 (at minute 10); each given up once, in the pass past its bound.
    assert [p[0] for p in passes] == [
        *(reconnect + k * 30 * S for k in range(8)),
        minute(9),
        minute(9) + 30 * S,
        minute(10),
    ]
    assert passes[0][1] == Filled(waiting_from_ns=minute(3))
    assert passes[-3][1] == Filled(waiting_from_ns=minute(4), given_up_from_ns=minute(3))
    assert passes[-3][2] == {"AAPL": minute(4)}
    assert passes[-1][1] == Filled(given_up_from_ns=minute(4))
    assert passes[-1][2] == {}


def test_a_gap_reopened_after_a_restart_past_the_lag_is_given_up_on_and_said_so() -> None:
    """The last run stopped while waiting for AAPL's minute 3 (its status left
    the gap open from it); REST still has no bar from it on, now long past
    the lag: given up on, as had that run seen it through, not taken as no
    trades silently. MSFT's reopened gap, its minutes still recent, waits."""
    f = GapFiller(["AAPL", "MSFT"], lag_ns=300 * S, recheck_ns=30 * S)
    f.seed("AAPL", minute(2))  # the newest bars on the stream
    f.seed("MSFT", minute(15))
    f.reopen("AAPL", minute(3))
    f.reopen("MSFT", minute(16))
    reconnect = minute(20) + 10 * S
    f.on_subscribed(reconnect)
    aapl, msft = f.windows(reconnect, reconnect)
    assert (aapl.first_start_ns, aapl.last_start_ns) == (minute(3), minute(19))
    assert f.missing(aapl, [minute(1), minute(2)], start) == []
    # Minutes 3-14 closed over the lag ago: given up; 15-19 are recent.
    assert f.filled(aapl, [minute(1), minute(2)], reconnect) == Filled(
        waiting_from_ns=minute(15), given_up_from_ns=minute(3)
    )
    assert f.filled(msft, [], reconnect) == Filled(waiting_from_ns=minute(16))
    assert f.open_gaps() == {"AAPL": minute(15), "MSFT": minute(16)}


def test_a_reopened_gap_rest_built_past_has_nothing_given_up() -> None:
    f = GapFiller(["AAPL"], lag_ns=300 * S, recheck_ns=30 * S)
    f.seed("AAPL", minute(2))
    f.reopen("AAPL", minute(3))
    reconnect = minute(20) + 10 * S
    f.on_subscribed(reconnect)
    [w] = f.windows(reconnect, reconnect)
    rest = [minute(i) for i in (3, 9, 19)]  # 4-8 and 10-18: no trades
    assert f.missing(w, rest, start) == rest
    assert f.filled(w, rest, reconnect) == Filled()
    assert f.open_gaps() == {}


def test_without_a_lag_a_bar_rest_lacks_is_final_at_once() -> None:
    f = GapFiller(["AAPL"])
    f.on_subscribed(minute(0))
    live(f, "AAPL", 0)
    f.on_disconnect(minute(1))
    [w] = f.windows(minute(5), minute(5))
    assert f.filled(w, [minute(1)], minute(5)) == Filled()
    assert f.open_gaps() == {}


def test_a_negative_lag_or_no_recheck_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="lag_ns"):
        GapFiller(["AAPL"], lag_ns=-1)
    with pytest.raises(ValueError, match="recheck_ns"):
        GapFiller(["AAPL"], recheck_ns=0)
