"""Opening and closing auction orders at the paper broker (time in force
``opg`` / ``cls``: services/paper_broker/domain/auction.py and the book).

Until these, the paper broker refused both (422 "not supported"), so a
strategy in shadow mode that trades at the open or the close was refused on
its paper account, though Alpaca takes such orders.
"""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from services.paper_broker.domain.auction import session_for
from services.paper_broker.domain.book import (
    BookConfig,
    OrderSpec,
    PaperBook,
    Refused,
    TimeInForce,
    TradeUpdate,
)
from services.paper_broker.domain.fill_model import FillModelConfig, MarketUpdate

D = Decimal
NY = ZoneInfo("America/New_York")


def ny_ns(text: str) -> int:
    """``2026-12-08 10:00`` New York time, in ns."""
    local = dt.datetime.fromisoformat(text).replace(tzinfo=NY)
    return int(local.timestamp() * 1_000_000) * 1_000


class SetClock:
    def __init__(self, ns: int) -> None:
        self.ns = ns

    def now_ns(self) -> int:
        return self.ns


def book(at: str, **kwargs: object) -> tuple[PaperBook, SetClock]:
    clock = SetClock(ny_ns(at))
    counter = itertools.count(1)
    config = BookConfig(**kwargs)  # type: ignore[arg-type]
    return PaperBook(config, clock=clock, ids=lambda: f"id-{next(counter)}"), clock


def trade(symbol: str, price: str, at: str) -> MarketUpdate:
    return MarketUpdate.trade(symbol, D(price), ny_ns(at))


def minute_bar(symbol: str, open_: str, close: str, start: str) -> MarketUpdate:
    """A one-minute bar from ``start``, ranging from its open to its close."""
    o, c = D(open_), D(close)
    begins = ny_ns(start)
    return MarketUpdate.bar(symbol, o, max(o, c), min(o, c), c, begins + 60 * 10**9, begins)


def seen(updates: list[TradeUpdate]) -> list[tuple[str, str, Decimal | None]]:
    return [(u.event, u.order.client_order_id, u.price) for u in updates]


@pytest.mark.parametrize(
    ("placed", "tif", "auction"),
    [
        # 2026-12-08 is a Tuesday.
        ("2026-12-08 09:27:59", "opg", "2026-12-08 09:30"),
        ("2026-12-08 00:30", "opg", "2026-12-08 09:30"),
        ("2026-12-08 09:28", "opg", None),  # Alpaca: refused from 09:28 ...
        ("2026-12-08 12:00", "opg", None),
        ("2026-12-08 18:59:59", "opg", None),  # ... to 19:00
        ("2026-12-08 19:00", "opg", "2026-12-09 09:30"),  # then for the next open
        ("2026-12-11 20:00", "opg", "2026-12-14 09:30"),  # Friday evening: Monday's
        ("2026-12-12 12:00", "opg", "2026-12-14 09:30"),  # Saturday: Monday's
        ("2026-12-08 15:49:59", "cls", "2026-12-08 16:00"),
        ("2026-12-08 08:00", "cls", "2026-12-08 16:00"),
        ("2026-12-08 15:50", "cls", None),  # refused from 15:50 ...
        ("2026-12-08 18:59:59", "cls", None),  # ... to 19:00
        ("2026-12-08 19:00", "cls", "2026-12-09 16:00"),
        ("2026-12-13 15:55", "cls", "2026-12-14 16:00"),  # Sunday: Monday's
        ("2026-03-06 20:00", "cls", "2026-03-09 16:00"),  # across the spring clock change
        # 2025-11-28 is a half day (13:00 close); 2025-11-27 Thanksgiving.
        ("2025-11-28 12:49:59", "cls", "2025-11-28 13:00"),
        ("2025-11-28 12:50", "cls", None),  # ten minutes before the early close
        ("2025-11-28 14:00", "cls", None),  # its close has passed: not for it
        ("2025-11-28 19:00", "cls", "2025-12-01 16:00"),
        ("2025-11-28 09:00", "opg", "2025-11-28 09:30"),
        ("2025-11-27 12:00", "opg", "2025-11-28 09:30"),  # a holiday: no session, the next
        ("2025-11-27 12:00", "cls", "2025-11-28 13:00"),
        ("2025-11-26 19:00", "opg", "2025-11-28 09:30"),  # the evening before a holiday
        ("2025-12-31 20:00", "cls", "2026-01-02 16:00"),
    ],
)
def test_the_auction_an_order_is_for_follows_alpacas_windows(
    placed: str, tif: str, auction: str | None
) -> None:
    session = session_for(ny_ns(placed), tif)
    if auction is None:
        assert session is None
    else:
        assert session is not None
        assert session.auction_ns(tif) == ny_ns(auction)


