"""``cross_events`` (services/broker_gateway/domain/cross.py): strategies of
one account holding opposite positions in a contract. The broker holds (and
settles) only the net, so the offsetting part is settled inside tradebus,
once the broker has said how it settled the net."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest

from libs.contract.events import FillReceived
from libs.contract.options import parse_option
from services.broker_gateway.domain.model import (
    BrokerActivity,
    BrokerPosition,
)
from services.broker_gateway.settlement import (
    Settlements,
    held_expired,
)
from tests.unit.gateway_settlement_inputs import (
    ACCOUNT,
    CALL,
    EXPIRY,
    PAST,
    PUT,
    SOURCE,
    D,
    PastClock,
    Published,
    activity,
    booked,
    buy_one_call,
    cross,
    filled,
    opened,
    settle,
    tracker,
)


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
