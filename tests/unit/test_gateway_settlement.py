"""``settlement_events`` (services/broker_gateway/domain/settlement.py): the broker's
non-trade activities of option events turned into settlement fills, split
over the strategies that held the contract, exactly once across restarts."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

import pytest

from libs.contract.envelope import Event
from libs.contract.events import (
    FillPayload,
    FillReceived,
    OrderAccepted,
    OrderAcceptedPayload,
    Side,
    SubmitOrder,
    SubmitOrderPayload,
)
from libs.contract.options import parse_option
from libs.testing.wait import eventually
from services.broker_gateway import settlement
from services.broker_gateway.domain.model import (
    BrokerActivity,
    BrokerOrder,
    BrokerPosition,
    OrderUpdate,
)
from services.broker_gateway.domain.tracker import OrderTracker
from services.broker_gateway.gateway import AccountWorker
from services.broker_gateway.settlement import (
    Settlements,
    cross_events,
    held_expired,
    holds_options,
    read_after_connecting,
    settlement_events,
    shares_owed,
)

D = Decimal
ACCOUNT = "acct"
SOURCE = "broker-gateway/test"
CALL = "O:SPY261211C00600000"  # SPY 600 call, expires Friday 2026-12-11
PUT = "O:SPY261211P00600000"
EXPIRY = dt.date(2026, 12, 11)
T0 = 1_797_000_000_000_000_000


class Clock:
    def now_ns(self) -> int:
        return T0


CLOCK = Clock()


def opened(holdings: Sequence[tuple[str | None, str, str]]) -> list[FillReceived]:
    """The fills that opened ``holdings`` ((strategy, symbol, signed quantity)),
    one order each."""
    out = []
    for i, (strategy, symbol, qty) in enumerate(holdings):
        side: Side = "buy" if D(qty) > 0 else "sell"
        out.append(
            FillReceived.create(
                FillPayload(
                    order_id=uuid.UUID(int=i + 1),
                    account=ACCOUNT,
                    broker_order_id=f"b-{i}",
                    fill_id=f"f-{i}",
                    symbol=symbol,
                    side=side,
                    quantity=abs(D(qty)),
                    price=D("2.5"),
                    cumulative_quantity=abs(D(qty)),
                    leaves_quantity=D(0),
                    status="complete",
                    strategy=strategy,
                ),
                source=SOURCE,
                clock=CLOCK,
            )
        )
    return out


def tracker(events: Sequence[Event]) -> OrderTracker:
    """A tracker rebuilt from ``events``, as the gateway's start-up does."""
    t = OrderTracker(ACCOUNT, clock=CLOCK, source=SOURCE)
    for e in events:
        t.evolve(e)  # type: ignore[arg-type]
    return t


def activity(
    activity_id: str, kind: str, symbol: str, qty: str, price: str | None = None
) -> BrokerActivity:
    return BrokerActivity(
        activity_id=activity_id,
        activity_type=kind,
        symbol=symbol,
        quantity=D(qty),
        price=None if price is None else D(price),
    )


Booked = tuple[str, str, str, str, str, str | None]


def booked(events: Sequence[Event]) -> list[Booked]:
    """(symbol, side, quantity, price, settlement, strategy) of each fill."""
    out: list[Booked] = []
    for e in events:
        assert isinstance(e, FillReceived)
        p = e.payload
        assert p.settlement is not None
        out.append((p.symbol, p.side, str(p.quantity), str(p.price), p.settlement, p.strategy))
    return out


def settle(t: OrderTracker, activities: Sequence[BrokerActivity]) -> list[Event]:
    return settlement_events(t, activities)


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


# ---------------------------------------------------------------- crosses
#
# Strategies of one account holding opposite positions in a contract: the
# broker holds (and settles) only the net, so the offsetting part is
# settled inside tradebus (``cross_events``).

PAST = parse_option(CALL).expires_at_ns + 1


def cross(
    t: OrderTracker,
    activities: Sequence[BrokerActivity] = (),
    broker: dict[str, Decimal] | None = None,
    now_ns: int = PAST,
) -> list[Event]:
    return cross_events(t, activities, broker, now_ns=now_ns)