@pytest.mark.parametrize(
    ("at", "spec", "message"),
    [
        ("2026-12-08 09:29", OrderSpec("AAPL", "buy", D(1), time_in_force="opg"), "from 09:28"),
        ("2026-12-08 15:50", OrderSpec("AAPL", "sell", D(1), time_in_force="cls"), "from 15:50"),
        (
            "2025-11-28 12:55",
            OrderSpec("AAPL", "sell", D(1), time_in_force="cls"),
            "from 12:50 to 19:00 New York",
        ),
        (
            "2026-12-08 08:00",
            OrderSpec("AAPL", "buy", D(1), "stop", "opg", stop_price=D(210)),
            "market and limit orders only",
        ),
        (
            "2026-12-08 08:00",
            OrderSpec(
                "O:SPY261218C00500000", "buy", D(1), "market", "cls", asset_class="us_option"
            ),
            "not supported for options",
        ),
    ],
)
def test_an_auction_order_outside_its_window_or_of_another_type_is_refused(
    at: str, spec: OrderSpec, message: str
) -> None:
    b, _ = book(at)
    with pytest.raises(Refused, match=message) as e:
        b.submit("A", spec)
    assert (e.value.status, e.value.code) == (422, 42210000)
    assert b.orders("A", "all") == []


def test_a_market_on_open_order_fills_whole_at_the_first_print_of_the_open() -> None:
    """Placed before the open, it fills neither at submission nor on a
    pre-market print, then whole at the first trade at or after 09:30, with
    no slippage and no partial-fill cap (one cross at one price); a day
    order beside it fills at once, as before."""
    fills = FillModelConfig(slippage_bps=D(10), max_fill_quantity=D(10))
    b, clock = book("2026-12-08 08:00", fill_model=fills)
    b.on_market(trade("AAPL", "200", "2026-12-08 07:59"))
    moo, placed = b.submit(
        "A", OrderSpec("AAPL", "buy", D(50), time_in_force="opg", client_order_id="moo")
    )
    assert seen(placed) == [("new", "moo", None)]
    assert moo.status == "new"
    clock.ns = ny_ns("2026-12-08 09:29:59")
    assert b.on_market(trade("AAPL", "199", "2026-12-08 09:29:59")) == []
    clock.ns = ny_ns("2026-12-08 09:30:01")
    updates = b.on_market(trade("AAPL", "201.5", "2026-12-08 09:30:00.5"))
    assert seen(updates) == [("fill", "moo", D("201.5"))]
    [fill] = updates
    assert (fill.qty, fill.position_qty, fill.order.status) == (D(50), D(50), "filled")
    assert b.on_market(trade("AAPL", "180", "2026-12-08 09:31")) == []
    assert [(p.qty, p.avg_entry_price) for p in b.positions("A")] == [(D(50), D("201.5"))]


def test_a_limit_on_open_order_fills_at_the_opening_bar_s_open_if_at_or_better_than_its_limit() -> (
    None
):
    """With bars only, the open is the 09:30 bar's open (a bar that began
    before 09:30 is not of the open): a sell limit below it fills at it, not
    at its limit; a buy limit below it is not reached and expires."""
    b, clock = book("2026-12-08 07:00")
    b.on_market(trade("MSFT", "400", "2026-12-07 16:00"))
    b.submit(
        "A",
        OrderSpec(
            "MSFT", "sell", D(3), "limit", "opg", limit_price=D(405), client_order_id="loo-sell"
        ),
    )
    b.submit(
        "A",
        OrderSpec(
            "MSFT", "buy", D(3), "limit", "opg", limit_price=D(405), client_order_id="loo-buy"
        ),
    )
    b.submit(
        "A",
        OrderSpec(
            "MSFT", "buy", D(3), "limit", "opg", limit_price=D(406), client_order_id="loo-at"
        ),
    )
    clock.ns = ny_ns("2026-12-08 09:30:00.2")
    assert b.on_market(minute_bar("MSFT", "404", "406", "2026-12-08 09:29")) == []
    clock.ns = ny_ns("2026-12-08 09:31:02")
    updates = b.on_market(minute_bar("MSFT", "406", "404", "2026-12-08 09:30"))
    assert seen(updates) == [
        ("fill", "loo-sell", D(406)),
        ("expired", "loo-buy", None),
        ("fill", "loo-at", D(406)),  # at its limit: filled
    ]
    expired = updates[1].order
    assert (expired.status, expired.filled_qty, expired.is_open) == ("expired", D(0), False)
    assert b.orders("A") == []


