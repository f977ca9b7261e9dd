"""The paper broker's journal compaction (services/paper_broker/adapters/journal.py).

A book is built through many orders over days (filled, partly filled, open,
stops triggered with and without a fill, canceled, rejected), journaled as
the server journals it; a restart from the compacted journal must give the
positions, open orders, their fills and the recent orders a full replay of
every update gives, and a crash in the middle of a compaction must leave a
journal that gives the whole state.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import sys
import textwrap
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from libs.testing.wait import eventually
from services.paper_broker import metrics
from services.paper_broker.adapters import journal as journal_module
from services.paper_broker.adapters.journal import COMPACTING_SUFFIX, Journal
from services.paper_broker.adapters.server import PaperBrokerServer
from services.paper_broker.domain.book import (
    CODE_DUPLICATE_CLIENT_ORDER_ID,
    OrderSpec,
    PaperBook,
    Refused,
)
from services.paper_broker.domain.fill_model import MarketUpdate, Side
from tests.unit.paper_books import Clock, new_book
from tests.unit.paper_ws import CREDS, login, request

D = Decimal
SYMBOLS = ("AAA", "BBB", "CCC")
ACCOUNTS = ("x", "y")
HOUR_NS = 3_600 * 10**9
ROOT = Path(__file__).resolve().parents[2]
DAY_S = 86_400


def trade(
    book: PaperBook, journal: Journal, clock: Clock, steps: int, seed: int = 7, tag: str = "c"
) -> None:
    """Random order flow, an hour between steps, journaled as the server does."""
    rng = random.Random(seed)
    last = dict.fromkeys(SYMBOLS, D(100))
    for s in SYMBOLS:
        journal.append(book.on_market(MarketUpdate.trade(s, last[s], clock.t)))
    for step in range(steps):
        clock.t += HOUR_NS
        account = rng.choice(ACCOUNTS)
        symbol = rng.choice(SYMBOLS)
        side: Side = rng.choice(("buy", "sell"))
        qty = D(rng.randint(1, 20))
        price = last[symbol]
        roll = rng.random()
        spec: OrderSpec | None = None
        if roll < 0.3:
            spec = OrderSpec(symbol, side, qty)
        elif roll < 0.45:  # far from the market: rests, open for good
            away = D(-30) if side == "buy" else D(30)
            spec = OrderSpec(symbol, side, qty, "limit", "gtc", limit_price=price + away)
        elif roll < 0.6:
            near = D(-1) if side == "buy" else D(1)
            spec = OrderSpec(symbol, side, qty, "limit", limit_price=price + near)
        elif roll < 0.7:
            stop = price + (D(2) if side == "buy" else D(-2))
            spec = OrderSpec(symbol, side, qty, "stop", stop_price=stop)
        elif roll < 0.78:  # triggered, then its limit is away from the market: rests
            stop = price + (D(1) if side == "buy" else D(-1))
            limit = price + (D(-20) if side == "buy" else D(20))
            spec = OrderSpec(symbol, side, qty, "stop_limit", "gtc", limit, stop)
        elif roll < 0.8:
            spec = OrderSpec("HALT", side, qty)
        elif roll < 0.88:
            working = [o for o in book.orders(account) if o.order_type != "limit" or step % 3]
            if working:
                journal.append(book.cancel(account, rng.choice(working).id))
        else:
            last[symbol] = max(D(1), price + D(rng.randint(-3, 3)))
            journal.append(book.on_market(MarketUpdate.trade(symbol, last[symbol], clock.t)))
        if spec is not None:
            spec = replace(spec, client_order_id=f"{tag}{step}")
            journal.append(book.submit(account, spec)[1])
        # Every step moves one symbol a little: partial fills go on, stops trigger.
        moving = SYMBOLS[step % len(SYMBOLS)]
        last[moving] = max(D(1), last[moving] + D(rng.choice((-2, -1, 1, 2))))
        journal.append(book.on_market(MarketUpdate.trade(moving, last[moving], clock.t)))


def replayed(path: Path, clock: Clock, **journal: Any) -> PaperBook:
    book = new_book(clock)
    Journal(path, **journal).replay(book)
    return book


def full_replay(path: Path, clock: Clock) -> PaperBook:
    """The start-up as it was: every update, nothing forgotten."""
    book = new_book(clock)
    book.apply_all(Journal(path).load())
    return book


def live(book: PaperBook) -> dict[str, Any]:
    """What must survive any compaction: positions, open orders, their fills."""
    out: dict[str, Any] = {}
    for a in ACCOUNTS:
        open_orders = book.orders(a, "open")
        ids = {o.id for o in open_orders}
        out[a] = {
            "positions": book.positions(a),
            "open": open_orders,
            "open_fills": [f for f in book.fills(a) if f.order_id in ids],
        }
    return out


def recent(book: PaperBook, since_ns: int) -> dict[str, Any]:
    """The orders finished since ``since_ns``, and their fills."""
    out: dict[str, Any] = {}
    for a in ACCOUNTS:
        orders = [o for o in book.orders(a, "closed") if o.updated_at_ns >= since_ns]
        ids = {o.id for o in orders}
        out[a] = (orders, [f for f in book.fills(a) if f.order_id in ids])
    return out


def everything(book: PaperBook) -> dict[str, Any]:
    return {a: (book.positions(a), book.orders(a, "all"), book.fills(a)) for a in ACCOUNTS}


def build(tmp_path: Path, steps: int = 600) -> tuple[Path, Clock]:
    clock = Clock()
    path = tmp_path / "journal.jsonl"
    journal = Journal(path).open()
    trade(new_book(clock), journal, clock, steps)
    journal.close()
    return path, clock


def copy(path: Path, name: str) -> Path:
    out = path.with_name(name)
    out.write_bytes(path.read_bytes())
    return out


def test_a_compacted_restart_has_the_books_of_a_full_replay(tmp_path: Path) -> None:
    path, clock = build(tmp_path)  # 600 hours: 25 days
    full = full_replay(path, clock)
    orders = [o for a in ACCOUNTS for o in full.orders(a, "all")]
    kinds = {(o.status, o.order_type, o.triggered) for o in orders}
    assert {("filled", "stop", True), ("rejected", "market", False)} <= kinds
    assert ("new", "stop_limit", True) in kinds, "an open stop triggered that filled nothing"
    assert any(o.status == "canceled" for o in orders)
    assert any(o.is_open and o.filled_qty for o in orders), "an open order partly filled"

    # Keeping every finished order, the snapshot is the whole book.
    whole = copy(path, "whole.jsonl")
    first = replayed(whole, clock)
    Journal(whole).compact(first)
    assert orjson.loads(whole.read_bytes().split(b"\n", 1)[0])["snapshot"]["kept_since"] is None
    assert everything(replayed(whole, clock)) == everything(full)

    # Keeping five days: what is live and the last five days' orders are the same.
    window: dict[str, Any] = {"keep_finished_s": 5 * DAY_S}
    since = clock.t - 5 * DAY_S * 10**9
    compacted = copy(path, "compacted.jsonl")
    booted = replayed(compacted, clock, **window)
    done = Journal(compacted, **window).compact(booted)
    assert done.orders_open > 0
    assert done.bytes_after < done.bytes_before / 3, "most of the journal was old history"
    after = replayed(compacted, clock, **window)
    assert live(after) == live(full)
    assert recent(after, since) == recent(full, since)
    held, _ = after.count_orders()
    assert held == done.orders_kept < sum(len(full.orders(a, "all")) for a in ACCOUNTS)
    assert all(
        o.is_open or o.updated_at_ns >= since for a in ACCOUNTS for o in after.orders(a, "all")
    )

    # Trading goes on after the snapshot, on both; each restarts the same.
    start = clock.t
    for name, book in (("full", full), ("compacted", after)):
        clock.t = start  # both books' clock
        journal = Journal(path if name == "full" else compacted).open()
        ids = itertools.count()
        book.ids = lambda ids=ids: f"d{next(ids)}"  # type: ignore[misc]  # new ids, the same on both
        trade(book, journal, clock, 200, seed=11, tag="d")
        journal.close()
    later = Clock(clock.t)
    again, reference = replayed(compacted, later, **window), full_replay(path, later)
    assert live(again) == live(reference)
    since = later.t - 5 * DAY_S * 10**9
    assert recent(again, since) == recent(reference, since)
    assert sum(len(orders) for orders, _ in recent(again, since).values()) > 50


def test_a_journal_never_compacted_is_replayed_forgetting_as_it_goes(tmp_path: Path) -> None:
    """A journal from before compaction: the replay keeps only the window (so
    its memory is what is kept), with the same live books."""
    path, clock = build(tmp_path)
    book = replayed(path, clock, keep_finished_s=2 * DAY_S)
    full = full_replay(path, clock)
    assert live(book) == live(full)
    assert book.count_orders()[0] < full.count_orders()[0] / 2


def forgotten_total() -> float:
    return float(metrics.ORDERS_FORGOTTEN._value.get())


def test_what_a_replay_forgets_is_counted(tmp_path: Path) -> None:
    """At start-up the replay forgets (every order past the window since the
    last compaction), so the compaction after it has nothing left to forget:
    until this, tradebus_paper_orders_forgotten_total stayed at 0 and the log
    said "0 finished forgotten" at every start-up."""
    path, clock = build(tmp_path)
    window: dict[str, Any] = {"keep_finished_s": 2 * DAY_S}
    before = forgotten_total()
    book = replayed(path, clock, **window)
    held = book.count_orders()[0]
    assert forgotten_total() - before == full_replay(path, clock).count_orders()[0] - held > 0
    assert Journal(path, **window).compact(book).orders_forgotten == 0
    clock.t += DAY_S * 10**9  # a day later, from the snapshot
    before = forgotten_total()
    again = replayed(path, clock, **window)
    assert forgotten_total() - before == held - again.count_orders()[0] > 0


def test_a_recent_client_order_id_is_still_refused_after_compaction(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "journal.jsonl"
    journal = Journal(path, keep_finished_s=DAY_S).open()
    book = new_book(clock)
    journal.append(book.on_market(MarketUpdate.trade("AAA", D(10))))
    journal.append(book.submit("x", OrderSpec("AAA", "buy", D(1), client_order_id="old"))[1])
    clock.t += 3 * DAY_S * 10**9
    journal.append(book.submit("x", OrderSpec("AAA", "buy", D(2), client_order_id="recent"))[1])
    journal.compact(book)
    journal.close()

    restarted = replayed(path, clock, keep_finished_s=DAY_S)
    order = restarted.by_client_order_id("x", "recent")
    assert order is not None
    assert (order.status, order.filled_qty) == ("filled", D(2))
    with pytest.raises(Refused) as e:
        restarted.submit("x", OrderSpec("AAA", "buy", D(5), client_order_id="recent"))
    assert (e.value.status, e.value.code) == (422, CODE_DUPLICATE_CLIENT_ORDER_ID)
    # Three days old: forgotten, as the README says (Alpaca would still know it).
    assert restarted.by_client_order_id("x", "old") is None
    [position] = restarted.positions("x")
    assert position.qty == D(3), "the forgotten order's shares are still held"


def test_a_restart_forgets_the_fills_of_the_orders_it_forgets_in_the_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window has moved since the snapshot: the replay forgets, every
    FORGET_EVERY entries, orders the snapshot holds, and their fill
    activities come after them in it. Until this, the fills read after that
    were kept, for orders no longer found, and written into every snapshot
    after (nothing forgets them any more)."""
    path, clock = build(tmp_path)
    window: dict[str, Any] = {"keep_finished_s": 5 * DAY_S}
    Journal(path, **window).compact(replayed(path, clock, **window))
    clock.t += 2 * DAY_S * 10**9
    # A snapshot of 20,000 entries and more (a busy account) does it; this one is smaller.
    monkeypatch.setattr(journal_module, "FORGET_EVERY", 50)
    book = replayed(path, clock, **window)
    reference = full_replay(path, clock)
    assert reference.forget_finished(clock.t - 5 * DAY_S * 10**9) > 0
    assert everything(book) == everything(reference)
    for a in ACCOUNTS:
        held = {o.id for o in book.orders(a, "all")}
        assert {f.order_id for f in book.fills(a)} <= held