def test_opposite_positions_the_broker_never_held_are_crossed_at_0_once_it_shows_none() -> None:
    """s1 long 2 calls, s2 short 2: the broker holds none, so it settles
    nothing and lists no activity. Once a read after the expiry shows no
    activity and no broker position in it, s2 buys its 2 back at 0, then s1
    sells its 2 at 0 (``expired``: with no activity, nothing says whether it
    was in the money): both flat, the premium realized, the account's
    total unchanged. Before, s1 +2 and s2 -2 stayed for ever."""
    t = tracker(opened([("s1", CALL, "2"), ("s2", CALL, "-2")]))
    assert held_expired(t, PAST) == [EXPIRY], "the contract is still read for"
    assert cross(t, broker={"SPY": D(5)}, now_ns=PAST - 2) == [], "not before the expiry"
    assert cross(t, broker={CALL: D(1)}) == [], "the broker still holds some"
    assert cross(t, broker=None) == [], "the broker's positions not read"
    events = cross(t, broker={"SPY": D(5)})
    assert booked(events) == [
        (CALL, "buy", "2", "0", "expired", "s2"),
        (CALL, "sell", "2", "0", "expired", "s1"),
    ]
    assert t.positions[("s1", CALL)] == t.positions[("s2", CALL)] == 0
    assert held_expired(t, PAST) == []
    assert {e.ts_event for e in events} == {parse_option(CALL).expires_at_ns}
    assert len({e.id for e in events}) == len(events)
    fills = [e.payload for e in events if isinstance(e, FillReceived)]
    assert all(f.status == "complete" and f.leaves_quantity == 0 for f in fills)
    assert len({(f.broker_order_id, f.fill_id) for f in fills}) == len(fills)
    # Read again: nothing twice.
    assert cross(t, broker={}) == []


def test_the_part_of_an_exercise_the_broker_did_not_see_is_crossed_with_the_shares() -> None:
    """s1 long 3 calls, s2 short 1: the broker holds and exercises the net 2,
    which goes to s1 (s1 +1, s2 -1 left). The offsetting 1 is exercised
    inside tradebus: s1 receives 100 shares at the strike, s2 delivers them
    (assigned), both contracts closed at 0. In the order that leaves the
    account's day P&L a gain in between: s1's shares, s2's shares, s2's
    contract, s1's contract. s1 holds 300 SPY, s2 -100: the account's 200,
    the broker's."""
    t = tracker(opened([("s1", CALL, "3"), ("s2", CALL, "-1")]))
    net = [activity("a1", "OPEXC", CALL, "-2"), activity("a2", "OPTRD", "SPY", "200", "600")]
    settled = settle(t, net)
    assert (t.position(CALL, "s1"), t.position(CALL, "s2")) == (D(1), D(-1))
    events = cross(t, net, broker={"SPY": D(200)})
    assert booked(events) == [
        ("SPY", "buy", "100", "600", "exercised", "s1"),
        ("SPY", "sell", "100", "600", "assigned", "s2"),
        (CALL, "buy", "1", "0", "assigned", "s2"),
        (CALL, "sell", "1", "0", "exercised", "s1"),
    ]
    assert (t.position("SPY", "s1"), t.position("SPY", "s2")) == (D(300), D(-100))
    assert t.net_positions() == {"SPY": D(200)}
    assert held_expired(t, PAST) == []
    assert len({e.id for e in [*settled, *events]}) == len(settled) + len(events)
    assert cross(t, net, broker={"SPY": D(200)}) == []


def test_the_offsetting_part_of_a_short_put_assigned_is_crossed_the_other_way() -> None:
    """s1 short 2 puts, s2 long 1: the broker assigns the net 1 (to s1).
    The other 1: s2 exercises (sells 100 at the strike), s1 is assigned
    (buys them), the contracts closed at 0."""
    t = tracker(opened([("s1", PUT, "-2"), ("s2", PUT, "1")]))
    net = [activity("a1", "OPASN", PUT, "1"), activity("a2", "OPTRD", "SPY", "100", "600")]
    settle(t, net)
    events = cross(t, net, broker={"SPY": D(100)})
    assert booked(events) == [
        ("SPY", "sell", "100", "600", "exercised", "s2"),
        ("SPY", "buy", "100", "600", "assigned", "s1"),
        (PUT, "buy", "1", "0", "assigned", "s1"),
        (PUT, "sell", "1", "0", "exercised", "s2"),
    ]
    assert (t.position("SPY", "s1"), t.position("SPY", "s2")) == (D(200), D(-100))
    assert t.net_positions() == {"SPY": D(100)}


