"""Option positions settled at expiry by the paper broker: the OCC rule
(services/paper_broker/domain/settlement.py), the books, the journal and the
activities endpoint."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr

from libs.contract.options import OptionContract, parse_option
from services.paper_broker.adapters.journal import Journal
from services.paper_broker.adapters.server import Credentials, PaperBrokerServer
from services.paper_broker.domain import priced
from services.paper_broker.domain.book import (
    NO_PRICE_WAIT_NS,
    BookConfig,
    OrderSpec,
    PaperBook,
)
from services.paper_broker.domain.fill_model import MarketUpdate, Side
from services.paper_broker.domain.settlement import outcome
from tests.unit.paper_ws import login, request

D = Decimal
NY = ZoneInfo("America/New_York")
CALL = "O:SPY261211C00600000"  # SPY 600 call, expires Friday 2026-12-11
PUT = "O:SPY261211P00600000"


def ny_ns(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=NY).timestamp()) * 1_000_000_000


CLOSE_NS = ny_ns("2026-12-11 16:00")


class SetClock:
    def __init__(self, ns: int) -> None:
        self.ns = ns

    def now_ns(self) -> int:
        return self.ns


@pytest.mark.parametrize(
    ("symbol", "qty", "underlying", "expected"),
    [
        (CALL, "1", "599.99", "expired"),  # out of the money
        (CALL, "1", "600", "expired"),  # exactly at the money: not exercised
        (CALL, "1", "600.005", "expired"),  # less than a cent in
        (CALL, "1", "600.01", "exercised"),  # a cent in the money
        (CALL, "-1", "600.01", "assigned"),
        (CALL, "-1", "600", "expired"),
        (PUT, "2", "599.99", "exercised"),
        (PUT, "2", "600", "expired"),
        (PUT, "-2", "599.99", "assigned"),
        (PUT, "-2", "600.01", "expired"),
        (CALL, "1", None, "expired"),  # no price of the underlying
        (PUT, "-1", None, "expired"),
    ],
)
def test_the_occ_rule(symbol: str, qty: str, underlying: str | None, expected: str) -> None:
    price = D(underlying) if underlying is not None else None
    assert outcome(parse_option(symbol), D(qty), price) == expected


def held(symbol: str, qty: str, underlying: str | None) -> tuple[PaperBook, SetClock]:
    """A book holding ``qty`` contracts of ``symbol`` (at 2.50 each), the
    underlying last at ``underlying`` before the close."""
    clock = SetClock(ny_ns("2026-12-11 10:00"))
    counter = itertools.count(1)
    b = PaperBook(BookConfig(), clock=clock, ids=lambda: f"id-{next(counter)}")
    b.on_market(MarketUpdate.trade(symbol, D("2.5"), ny_ns("2026-12-11 10:00")))
    if underlying is not None:
        b.on_market(MarketUpdate.trade("SPY", D(underlying), ny_ns("2026-12-11 15:59:59")))
    side: Side = "buy" if D(qty) > 0 else "sell"
    b.submit("A", OrderSpec(symbol, side, abs(D(qty)), asset_class="us_option"))
    return b, clock


@pytest.mark.parametrize(
    ("symbol", "qty", "underlying", "activities", "shares"),
    [
        (CALL, "2", "610", [("OPEXC", CALL, "-2", None), ("OPTRD", "SPY", "200", "600")], "200"),
        (PUT, "2", "590", [("OPEXC", PUT, "-2", None), ("OPTRD", "SPY", "-200", "600")], "-200"),
        (CALL, "-2", "610", [("OPASN", CALL, "2", None), ("OPTRD", "SPY", "-200", "600")], "-200"),
        (PUT, "-2", "590", [("OPASN", PUT, "2", None), ("OPTRD", "SPY", "200", "600")], "200"),
        (CALL, "2", "600", [("OPEXP", CALL, "-2", None)], None),
        (PUT, "-2", "610", [("OPEXP", PUT, "2", None)], None),
    ],
)
def test_a_position_is_settled_at_the_close(
    symbol: str,
    qty: str,
    underlying: str,
    activities: list[tuple[str, str, str, str | None]],
    shares: str | None,
) -> None:
    """At 16:00 New York on its expiry day a position is exercised or
    assigned (100 shares a contract at the strike) if at least a cent in the
    money, else expires worthless; its activities say so, as Alpaca's."""
    b, clock = held(symbol, qty, underlying)
    clock.ns = CLOSE_NS - 1
    assert b.settle_expired() == []
    clock.ns = CLOSE_NS
    [settled] = b.settle_expired()
    got = [
        (a.activity_type, a.symbol, str(a.qty), None if a.price is None else str(a.price))
        for a in settled.activities
    ]
    assert got == activities
    assert b.settle_expired() == []  # once
    assert all(a.date == dt.date(2026, 12, 11) for a in b.activities("A"))
    positions = {p.symbol: p for p in b.positions("A")}
    assert symbol not in positions
    if shares is None:
        assert positions == {}
    else:
        spy = positions["SPY"]
        assert (spy.qty, spy.avg_entry_price, spy.asset_class) == (D(shares), D(600), "us_equity")
        [trade] = [a for a in b.activities("A") if a.activity_type == "OPTRD"]
        assert trade.net_amount == -D(shares) * 600