def test_a_market_on_close_order_fills_at_the_last_print_at_or_before_the_close() -> None:
    """Prices of the day do not fill it; the first print after 16:00 settles
    it at the last one at or before 16:00 (here the 15:59 bar's close, which
    came after the 15:59:58 trade); a limit-on-close whose limit that price
    does not reach expires then."""
    b, clock = book("2026-12-08 10:00", fill_model=FillModelConfig(max_fill_quantity=D(1)))
    b.on_market(trade("AAPL", "200", "2026-12-08 09:59"))
    b.submit("A", OrderSpec("AAPL", "sell", D(5), time_in_force="cls", client_order_id="moc"))
    b.submit(
        "A",
        OrderSpec("AAPL", "sell", D(5), "limit", "cls", limit_price=D(152), client_order_id="loc"),
    )
    assert b.on_market(trade("AAPL", "250", "2026-12-08 12:00")) == []
    clock.ns = ny_ns("2026-12-08 16:00:01")
    assert b.on_market(trade("AAPL", "150", "2026-12-08 15:59:58")) == []
    assert b.on_market(minute_bar("AAPL", "150", "151", "2026-12-08 15:59")) == []
    clock.ns = ny_ns("2026-12-08 16:00:04")
    updates = b.on_market(trade("AAPL", "155", "2026-12-08 16:00:03"))
    assert seen(updates) == [("fill", "moc", D(151)), ("expired", "loc", None)]
    assert updates[0].qty == D(5)
    assert [(p.qty, p.avg_entry_price) for p in b.positions("A")] == [(D(-5), D(151))]


def test_a_late_print_older_than_the_last_one_is_not_the_close() -> None:
    """Polygon delivers some trades out of sequence and reports some late:
    a trade stamped 15:30 (or before the open) that arrives after the
    15:59:59 one is not the session's last print. The close took the price
    that arrived last, whatever its time, so a market-on-close order filled
    at 140 (or 90, a pre-market print) where the close was 150; both when a
    print after 16:00 settles it and when the clock does."""
    b, clock = book("2026-12-08 10:00")
    b.submit("A", OrderSpec("AAPL", "sell", D(5), time_in_force="cls", client_order_id="moc"))
    b.submit("A", OrderSpec("IBM", "sell", D(5), time_in_force="cls", client_order_id="moc-ibm"))
    b.on_market(trade("AAPL", "150", "2026-12-08 15:59:59"))
    b.on_market(trade("AAPL", "140", "2026-12-08 15:30"))  # reported late
    b.on_market(trade("IBM", "300", "2026-12-08 15:59:58"))
    b.on_market(trade("IBM", "290", "2026-12-08 09:00"))  # a pre-market print, late
    clock.ns = ny_ns("2026-12-08 16:00:02")
    updates = b.on_market(trade("AAPL", "151", "2026-12-08 16:00:01"))
    assert seen(updates) == [("fill", "moc", D(150))]
    clock.ns = ny_ns("2026-12-08 16:02")
    assert seen(b.expire_orders()) == [("fill", "moc-ibm", D(300))]


