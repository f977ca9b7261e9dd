"""The ids of every kind of fill the broker-gateway publishes, pinned.

Exactly once across restarts rests on them: a fill published again (the
stream and a reconciliation, a run before a restart and the one after) has
the same event id, which JetStream drops, and the same fill id, which the
risk-gate and the strategies' ledgers drop. Each kind is pinned here by what
its ids are made of, so that a change to how one is built shows:

- an order's fill (from the stream, inferred by a reconciliation);
- a flatten's closing fill, one per strategy whose position it closes;
- an option settlement's fills, one per strategy, also cut by a restart;
- an internal cross's legs.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from decimal import Decimal

import pytest

from libs.contract.codec import derived_id
from libs.contract.envelope import Event
from libs.contract.events import (
    FillPayload,
    FillReceived,
    FlattenAccount,
    FlattenAccountPayload,
    SubmitOrder,
    SubmitOrderPayload,
)
from services.broker_gateway.domain.model import (
    BrokerActivity,
    BrokerFill,
    BrokerOrder,
    OrderUpdate,
)
from services.broker_gateway.domain.tracker import OrderTracker
from services.broker_gateway.settlement import cross_events, settlement_events

D = Decimal
ACCOUNT = "acct"
SOURCE = "broker-gateway/test"
CALL = "O:SPY261211C00600000"  # SPY 600 call, expires Friday 2026-12-11
#: The contract's expiry, 2026-12-11 16:00 New York.
EXPIRY_NS = 1_797_022_800_000_000_000


class Clock:
    def now_ns(self) -> int:
        return EXPIRY_NS + 1


CLOCK = Clock()

#: (event id, order id, broker order id, fill id, cumulative, leaves,
#: strategy, causation id) of a fill.
Ids = tuple[uuid.UUID, uuid.UUID, str, str, str, str, str | None, uuid.UUID | None]


def ids(events: Sequence[Event]) -> list[Ids]:
    out: list[Ids] = []
    for e in events:
        assert isinstance(e, FillReceived)
        p = e.payload
        out.append(
            (
                e.id,
                p.order_id,
                p.broker_order_id,
                p.fill_id,
                str(p.cumulative_quantity),
                str(p.leaves_quantity),
                p.strategy,
                e.causation_id,
            )
        )
    return out


def row(
    order_id: uuid.UUID,
    broker_order_id: str,
    fill_id: str,
    cumulative: str,
    leaves: str,
    strategy: str | None,
    cause: uuid.UUID | None = None,
) -> Ids:
    """A fill's ids as they must be: its event id from (account, order id,
    cumulative quantity after it)."""
    event_id = derived_id("broker.fill", ACCOUNT, order_id, cumulative)
    return (event_id, order_id, broker_order_id, fill_id, cumulative, leaves, strategy, cause)


def tracker() -> OrderTracker:
    return OrderTracker(ACCOUNT, clock=CLOCK, source=SOURCE)


def submit(t: OrderTracker, strategy: str, symbol: str, side: str, qty: str) -> SubmitOrder:
    cmd = SubmitOrder.create(
        SubmitOrderPayload(
            order_id=uuid.uuid4(),
            strategy=strategy,
            account=ACCOUNT,
            symbol=symbol,
            side=side,
            quantity=D(qty),
        ),
        source="test",
        clock=CLOCK,
    )
    assert t.plan_submit(cmd)
    return cmd


def broker_order(
    broker_id: str, client_id: str, symbol: str, side: str, qty: str, filled: str, avg: str
) -> BrokerOrder:
    return BrokerOrder(
        broker_order_id=broker_id,
        client_order_id=client_id,
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        quantity=D(qty),
        filled_quantity=D(filled),
        filled_avg_price=D(avg),
        status="filled" if filled == qty else "partially_filled",
        updated_ns=9,
    )


def fill(o: BrokerOrder, qty: str, price: str, exec_id: str | None) -> OrderUpdate:
    f = BrokerFill(
        o.broker_order_id,
        o.client_order_id,
        o.symbol,
        o.side,
        D(qty),
        D(price),
        o.filled_quantity,
        o.quantity - o.filled_quantity,
        7,
        exec_id,
    )
    return OrderUpdate("fill", o, 7, fill=f)


def test_an_order_s_fills_ids() -> None:
    """From the stream, by the venue's execution id or, without one, by
    (broker order id, cumulative); inferred by a reconciliation, by
    ``reconciled:`` (broker order id, cumulative). Caused by the command."""
    t = tracker()
    cmd = submit(t, "s1", "AAPL", "buy", "10")
    oid, client = cmd.payload.order_id, str(cmd.payload.order_id)
    accepted, *first = t.on_update(
        fill(broker_order("b-1", client, "AAPL", "buy", "10", "2", "100"), "2", "100", "x1")
    )
    assert accepted.type == "OrderAccepted"
    second = t.on_update(
        fill(broker_order("b-1", client, "AAPL", "buy", "10", "5", "100"), "3", "100", None)
    )
    inferred = t.reconcile(broker_order("b-1", client, "AAPL", "buy", "10", "10", "100"), None)
    assert ids([*first, *second, *inferred]) == [
        row(oid, "b-1", "x1", "2", "8", "s1", cmd.id),
        row(oid, "b-1", "b-1:5", "5", "5", "s1", cmd.id),
        row(oid, "b-1", "reconciled:b-1:10", "10", "0", "s1", cmd.id),
    ]
    assert [e.ts_event for e in [*first, *second, *inferred]] == [7, 7, 9]


def test_a_closing_fill_s_ids_per_strategy() -> None:
    """A flatten's closing order, nobody's: its order id from (account,
    broker order id); one fill per strategy it closes, the first with the
    venue's fill id, the others told apart by strategy ("-": nobody)."""
    t = tracker()
    for strategy, qty in (("s1", "3"), ("s2", "2")):
        cmd = submit(t, strategy, "AAPL", "buy", qty)
        done = broker_order(
            f"b-{strategy}", str(cmd.payload.order_id), "AAPL", "buy", qty, qty, "100"
        )
        t.on_update(fill(done, qty, "100", f"x-{strategy}"))
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account=ACCOUNT, reason="breaker"), source="r", clock=CLOCK
    )
    t.flatten_started(flatten)
    closing = broker_order("c-1", "cx", "AAPL", "sell", "6", "6", "99")
    events = t.on_update(fill(closing, "6", "99", "e1"))
    oid = derived_id("broker.order", ACCOUNT, "c-1")
    assert [e.type for e in events[:1]] == ["OrderAccepted"]
    assert ids(events[1:]) == [
        row(oid, "c-1", "e1", "3", "3", "s1", flatten.id),
        row(oid, "c-1", "e1/s2", "5", "1", "s2", flatten.id),
        row(oid, "c-1", "e1/-", "6", "0", None, flatten.id),
    ]