def test_a_contract_the_broker_has_not_settled_yet_is_not_crossed() -> None:
    """s1 +3, s2 -1 and no activity yet: the broker still holds the net 2,
    and how it settles them (exercise or expiry) is what the offsetting
    part follows: nothing is crossed until it says."""
    t = tracker(opened([("s1", CALL, "3"), ("s2", CALL, "-1")]))
    assert cross(t, broker={}) == []
    assert cross(t, broker={CALL: D(2)}) == []


@pytest.mark.parametrize("published", range(4))
def test_a_cross_cut_by_a_restart_is_finished_as_it_began(published: int) -> None:
    """The gateway published the first ``published`` of the cross's 4 fills
    and died; rebuilt from what was published, it publishes the rest, the
    same as an uncut run (quantities from the positions before the cross)."""
    holdings = opened([("s1", CALL, "3"), ("s2", CALL, "-1")])
    net = [activity("a1", "OPEXC", CALL, "-2"), activity("a2", "OPTRD", "SPY", "200", "600")]
    first = tracker(holdings)
    settled = settle(first, net)
    whole = cross(first, net, broker={"SPY": D(200)})
    assert len(whole) == 4
    before = whole[:published]
    rebuilt = tracker([*holdings, *settled, *before])
    assert settle(rebuilt, net) == []
    rest = cross(rebuilt, net, broker={"SPY": D(200)})
    assert [e.id for e in [*before, *rest]] == [e.id for e in whole]
    assert booked([*before, *rest]) == booked(whole)
    assert rebuilt.positions == first.positions


@pytest.mark.parametrize("published", range(1, 4))
def test_a_cross_cut_by_a_restart_keeps_its_outcome_when_the_activity_is_no_longer_listed(
    published: int,
) -> None:
    """As above, but the read after the restart no longer lists the broker's
    exercise (its activity list cut short). The positions netting to 0 and
    the broker holding none of the contract, the rest of the cross was made
    as ``expired``: the long side's contracts sold "expired" after its
    shares were bought "exercised", and cut after the long side's shares,
    the short side's shares never delivered (s1 +100 SPY and s2 none, the
    broker 200). A cross begun is finished as it began: as an exercise once
    one of its shares legs is published."""
    holdings = opened([("s1", CALL, "3"), ("s2", CALL, "-1")])
    net = [activity("a1", "OPEXC", CALL, "-2"), activity("a2", "OPTRD", "SPY", "200", "600")]
    first = tracker(holdings)
    settled = settle(first, net)
    whole = cross(first, net, broker={"SPY": D(200)})
    before = whole[:published]
    rebuilt = tracker([*holdings, *settled, *before])
    rest = cross(rebuilt, [], broker={"SPY": D(200)})
    assert booked([*before, *rest]) == booked(whole)
    assert [e.id for e in [*before, *rest]] == [e.id for e in whole]
    assert rebuilt.positions == first.positions


def buy_one_call(t: OrderTracker) -> SubmitOrder:
    """s1's buy of 1 more call, placed before the close, taken in by ``t``:
    its fill is not published yet (the gateway away over the close)."""
    working = SubmitOrder.create(
        SubmitOrderPayload(
            order_id=uuid.uuid4(),
            strategy="s1",
            account=ACCOUNT,
            symbol=CALL,
            side="buy",
            quantity=D(1),
            asset_class="option",
        ),
        source=SOURCE,
        clock=CLOCK,
    )
    t.evolve(working)
    return working


