"""The paper broker's books (services/paper_broker/domain/book.py): pure, table-tested.

Orders, fills, positions, cancels and closes, and a journal replayed into the
books. Prints reported late: test_paper_book_late_prints; amounts of up to 38
digits: test_paper_book_amounts; day orders and option contracts expiring:
test_paper_book_expiry.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.paper_broker.domain.book import OrderSpec, Refused, TradeUpdate
from services.paper_broker.domain.fill_model import FillModelConfig, MarketUpdate
from tests.unit.paper_books import D, book, events


def test_market_order_fills_at_once_and_books_the_position() -> None:
    b = book(fill_model=FillModelConfig(slippage_bps=D(10)))
    b.on_market(MarketUpdate.trade("AAPL", D(200)))
    order, updates = b.submit("A", OrderSpec("AAPL", "buy", D(10), client_order_id="c1"))
    assert events(updates) == ["new", "fill"]
    assert order.status == "filled"
    assert order.filled_avg_price == D("200.2")
    fill = updates[1]
    assert (fill.qty, fill.price, fill.position_qty) == (D(10), D("200.2"), D(10))
    [pos] = b.positions("A")
    assert (pos.symbol, pos.qty, pos.avg_entry_price) == ("AAPL", D(10), D("200.2"))
    assert b.positions("B") == []


def test_a_client_order_id_used_before_is_refused_as_alpaca_does() -> None:
    """Alpaca answers a repeated client order id with 422 (40010001), not
    with the order: the paper broker does the same, and changes nothing."""
    b = book()
    b.on_market(MarketUpdate.trade("AAPL", D(200)))
    first, _ = b.submit("A", OrderSpec("AAPL", "buy", D(10), client_order_id="c1"))
    for spec in (
        OrderSpec("AAPL", "buy", D(10), client_order_id="c1"),  # the same order again
        OrderSpec("AAPL", "sell", D(10), client_order_id="c1"),  # another one
    ):
        with pytest.raises(Refused, match="client_order_id must be unique") as e:
            b.submit("A", spec)
        assert (e.value.status, e.value.code) == (422, 40010001)
    assert b.orders("A", "all") == [first]
    assert b.positions("A")[0].qty == D(10)
    # The same id in another account is another order.
    other, _ = b.submit("B", OrderSpec("AAPL", "buy", D(10), client_order_id="c1"))
    assert other.id != first.id


def test_large_order_fills_in_partial_fills_as_the_market_trades() -> None:
    b = book(fill_model=FillModelConfig(max_fill_quantity=D(100)))
    b.on_market(MarketUpdate.trade("MSFT", D(400)))
    order, updates = b.submit("A", OrderSpec("MSFT", "sell", D(250)))
    assert events(updates) == ["new", "partial_fill"]
    assert order.status == "partially_filled"
    u1 = b.on_market(MarketUpdate.trade("MSFT", D(401)))
    u2 = b.on_market(MarketUpdate.trade("MSFT", D(402)))
    assert events(u1 + u2) == ["partial_fill", "fill"]
    assert [u.qty for u in updates[1:] + u1 + u2] == [D(100), D(100), D(50)]
    final = b.order("A", order.id)
    assert final is not None
    assert final.filled_qty == D(250)
    assert final.filled_avg_price == D("400.8")  # (400*100 + 401*100 + 402*50) / 250
    fills = b.fills("A", order.id)
    assert [(f.cum_qty, f.leaves_qty, f.type) for f in fills] == [
        (D(100), D(150), "partial_fill"),
        (D(200), D(50), "partial_fill"),
        (D(250), D(0), "fill"),
    ]
    assert b.positions("A")[0].qty == D(-250)
    # Other symbols do not move it.
    assert b.on_market(MarketUpdate.trade("AAPL", D(1))) == []


def test_limit_order_rests_then_fills_when_crossed_and_cancel_rules() -> None:
    b = book()
    b.on_market(MarketUpdate.trade("AAPL", D(200)))
    order, updates = b.submit("A", OrderSpec("AAPL", "buy", D(5), "limit", limit_price=D(199)))
    assert events(updates) == ["new"]
    assert [o.id for o in b.orders("A")] == [order.id]
    assert b.on_market(MarketUpdate.trade("AAPL", D("199.5"))) == []
    [fill] = b.on_market(MarketUpdate.trade("AAPL", D("198.9")))
    assert (fill.event, fill.price) == ("fill", D("198.9"))  # better than the limit
    assert b.orders("A") == []
    with pytest.raises(Refused, match="not cancelable") as e:
        b.cancel("A", order.id)
    assert e.value.status == 422
    with pytest.raises(Refused, match="not found") as e:
        b.cancel("A", "nope")
    assert e.value.status == 404


def test_cancel_all_and_close_all() -> None:
    b = book()
    b.on_market(MarketUpdate.trade("AAPL", D(10)))
    b.on_market(MarketUpdate.trade("MSFT", D(20)))
    b.submit("A", OrderSpec("AAPL", "buy", D(3)))
    b.submit("A", OrderSpec("MSFT", "sell", D(2)))
    resting, _ = b.submit("A", OrderSpec("AAPL", "buy", D(1), "limit", limit_price=D(5)))
    entries, canceled = b.cancel_all("A")
    assert [(u.event, u.order.id) for u in canceled] == [("canceled", resting.id)]
    assert [(e.order.id, e.order.status, e.refused) for e in entries] == [
        (resting.id, "canceled", None)
    ]
    closings, updates = b.close_all("A")
    orders = [c.order for c in closings if c.order is not None]
    assert sorted((o.symbol, o.side, o.qty, o.status) for o in orders) == [
        ("AAPL", "sell", D(3), "filled"),
        ("MSFT", "buy", D(2), "filled"),
    ]
    assert events(updates) == ["new", "fill", "new", "fill"]
    assert b.positions("A") == []


@pytest.mark.parametrize(
    ("spec", "status", "message"),
    [
        (OrderSpec("AAPL", "buy", D(0)), 422, "qty must be > 0"),
        (OrderSpec("AAPL", "buy", D(1), "limit"), 422, "limit_price is required"),
        (OrderSpec("AAPL", "buy", D(1), "stop"), 422, "stop_price is required"),
        (OrderSpec("AAPL", "buy", D(1), "limit", limit_price=D(-1)), 422, "limit_price must be"),
        (OrderSpec("AAPL", "buy", D(1), "stop", "opg", stop_price=D(1)), 422, "market and limit"),
        (OrderSpec("AAPL", "buy", D(1), client_order_id="x" * 49), 422, "at most 48"),
        (OrderSpec("HALT", "buy", D(1)), 422, "not tradable"),
        (OrderSpec("AAPL", "buy", D(1001)), 403, "maximum order quantity"),
    ],
)
def test_bad_orders_are_refused_and_never_created(
    spec: OrderSpec, status: int, message: str
) -> None:
    b = book(max_order_quantity=D(1000), untradable_symbols=frozenset({"HALT"}))
    with pytest.raises(Refused, match=message) as e:
        b.submit("A", spec)
    assert e.value.status == status
    assert b.orders("A", "all") == []


def test_an_option_order_for_part_of_a_contract_is_refused() -> None:
    """Options trade in whole contracts: a broker refuses 1.5 of one (422) and
    places nothing; 2.0 is two contracts, and shares may be fractional."""
    option = "O:SPY241220P00720000"
    b = book()
    b.on_market(MarketUpdate.trade(option, D("1.25")))
    b.on_market(MarketUpdate.trade("AAPL", D(200)))
    for qty in (D("1.5"), D("0.01"), D("2.000000000001")):
        with pytest.raises(Refused, match="whole number of contracts") as e:
            b.submit("A", OrderSpec(option, "buy", qty, asset_class="us_option"))
        assert (e.value.status, e.value.code) == (422, 42210000)
    assert b.orders("A", "all") == []
    whole, _ = b.submit("A", OrderSpec(option, "buy", D("2.0"), asset_class="us_option"))
    part, _ = b.submit("A", OrderSpec("AAPL", "buy", D("0.5")))
    assert (whole.status, part.status) == ("filled", "filled")
    assert [(p.symbol, p.qty) for p in b.positions("A")] == [("AAPL", D("0.5")), (option, D(2))]


def test_an_option_order_fills_in_whole_contracts_under_a_fractional_fill_cap() -> None:
    """A ``max_fill_quantity`` of 2.5 splits shares in 2.5s, but an option
    order in whole contracts (2, then 2, then 1): never part of a contract,
    which no account can hold. A cap under one contract fills one at a time."""
    option = "O:SPY241220P00720000"
    for cap, expected in ((D("2.5"), [D(2), D(2), D(1)]), (D("0.5"), [D(1)] * 5)):
        b = book(fill_model=FillModelConfig(max_fill_quantity=cap))
        b.on_market(MarketUpdate.trade(option, D("1.25")))
        order, updates = b.submit("A", OrderSpec(option, "buy", D(5), asset_class="us_option"))
        while order.status != "filled":
            updates += b.on_market(MarketUpdate.trade(option, D("1.25")))
            order = b.order("A", order.id) or order
        fills = [u.qty for u in updates if u.execution_id is not None]
        assert fills == expected, cap
    b = book(fill_model=FillModelConfig(max_fill_quantity=D("2.5")))
    b.on_market(MarketUpdate.trade("AAPL", D(200)))
    _, updates = b.submit("A", OrderSpec("AAPL", "buy", D(5)))
    assert [u.qty for u in updates if u.execution_id is not None] == [D("2.5")]


def test_ioc_and_fok() -> None:
    b = book(fill_model=FillModelConfig(max_fill_quantity=D(10)))
    b.on_market(MarketUpdate.trade("AAPL", D(10)))
    ioc, u = b.submit("A", OrderSpec("AAPL", "buy", D(25), time_in_force="ioc"))
    assert events(u) == ["new", "partial_fill", "canceled"]
    assert (ioc.status, ioc.filled_qty) == ("canceled", D(10))
    fok, u = b.submit("A", OrderSpec("AAPL", "buy", D(25), time_in_force="fok"))
    assert events(u) == ["new", "canceled"]
    assert fok.filled_qty == 0
    fok, u = b.submit("A", OrderSpec("AAPL", "buy", D(10), time_in_force="fok"))
    assert events(u) == ["new", "fill"]
    _, u = b.submit("A", OrderSpec("AAPL", "buy", D(1), "limit", "ioc", limit_price=D(1)))
    assert events(u) == ["new", "canceled"]


@pytest.mark.parametrize(
    ("trades", "qty", "avg"),
    [
        ([("buy", 10, 100), ("buy", 10, 110)], 20, "105"),
        ([("buy", 10, 100), ("sell", 4, 120)], 6, "100"),  # reducing keeps the entry
        ([("buy", 10, 100), ("sell", 15, 120)], -5, "120"),  # flipped: entry is the flip
        ([("sell", 5, 50), ("sell", 5, 40)], -10, "45"),
    ],
)
def test_position_average_entry(trades: list[tuple[str, int, int]], qty: int, avg: str) -> None:
    b = book()
    for side, q, price in trades:
        b.on_market(MarketUpdate.trade("X", D(price)))
        b.submit("A", OrderSpec("X", side, D(q)))  # type: ignore[arg-type]
    [pos] = b.positions("A")
    assert (pos.qty, pos.avg_entry_price) == (D(qty), D(avg))


def test_replaying_the_updates_rebuilds_the_same_books() -> None:
    b = book(fill_model=FillModelConfig(max_fill_quantity=D(3)))
    journal: list[TradeUpdate] = []
    b.on_market(MarketUpdate.trade("AAPL", D(10)))
    journal += b.submit("A", OrderSpec("AAPL", "buy", D(5), client_order_id="c1"))[1]
    journal += b.on_market(MarketUpdate.trade("AAPL", D(11)))
    journal += b.submit("A", OrderSpec("AAPL", "sell", D(1), "limit", limit_price=D(50)))[1]
    journal += b.submit("B", OrderSpec("MSFT", "sell", D(2)))[1]  # no price yet: rests
    copy = book()
    assert copy.apply_all(journal) == len(journal)
    for acct in ("A", "B"):
        assert copy.orders(acct, "all") == b.orders(acct, "all")
        assert copy.positions(acct) == b.positions(acct)
        assert copy.fills(acct) == b.fills(acct)
    assert copy.by_client_order_id("A", "c1") == b.by_client_order_id("A", "c1")
    # The replayed working orders are live: the next price fills them.
    [fill] = copy.on_market(MarketUpdate.trade("MSFT", D(7)))
    assert (fill.order.account, fill.event) == ("B", "fill")


def test_finished_orders_are_forgotten_open_ones_and_positions_kept() -> None:
    """What a journal's compaction does to the books (forget_finished), and
    its snapshot (state) restored into an empty book gives them back."""
    b = book(fill_model=FillModelConfig(max_fill_quantity=D(3)))
    b.on_market(MarketUpdate.trade("AAPL", D(10)))
    done, _ = b.submit("A", OrderSpec("AAPL", "buy", D(3), client_order_id="done"))
    partly, _ = b.submit("A", OrderSpec("AAPL", "buy", D(5), client_order_id="partly"))
    resting, _ = b.submit("B", OrderSpec("AAPL", "sell", D(1), "limit", limit_price=D(50)))
    cutoff = b.clock.now_ns()
    late, _ = b.submit("B", OrderSpec("AAPL", "sell", D(2), client_order_id="late"))
    assert (done.status, partly.status, late.status) == ("filled", "partially_filled", "filled")

    assert b.forget_finished(cutoff) == 1
    assert b.order("A", done.id) is None
    assert b.by_client_order_id("A", "done") is None
    assert [f.order_id for f in b.fills("A")] == [partly.id], "its fills went with it"
    assert [o.id for o in b.orders("A")] == [partly.id]
    assert [o.id for o in b.orders("B", "all")] == [resting.id, late.id]
    assert [(p.symbol, p.qty) for p in b.positions("A")] == [("AAPL", D(6))]
    assert b.count_orders() == (3, 2)

    copy = book(fill_model=FillModelConfig(max_fill_quantity=D(3)))
    for entry in b.state():
        copy.restore(entry)
    for acct in ("A", "B"):
        assert copy.orders(acct, "all") == b.orders(acct, "all")
        assert copy.positions(acct) == b.positions(acct)
        assert copy.fills(acct) == b.fills(acct)
    # Restored working orders are live, in the order they came.
    fills = copy.on_market(MarketUpdate.trade("AAPL", D(60)))
    assert [(u.order.id, u.event) for u in fills] == [(partly.id, "fill"), (resting.id, "fill")]


def test_close_all_refuses_a_position_it_may_not_close_on_its_own() -> None:
    """A position whose closing order the broker refuses (above
    max_order_quantity, an untradable symbol) is one 403 entry of the 207;
    the orders canceled before it and the other positions' closings stand,
    and come with their updates. Until this the refusal escaped close_all:
    DELETE /v2/positions?cancel_orders=true answered 403 as a whole, its
    open orders were canceled in the books with no update sent or journaled
    (a restart brought them back; a journal compaction kept them canceled),
    and no other position was closed."""
    b = book(max_order_quantity=D(10))
    for symbol in ("AAPL", "MSFT"):
        b.on_market(MarketUpdate.trade(symbol, D(10)))
    for _ in range(2):
        b.submit("A", OrderSpec("AAPL", "buy", D(10)))  # 20: more than one order may close
    b.submit("A", OrderSpec("MSFT", "buy", D(3)))
    resting, _ = b.submit("A", OrderSpec("AAPL", "buy", D(1), "limit", limit_price=D(1)))
    b.config = replace(b.config, untradable_symbols=frozenset({"MSFT"}))  # since

    closings, updates = b.close_all("A", cancel_orders=True)
    assert [(u.event, u.order.id) for u in updates] == [("canceled", resting.id)]
    got = {c.symbol: c.refused for c in closings}
    assert set(got) == {"AAPL", "MSFT"}
    aapl, msft = got["AAPL"], got["MSFT"]
    assert aapl is not None
    assert (aapl.status, aapl.code) == (403, 40310000)
    assert msft is not None
    assert (msft.status, "not tradable" in msft.message) == (422, True)
    assert [(p.symbol, p.qty) for p in b.positions("A")] == [("AAPL", D(20)), ("MSFT", D(3))]

    b.config = replace(b.config, untradable_symbols=frozenset())
    closings, updates = b.close_all("A")
    assert [(c.symbol, c.refused is None) for c in closings] == [("AAPL", False), ("MSFT", True)]
    assert [p.symbol for p in b.positions("A")] == ["AAPL"], "MSFT closed beside the refusal"


def test_halted_symbol_is_accepted_then_rejected() -> None:
    b = book(halted_symbols=frozenset({"LULD"}))
    b.on_market(MarketUpdate.trade("LULD", D(5)))
    order, updates = b.submit("A", OrderSpec("LULD", "buy", D(1), client_order_id="h1"))
    assert events(updates) == ["new", "rejected"]
    assert order.status == "rejected"
    assert b.orders("A") == []
    assert b.positions("A") == []
    assert b.on_market(MarketUpdate.trade("LULD", D(4))) == []


def test_the_rest_of_a_marketable_limit_fills_at_the_market_not_at_its_limit() -> None:
    """A limit order marketable at submission but larger than one fill: the
    rest fills at each trade's price (never worse than the limit), as a
    market order would, not at the limit."""
    b = book(fill_model=FillModelConfig(max_fill_quantity=D(100)))
    b.on_market(MarketUpdate.trade("AAPL", D(100)))
    _, updates = b.submit("A", OrderSpec("AAPL", "buy", D(300), "limit", limit_price=D(110)))
    fills = [u for u in updates if u.execution_id is not None]
    fills += b.on_market(MarketUpdate.trade("AAPL", D(100)))
    fills += b.on_market(MarketUpdate.trade("AAPL", D(99)))
    assert [(str(u.qty), str(u.price)) for u in fills] == [
        ("100", "100"),
        ("100", "100"),
        ("100", "99"),
    ]
    sell = b.submit("A", OrderSpec("AAPL", "sell", D(150), "limit", limit_price=D(95)))[1]
    sold = [u for u in sell if u.execution_id is not None]
    sold += b.on_market(MarketUpdate.trade("AAPL", D(98)))
    assert [(str(u.qty), str(u.price)) for u in sold] == [("100", "99"), ("50", "98")]


def test_close_all_refuses_a_position_held_by_orders_unless_it_cancels_them() -> None:
    """Alpaca's close-all answers per position: one whose shares open orders
    hold is refused (403) unless ``cancel_orders``; a halted symbol's too."""
    b = book()
    for symbol, price in (("AAPL", 10), ("MSFT", 20), ("LULD", 5)):
        b.on_market(MarketUpdate.trade(symbol, D(price)))
        b.submit("A", OrderSpec(symbol, "buy", D(4)))
    b.submit("A", OrderSpec("AAPL", "sell", D(3), "limit", limit_price=D(50)))  # holds 3
    b.submit("A", OrderSpec("MSFT", "buy", D(1), "limit", limit_price=D(1)))  # holds none
    b.config = replace(b.config, halted_symbols=frozenset({"LULD"}))  # halted since
    closings, _ = b.close_all("A")
    got = {c.symbol: (c.order.status if c.order else None, c.refused) for c in closings}
    assert got["MSFT"] == ("filled", None)
    aapl, luld = got["AAPL"][1], got["LULD"][1]
    assert aapl is not None
    assert (aapl.status, aapl.code) == (403, 40310000)
    assert aapl.message == "insufficient qty available for order (requested: 4, available: 1)"
    assert luld is not None
    assert (luld.status, "halted" in luld.message) == (403, True)
    assert {p.symbol for p in b.positions("A")} == {"AAPL", "LULD"}

    closings, updates = b.close_all("A", cancel_orders=True)
    assert events(updates)[:2] == ["canceled", "canceled"]  # the limits, first
    assert [(c.symbol, c.refused is None) for c in closings] == [("AAPL", True), ("LULD", False)]
    assert [p.symbol for p in b.positions("A")] == ["LULD"]