def test_an_exercise_s_amount_of_more_than_28_digits_is_exact() -> None:
    """Two orders of the largest quantity taken (26 digits of contracts)
    hold a position whose exercise at a strike of 600.50 moves 32 digits of
    cash. In the default decimal context (28 digits) the OPTRD's net amount
    was rounded (-1.200999999999999999999999988E+31, 120 off)."""
    call = "O:SPY261211C00600500"
    largest = "99999999999999999999999999"
    b, clock = held(call, largest, "610")
    b.submit("A", OrderSpec(call, "buy", D(largest), asset_class="us_option"))
    clock.ns = CLOSE_NS
    [settled] = b.settle_expired()
    exercised, trade = settled.activities
    assert exercised.qty == D("-199999999999999999999999998")
    shares = D("19999999999999999999999999800")
    assert (trade.qty, trade.price) == (shares, D("600.5"))
    assert trade.net_amount == D("-12009999999999999999999999879900")
    [spy] = b.positions("A")
    assert (spy.symbol, spy.qty) == ("SPY", shares)


def test_the_underlying_s_price_is_its_last_at_or_before_the_close() -> None:
    """A print of the underlying stamped after the close settles the
    contract before it is taken in: at 599 (before), not at 700 (after)."""
    b, clock = held(CALL, "1", "599")
    clock.ns = CLOSE_NS - 5_000_000_000  # the broker's clock a little behind the feed's
    server_side = b.settle_expired(ny_ns("2026-12-11 16:00:01"))
    b.on_market(MarketUpdate.trade("SPY", D(700), ny_ns("2026-12-11 16:00:01")))
    [settled] = server_side
    assert [a.activity_type for a in settled.activities] == ["OPEXP"]
    assert b.positions("A") == []


@pytest.mark.parametrize(
    ("symbol", "close", "late", "expected"),
    [
        (CALL, "601", "599", ["OPEXC", "OPTRD"]),  # in the money at the close
        (CALL, "599", "601", ["OPEXP"]),  # out of it at the close
        (PUT, "599", "601", ["OPEXC", "OPTRD"]),
    ],
)
def test_a_late_older_print_does_not_decide_the_settlement(
    symbol: str, close: str, late: str, expected: list[str]
) -> None:
    """Polygon delivers trades out of sequence: a print stamped 15:30 that
    arrives after the 15:59:59 one is not the underlying's price at the
    close. The contract is settled at the newest by market time (as marks
    are), not at the last to arrive."""
    b, clock = held(symbol, "1", close)
    b.on_market(MarketUpdate.trade("SPY", D(late), ny_ns("2026-12-11 15:30")))
    assert b.last_price("SPY") == D(close)  # the newest by market time, not the last to arrive
    clock.ns = CLOSE_NS
    [settled] = b.settle_expired()
    assert [a.activity_type for a in settled.activities] == expected