@pytest.mark.parametrize("cut", [1, 2])
def test_a_closing_fill_cut_by_a_restart_is_finished_from_the_stream_as_it_began(
    cut: int,
) -> None:
    """The closing fill of 6 above, split s1 3, s2 2, nobody 1: the gateway
    published its first ``cut`` parts and died. Rebuilt from what was
    recorded, it gets the same fill from the stream again (cumulative 6): it
    publishes the rest only, split as the closing split began, with the
    event ids and fill ids of the uncut run (those a reconciliation gives).
    Before, the stream path published the whole fill again past the
    watermark (cumulative 9 and more): 6 more shares sold, booked to s2 and
    nobody, in a position the broker had closed."""
    live = tracker()
    recorded: list[Event] = []
    for strategy, qty in (("s1", "3"), ("s2", "2")):
        cmd = submit(live, strategy, "AAPL", "buy", qty)
        done = broker_order(
            f"b-{strategy}", str(cmd.payload.order_id), "AAPL", "buy", qty, qty, "100"
        )
        recorded += [cmd, *live.on_update(fill(done, qty, "100", f"x-{strategy}"))]
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account=ACCOUNT, reason="breaker"), source="r", clock=CLOCK
    )
    live.flatten_started(flatten)
    recorded.append(flatten)
    closing = broker_order("c-1", "cx", "AAPL", "sell", "6", "6", "99")
    accepted, *whole = live.on_update(fill(closing, "6", "99", "e1"))
    again = rebuilt([*recorded, accepted, *whole[:cut]])
    rest = again.on_update(fill(closing, "6", "99", "e1"))
    assert ids([*whole[:cut], *rest]) == ids(whole)
    assert again.positions == live.positions
    assert again.on_update(fill(closing, "6", "99", "e1")) == [], "nothing twice"
    # A reconciliation of the rebuilt tracker publishes the same event ids.
    reconciled = rebuilt([*recorded, accepted, *whole[:cut]]).reconcile(closing, None)
    assert [e.id for e in reconciled] == [e.id for e in rest]