def test_auction_orders_no_print_settles_in_time_are_settled_by_the_clock() -> None:
    """Two minutes after its auction (the broker's clock) an order no print
    has settled is: a close at the session's last print (no print after
    16:00 came), an open with none of its own expired, and a close whose
    symbol did not trade that session expired."""
    b, clock = book("2026-12-08 08:00")
    b.on_market(trade("AAPL", "150", "2026-12-07 15:59"))
    b.on_market(trade("IBM", "300", "2026-12-07 15:59"))
    b.submit("A", OrderSpec("AAPL", "buy", D(2), time_in_force="opg", client_order_id="moo"))
    b.submit("A", OrderSpec("AAPL", "buy", D(2), time_in_force="cls", client_order_id="moc"))
    b.submit("A", OrderSpec("IBM", "buy", D(2), time_in_force="cls", client_order_id="moc-ibm"))
    clock.ns = ny_ns("2026-12-08 09:31:59")
    assert b.expire_orders() == []
    clock.ns = ny_ns("2026-12-08 09:32")
    assert seen(b.expire_orders()) == [("expired", "moo", None)]
    b.on_market(trade("AAPL", "151", "2026-12-08 15:59:59"))
    clock.ns = ny_ns("2026-12-08 16:01:59")
    assert b.expire_orders() == []
    clock.ns = ny_ns("2026-12-08 16:02")
    assert seen(b.expire_orders()) == [("fill", "moc", D(151)), ("expired", "moc-ibm", None)]
    assert b.expire_orders() == []  # once


@pytest.mark.parametrize("tif", ["opg", "cls"])
def test_an_auction_order_survives_a_restart_and_can_be_canceled_before_its_auction(
    tif: TimeInForce,
) -> None:
    """Replayed from the journal, it still waits for its auction; canceled
    before it, no print fills it."""
    b, clock = book("2026-12-08 08:00")
    kept, journal = b.submit("A", OrderSpec("AAPL", "buy", D(2), time_in_force=tif))
    gone, more = b.submit("A", OrderSpec("AAPL", "buy", D(2), time_in_force=tif))
    journal += more + b.cancel("A", gone.id)
    counter = itertools.count(100)
    replayed = PaperBook(BookConfig(), clock=clock, ids=lambda: f"id-{next(counter)}")
    replayed.apply_all(journal)
    if tif == "opg":
        clock.ns = ny_ns("2026-12-08 09:30:01")
        updates = replayed.on_market(trade("AAPL", "99", "2026-12-08 09:30:00.5"))
    else:
        replayed.on_market(trade("AAPL", "99", "2026-12-08 15:59"))
        clock.ns = ny_ns("2026-12-08 16:00:01")
        updates = replayed.on_market(trade("AAPL", "98", "2026-12-08 16:00:01"))
    assert [(u.event, u.order.id, u.price) for u in updates] == [("fill", kept.id, D(99))]


@pytest.mark.parametrize(
    ("placed", "at", "cancelable"),
    [
        ("2026-12-08 08:00", "2026-12-08 09:27:59.999", True),
        # Alpaca: no cancel (nor replace) of an opg order from 09:28 until the open.
        ("2026-12-08 08:00", "2026-12-08 09:28", False),
        ("2026-12-08 08:00", "2026-12-08 09:29:59.999", False),
        ("2026-12-07 19:00", "2026-12-08 09:29", False),  # Monday evening's, for Tuesday's open
        ("2026-12-08 08:00", "2026-12-08 09:30", False),  # the open: its auction is under way
        # An order for the next open is not locked by today's.
        ("2026-12-08 19:00", "2026-12-09 09:27", True),
        ("2026-12-11 20:00", "2026-12-12 09:29", True),  # Friday's, for Monday: Saturday
        ("2026-12-11 20:00", "2026-12-14 09:29", False),  # and Monday
    ],
)
def test_an_opg_order_cannot_be_canceled_from_0928_until_its_auction(
    placed: str, at: str, cancelable: bool
) -> None:
    """Alpaca refuses a cancel of an opg order from 09:28 New York; the
    paper broker canceled it right up to its auction, so a shadow
    strategy's late cancel took it out of an open its live twin was in."""
    b, clock = book(placed)
    moo, _ = b.submit("A", OrderSpec("AAPL", "buy", D(1), time_in_force="opg"))
    clock.ns = ny_ns(at)
    if cancelable:
        assert seen(b.cancel("A", moo.id)) == [("canceled", moo.client_order_id, None)]
        return
    with pytest.raises(Refused, match="not cancelable") as e:
        b.cancel("A", moo.id)
    assert (e.value.status, e.value.code) == (422, 42210000)
    assert e.value.message == (
        "order is not cancelable (time_in_force opg, from 09:28 New York: "
        "the opening auction at 09:30 has it)"
    )
    assert b.order("A", moo.id) == moo  # still working, for its auction