UTC_MIDNIGHT_NS = int(dt.datetime(2026, 12, 12, tzinfo=dt.UTC).timestamp()) * 1_000_000_000


@pytest.mark.parametrize(
    ("settled_ns", "stamp"),
    [
        (UTC_MIDNIGHT_NS - 1, "20261211235959999"),
        (UTC_MIDNIGHT_NS - 1_000, "20261211235959999"),
        (UTC_MIDNIGHT_NS - 876_000_001, "20261211235959123"),
    ],
)
def test_an_activity_id_is_stamped_with_its_time_cut_to_the_millisecond(
    settled_ns: int, stamp: str
) -> None:
    """Alpaca's activity ids start with the time (UTC) to the millisecond: a
    settlement a nanosecond or a microsecond before midnight is stamped
    23:59:59.999 of its day, and one a nanosecond before a millisecond with
    that millisecond's predecessor (seconds as a float rounded them up)."""
    b, clock = held(CALL, "1", "601")
    clock.ns = settled_ns
    [settled] = b.settle_expired()
    assert [a.id.split("::")[0] for a in settled.activities] == [stamp, stamp]


def test_without_a_price_of_the_underlying_it_waits_then_expires_worthless() -> None:
    """No price of SPY at all: the settlement waits for one (at start-up the
    feed brings it a moment after the journal), then expires the contract
    worthless, saying why."""
    b, clock = held(CALL, "1", None)
    clock.ns = CLOSE_NS + NO_PRICE_WAIT_NS - 1
    assert b.settle_expired() == []
    assert [p.symbol for p in b.positions("A")] == [CALL]
    clock.ns = CLOSE_NS + NO_PRICE_WAIT_NS
    [settled] = b.settle_expired()
    [expiry] = settled.activities
    assert expiry.activity_type == "OPEXP"
    assert "no price of SPY" in expiry.description
    assert b.positions("A") == []


def test_a_price_that_comes_in_the_wait_settles_it() -> None:
    b, clock = held(PUT, "-1", None)
    clock.ns = CLOSE_NS + 60_000_000_000
    assert b.settle_expired() == []
    b.set_last("SPY", D(590), ts_ns=ny_ns("2026-12-11 15:59"))
    [settled] = b.settle_expired()
    assert [a.activity_type for a in settled.activities] == ["OPASN", "OPTRD"]
    assert [(p.symbol, p.qty) for p in b.positions("A")] == [("SPY", D(100))]


