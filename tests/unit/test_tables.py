"""What the read commands print: figures rounded for reading, never cut, and
event ids given by their first digits."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from rich.console import Console

from libs.store.queries import IdPrefixError, id_prefix_range
from libs.tables import money, price, table


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (Decimal("-12.5021"), "-12.50"),
        (Decimal("19514.3"), "19,514.30"),
        ("5000", "5,000.00"),
        (Decimal("-0.001"), "0.00"),
        (Decimal("0.125"), "0.13"),  # half a cent away from zero, not to even
        (Decimal("-0.125"), "-0.13"),
        (None, ""),
    ],
)
def test_money_is_shown_to_the_cent(value: Decimal | str | None, shown: str) -> None:
    assert money(value) == shown


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (Decimal("120.591234567"), "120.5912"),
        (Decimal("191.20"), "191.2"),
        (Decimal("417"), "417"),
        (Decimal("0.00001"), "0"),
        (None, ""),
    ],
)
def test_prices_are_shown_to_four_places_at_most(value: Decimal | None, shown: str) -> None:
    assert price(value) == shown


def test_a_table_too_wide_for_the_terminal_wraps_its_cells_rather_than_cutting_them() -> None:
    console = Console(width=40, record=True)
    t = table("strategy", "symbol", "realized P&L", "unrealized P&L")
    t.add_row("pairs-msft-aapl", "AAPL", money(Decimal("-1234567.891")), money(Decimal("2.5")))
    console.print(t)
    text = console.export_text()
    assert "…" not in text
    assert "-1,234," in text  # the P&L folded onto two lines, not cut
    assert "567.89" in text


def test_an_id_prefix_is_one_range_of_ids() -> None:
    low, high = id_prefix_range("E01F83BE")
    assert low == uuid.UUID("e01f83be-0000-0000-0000-000000000000")
    assert high == uuid.UUID("e01f83be-ffff-ffff-ffff-ffffffffffff")
    # The dashes of a printed id may be kept.
    assert id_prefix_range("e01f83be-1")[0] == uuid.UUID("e01f83be-1000-0000-0000-000000000000")
    full = uuid.uuid4()
    assert id_prefix_range(str(full)) == (full, full)


@pytest.mark.parametrize("bad", ["", "abc", "e01f83bz", "g" * 8, "0" * 33])
def test_what_cannot_start_an_id_is_refused(bad: str) -> None:
    with pytest.raises(IdPrefixError, match="not an event id or the start of one"):
        id_prefix_range(bad)
