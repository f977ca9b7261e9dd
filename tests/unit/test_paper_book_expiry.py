"""The paper broker's books at the close: day orders expiring, and orders in an
option contract past its expiry."""

from __future__ import annotations

import datetime as dt
import itertools
from zoneinfo import ZoneInfo

import pytest

from services.paper_broker.domain.book import (
    BookConfig,
    OrderSpec,
    PaperBook,
    Refused,
    TimeInForce,
    day_order_expiry_ns,
)
from services.paper_broker.domain.fill_model import MarketUpdate
from services.paper_broker.domain.model import DayOrderClose
from tests.unit.paper_books import D

NY = ZoneInfo("America/New_York")


def ny_ns(text: str) -> int:
    """``2026-12-08 10:00`` New York time, in ns."""
    local = dt.datetime.fromisoformat(text).replace(tzinfo=NY)
    return int(local.timestamp()) * 1_000_000_000


class SetClock:
    def __init__(self, ns: int) -> None:
        self.ns = ns

    def now_ns(self) -> int:
        return self.ns


@pytest.mark.parametrize(
    ("placed", "expires"),
    [
        ("2026-12-08 10:00", "2026-12-08 16:00"),  # a Tuesday: its own close
        ("2026-12-08 15:59:59", "2026-12-08 16:00"),
        ("2026-12-08 16:00", "2026-12-09 16:00"),  # at the close: the next session's
        ("2026-12-08 20:30", "2026-12-09 16:00"),
        ("2026-12-11 17:00", "2026-12-14 16:00"),  # Friday evening: Monday's
        ("2026-12-12 11:00", "2026-12-14 16:00"),  # Saturday: Monday's
        ("2026-03-06 17:00", "2026-03-09 16:00"),  # Friday, across the spring clock change
    ],
)
def test_a_day_order_expires_at_the_close_of_the_session_it_was_placed_for(
    placed: str, expires: str
) -> None:
    assert day_order_expiry_ns(ny_ns(placed), dt.time(16, 0)) == ny_ns(expires)
    assert day_order_expiry_ns(ny_ns(placed), "close") == ny_ns(expires)


@pytest.mark.parametrize(
    ("placed", "expires"),
    [
        # 2025-11-28, the day after Thanksgiving: the NYSE closes at 13:00.
        ("2025-11-28 10:00", "2025-11-28 13:00"),
        ("2025-11-28 12:59:59", "2025-11-28 13:00"),
        ("2025-11-28 13:00", "2025-12-01 16:00"),  # at the early close: Monday's
        ("2025-11-28 15:00", "2025-12-01 16:00"),
        ("2025-11-27 11:00", "2025-11-28 13:00"),  # on Thanksgiving: the half day's
        ("2025-11-26 17:00", "2025-11-28 13:00"),  # the evening before: past the holiday
        ("2025-12-24 14:00", "2025-12-26 16:00"),  # Christmas Eve after 13:00: past Christmas
        ("2025-12-31 18:00", "2026-01-02 16:00"),  # past New Year's Day
        ("2025-04-17 16:30", "2025-04-21 16:00"),  # past Good Friday, a weekday
    ],
)
@pytest.mark.parametrize("close", ["close", dt.time(16, 0)])
def test_a_day_order_expires_at_the_exchange_s_close_on_half_days_and_skips_holidays(
    placed: str, expires: str, close: DayOrderClose
) -> None:
    """It lived until 16:00 on a half day, and a holiday counted as a
    session: an order placed the evening before Thanksgiving expired at
    16:00 on Thanksgiving, never having had a session to fill in."""
    assert day_order_expiry_ns(ny_ns(placed), close) == ny_ns(expires)


def test_a_configured_day_order_close_applies_unless_the_session_closes_earlier() -> None:
    at_15 = dt.time(15, 0)
    assert day_order_expiry_ns(ny_ns("2025-12-01 10:00"), at_15) == ny_ns("2025-12-01 15:00")
    assert day_order_expiry_ns(ny_ns("2025-12-01 15:00"), at_15) == ny_ns("2025-12-02 15:00")
    # On a half day the session's 13:00 close comes first.
    assert day_order_expiry_ns(ny_ns("2025-11-28 10:00"), at_15) == ny_ns("2025-11-28 13:00")


