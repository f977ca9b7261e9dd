"""The risk-gate state's indexes agree with their definitions: open quantities,
id sets, the trading-day window and the rate windows."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from libs.contract.events import (
    OrderCanceled,
    OrderCanceledPayload,
    OrderRejected,
    OrderRejectedPayload,
    SubmitOrder,
    SubmitOrderPayload,
)
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.limits import TradingDay
from services.risk_gate.domain.state import (
    CLOSED_KEPT,
    IdSet,
    RiskState,
    frozen_map,
    in_window,
    trading_day,
)
from tests.unit.risk_evolve_inputs import LIMITS, T0, D, S, ev, fill, start


def _open_quantity_by_definition(state: RiskState) -> dict[tuple[str, str | None, str], Any]:
    """The open orders' remaining quantity per book and side, summed afresh."""
    books: dict[tuple[str, str | None, str], list[Decimal]] = {}
    for o in state.orders.values():
        sides = books.setdefault((o.account, o.strategy, o.symbol), [D(0), D(0)])
        sides[0 if o.side == "buy" else 1] += o.remaining
    return {k: (b, s) for k, (b, s) in books.items() if b or s}


def test_open_quantity_index_agrees_with_the_open_orders() -> None:
    """The checks read ``open_quantity`` instead of going through the open
    orders: after every submit, partial or complete fill, cancel, reject and
    late fill, in two accounts (one traded by two strategies) and two
    symbols, it must say what summing the open orders says."""
    rng = random.Random(11)
    state = start()
    books = [("acct", "sma"), ("acct", "pairs"), ("b", "mr")]  # two strategies on acct
    ever: list[tuple[uuid.UUID, str, str, str]] = []  # order id, account, symbol, side
    for step in range(1_500):
        t = T0 + step * S // 100
        roll = rng.random()
        open_ids = list(state.orders)
        if roll < 0.35 or not open_ids:
            account, strategy = rng.choice(books)
            symbol, side = rng.choice(["AAPL", "MSFT"]), rng.choice(["buy", "sell"])
            oid = uuid.uuid4()
            payload = SubmitOrderPayload(
                order_id=oid,
                intent_id=uuid.uuid4(),
                strategy=strategy,
                account=account,
                symbol=symbol,
                side=side,
                quantity=D(rng.randint(1, 50)),
            )
            state = evolve(state, ev(SubmitOrder, payload, t))
            ever.append((oid, account, symbol, side))
        elif roll < 0.9:
            order = state.orders[rng.choice(open_ids)]
            part = rng.randint(1, int(order.remaining))
            leaves = str(order.remaining - part)
            if roll < 0.8:
                state = evolve(
                    state,
                    fill(
                        order.order_id,
                        part,
                        100,
                        side=order.side,
                        leaves=leaves,
                        account=order.account,
                        symbol=order.symbol,
                        t=t,
                    ),
                )
            elif roll < 0.85:
                payload_c = OrderCanceledPayload(order_id=order.order_id, account=order.account)
                state = evolve(state, ev(OrderCanceled, payload_c, t))
            else:
                payload_r = OrderRejectedPayload(
                    order_id=order.order_id, account=order.account, reason="no"
                )
                state = evolve(state, ev(OrderRejected, payload_r, t))
        else:  # a late fill, possibly of an order already closed
            oid, account, symbol, side = rng.choice(ever)
            late = fill(oid, 1, 100, side=side, leaves=0, account=account, symbol=symbol, t=t)
            state = evolve(state, late)
        expected = _open_quantity_by_definition(state)
        assert dict(state.open_quantity) == expected, step
        for account in ("acct", "b"):
            for symbol in ("AAPL", "MSFT"):
                per_strategy = [
                    expected.get((account, strategy, symbol), (D(0), D(0)))
                    for acct, strategy in books
                    if acct == account
                ]
                for (_, strategy), mine in zip(
                    [b for b in books if b[0] == account], per_strategy, strict=True
                ):
                    assert state.open_by_side(account, symbol, strategy) == mine
                assert state.open_by_side(account, symbol) == (
                    sum((b for b, _ in per_strategy), D(0)),
                    sum((s for _, s in per_strategy), D(0)),
                )
    assert len(ever) > 300, "the walk opened many orders"
    assert len(state.closed_orders) == CLOSED_KEPT, "and closed many"