def opened(holdings: Sequence[tuple[str, str]]) -> list[FillReceived]:
    """Fills that opened ``holdings`` ((strategy, signed calls)), one order each."""
    return [
        FillReceived.create(
            FillPayload(
                order_id=uuid.UUID(int=i + 1),
                account=ACCOUNT,
                broker_order_id=f"b-{i}",
                fill_id=f"f-{i}",
                symbol=CALL,
                side="buy" if D(qty) > 0 else "sell",
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
        for i, (strategy, qty) in enumerate(holdings)
    ]


def rebuilt(events: Sequence[Event]) -> OrderTracker:
    t = tracker()
    for e in events:
        t.evolve(e)  # type: ignore[arg-type]
    return t


EXERCISE = [
    BrokerActivity("a1", "OPEXC", CALL, D(-3)),
    BrokerActivity("a2", "OPTRD", "SPY", D(300), D(600)),
]


def test_a_settlement_s_fill_ids_also_when_cut_by_a_restart() -> None:
    """An activity's order id from (account, activity id); its first fill
    has the activity's id as fill id, the others are told apart by
    strategy, also when a restart cut them. No cause; at the expiry."""
    holdings = opened([("s2", "2"), ("s1", "1")])
    whole = settlement_events(rebuilt(holdings), EXERCISE)
    shares = derived_id("broker.settlement", ACCOUNT, "a2")
    contracts = derived_id("broker.settlement", ACCOUNT, "a1")
    expected = [
        row(shares, "a2", "a2", "100", "200", "s1"),
        row(shares, "a2", "a2/s2", "300", "0", "s2"),
        row(contracts, "a1", "a1", "1", "2", "s1"),
        row(contracts, "a1", "a1/s2", "3", "0", "s2"),
    ]
    assert [e.ts_event for e in whole] == [EXPIRY_NS] * 4
    assert ids(whole) == expected
    # Cut after the first share fill: the rest as they would have been.
    rest = settlement_events(rebuilt([*holdings, whole[0]]), EXERCISE)
    assert ids([whole[0], *rest]) == expected


def test_a_cross_s_leg_ids() -> None:
    """One order per (contract, strategy, leg), its one fill named
    ``cross/``(symbol, strategy, leg). No cause; at the expiry."""
    t = rebuilt(opened([("s1", "1"), ("s2", "-1")]))
    events = cross_events(t, [], {}, now_ns=EXPIRY_NS + 1)
    s2 = derived_id("broker.cross", ACCOUNT, CALL, "s2", "contracts")
    s1 = derived_id("broker.cross", ACCOUNT, CALL, "s1", "contracts")
    name = f"cross/{CALL}/%s/contracts"
    assert ids(events) == [
        row(s2, name % "s2", name % "s2", "1", "0", "s2"),
        row(s1, name % "s1", name % "s1", "1", "0", "s1"),
    ]
    assert [e.ts_event for e in events] == [EXPIRY_NS] * 2
