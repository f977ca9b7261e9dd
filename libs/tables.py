"""Tables the read commands print (``events``, ``positions``, ``risk status``).

Two rules, so that no figure a trader reads is ever cut short:

- Piped or redirected, rich would lay tables out in 80 columns and cut what
  does not fit to an ellipsis (``-12.50…`` for a P&L of ``-12.5021``). Off a
  terminal, :data:`out` is as wide as the tables need.
- In a terminal narrower than a table, a cell wraps onto a second line
  instead of losing its end (``overflow="fold"`` on every column).

Money is shown to the cent and prices to :data:`PRICE_PLACES` places; the
``--json`` forms keep every digit.
"""

from __future__ import annotations

import sys
from decimal import ROUND_HALF_UP, Decimal

from rich.console import Console
from rich.table import Table

#: Width of the console when stdout is not a terminal: wider than any table.
PIPED_WIDTH = 1000
#: Places of a price in a table (an average price has many more).
PRICE_PLACES = 4
CENT = Decimal("0.01")

out = Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)


def table(*headers: str, title: str | None = None) -> Table:
    """A table with ``headers`` whose cells wrap rather than being cut."""
    t = Table(title=title)
    for header in headers:
        t.add_column(header, overflow="fold")
    return t


def money(value: Decimal | str | None) -> str:
    """``-12.5021`` -> ``-12.50``, ``19514.3`` -> ``19,514.30``, half a cent
    away from zero (``0.125`` -> ``0.13``, as money is rounded); ``""`` for none."""
    if value is None or value == "":
        return ""
    text = f"{Decimal(value).quantize(CENT, ROUND_HALF_UP):,.2f}"
    return "0.00" if text == "-0.00" else text


def price(value: Decimal | str | None) -> str:
    """A price to at most :data:`PRICE_PLACES` places, without trailing zeros
    (``120.5912345`` -> ``120.5912``, ``191.20`` -> ``191.2``); ``""`` for none."""
    if value is None or value == "":
        return ""
    rounded = Decimal(value).quantize(Decimal(1).scaleb(-PRICE_PLACES), ROUND_HALF_UP).normalize()
    text = format(rounded, "f")
    return "0" if text == "-0" else text