def test_working_day_orders_expire_at_the_close_and_no_later_price_fills_them() -> None:
    """A day limit order still working at 16:00 New York is ``expired``, as
    Alpaca expires it, and a price past its limit afterwards fills nothing;
    a gtc order lives on. Until this the paper broker never expired day
    orders: a shadow strategy's limit filled the next morning, and its order
    held the risk-gate's caps overnight."""
    clock = SetClock(ny_ns("2026-12-08 10:00"))
    counter = itertools.count(1)
    b = PaperBook(
        BookConfig(day_orders_expire_at=dt.time(16, 0)),
        clock=clock,
        ids=lambda: f"id-{next(counter)}",
    )
    b.on_market(MarketUpdate.trade("AAPL", D(200)))
    day, _ = b.submit("A", OrderSpec("AAPL", "buy", D(5), "limit", limit_price=D(190)))
    gtc, _ = b.submit("A", OrderSpec("AAPL", "buy", D(5), "limit", "gtc", limit_price=D(190)))
    clock.ns = ny_ns("2026-12-08 15:59:59")
    assert b.expire_orders() == []
    clock.ns = ny_ns("2026-12-08 16:00")
    [expired] = b.expire_orders()
    assert (expired.event, expired.order.id, expired.order.status) == ("expired", day.id, "expired")
    assert not expired.order.is_open
    assert b.expire_orders() == []  # once
    clock.ns = ny_ns("2026-12-09 09:31")
    updates = b.on_market(MarketUpdate.trade("AAPL", D(180)))
    assert [(u.event, u.order.id) for u in updates] == [("fill", gtc.id)]
    assert [o.id for o in b.orders("A", "open")] == []
    assert b.order("A", day.id).status == "expired"  # type: ignore[union-attr]


def test_a_day_order_past_its_close_expires_before_a_price_can_fill_it() -> None:
    """No expiry ran at the close (no price came, the broker was down): the
    first price after it expires the order first, and fills nothing; a
    journal replayed into a new book does the same."""
    clock = SetClock(ny_ns("2026-12-08 10:00"))
    counter = itertools.count(1)
    config = BookConfig(day_orders_expire_at=dt.time(16, 0))
    b = PaperBook(config, clock=clock, ids=lambda: f"id-{next(counter)}")
    b.on_market(MarketUpdate.trade("AAPL", D(200)))
    day, journal = b.submit("A", OrderSpec("AAPL", "buy", D(5), "limit", limit_price=D(190)))
    clock.ns = ny_ns("2026-12-09 09:31")
    replayed = PaperBook(config, clock=clock, ids=lambda: f"id-{next(counter)}")
    replayed.apply_all(journal)
    for books in (b, replayed):
        updates = books.on_market(MarketUpdate.trade("AAPL", D(180)))
        assert [(u.event, u.order.id) for u in updates] == [("expired", day.id)]
        assert books.positions("A") == []


def test_a_print_stamped_after_the_close_fills_no_order_that_expires_at_it() -> None:
    """The broker's clock a little behind the feed's: a print stamped after
    the close (an after-hours trade) comes while the clock still reads
    15:59:58. It expires the day order and the order in an option contract
    expiring then, before it is taken in, as the contract's position is
    settled before it (settle_expired); until this both filled at it, the
    option after its contract's settlement, opening a position in it. A
    print stamped at the close itself is still the session's: it fills."""
    option = "O:SPY261211P00600000"  # expires Friday 2026-12-11, 16:00
    clock = SetClock(ny_ns("2026-12-11 10:00"))
    counter = itertools.count(1)
    b = PaperBook(
        BookConfig(day_orders_expire_at="close"), clock=clock, ids=lambda: f"id-{next(counter)}"
    )
    b.on_market(MarketUpdate.trade("AAPL", D(200), ny_ns("2026-12-11 10:00")))
    b.on_market(MarketUpdate.trade(option, D("1.25"), ny_ns("2026-12-11 10:00")))
    day, _ = b.submit("A", OrderSpec("AAPL", "buy", D(5), "limit", limit_price=D(190)))
    at_close, _ = b.submit("A", OrderSpec("AAPL", "buy", D(5), "limit", limit_price=D(195)))
    spec = OrderSpec(option, "buy", D(2), "limit", "gtc", limit_price=D(1), asset_class="us_option")
    contract, _ = b.submit("A", spec)
    clock.ns = ny_ns("2026-12-11 15:59:58")
    [fill] = b.on_market(MarketUpdate.trade("AAPL", D(195), ny_ns("2026-12-11 16:00")))
    assert (fill.event, fill.order.id) == ("fill", at_close.id)
    updates = b.on_market(MarketUpdate.trade("AAPL", D(180), ny_ns("2026-12-11 16:00:01")))
    assert [(u.event, u.order.id) for u in updates] == [
        ("expired", day.id),
        ("expired", contract.id),  # every order that ended at the close, whatever its symbol
    ]
    assert b.on_market(MarketUpdate.trade(option, D("0.5"), ny_ns("2026-12-11 16:00:01"))) == []
    assert [(p.symbol, p.qty) for p in b.positions("A")] == [("AAPL", D(5))]