def filled(order: SubmitOrder) -> FillReceived:
    """``order``'s fill, late: whole, at 2.50."""
    return FillReceived.create(
        FillPayload(
            order_id=order.payload.order_id,
            account=ACCOUNT,
            broker_order_id="b-late",
            fill_id="f-late",
            symbol=order.payload.symbol,
            side=order.payload.side,
            quantity=order.payload.quantity,
            price=D("2.5"),
            cumulative_quantity=order.payload.quantity,
            leaves_quantity=D(0),
            status="complete",
            strategy=order.payload.strategy,
        ),
        source=SOURCE,
        clock=CLOCK,
    )


def test_a_contract_with_an_order_still_working_is_crossed_once_it_has_ended() -> None:
    """s1 +2 and s2 -2 by the fills published, and a buy of 1 more by s1,
    placed before the close, whose fill is not published yet (the gateway
    was away over the close: the reconciliation that fetches it runs beside
    the connection's read). The broker holds the net +1 and lists it
    expired (to s1: +1). Crossed then, s1's 1 met 1 of s2's 2, and the late
    fill left s1 +1 and s2 -1 in the expired contract for ever (a
    strategy's leg of a cross is one order, done once). The cross waits
    until no order in the contract may still fill; then s1's 2 meet s2's 2."""
    t = tracker(opened([("s1", CALL, "2"), ("s2", CALL, "-2")]))
    working = buy_one_call(t)
    net = [activity("a1", "OPEXP", CALL, "-1")]
    assert settle(t, net) == [], "s1's order may still fill: the broker's settlement waits too"
    assert cross(t, net, broker={}) == [], "s1's order may still fill"
    t.evolve(filled(working))
    assert booked(settle(t, net)) == [(CALL, "sell", "1", "0", "expired", "s1")]
    assert booked(cross(t, net, broker={})) == [
        (CALL, "buy", "2", "0", "expired", "s2"),
        (CALL, "sell", "2", "0", "expired", "s1"),
    ]
    assert t.position(CALL, "s1") == t.position(CALL, "s2") == 0
    assert held_expired(t, PAST) == []


class SettlingBroker:
    """A broker holding 1 call more than the fills published say (bought by
    hand, say) that settles it at the expiry at the moment of ``settles``:
    the positions and the activities of a read are each as of their call."""

    connected = True

    def __init__(self, settles: str) -> None:
        self.settles = settles
        self.held = [BrokerPosition(CALL, D(1), D("2.5"))]
        self.activities: list[BrokerActivity] = []

    def _settle(self, call: str) -> None:
        if call == self.settles and self.held:
            self.held = []
            self.activities = [
                activity("x1", "OPEXC", CALL, "-1"),
                activity("x2", "OPTRD", "SPY", "100", "600"),
            ]

    async def positions(self) -> list[BrokerPosition]:
        held = list(self.held)
        self._settle("positions")
        return held

    async def option_activities(self, *, after: dt.date) -> list[BrokerActivity]:
        listed = list(self.activities)
        self._settle("activities")
        return listed


class Published:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish(self, events: Sequence[Event]) -> None:
        self.events += events


class PastClock:
    def now_ns(self) -> int:
        return PAST


@pytest.mark.parametrize("settles", ["activities", "positions"])
async def test_a_settlement_between_a_reads_two_calls_is_not_taken_for_none(settles: str) -> None:
    """s1 +2 and s2 -2 by the fills published (net 0), and 1 call more at
    the broker. It exercises that 1 just after answering one of a read's
    two calls. Read after the activities, the positions showed none and
    the activities nothing: the net-0 cross closed s1's and s2's calls at
    0 as expired, though the broker had just exercised the contract. Read
    before them, a broker holding none has nothing left to settle, and
    what it settled before is in the activities: no cross at 0 while it
    held some, and once the exercise is listed the offsetting part follows
    it (exercised, with the shares)."""
    t = tracker(opened([("s1", CALL, "2"), ("s2", CALL, "-2")]))
    broker, outbox = SettlingBroker(settles), Published()
    worker = SimpleNamespace(
        account=ACCOUNT, port=broker, tracker=t, outbox=outbox, clock=PastClock(), source=SOURCE
    )
    reads = Settlements(worker)
    await reads.read(EXPIRY)
    await reads.read(EXPIRY)
    crossed = [b for b in booked(outbox.events) if b[5] is not None and b[0] == CALL]
    assert ("O:SPY261211C00600000", "sell", "2", "0", "expired", "s1") not in crossed
    assert {b[4] for b in crossed} == {"exercised", "assigned"}


