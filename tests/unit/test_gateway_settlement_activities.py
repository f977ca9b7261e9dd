"""``settlement_events`` (services/broker_gateway/domain/settlement.py): the broker's
non-trade activities of option events turned into settlement fills, split
over the strategies that held the contract, exactly once across restarts."""

from __future__ import annotations

import logging

import pytest

from libs.contract.events import FillReceived
from libs.contract.options import parse_option
from services.broker_gateway.domain.model import BrokerActivity
from services.broker_gateway.settlement import (
    holds_options,
    read_after_connecting,
)
from tests.unit.gateway_settlement_inputs import (
    CALL,
    PUT,
    T0,
    D,
    activity,
    booked,
    opened,
    settle,
    tracker,
)


def test_an_exercise_is_split_over_the_strategies_in_name_order_the_rest_to_none() -> None:
    """s2 holds 2 calls, s1 holds 1, and the broker exercises 4 (one bought
    outside tradebus): s1's 1, s2's 2, the rest (1) to no strategy, one
    fill each at 0, cumulative quantities consecutive; the shares follow the
    same split, 100 a contract at the strike. Every fill is stamped at the
    contract's expiry (16:00 New York)."""
    t = tracker(opened([("s2", CALL, "2"), ("s1", CALL, "1")]))
    events = settle(
        t, [activity("a1", "OPEXC", CALL, "-4"), activity("a2", "OPTRD", "SPY", "400", "600")]
    )
    # The shares first: between the legs the day P&L errs on the side of a
    # gain (settlement_events), never shows the contracts' value lost.
    assert booked(events) == [
        ("SPY", "buy", "100", "600", "exercised", "s1"),
        ("SPY", "buy", "200", "600", "exercised", "s2"),
        ("SPY", "buy", "100", "600", "exercised", None),
        (CALL, "sell", "1", "0", "exercised", "s1"),
        (CALL, "sell", "2", "0", "exercised", "s2"),
        (CALL, "sell", "1", "0", "exercised", None),
    ]
    fills = sorted(
        (e.payload for e in events if isinstance(e, FillReceived)), key=lambda f: f.symbol != CALL
    )
    assert [(f.cumulative_quantity, f.leaves_quantity, f.status) for f in fills[:3]] == [
        (D(1), D(3), "partial"),
        (D(3), D(1), "partial"),
        (D(4), D(0), "complete"),
    ]
    assert len({f.order_id for f in fills[:3]}) == 1
    assert len({f.order_id for f in fills[3:]}) == 1
    assert len({f.fill_id for f in fills}) == len(fills)
    assert len({e.id for e in events}) == len(events)
    assert {e.ts_event for e in events} == {parse_option(CALL).expires_at_ns}
    assert t.position(CALL, "s1") == t.position(CALL, "s2") == 0
    assert (t.position("SPY", "s1"), t.position("SPY", "s2")) == (D(100), D(200))
    # Read again (the next read's list holds them too): nothing twice.
    assert (
        settle(
            t, [activity("a1", "OPEXC", CALL, "-4"), activity("a2", "OPTRD", "SPY", "400", "600")]
        )
        == []
    )


