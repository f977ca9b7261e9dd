"""A strategy ledger's positions keep when they were last opened from flat.

``Position.opened_ns`` is the market time of the fill that took the position
from flat (or through it, a flip); a fill that adds to it or closes part of
it keeps that time, one that closes it clears it. A strategy reads it through
its context (``ctx.position(symbol).opened_ns``), e.g. to tell today's entry
from a position carried in from an earlier day after a restart; the
strategy-runner's checkpoints carry it.
"""

from __future__ import annotations

import itertools
import uuid
from decimal import Decimal

import pytest

from libs.contract.events import FillPayload, Side
from libs.strategy.context import Position
from libs.strategy.ledger import Ledger
from services.strategy_runner.adapters import checkpoint

FILLS = itertools.count(1)


def fill(side: Side, quantity: str, price: str = "100", symbol: str = "AAPL") -> FillPayload:
    n = next(FILLS)
    return FillPayload(
        order_id=uuid.UUID(int=n),
        account="acct",
        broker_order_id=f"b-{n}",
        fill_id=f"f-{n}",
        symbol=symbol,
        side=side,
        quantity=Decimal(quantity),
        price=Decimal(price),
        cumulative_quantity=Decimal(quantity),
        leaves_quantity=Decimal(0),
        status="complete",
    )


def test_a_position_never_traded_or_flat_has_no_open_time() -> None:
    ledger = Ledger()
    assert ledger.position("AAPL").opened_ns is None
    assert Position("AAPL").opened_ns is None


def test_the_fill_that_opens_a_position_from_flat_gives_its_open_time() -> None:
    ledger = Ledger()
    assert ledger.apply_fill(fill("buy", "10"), 1_000)
    assert ledger.position("AAPL").opened_ns == 1_000


def test_adding_to_it_and_closing_part_of_it_keep_the_open_time() -> None:
    ledger = Ledger()
    ledger.apply_fill(fill("sell", "10"), 1_000)
    ledger.apply_fill(fill("sell", "5"), 2_000)
    assert ledger.position("AAPL").opened_ns == 1_000
    ledger.apply_fill(fill("buy", "12"), 3_000)
    pos = ledger.position("AAPL")
    assert (pos.quantity, pos.opened_ns) == (Decimal(-3), 1_000)


def test_closing_it_clears_the_open_time_and_reopening_sets_a_new_one() -> None:
    ledger = Ledger()
    ledger.apply_fill(fill("buy", "10"), 1_000)
    ledger.apply_fill(fill("sell", "10"), 2_000)
    pos = ledger.position("AAPL")
    assert (pos.quantity, pos.opened_ns) == (Decimal(0), None)
    ledger.apply_fill(fill("buy", "4"), 3_000)
    assert ledger.position("AAPL").opened_ns == 3_000


def test_a_flip_through_zero_reopens_it_at_the_flip() -> None:
    ledger = Ledger()
    ledger.apply_fill(fill("buy", "10"), 1_000)
    ledger.apply_fill(fill("sell", "15"), 2_000)
    pos = ledger.position("AAPL")
    assert (pos.quantity, pos.opened_ns) == (Decimal(-5), 2_000)


def test_a_fill_seen_twice_and_a_mark_leave_the_open_time_alone() -> None:
    ledger = Ledger()
    first = fill("buy", "10")
    ledger.apply_fill(first, 1_000)
    assert not ledger.apply_fill(first, 9_000)
    ledger.mark("AAPL", Decimal(101), 5_000)
    pos = ledger.position("AAPL")
    assert (pos.mark, pos.opened_ns) == (Decimal(101), 1_000)


def test_a_position_opened_with_a_price_already_seen_takes_the_fill_s_time() -> None:
    # Marked from the start by a price seen before it was held: the open
    # time is still the fill's, not the price's.
    ledger = Ledger()
    ledger.mark("AAPL", Decimal(99), 500)
    ledger.apply_fill(fill("buy", "1"), 1_000)
    assert ledger.position("AAPL").opened_ns == 1_000


@pytest.mark.parametrize("opened_ns", [None, 1_704_724_380_000_000_000])
def test_a_checkpoint_keeps_the_open_time(opened_ns: int | None) -> None:
    pos = Position(
        "AAPL", Decimal(10), Decimal(100), Decimal(0), Decimal(101), 2_000, opened_ns=opened_ns
    )
    assert checkpoint.decode(checkpoint.encode({"AAPL": pos})) == {"AAPL": pos}


def test_a_checkpoint_of_the_format_before_open_times_is_not_read() -> None:
    # Format 2 had no open time: it is refused (the rebuild folds the fills
    # again), not read as positions with none. Its digest differs too.
    assert checkpoint.FORMAT >= 3
    with pytest.raises(ValueError, match="not a position of format 3"):
        checkpoint.decode('{"AAPL": ["10", "100", "0", "101", 2000]}')