def test_an_activity_of_a_contract_with_an_order_still_working_waits_for_it() -> None:
    """s1 holds 2 calls by the fills published and a buy of 1 more, placed
    before the close, whose fill is not published yet (the gateway away over
    the close). The broker exercises the 3. Split now, over s1's 2, the
    third went to no strategy with its 100 shares, and the late fill left s1
    +1 in the expired contract for ever. The activity (and its shares,
    listed before or after it) waits until no order in the contract may
    still fill; the next read books all 3 to s1."""
    t = tracker(opened([("s1", CALL, "2")]))
    working = buy_one_call(t)
    exercise = [
        activity("a2", "OPTRD", "SPY", "300", "600"),
        activity("a1", "OPEXC", CALL, "-3"),
    ]
    assert settle(t, exercise) == []
    assert settle(t, list(reversed(exercise))) == []
    t.evolve(filled(working))
    assert booked(settle(t, exercise)) == [
        ("SPY", "buy", "300", "600", "exercised", "s1"),
        (CALL, "sell", "3", "0", "exercised", "s1"),
    ]
    assert (t.position(CALL, "s1"), t.position("SPY", "s1")) == (D(0), D(300))


class ListingBroker:
    """A connected broker whose activities list the exercise of s1's call
    alone at the first read and its ``OPTRD`` too from the second on (the
    broker books the shares a moment after the contracts)."""

    connected = True

    def __init__(self) -> None:
        self.reads = 0

    async def wait_connected(self, timeout: float | None = None) -> bool:
        return True

    async def option_activities(self, *, after: dt.date) -> list[BrokerActivity]:
        self.reads += 1
        listed = [activity("a1", "OPEXC", CALL, "-1")]
        if self.reads > 1:
            listed.append(activity("a2", "OPTRD", "SPY", "100", "600"))
        return listed