def test_a_settlement_waiting_for_a_price_is_not_looked_at_again_until_one_may_decide_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The broker settles before every request: a position waiting for its
    underlying's first price is looked at again (its symbol parsed) only once
    a print of the underlying came or its wait is over, not on every call."""
    b, clock = held(CALL, "1", None)
    b.on_market(MarketUpdate.trade(PUT, D("1.5"), ny_ns("2026-12-11 10:30")))
    b.submit("B", OrderSpec(PUT, "buy", D(1), asset_class="us_option"))
    parsed: list[str] = []

    def counting(symbol: str) -> OptionContract:
        parsed.append(symbol)
        return parse_option(symbol)

    monkeypatch.setattr(priced, "parse_option", counting)
    clock.ns = CLOSE_NS
    assert b.settle_expired() == []
    assert sorted(parsed) == sorted([CALL, PUT])
    for step in range(1, 4):
        clock.ns = CLOSE_NS + step * 1_000_000_000
        assert b.settle_expired(clock.ns) == []
    b.set_last("QQQ", D(500), ts_ns=ny_ns("2026-12-11 15:59"))  # not the underlying
    assert b.settle_expired() == []
    assert len(parsed) == 2
    b.set_last("SPY", D(610), ts_ns=ny_ns("2026-12-11 15:59"))
    settled = b.settle_expired()
    assert [(s.account, s.symbol) for s in settled] == [("A", CALL), ("B", PUT)]
    assert len(parsed) == 4
    assert b.settle_expired() == []
    assert len(parsed) == 4


def test_a_settlement_waiting_for_a_price_is_looked_at_again_at_the_end_of_its_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b, clock = held(CALL, "1", None)
    parsed: list[str] = []

    def counting(symbol: str) -> OptionContract:
        parsed.append(symbol)
        return parse_option(symbol)

    monkeypatch.setattr(priced, "parse_option", counting)
    clock.ns = CLOSE_NS
    assert b.settle_expired() == []
    clock.ns = CLOSE_NS + NO_PRICE_WAIT_NS - 1
    assert b.settle_expired() == []
    assert parsed == [CALL]
    clock.ns = CLOSE_NS + NO_PRICE_WAIT_NS
    [settled] = b.settle_expired()
    assert "no price of SPY" in settled.activities[0].description
    assert parsed == [CALL, CALL]
    assert b.settle_expired() == []
    assert parsed == [CALL, CALL]


def test_shares_from_an_exercise_add_to_those_held() -> None:
    b, clock = held(CALL, "1", "610")
    clock.ns = ny_ns("2026-12-11 11:00")
    b.submit("A", OrderSpec("SPY", "buy", D(100)))  # at 610
    clock.ns = CLOSE_NS
    b.settle_expired()
    [spy] = b.positions("A")
    assert (spy.qty, spy.avg_entry_price) == (D(200), D(605))


def test_the_journal_brings_settlements_back_and_a_compaction_keeps_them(tmp_path: Path) -> None:
    """Settled positions stay settled after a restart (the journal replays
    the settlement), and the activities are listed again, also from a
    compacted journal's snapshot: never settled a second time."""
    b, clock = held_journaled(tmp_path / "j2.jsonl", CALL, "2", "610")
    journal = Journal(tmp_path / "j2.jsonl").open()
    server = PaperBrokerServer(b, [], journal=journal)
    clock.ns = CLOSE_NS
    server.expire_orders()
    journal.close()
    before = (b.positions("A"), list(b.activities("A")))
    assert [p.symbol for p in before[0]] == ["SPY"]

    counter = itertools.count(100)
    for compact in (False, True):
        j = Journal(tmp_path / "j2.jsonl")
        again = PaperBook(BookConfig(), clock=clock, ids=lambda: f"r-{next(counter)}")
        j.replay(again)
        assert (again.positions("A"), list(again.activities("A"))) == before
        assert again.settle_expired() == []
        if compact:
            j.compact(again)
            snap = PaperBook(BookConfig(), clock=clock, ids=lambda: f"s-{next(counter)}")
            Journal(tmp_path / "j2.jsonl").replay(snap)
            assert (snap.positions("A"), list(snap.activities("A"))) == before
            assert snap.settle_expired() == []


def test_a_compaction_long_after_keeps_the_activities() -> None:
    """A journal compacted 30 days after a settlement (finished orders kept
    7) forgot its activities, so a gateway away longer than that, which
    reads them from the day before the expiry of a contract it holds, never
    booked the settlement: the position had moved at the broker only."""
    b, clock = held(CALL, "2", "610")
    clock.ns = CLOSE_NS
    assert b.settle_expired()
    settled = list(b.activities("A"))
    assert {a.activity_type for a in settled} >= {"OPEXC", "OPTRD"}
    clock.ns = CLOSE_NS + 30 * 86_400 * 10**9
    b.forget_finished(clock.ns - 7 * 86_400 * 10**9)
    assert list(b.activities("A")) == settled


def held_journaled(
    path: Path, symbol: str, qty: str, underlying: str
) -> tuple[PaperBook, SetClock]:
    """:func:`held`, every trade update journaled to ``path``."""
    clock = SetClock(ny_ns("2026-12-11 10:00"))
    counter = itertools.count(1)
    b = PaperBook(BookConfig(), clock=clock, ids=lambda: f"id-{next(counter)}")
    journal = Journal(path).open()
    journal.append(b.on_market(MarketUpdate.trade(symbol, D("2.5"), ny_ns("2026-12-11 10:00"))))
    journal.append(b.on_market(MarketUpdate.trade("SPY", D(underlying), ny_ns("2026-12-11 15:59"))))
    side: Side = "buy" if D(qty) > 0 else "sell"
    _, updates = b.submit("A", OrderSpec(symbol, side, abs(D(qty)), asset_class="us_option"))
    journal.append(updates)
    journal.close()
    return b, clock