async def test_the_server_compacts_its_journal_when_it_grows(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "journal.jsonl"
    journal = Journal(path, keep_finished_s=DAY_S, compact_bytes=20_000).open()
    book = new_book(clock)
    async with PaperBrokerServer(book, CREDS, journal=journal) as server:
        server.market(MarketUpdate.trade("AAA", D(10)))
        ws = await login(server.port)
        for i in range(100):
            clock.t += HOUR_NS
            if i % 10 == 0:  # rests: open for good
                body = {"symbol": "AAA", "qty": "1", "side": "buy", "type": "limit"}
                body |= {"limit_price": "5", "time_in_force": "gtc", "client_order_id": f"l{i}"}
                assert (await request(ws, "POST", "/v2/orders", body))["status"] == 200
            body = {"symbol": "AAA", "qty": "1", "side": "sell", "client_order_id": f"m{i}"}
            assert (await request(ws, "POST", "/v2/orders", body))["status"] == 200
        # The last day's orders are still found and refused again.
        again = await request(ws, "POST", "/v2/orders", body)
        assert (again["status"], again["body"]["code"]) == (422, CODE_DUPLICATE_CLIENT_ORDER_ID)
        assert (await request(ws, "GET", "/v2/orders:by_client_order_id?client_order_id=m99"))[
            "body"
        ]["status"] == "filled"
        await ws.close()
    journal.close()
    first = orjson.loads(path.read_bytes().split(b"\n", 1)[0])
    assert "snapshot" in first, "the journal was written anew as a snapshot"
    assert path.stat().st_size < 100_000, "uncompacted, 110 orders and their fills: ~250 kB"
    account = CREDS[0].account
    assert [p.qty for p in book.positions(account)] == [D(-100)]
    assert len(book.orders(account)) == 10
    held = book.orders(account, "all")
    assert len(held) < 110, "orders past the day were forgotten"
    # Nothing more forgotten at the restart: the same books exactly.
    restarted = replayed(path, clock)
    assert restarted.positions(account) == book.positions(account)
    assert restarted.orders(account, "all") == held
    assert restarted.fills(account) == book.fills(account)
    # The day counted from now: what the live book forgets at its next compaction.
    restarted = replayed(path, clock, keep_finished_s=DAY_S)
    book.forget_finished(clock.t - DAY_S * 10**9)
    assert restarted.orders(account, "all") == book.orders(account, "all")
    assert restarted.fills(account) == book.fills(account)


def test_a_compaction_left_by_a_crash_is_ignored(tmp_path: Path) -> None:
    path, clock = build(tmp_path, steps=200)
    expected = everything(full_replay(path, clock))
    # What a crash in the middle of a compaction leaves: half a snapshot
    # beside the journal (the journal itself is the old one, whole).
    scratch = copy(path, "scratch.jsonl")
    Journal(scratch).compact(replayed(scratch, clock))
    snapshot = scratch.read_bytes()
    leftover = path.with_name(path.name + COMPACTING_SUFFIX)
    leftover.write_bytes(snapshot[: len(snapshot) // 2])
    assert everything(replayed(path, clock)) == expected
    Journal(path).open().close()
    assert not leftover.exists(), "removed when the journal is opened"
    assert everything(replayed(path, clock)) == expected


def test_a_compaction_that_fails_leaves_the_journal_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, clock = build(tmp_path, steps=200)
    before = path.read_bytes()
    expected = everything(full_replay(path, clock))
    journal = Journal(path, keep_finished_s=DAY_S).open()
    book = replayed(path, clock)

    def full_disk(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        journal.compact(book)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not journal.compacting_path.exists()
    journal.append(book.submit("x", OrderSpec("AAA", "buy", D(1), client_order_id="after"))[1])
    journal.close()
    restarted = full_replay(path, clock)
    assert restarted.by_client_order_id("x", "after") is not None
    assert everything(restarted)["y"] == expected["y"]


def test_a_snapshot_cut_short_is_refused_as_corrupt(tmp_path: Path) -> None:
    path, clock = build(tmp_path, steps=50)
    Journal(path).compact(replayed(path, clock))
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-2]))  # the end marker lost, and a line with it
    with pytest.raises(ValueError, match=r"cut short|corrupt"):
        replayed(path, clock)
    path.write_bytes(b"".join([lines[0], *lines[2:], lines[1]]))  # a position after the end
    with pytest.raises(ValueError, match="corrupt"):
        replayed(path, clock)


KILLER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tests.unit.paper_books import Clock, new_book
    from services.paper_broker.adapters.journal import Journal

    path = Path(sys.argv[1])
    clock = Clock(int(sys.argv[2]))
    while True:  # compacts again and again until killed
        book = new_book(clock)
        journal = Journal(path)
        journal.replay(book)
        journal.compact(book)
    """
)


# 0: as soon as the new file exists (often still empty); 1: once some of it
# is written (the snapshot goes out in writes of 1,000 lines, so often all
# of it, before or during its fsync and rename).
@pytest.mark.parametrize("at_byte", [0, 1])
async def test_kill_9_during_compaction_leaves_the_whole_state(
    tmp_path: Path, at_byte: int
) -> None:
    path, clock = build(tmp_path, steps=400)
    expected = everything(full_replay(path, clock))
    leftover = path.with_name(path.name + COMPACTING_SUFFIX)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-c", KILLER, str(path), str(clock.t)]
    proc = await asyncio.create_subprocess_exec(*args, env=env)
    try:
        # Killed while a snapshot is being written (at least at_byte of it):
        # the new file exists only until its rename.
        await eventually(
            lambda: leftover.exists() and leftover.stat().st_size >= at_byte, timeout=60
        )
        proc.send_signal(signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL, "killed, in the middle of a compaction"
    assert everything(replayed(path, clock)) == expected
    Journal(path).open().close()
    assert not leftover.exists()