async def test_an_exercise_read_without_its_shares_is_read_again_until_they_come(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read lists s1's exercised call but not yet its ``OPTRD``: the
    contract is published alone, and the account holds no contract past its
    expiry. The connection holds; the shares are listed from the next read
    on. The settlement task reads again (backing off as for a contract not
    settled yet) and publishes the 100 shares to s1. Before, it read again
    only for a held contract past its expiry or after a connection: the
    shares waited for the next reconnection or restart, the positions check
    reporting the difference meanwhile."""
    monkeypatch.setattr(settlement, "TICK_S", 0.01)
    t = tracker(opened([("s1", CALL, "1")]))
    broker, outbox = ListingBroker(), Published()
    worker = SimpleNamespace(
        account=ACCOUNT, port=broker, tracker=t, outbox=outbox, clock=PastClock(), source=SOURCE
    )
    task = asyncio.create_task(Settlements(worker).run())
    try:
        await eventually(lambda: t.position("SPY", "s1") == D(100), timeout=5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert booked(outbox.events) == [
        (CALL, "sell", "1", "0", "exercised", "s1"),
        ("SPY", "buy", "100", "600", "exercised", "s1"),
    ]
    assert broker.reads >= 2
    # Owed while the read lists the exercise (or assignment) without its
    # trade, whichever is listed first; not for an expiry.
    exercise, trade = (
        activity("a1", "OPEXC", CALL, "-1"),
        activity("a2", "OPTRD", "SPY", "100", "600"),
    )
    assert shares_owed([exercise])
    assert not shares_owed([trade, exercise])
    assert shares_owed([exercise, activity("a3", "OPTRD", "SPY", "100", "590")])
    assert not shares_owed([activity("a1", "OPEXP", CALL, "-1")])


def forgotten_buy(t: OrderTracker) -> uuid.UUID:
    """s1's buy of 1 more call, acknowledged by the broker, which then
    answers it does not know it (404, ``unknown_at_broker``)."""
    order_id = buy_one_call(t).payload.order_id
    t.submitted(
        order_id, BrokerOrder("b-late", str(order_id), CALL, "buy", D(1), D(0), None, "accepted")
    )
    assert t.unsettled()[0].order_id == order_id, "it may still fill"
    t.unknown_at_broker(order_id)
    return order_id


def test_an_order_the_broker_forgot_holds_an_expired_contract_back_no_more() -> None:
    """s1 +3 and s2 -1 by the fills published, and a buy of 1 more by s1
    that the broker acknowledged and, asked after the close, no longer knows
    (404). Its outcome is unknown, so it stays unsettled (reconciliations ask
    for it and say so). But past the contract's expiry no order in it can
    fill any more (the broker ends them at the close): the net 2 the broker
    expired goes to s1 and the offsetting 1 is crossed. Before, the order
    counted as one that may still fill for ever: the contract stayed held,
    its settlement and cross waited, and the settlement task read the
    activities every 5 minutes."""
    t = OrderTracker(ACCOUNT, clock=PastClock(), source=SOURCE)
    for e in opened([("s1", CALL, "3"), ("s2", CALL, "-1")]):
        t.evolve(e)
    order_id = forgotten_buy(t)
    assert [u.order_id for u in t.unsettled()] == [order_id], "still reported"
    net = [activity("a1", "OPEXP", CALL, "-2")]
    assert booked(settle(t, net)) == [(CALL, "sell", "2", "0", "expired", "s1")]
    assert booked(cross(t, net, broker={})) == [
        (CALL, "buy", "1", "0", "expired", "s2"),
        (CALL, "sell", "1", "0", "expired", "s1"),
    ]
    assert held_expired(t, PAST) == []


def test_an_order_the_broker_forgot_before_the_expiry_may_still_fill() -> None:
    """The same 404 before the contract's expiry (by the tracker's clock):
    the order could still fill, and an activity of its contract waits."""
    t = tracker(opened([("s1", CALL, "2")]))
    forgotten_buy(t)
    assert settle(t, [activity("a1", "OPEXP", CALL, "-2")]) == []


def test_an_order_the_broker_forgot_and_the_stream_brings_again_may_still_fill() -> None:
    """s1's buy of 1 more call, acknowledged, then answered 404 (the broker
    lost it for a while), then brought again by the stream: the broker knows
    it, so it is not forgotten any more, and past the expiry its contract's
    settlement waits for it as for any order that may still fill. Only a
    reconciliation's answer cleared ``forgotten``: the stream's update left
    the order counted as one that could no longer fill, and the net 2 the
    broker expired went to s1 before that order's fill was published."""
    t = OrderTracker(ACCOUNT, clock=PastClock(), source=SOURCE)
    for e in opened([("s1", CALL, "2")]):
        t.evolve(e)
    order_id = forgotten_buy(t)
    order = BrokerOrder("b-late", str(order_id), CALL, "buy", D(1), D(0), None, "accepted")
    assert t.on_update(OrderUpdate("accepted", order, PAST)) == [], "acknowledged already"
    assert order_id not in t.forgotten
    assert settle(t, [activity("a1", "OPEXP", CALL, "-2")]) == []


class RestartedBroker:
    """A connected broker after a gateway's restart: it lists s1's contracts
    expired (the net 2) and no longer knows s1's late buy (404), which it
    answers only after the first read of the activities (the start-up's
    reconciliation took longer than that read: many orders, a rate limit)."""

    connected = True
    broker = "paper"

    def __init__(self) -> None:
        self.reads = 0
        self.read = asyncio.Event()
        self.asked: list[str | None] = []

    async def wait_connected(self, timeout: float | None = None) -> bool:
        return True

    async def option_activities(self, *, after: dt.date) -> list[BrokerActivity]:
        self.reads += 1
        self.read.set()
        return [activity("a1", "OPEXP", CALL, "-2")]

    async def get_order(self, **ids: str | None) -> BrokerOrder | None:
        await self.read.wait()
        self.asked.append(ids.get("broker_order_id"))
        return None

    async def open_orders(self) -> list[BrokerOrder]:
        return []


