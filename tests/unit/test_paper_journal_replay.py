"""The paper broker's journal (services/paper_broker/adapters/journal.py)
replayed into new books after a restart: what the books held comes back, a
torn last line is cut off, and what older journals did not record is inferred."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import uuid
from decimal import Decimal
from pathlib import Path

import orjson

from libs.contract.envelope import WallClock
from services.paper_broker.adapters import wire
from services.paper_broker.adapters.journal import Journal
from services.paper_broker.adapters.server import PaperBrokerServer
from services.paper_broker.domain.book import BookConfig, OrderSpec, PaperBook
from services.paper_broker.domain.fill_model import FillModelConfig, MarketUpdate
from tests.unit.paper_ws import CREDS, SetClock, book, login, new_york_ns, recv, request, send


async def test_the_journal_brings_the_books_back(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    first = book()
    journal = Journal(path).open()
    async with PaperBrokerServer(first, CREDS, journal=journal) as s:
        s.market(MarketUpdate.trade("MSFT", Decimal(300)))
        ws = await login(s.port)
        body = {"symbol": "MSFT", "qty": "2", "side": "sell", "client_order_id": "c9"}
        assert (await request(ws, "POST", "/v2/orders", body))["status"] == 200
        await ws.close()
    journal.close()
    torn = b'{"account": "acct", "upd'
    with path.open("ab") as f:
        f.write(torn)  # a crash in the middle of a write
    second = book()
    assert second.apply_all(Journal(path).load()) == 2
    assert second.positions("acct") == first.positions("acct")
    assert second.by_client_order_id("acct", "c9") == first.by_client_order_id("acct", "c9")
    # The torn line is dropped when the journal is opened again, so what is
    # appended after it is read back, and the next start-up does not meet
    # it in the middle of the journal (which would be corruption).
    reopened = Journal(path).open()
    more = first.submit("acct", OrderSpec("MSFT", "buy", Decimal(1), client_order_id="c10"))[1]
    assert more
    reopened.append(more)
    reopened.close()
    third = book()
    assert third.apply_all(Journal(path).load()) == 2 + len(more)
    assert third.positions("acct") == first.positions("acct")
    assert torn not in path.read_bytes()


def test_the_market_s_time_an_order_was_placed_at_survives_a_restart(tmp_path: Path) -> None:
    """After a restart, a bar that began before an order was placed still
    fills it only at its close: the journal and its snapshot keep that time."""
    path = tmp_path / "journal.jsonl"
    first = book()
    journal = Journal(path).open()
    journal.append(first.on_market(MarketUpdate.trade("MSFT", Decimal(301), 50)))
    order, updates = first.submit(
        "acct", OrderSpec("MSFT", "buy", Decimal(1), "limit", limit_price=Decimal(300))
    )
    journal.append(updates)
    journal.close()
    assert order.placed_at_market_ns == 50
    second = book()
    second.apply_all(Journal(path).load())
    assert second.order("acct", order.id) == order
    third = book()
    for entry in list(first.state()):
        third.restore(wire.restored_from_record(wire.restored_record(entry)))
    assert third.order("acct", order.id) == order
    before = MarketUpdate.bar("MSFT", Decimal(299), Decimal(301), Decimal(299), Decimal(301), 60, 0)
    assert second.on_market(before) == third.on_market(before) == []


def test_a_torn_line_already_ended_by_a_newline_is_cut_off_too(tmp_path: Path) -> None:
    """Journals written before torn lines were cut off ended them with a
    newline instead: the next append would have buried them."""
    path = tmp_path / "journal.jsonl"
    b = book()
    b.on_market(MarketUpdate.trade("AAPL", Decimal(10)))
    journal = Journal(path).open()
    journal.append(b.submit("acct", OrderSpec("AAPL", "buy", Decimal(1)))[1])
    journal.close()
    good = path.read_bytes()
    with path.open("ab") as f:
        f.write(b'{"account": "acct", "upd\n')
    reopened = Journal(path).open()
    assert path.read_bytes() == good
    reopened.append(b.submit("acct", OrderSpec("AAPL", "sell", Decimal(1)))[1])
    reopened.close()
    copy = book()
    assert copy.apply_all(Journal(path).load()) == 4
    assert copy.positions("acct") == b.positions("acct")


def capped_book() -> PaperBook:
    """Fills of at most 100 per market update."""
    return PaperBook(
        BookConfig(fill_model=FillModelConfig(max_fill_quantity=Decimal(100))),
        clock=WallClock(),
        ids=lambda: str(uuid.uuid4()),
    )


async def test_a_stop_s_trigger_survives_a_restart(tmp_path: Path) -> None:
    """A stop reached is journaled: with the fill that follows it, or, if it
    filled nothing (a stop-limit whose limit the market is past), as a
    ``triggered`` update of its own, which no client is sent. After a restart
    the order does not have to cross its stop again."""
    path = tmp_path / "journal.jsonl"
    first = capped_book()
    journal = Journal(path).open()
    async with PaperBrokerServer(first, CREDS, journal=journal) as s:
        s.market(MarketUpdate.trade("AAPL", Decimal(100)))
        ws = await login(s.port)
        await send(ws, "listen", {"streams": ["trade_updates"]})
        assert (await recv(ws))["stream"] == "listening"
        stop = {"symbol": "AAPL", "qty": "300", "side": "sell", "type": "stop"}
        stop_limit = {"symbol": "AAPL", "qty": "5", "side": "sell", "type": "stop_limit"}
        for body in (
            {**stop, "stop_price": "95", "client_order_id": "stop"},
            {**stop_limit, "stop_price": "97", "limit_price": "96", "client_order_id": "sl"},
        ):
            assert (await request(ws, "POST", "/v2/orders", body))["status"] == 200
        # 94: the stop triggers and fills 100 of 300; the stop-limit triggers,
        # but 94 is below its limit: nothing fills.
        s.market(MarketUpdate.trade("AAPL", Decimal(94)))
        await send(ws, "request", {"id": "r", "method": "GET", "path": "/v2/orders"})
        streams = []
        while (message := await recv(ws))["stream"] != "response":
            streams.append((message["data"]["event"], message["data"]["order"]["client_order_id"]))
        await ws.close()
    journal.close()
    assert streams == [("partial_fill", "stop")]  # the stop-limit's trigger is not sent
    lines = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert [(r["update"]["event"], r.get("triggered")) for r in lines[-2:]] == [
        ("partial_fill", True),
        ("triggered", True),
    ]

    second = capped_book()
    second.apply_all(Journal(path).load())
    # 96.5: above both stops. Both were triggered: the stop fills 100 more, the
    # stop-limit (now a resting sell limit at 96) fills.
    fills = second.on_market(MarketUpdate.trade("AAPL", Decimal("96.5")))
    assert sorted((u.order.client_order_id, u.event, str(u.qty)) for u in fills) == [
        ("sl", "fill", "5"),
        ("stop", "partial_fill", "100"),
    ]


def test_an_old_journal_s_partly_filled_stop_is_triggered(tmp_path: Path) -> None:
    """Journals written before triggers were recorded: a stop that has filled
    anything was triggered."""
    path = tmp_path / "journal.jsonl"
    b = capped_book()
    b.on_market(MarketUpdate.trade("AAPL", Decimal(100)))
    journal = Journal(path).open()
    spec = OrderSpec("AAPL", "sell", Decimal(300), "stop", stop_price=Decimal(95))
    order, updates = b.submit("acct", spec)
    journal.append(updates)
    journal.append(b.on_market(MarketUpdate.trade("AAPL", Decimal(94))))
    journal.close()
    old = b"\n".join(
        orjson.dumps({k: v for k, v in json.loads(line).items() if k != "triggered"})
        for line in path.read_bytes().splitlines()
    )
    path.write_bytes(old + b"\n")
    assert b"triggered" not in path.read_bytes()
    copy = book()
    copy.apply_all(Journal(path).load())
    replayed = copy.order("acct", order.id)
    assert replayed is not None
    assert replayed.triggered
    assert replayed == b.order("acct", order.id)


async def test_a_day_order_expired_at_the_close_is_streamed_and_journaled(tmp_path: Path) -> None:
    """At the close a working day order goes to its account's listeners as
    Alpaca's ``expired`` update (``expired_at`` set), and a broker restarted
    from its journal still has it expired."""
    clock = SetClock(new_york_ns("2026-12-15 10:00"))
    config = BookConfig(day_orders_expire_at=dt.time(16, 0))
    counter = itertools.count(1)
    paper = PaperBook(config, clock=clock, ids=lambda: f"id-{next(counter)}")
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.open()
    async with PaperBrokerServer(paper, CREDS, journal=journal) as server:
        server.market(MarketUpdate.trade("AAPL", Decimal(10)))
        ws = await login(server.port)
        try:
            await send(ws, "listen", {"streams": ["trade_updates"]})
            await recv(ws)
            body = {"symbol": "AAPL", "qty": 3, "side": "buy", "type": "limit", "limit_price": 9}
            placed = await request(ws, "POST", "/v2/orders", body)  # its "new" is read past
            assert (placed["body"]["status"], placed["body"]["expired_at"]) == ("new", None)
            server.expire_orders()  # 10:00: not yet
            clock.ns = new_york_ns("2026-12-15 16:00")
            server.expire_orders()
            expired = (await recv(ws))["data"]
        finally:
            await ws.close()
    journal.close()
    assert expired["event"] == "expired"
    assert expired["order"]["id"] == placed["body"]["id"]
    assert expired["order"]["status"] == "expired"
    assert expired["order"]["expired_at"] == "2026-12-15T21:00:00.000000Z"
    again = PaperBook(config, clock=clock, ids=lambda: f"id-{next(counter)}")
    again.apply_all(Journal(path).load())
    order = again.order("acct", placed["body"]["id"])
    assert order is not None
    assert order.status == "expired"
    assert again.orders("acct", "open") == []