def test_an_option_trade_with_no_exercise_before_it_is_booked_to_nobody_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An ``OPTRD`` read without its ``OPEXC`` / ``OPASN`` (the list began
    after it, say): the shares are booked, to no strategy (nothing says whose
    they are), stamped when published, and the gateway says so."""
    t = tracker(opened([("s1", CALL, "1")]))
    caplog.set_level(logging.WARNING, logger="services.broker_gateway.domain.settlement")
    [event] = settle(t, [activity("a2", "OPTRD", "SPY", "100", "600")])
    assert booked([event]) == [("SPY", "buy", "100", "600", "exercised", None)]
    assert event.ts_event == T0
    assert t.position("SPY", None) == D(100)
    assert t.position(CALL, "s1") == D(1), "the contract is left as it was"
    assert any("goes with no exercise or assignment" in r.getMessage() for r in caplog.records)


def test_an_option_trade_of_another_exercise_is_not_taken_for_the_one_before_it() -> None:
    """An ``OPTRD`` right after an exercise but of another size (or root, or
    strike) is not that exercise's: booked to nobody. The exercise's
    contracts wait for their own shares; none came in the read, so they are
    published last, alone."""
    t = tracker(opened([("s1", CALL, "1")]))
    events = settle(
        t, [activity("a1", "OPEXC", CALL, "-1"), activity("a2", "OPTRD", "SPY", "200", "600")]
    )
    assert booked(events) == [
        ("SPY", "buy", "200", "600", "exercised", None),
        (CALL, "sell", "1", "0", "exercised", "s1"),
    ]


def test_two_exercises_listed_before_their_trades_each_get_their_own_shares() -> None:
    """The broker lists two exercises, then their two trades: each trade
    goes to the exercise of its root, shares and strike (its price), not to
    the one read last. Matched to the last exercise alone, the 600 call's
    shares went to nobody (and with the same sizes, to the wrong split)."""
    low = "O:SPY261211C00590000"
    t = tracker(opened([("s1", CALL, "1"), ("s2", low, "1")]))
    events = settle(
        t,
        [
            activity("a1", "OPEXC", CALL, "-1"),
            activity("a2", "OPEXC", low, "-1"),
            activity("a3", "OPTRD", "SPY", "100", "600"),
            activity("a4", "OPTRD", "SPY", "100", "590"),
        ],
    )
    assert booked(events) == [
        ("SPY", "buy", "100", "600", "exercised", "s1"),
        (CALL, "sell", "1", "0", "exercised", "s1"),
        ("SPY", "buy", "100", "590", "exercised", "s2"),
        (low, "sell", "1", "0", "exercised", "s2"),
    ]
    assert (t.position("SPY", "s1"), t.position("SPY", "s2")) == (D(100), D(100))


@pytest.mark.parametrize("kind", ["OPEXC", "OPASN"])
def test_an_option_trade_listed_before_its_exercise_follows_it(kind: str) -> None:
    """The broker lists the exercise's (or assignment's) trade first: both
    happened at once, and nothing orders them (Alpaca's ids of one date). The
    trade follows the split of the exercise read after it, and the legs go
    out in the order that leaves a gain between them (an exercise's shares
    first, an assignment's contracts first). Matched only to an exercise
    read before it, the shares went to nobody: s1's calls closed at 0 and
    its shares an unowned position, the strategy's ledger short of them."""
    long = kind == "OPEXC"
    t = tracker(opened([("s1", CALL, "2" if long else "-2")]))
    events = settle(
        t,
        [
            activity("a2", "OPTRD", "SPY", "200" if long else "-200", "600"),
            activity("a1", kind, CALL, "-2" if long else "2"),
        ],
    )
    outcome = "exercised" if long else "assigned"
    shares = ("SPY", "buy" if long else "sell", "200", "600", outcome, "s1")
    contracts = (CALL, "sell" if long else "buy", "2", "0", outcome, "s1")
    assert booked(events) == ([shares, contracts] if long else [contracts, shares])
    assert t.position("SPY", "s1") == D(200 if long else -200)
    assert t.position("SPY", None) == 0
    fills = [e for e in events if isinstance(e, FillReceived)]
    assert {e.ts_event for e in fills} == {parse_option(CALL).expires_at_ns}


def test_a_short_put_assigned_buys_the_shares() -> None:
    """s1 is short 2 puts; assigned, it buys the 2 back at 0 (its premium
    kept) and buys 200 shares at the strike."""
    t = tracker(opened([("s1", PUT, "-2")]))
    events = settle(
        t, [activity("a1", "OPASN", PUT, "2"), activity("a2", "OPTRD", "SPY", "200", "600")]
    )
    assert booked(events) == [
        (PUT, "buy", "2", "0", "assigned", "s1"),
        ("SPY", "buy", "200", "600", "assigned", "s1"),
    ]
    assert (t.position(PUT, "s1"), t.position("SPY", "s1")) == (D(0), D(200))


def test_a_connection_reads_for_an_assignment_whose_shares_may_be_owed() -> None:
    """A restart between an assignment's legs (its contracts are published
    first) leaves the account holding no option: a connection read only for
    an account holding options, so the shares were never published. It
    reads for a settlement of the last week too, and not for an older one."""
    t = tracker(opened([("s1", PUT, "-2")]))
    expiry = parse_option(PUT).expires_at_ns
    assert read_after_connecting(t, expiry)  # it holds the puts
    contracts_only = settle(t, [activity("a1", "OPASN", PUT, "2")])
    assert booked(contracts_only) == [(PUT, "buy", "2", "0", "assigned", "s1")]
    assert not holds_options(t)
    assert read_after_connecting(t, expiry + 3600 * 10**9)
    # As the gateway's start-up rebuilds it from the store.
    rebuilt = tracker([*opened([("s1", PUT, "-2")]), *contracts_only])
    assert not holds_options(rebuilt)
    assert read_after_connecting(rebuilt, expiry + 3600 * 10**9)
    assert not read_after_connecting(t, expiry + 9 * 86_400 * 10**9)
    assert not read_after_connecting(tracker([]), expiry)


def test_an_expiry_is_booked_at_0_and_makes_no_shares() -> None:
    t = tracker(opened([("s1", CALL, "3")]))
    events = settle(t, [activity("a1", "OPEXP", CALL, "-3")])
    assert booked(events) == [(CALL, "sell", "3", "0", "expired", "s1")]
    assert t.net_positions() == {}


EXERCISE = (activity("a1", "OPEXC", CALL, "-4"), activity("a2", "OPTRD", "SPY", "400", "600"))


@pytest.mark.parametrize("published", range(6))
def test_a_settlement_cut_by_a_restart_is_finished_as_it_began(published: int) -> None:
    """The gateway published the first ``published`` of the exercise's 6
    fills (3 strategies' contracts, then their shares) and died. Rebuilt
    from what was published, it publishes the rest, exactly as an uncut
    run would have: the same strategies, quantities and event ids, nothing
    twice, and no fill id repeated (the risk-gate and the ledgers drop a
    fill whose id they have seen as the same execution reported again).
    Before, the shares were split over the contracts' holders as they stood
    after the restart (the ones already settled hold none: their shares went
    to nobody), the rest of a cut share trade was split as a closing fill
    of the underlying (to strategies short of it, or nobody), and the first
    fill after the restart took the first fill's id."""
    holdings = opened([("s2", CALL, "2"), ("s1", CALL, "1")])
    whole = settle(tracker(holdings), EXERCISE)
    assert len(whole) == 6
    before = whole[:published]
    rest = settle(tracker([*holdings, *before]), EXERCISE)
    assert booked([*before, *rest]) == booked(whole)
    assert [e.id for e in [*before, *rest]] == [e.id for e in whole]
    fill_ids = [e.payload.fill_id for e in [*before, *rest] if isinstance(e, FillReceived)]
    assert len(set(fill_ids)) == len(fill_ids), fill_ids


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(activity("x1", "OPEXP", "O:SPY261399C00600000", "-1"), id="no-such-expiry"),
        pytest.param(activity("x1", "OPTRD", "SPY B", "100", "600"), id="no-such-symbol"),
        pytest.param(activity("x1", "OPEXC", CALL, "-0.0000000000001"), id="too-many-places"),
    ],
)
def test_an_activity_the_contract_cannot_carry_is_left_out_and_the_rest_booked(
    bad: BrokerActivity, caplog: pytest.LogCaptureFixture
) -> None:
    """One activity a fill cannot carry (a contract symbol that names no
    contract, a symbol the contract refuses, a quantity with 13 places):
    logged and left out, the others booked. It raised out of the settlement
    task, which took the account's worker (its event stream) down with it,
    and again at every start-up: the same activity is read each time."""
    t = tracker(opened([("s1", CALL, "1")]))
    caplog.set_level(logging.WARNING, logger="services.broker_gateway.domain.settlement")
    events = settle(t, [bad, activity("a1", "OPEXP", CALL, "-1")])
    assert booked(events) == [(CALL, "sell", "1", "0", "expired", "s1")]
    assert any("x1" in r.getMessage() for r in caplog.records)
