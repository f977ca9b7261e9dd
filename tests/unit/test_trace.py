"""libs.trace: hop marks, their files, and the hop table."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from libs import trace
from libs.contract.codec import order_id_for
from libs.contract.envelope import WallClock
from libs.contract.events import (
    OrderIntentCreated,
    OrderIntentPayload,
)
from libs.testing.producer import make_trades
from services.risk_gate.domain.commands import submit_order

MS = 1_000_000


def test_hop_table_measures_consecutive_marks_over_orders_that_have_them_all() -> None:
    by_key = {
        # a -> b -> c: 1 ms then 2 ms, 2 then 4, 3 then 6
        **{f"o{i}": [(0, "a"), (i * MS, "b"), (i * MS + 2 * i * MS, "c")] for i in (1, 2, 3)},
        "no-c": [(0, "a"), (50 * MS, "b")],  # left out: it never reached c
        "twice": [(0, "a"), (1 * MS, "b"), (2 * MS, "b"), (4 * MS, "c")],  # first b counts
    }
    hops = trace.hop_table(by_key, ["a", "b", "c"])
    assert [(h.start, h.end, h.count) for h in hops] == [("a", "b", 4), ("b", "c", 4)]
    a_b, b_c = hops
    assert (a_b.p50_ms, a_b.p99_ms) == (2.0, 3.0)
    assert (b_c.p50_ms, b_c.p99_ms) == (4.0, 6.0)


def test_hop_table_of_no_complete_order_is_empty() -> None:
    assert trace.hop_table({"x": [(0, "a")]}, ["a", "b"]) == []


def test_marks_are_written_per_process_and_read_back_by_key(tmp_path: Path) -> None:
    trace.mark("second", "k1", at_ns=20)
    trace.mark("first", "k1", at_ns=10)
    trace.mark("only", uuid.UUID(int=7), at_ns=5)
    path = trace.write(tmp_path)
    assert path is not None
    assert path.parent == tmp_path
    assert trace.write(tmp_path) is None  # nothing left to write
    (tmp_path / "other.trace").write_text("15\tfrom another process\tk1\n")
    marks = trace.read(tmp_path)
    assert marks["k1"] == [(10, "first"), (15, "from another process"), (20, "second")]
    assert marks[str(uuid.UUID(int=7))] == [(5, "only")]


def test_a_process_keeps_at_most_max_marks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(trace, "MAX_MARKS", 2)
    for i in range(5):
        trace.mark("m", f"k{i}")
    path = trace.write(tmp_path)
    assert path is not None
    assert len(path.read_text().splitlines()) == 2


def test_order_key_is_the_order_an_event_is_about() -> None:
    intent = OrderIntentCreated.create(
        OrderIntentPayload(
            strategy="s", account="paper", symbol="AAPL", side="buy", quantity=Decimal(1)
        ),
        source="test",
        clock=WallClock(),
    )
    order_id = order_id_for(intent.id)
    submit = submit_order(intent, intent.ts_init)  # the risk-gate's command for it
    assert trace.order_key(intent) == order_id
    assert trace.order_key(submit) == order_id
    assert trace.order_key(next(iter(make_trades(1, "test")))) is None