@pytest.fixture
async def settled_server() -> AsyncIterator[PaperBrokerServer]:
    b, clock = held(CALL, "2", "610")
    clock.ns = ny_ns("2026-12-11 12:00")
    b.submit("A", OrderSpec("SPY", "buy", D(5)))
    clock.ns = CLOSE_NS
    creds = [Credentials("key", SecretStr("secret"), "A")]
    async with PaperBrokerServer(b, creds) as server:
        server.expire_orders()
        yield server


async def test_the_activities_endpoint_lists_them_as_alpaca_s(
    settled_server: PaperBrokerServer,
) -> None:
    """``GET /v2/account/activities`` (``activity_types``, ``date``,
    ``direction``, ``page_size``, ``page_token``) and
    ``/v2/account/activities/{activity_type}``, with Alpaca's fields."""
    async with await login(settled_server.port) as ws:
        answer = await request(
            ws, "GET", "/v2/account/activities?activity_types=OPEXP,OPEXC,OPASN,OPTRD&direction=asc"
        )
        assert answer["status"] == 200
        body = answer["body"]
        assert [strip(a) for a in body] == [
            {
                "activity_type": "OPEXC",
                "date": "2026-12-11",
                "net_amount": "0",
                "description": "Option Exercise",
                "symbol": CALL,
                "qty": "-2",
                "status": "executed",
            },
            {
                "activity_type": "OPTRD",
                "date": "2026-12-11",
                "net_amount": "-120000",
                "description": "Option Trade",
                "symbol": "SPY",
                "qty": "200",
                "price": "600",
                "status": "executed",
            },
        ]
        assert all("::" in a["id"] for a in body)
        newest_first = await body_of(ws, "GET", "/v2/account/activities?activity_types=OPEXC,OPTRD")
        assert [a["activity_type"] for a in newest_first] == ["OPTRD", "OPEXC"]
        page = await body_of(
            ws, "GET", "/v2/account/activities?direction=asc&page_size=2"
        )  # every type: the fills first
        assert [a["activity_type"] for a in page] == ["FILL", "FILL"]
        rest = await body_of(
            ws,
            "GET",
            f"/v2/account/activities?direction=asc&page_size=2&page_token={page[-1]['id']}",
        )
        assert [a["activity_type"] for a in rest] == ["OPEXC", "OPTRD"]
        one_type = await body_of(ws, "GET", "/v2/account/activities/OPEXC")
        assert [a["activity_type"] for a in one_type] == ["OPEXC"]
        that_day = await body_of(ws, "GET", "/v2/account/activities/OPTRD?date=2026-12-11")
        assert len(that_day) == 1
        other_day = await body_of(ws, "GET", "/v2/account/activities/OPTRD?date=2026-12-10")
        assert other_day == []
        positions = (await request(ws, "GET", "/v2/positions"))["body"]
        assert [(p["symbol"], p["qty"]) for p in positions] == [("SPY", "205")]


async def body_of(ws: Any, method: str, path: str) -> Any:
    answer = await request(ws, method, path)
    assert answer["status"] == 200, answer
    return answer["body"]


def strip(activity: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in activity.items() if k != "id"}


async def test_with_a_date_the_activities_page_size_has_no_maximum(
    settled_server: PaperBrokerServer,
) -> None:
    """Alpaca: "If date is specified, the default behavior is to return all
    results, and there is no maximum page size" (without one, at most 100).
    A page_size over 100 with a date was refused (422)."""
    async with await login(settled_server.port) as ws:
        day = await body_of(ws, "GET", "/v2/account/activities?date=2026-12-11&page_size=500")
        assert [a["activity_type"] for a in day] == ["OPTRD", "OPEXC", "FILL", "FILL"]
        one = await body_of(ws, "GET", "/v2/account/activities?date=2026-12-11&page_size=1")
        assert [a["activity_type"] for a in one] == ["OPTRD"]
        refused = await request(ws, "GET", "/v2/account/activities?page_size=500")
        assert refused["status"] == 422