def test_a_cancel_all_leaves_an_opg_order_from_0928_until_the_open() -> None:
    """``DELETE /v2/orders`` cancels what it can and says, per order, what it
    could not: an opg order from 09:28 until the open stays working for its
    auction, as a cancel of it alone is refused. The cancel-all took it out."""
    b, clock = book("2026-12-08 08:00")
    b.on_market(trade("AAPL", "100", "2026-12-08 08:00"))
    moo, _ = b.submit("A", OrderSpec("AAPL", "buy", D(1), time_in_force="opg"))
    day, _ = b.submit("A", OrderSpec("AAPL", "buy", D(1), "limit", limit_price=D(90)))
    moc, _ = b.submit("A", OrderSpec("AAPL", "buy", D(1), time_in_force="cls"))
    clock.ns = ny_ns("2026-12-08 09:29")
    entries, updates = b.cancel_all("A")
    assert [(u.event, u.order.id) for u in updates] == [("canceled", day.id), ("canceled", moc.id)]
    assert [(e.order.id, e.order.status, e.refused) for e in entries[1:]] == [
        (day.id, "canceled", None),
        (moc.id, "canceled", None),
    ]
    kept = entries[0]
    assert (kept.order, kept.refused is not None) == (moo, True)
    assert kept.refused is not None
    assert (kept.refused.status, kept.refused.code) == (422, 42210000)
    assert "time_in_force opg, from 09:28 New York" in kept.refused.message
    assert b.orders("A") == [moo]
    clock.ns = ny_ns("2026-12-08 09:30:01")
    assert seen(b.on_market(trade("AAPL", "101", "2026-12-08 09:30"))) == [
        ("fill", moo.client_order_id, D(101))
    ]


def test_a_close_all_s_cancel_leaves_a_locked_opg_order_and_its_shares() -> None:
    """``DELETE /v2/positions?cancel_orders=true`` at 09:29: the opg sell
    stays working (its cancel is refused), so the shares it holds are not
    available and the position is refused, as any held position is."""
    b, clock = book("2026-12-08 08:00")
    b.on_market(trade("AAPL", "100", "2026-12-08 08:00"))
    b.submit("A", OrderSpec("AAPL", "buy", D(5)))
    moo, _ = b.submit("A", OrderSpec("AAPL", "sell", D(2), time_in_force="opg"))
    clock.ns = ny_ns("2026-12-08 09:29")
    [closing], updates = b.close_all("A", cancel_orders=True)
    assert updates == []
    assert closing.refused is not None
    assert closing.refused.status == 403
    assert "insufficient qty available" in closing.refused.message
    assert b.orders("A") == [moo]


def test_a_cls_order_is_cancelable_until_its_cutoff() -> None:
    b, clock = book("2026-12-08 08:00")
    moc, _ = b.submit("A", OrderSpec("AAPL", "buy", D(1), time_in_force="cls"))
    clock.ns = ny_ns("2026-12-08 15:49")
    assert seen(b.cancel("A", moc.id)) == [("canceled", moc.client_order_id, None)]


def test_a_day_order_placed_with_auction_orders_still_expires_at_the_close() -> None:
    b, clock = book("2026-12-08 08:00", day_orders_expire_at=dt.time(16, 0))
    b.on_market(trade("AAPL", "200", "2026-12-08 07:59"))
    b.submit(
        "A", OrderSpec("AAPL", "buy", D(1), "limit", limit_price=D(100), client_order_id="day")
    )
    b.submit(
        "A",
        OrderSpec("AAPL", "buy", D(1), "limit", "cls", limit_price=D(100), client_order_id="loc"),
    )
    b.on_market(trade("AAPL", "200", "2026-12-08 15:59"))
    clock.ns = ny_ns("2026-12-08 16:00")
    assert seen(b.expire_orders()) == [("expired", "day", None)]
    clock.ns = ny_ns("2026-12-08 16:02")
    assert seen(b.expire_orders()) == [("expired", "loc", None)]
    assert [(o.client_order_id, o.status) for o in b.orders("A", "all")] == [
        ("day", "expired"),
        ("loc", "expired"),
    ]