async def test_after_a_restart_an_expired_contract_is_settled_once_its_order_is_found_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """s1 +2 and an acknowledged buy of 1 more by s1, recorded; the gateway
    restarts past the expiry. Nothing recorded says the broker answered 404
    for the buy before, so the rebuilt tracker has forgotten nothing and the
    start-up's read of the activities leaves the expired contract waiting for
    the buy's fill. The start-up's reconciliation then gets the 404: the
    settlements are read again at once and s1's 2 are booked expired. They
    waited for the settlement task's backoff instead (up to READ_MAX_S, 5
    minutes; here TICK_S, made 60 s: the test fails before it)."""
    monkeypatch.setattr(settlement, "TICK_S", 60.0)
    t = OrderTracker(ACCOUNT, clock=PastClock(), source=SOURCE)
    for e in opened([("s1", CALL, "2")]):
        t.evolve(e)
    late = buy_one_call(t)
    accepted = OrderAcceptedPayload(
        order_id=late.payload.order_id, account=ACCOUNT, broker_order_id="b-late", symbol=CALL
    )
    t.evolve(OrderAccepted.create(accepted, source=SOURCE, clock=CLOCK, cause=late))
    assert not t.forgotten
    broker, outbox = RestartedBroker(), Published()

    async def dead_letter(msg: object, error: str) -> None:
        raise AssertionError(error)

    w = AccountWorker(
        ACCOUNT,
        cast(Any, broker),
        t,
        cast(Any, outbox),
        clock=PastClock(),
        source=SOURCE,
        max_submit_delay_s=30,
        ack_wait_s=1.0,
        dead_letter=dead_letter,
    )
    w.want_reconcile(everything=True)  # as the start-up's connected does
    tasks = [
        asyncio.create_task(w.settlements.run()),
        asyncio.create_task(w.run_reconciliations()),
    ]
    try:
        await eventually(lambda: t.position(CALL, "s1") == 0, timeout=5)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert broker.asked == ["b-late"]
    assert late.payload.order_id in t.forgotten
    assert booked(outbox.events) == [(CALL, "sell", "2", "0", "expired", "s1")]
    assert broker.reads == 2, "the start-up's read, and the one after the 404"


class BuggyBroker(ListingBroker):
    """A broker whose first read of the activities raises what the gateway
    does not expect (a bug's KeyError, say in the adapter); from the second
    on it lists s1's exercise and its shares."""

    async def option_activities(self, *, after: dt.date) -> list[BrokerActivity]:
        listed = await super().option_activities(after=after)
        if self.reads == 1:
            raise KeyError("a bug")
        return listed


async def test_a_settlement_read_that_raises_unexpectedly_is_tried_again_not_the_gateway(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """s1 holds a call past its expiry; the first read of the activities
    raises a KeyError. Settlements.run caught only BrokerError: the error
    ended the settlement task, so the account's event task and main's
    TaskGroup, the whole gateway, and the start-up's read after a restart
    met it again. It is now said with its traceback and counted as a
    reconciliation given up, and the read is tried again after its backoff:
    the second read books s1's exercise."""
    from prometheus_client import REGISTRY

    monkeypatch.setattr(settlement, "TICK_S", 0.01)
    account = f"buggy-{uuid.uuid4().hex[:8]}"
    t = OrderTracker(account, clock=CLOCK, source=SOURCE)
    for e in opened([("s1", CALL, "1")]):
        # An account of its own: the counter below is this test's alone.
        payload = e.payload.model_copy(update={"account": account})
        t.evolve(e.model_copy(update={"payload": payload}))
    broker, outbox = BuggyBroker(), Published()
    worker = SimpleNamespace(
        account=account, port=broker, tracker=t, outbox=outbox, clock=PastClock(), source=SOURCE
    )
    task = asyncio.create_task(Settlements(worker).run())
    try:
        with caplog.at_level(logging.WARNING):
            await eventually(lambda: t.position("SPY", "s1") == D(100) or task.done(), timeout=5)
            assert not task.done(), task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert broker.reads == 2
    assert booked(outbox.events) == [
        ("SPY", "buy", "100", "600", "exercised", "s1"),
        (CALL, "sell", "1", "0", "exercised", "s1"),
    ]
    assert "KeyError: 'a bug'" in caplog.text
    assert "Traceback" in caplog.text
    given_up = REGISTRY.get_sample_value(
        "tradebus_broker_reconciliations_given_up_total", {"account": account}
    )
    assert given_up == 1
