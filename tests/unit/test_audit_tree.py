"""`tradebus audit` prints a chain as a tree: each leg of a signal whole."""

from __future__ import annotations

import uuid
from dataclasses import replace

from libs.store.queries import Recorded
from services.ops.cli import as_tree, uncaused


def ev(seq: int, name: str, cause: Recorded | None, root: uuid.UUID) -> Recorded:
    rid = root if cause is None else uuid.uuid5(root, name)
    return Recorded(
        seq=seq,
        id=rid,
        subject="x",
        type=name,
        ts_event=seq,
        ts_init=seq,
        source="test",
        correlation_id=root,
        causation_id=None if cause is None else cause.id,
        strategy=None,
        account=None,
        symbol=None,
        payload={},
        raw=None,
    )


def test_the_legs_of_a_two_intent_signal_read_one_after_the_other() -> None:
    root = uuid.uuid4()
    signal = ev(1, "signal", None, root)
    a, b = ev(2, "intent A", signal, root), ev(3, "intent B", signal, root)
    order_a, order_b = ev(4, "order A", a, root), ev(5, "order B", b, root)
    fill_b, fill_a = ev(6, "fill B", order_b, root), ev(7, "fill A", order_a, root)
    # The fill of an order recorded elsewhere (its cause is not in the chain).
    orphan = replace(fill_a, seq=8, id=uuid.uuid4(), type="stray", causation_id=uuid.uuid4())
    chain = [signal, a, b, order_a, order_b, fill_b, fill_a, orphan]
    assert [(r.type, depth) for r, depth in as_tree(chain)] == [
        ("signal", 0),
        ("intent A", 1),
        ("order A", 2),
        ("fill A", 3),
        ("intent B", 1),
        ("order B", 2),
        ("fill B", 3),
        ("stray", 0),
    ]


def test_a_settlement_s_fill_is_said_to_be_the_broker_s_settlement_not_a_hand_placed_order() -> (
    None
):
    """A settlement's fill (an option settled at expiry) has no cause: the
    broker did it, no order. Its audit said it was an order placed by hand
    or a flatten's unread close-all, booked to no strategy, while it was
    booked to the strategy that held the contract. An order placed by hand
    is still said to be one."""
    root = uuid.uuid4()
    by_hand = replace(
        ev(1, "FillReceived", None, root),
        payload={"broker_order_id": "b-hand", "symbol": "AAPL", "strategy": None},
    )
    assert "no tradebus command caused broker order b-hand" in uncaused([by_hand])
    settled = replace(
        by_hand,
        payload={
            "broker_order_id": "20261211210000000::a1",
            "symbol": "O:SPY261211C00600000",
            "strategy": "s1",
            "settlement": "exercised",
        },
    )
    said = uncaused([settled])
    assert "caused broker order" not in said, said
    assert "by hand" not in said, said
    assert "booked to no strategy" not in said, said
    assert "settled an option position at its contract's expiry" in said, said
    assert "20261211210000000::a1" in said, said
    assert "booked to s1" in said, said
