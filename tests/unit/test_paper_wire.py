"""The paper broker's wire format (services/paper_broker/adapters/wire.py): times,
orders' asset classes and positions' dollar amounts as Alpaca writes them."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.paper_broker.adapters import wire


def test_times_are_written_for_each_instant() -> None:
    # iso() remembers the last instant it wrote: a new one is written anew.
    a, b = 1_773_154_800_123_456_789, 1_773_154_801_000_001_000
    assert wire.iso(a) == "2026-03-10T15:00:00.123456Z"
    assert wire.iso(a) == "2026-03-10T15:00:00.123456Z"
    assert wire.iso(b) == "2026-03-10T15:00:01.000001Z"
    assert wire.iso(a) == "2026-03-10T15:00:00.123456Z"
    assert wire.iso(None) is None


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2026-03-10T15:00:00Z", 1_773_154_800_000_000_000),
        ("2026-03-10T15:00:00.123456Z", 1_773_154_800_123_456_000),
        ("2026-03-10T15:00:00.123456789Z", 1_773_154_800_123_456_789),
        ("2026-03-10T15:00:00,1234567Z", 1_773_154_800_123_456_700),
        ("2026-03-10T17:00:00.000000001+02:00", 1_773_154_800_000_000_001),
        ("2026-03-10T15:00:00.1234567891Z", 1_773_154_800_123_456_789),  # past the ns: cut
        ("2026-03-10", 1_773_100_800_000_000_000),  # a date: its midnight UTC
        ("1969-12-31T23:59:59.5Z", -500_000_000),
        ("1969-12-31T23:59:59.999999999Z", -1),
        ("9999-12-31T23:59:59.999999Z", 253_402_300_799_999_999_000),
    ],
)
def test_times_are_read_to_the_nanosecond(text: str, ns: int) -> None:
    """RFC 3339 times (``after`` / ``until``, a journal's) in whole
    nanoseconds: seconds as a float cut the digits past the microsecond,
    took half a second before 1970 as half a second after, and rounded
    .999999 of a far year up to the next second."""
    assert wire.parse_iso(text) == ns
    assert wire.parse_iso(wire.iso(ns)) == ns // 1000 * 1000


@pytest.mark.parametrize(
    ("symbol", "asset_class"),
    [("O:SPY241220P00720000", "us_option"), ("AAPL", "us_equity"), ("BRK:B", "us_equity")],
)
def test_an_order_is_an_option_exactly_when_tradebus_names_one(
    symbol: str, asset_class: str
) -> None:
    """The paper broker tells options by tradebus's rule (O: + OCC symbol,
    libs.contract.events.asset_class_of), not by any colon in the symbol."""
    from services.paper_broker.adapters.wire import spec_from_json

    spec = spec_from_json({"symbol": symbol, "qty": "1", "side": "buy", "type": "market"})
    assert spec.asset_class == asset_class


def test_an_option_position_s_dollar_amounts_count_its_contracts_100_shares() -> None:
    """Alpaca reports an option position's cost basis, market value and P&L in
    dollars: quantity x price x 100 (a standard contract); a share's as is."""
    from services.paper_broker.domain.book import Position

    option = Position("O:SPY241220P00720000", "us_option", Decimal(2), Decimal("1.5"))

    def dollars(p: Position, last: Decimal) -> list[Decimal]:
        got = wire.position_json(p, last, p.qty)
        return [Decimal(got[k]) for k in ("cost_basis", "market_value", "unrealized_pl")]

    assert dollars(option, Decimal("2.25")) == [300, 450, 150]
    # The prices stay per share, as Alpaca quotes them.
    got = wire.position_json(option, Decimal("2.25"), option.qty)
    assert (got["avg_entry_price"], got["current_price"]) == ("1.5", "2.25")
    short = Position("O:SPY241220P00720000", "us_option", Decimal(-1), Decimal(2))
    assert dollars(short, Decimal(3)) == [-200, -300, -100]
    shares = Position("AAPL", "us_equity", Decimal(2), Decimal("1.5"))
    assert dollars(shares, Decimal("2.25")) == [3, Decimal("4.5"), Decimal("1.5")]