def test_an_order_in_an_option_contract_past_its_expiry_is_refused() -> None:
    """Alpaca refuses an order in a contract that has expired (422), and the
    paper broker filled one, at the last price it had, as if it still
    traded. Until the close of its expiry day (16:00 New York) it trades;
    from then on nothing of it does, a close included, and the books stay
    as they were."""
    option = "O:SPY261211P00600000"  # expires Friday 2026-12-11
    clock = SetClock(ny_ns("2026-12-11 15:59:59"))
    counter = itertools.count(1)
    b = PaperBook(BookConfig(), clock=clock, ids=lambda: f"id-{next(counter)}")
    b.on_market(MarketUpdate.trade(option, D("1.25")))
    bought, _ = b.submit("A", OrderSpec(option, "buy", D(2), asset_class="us_option"))
    assert bought.status == "filled"
    for when in ("2026-12-11 16:00", "2026-12-14 10:00"):
        clock.ns = ny_ns(when)
        for side in ("buy", "sell"):
            with pytest.raises(Refused, match="expired at the close of 2026-12-11") as e:
                b.submit("A", OrderSpec(option, side, D(1), asset_class="us_option"))
            assert (e.value.status, e.value.code) == (422, 42210000)
    [closing], updates = b.close_all("A")
    assert closing.refused is not None
    assert closing.refused.status == 422
    assert updates == []
    assert [(o.id, o.status) for o in b.orders("A", "all")] == [(bought.id, "filled")]
    assert [(p.symbol, p.qty) for p in b.positions("A")] == [(option, D(2))]
    with pytest.raises(Refused, match="not found: O:SPY261311P00600000 is not an option") as e:
        b.submit("A", OrderSpec("O:SPY261311P00600000", "buy", D(1), asset_class="us_option"))
    assert (e.value.status, e.value.code) == (422, 42210000)


@pytest.mark.parametrize(
    ("placed", "tif", "day_close"),
    [
        ("2026-12-09 10:00", "gtc", dt.time(16, 0)),  # a gtc order, two days before
        ("2026-12-11 10:00", "gtc", None),  # day orders never expire by config
        ("2026-12-11 10:00", "day", None),  # ... so a day order lived on as well
        ("2026-12-11 10:00", "day", dt.time(20, 0)),  # sessions close after the contract
    ],
)
def test_a_working_order_in_an_option_contract_expires_with_the_contract(
    placed: str, tif: TimeInForce, day_close: dt.time | None
) -> None:
    """An order still working at the close of its contract's expiry day
    (16:00 New York) is ``expired`` then, as a broker ends it: the contract
    no longer trades. It lived on and filled at a print after the expiry (a
    late print, a wrong feed), or a day later; a journal replayed into a new
    book expires it before any price, once."""
    option = "O:SPY261211P00600000"  # expires Friday 2026-12-11
    clock = SetClock(ny_ns(placed))
    counter = itertools.count(1)
    config = BookConfig(day_orders_expire_at=day_close)
    b = PaperBook(config, clock=clock, ids=lambda: f"id-{next(counter)}")
    b.on_market(MarketUpdate.trade(option, D("1.25")))
    spec = OrderSpec(option, "buy", D(2), "limit", tif, limit_price=D(1), asset_class="us_option")
    order, journal = b.submit("A", spec)
    assert order.is_open
    clock.ns = ny_ns("2026-12-11 15:59:59")
    assert b.expire_orders() == []
    clock.ns = ny_ns("2026-12-11 16:00")
    [expired] = b.expire_orders()
    assert (expired.event, expired.order.id, expired.order.status) == (
        "expired",
        order.id,
        "expired",
    )
    assert b.expire_orders() == []  # once
    assert b.on_market(MarketUpdate.trade(option, D("0.5"))) == []
    assert b.positions("A") == []
    clock.ns = ny_ns("2026-12-14 09:31")
    replayed = PaperBook(config, clock=clock, ids=lambda: f"id-{next(counter)}")
    replayed.apply_all(journal)
    updates = replayed.on_market(MarketUpdate.trade(option, D("0.5")))
    assert [(u.event, u.order.id) for u in updates] == [("expired", order.id)]
    assert replayed.positions("A") == []
    assert replayed.expire_orders() == []


def test_a_close_all_after_an_option_s_expiry_meets_no_position_in_it() -> None:
    """What a flatten meets after an option's expiry. Until the paper broker
    settled expired contracts, the position stayed for ever, and every
    close-all (DELETE /v2/positions, the gateway's flatten) refused it, 422,
    days later as at the close: each flatten of the account was
    ``incomplete`` until an operator edited the journal. Now the position is
    settled at the close (here out of the money: expired worthless), so the
    close-all closes the rest and meets nothing in the contract."""
    option = "O:SPY261211P00600000"  # expires Friday 2026-12-11
    clock = SetClock(ny_ns("2026-12-11 10:00"))
    counter = itertools.count(1)
    b = PaperBook(BookConfig(), clock=clock, ids=lambda: f"id-{next(counter)}")
    b.on_market(MarketUpdate.trade(option, D("1.25")))
    b.on_market(MarketUpdate.trade("SPY", D(610)))
    b.on_market(MarketUpdate.trade("AAPL", D(200)))
    b.submit("A", OrderSpec(option, "buy", D(2), asset_class="us_option"))
    for when in ("2026-12-11 16:00", "2026-12-14 10:00"):
        clock.ns = ny_ns(when)
        b.settle_expired()
        b.submit("A", OrderSpec("AAPL", "buy", D(10)))
        closings, _ = b.close_all("A", cancel_orders=True)
        assert [(c.symbol, c.refused) for c in closings] == [("AAPL", None)]
        assert b.positions("A") == []
    assert [(a.activity_type, a.symbol, a.qty) for a in b.activities("A")] == [
        ("OPEXP", option, D(-2))
    ]