def test_id_set_is_a_set() -> None:
    ids = [uuid.uuid4() for _ in range(1000)]
    s = IdSet()
    for x in ids:
        s = s.add(x)
    assert s.add(ids[3]) is s
    assert len(s) == 1000
    assert all(x in s for x in ids)
    assert uuid.uuid4() not in s
    assert set(s) == set(ids)


def test_id_set_versions_stay_valid_when_a_history_branches() -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    base = IdSet().add(a)
    left = base.add(b)  # the newest version: shares base's storage
    right = base.add(c)  # base is no longer the newest: a branch of its own
    again = base.add(b)  # the same id added to an old version twice
    assert (a in base, b in base, c in base) == (True, False, False)
    assert (b in left, c in left) == (True, False)
    assert (b in right, c in right) == (False, True)
    assert again == left
    assert again is not left
    assert left != right
    assert len(base) == 1
    assert (len(left), len(right)) == (2, 2)
    grown = left.add(c)  # left is still the newest of its own history
    assert set(grown) == {a, b, c}
    assert c not in left
    assert b not in right.add(a)


def _trading_day_by_wall_clock(ts_ns: int, day: TradingDay) -> dt.date:
    """The definition, computed afresh (no cached window)."""
    local = dt.datetime.fromtimestamp(ts_ns // S, tz=day.zone)
    start = dt.datetime.combine(local.date(), day.start, tzinfo=day.zone)
    return local.date() if local >= start else local.date() - dt.timedelta(days=1)


@pytest.mark.parametrize("start_at", ["04:00", "00:00", "01:30", "02:30", "23:59"])
def test_trading_day_window_agrees_with_the_definition_across_dst(start_at: str) -> None:
    # Every 7 minutes (and each second around the day's start) over the three
    # days around each 2026 DST change in New York, forwards and backwards.
    day = TradingDay(start=dt.time.fromisoformat(start_at))
    t0 = int(dt.datetime(2026, 3, 7, tzinfo=dt.UTC).timestamp())
    stamps = [t0 + k * 420 for k in range(24 * 60 // 7 * 3)]
    t1 = int(dt.datetime(2026, 10, 31, tzinfo=dt.UTC).timestamp())
    stamps += [t1 + k * 420 for k in range(24 * 60 // 7 * 3)]
    for s in list(stamps):
        local = dt.datetime.fromtimestamp(s, tz=day.zone)
        edge = dt.datetime.combine(local.date(), day.start, tzinfo=day.zone)
        stamps += [int(edge.timestamp()) + d for d in (-1, 0, 1)]
    for seconds in [*stamps, *reversed(stamps)]:
        ns = seconds * S + 999_999_999
        assert trading_day(ns, day) == _trading_day_by_wall_clock(ns, day), (start_at, seconds)


# ------------------------------------------------------------ rate windows


def test_rate_window_agrees_with_its_definition_when_the_clock_steps_back() -> None:
    """Kept ascending, trimmed and counted by bisection, the window must count
    what the definition counts (each submission trims what is no later than
    its own time minus the window; a count takes what is later than now minus
    the window), also when a submission's time is earlier than the one before
    it (a wall clock stepped back)."""
    rng = random.Random(7)
    window = 1_000
    times: tuple[int, ...] = ()
    reference: list[int] = []  # the definition, in arrival order
    t = 10_000
    for _ in range(2_000):
        t += rng.randint(-150, 60)  # mostly forward, sometimes back
        times = in_window(times, t, window)
        reference = [s for s in reference if s > t - window] + [t]
        assert list(times) == sorted(reference)
        state = replace(RiskState.initial(LIMITS), rate_windows=frozen_map({"k": times}))
        for now in (t, t + rng.randint(-window, 2 * window)):
            expected = sum(1 for s in reference if s > now - window)
            assert state.orders_in_window("k", now, window) == expected
