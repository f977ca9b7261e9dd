"""Polygon-shaped test data: minute and second bars in the REST and WebSocket wire formats.

One bar is a plain dict in the REST aggregates shape (``o h l c v vw n t``,
``t`` = window start in ms), which is what :class:`FakePolygonRest` serves;
:func:`rest_bar_to_am` turns it into the WebSocket ``AM`` event of the same
minute, so a test can have the live feed and gap-fill agree on the data.
Prices are ``Decimal`` here and JSON numbers on the wire, as Polygon sends.
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

MINUTE_MS = 60_000
SECOND_MS = 1_000

RestBar = dict[str, Any]


def make_minute_bars(
    symbol: str,
    start_ms: int,
    count: int,
    *,
    seed: int = 1,
    skip: frozenset[int] = frozenset(),
    price: Decimal = Decimal("100.00"),
) -> list[RestBar]:
    """``count`` consecutive minute bars from ``start_ms`` (a random walk in cents).

    ``skip`` holds minute offsets that have no bar (no trades in that window,
    which Polygon represents by leaving the bar out). Deterministic per
    ``(symbol, seed)``.
    """
    rng = random.Random(f"{symbol}/{seed}")  # noqa: S311 - test data, not crypto
    bars: list[RestBar] = []
    cents = Decimal("0.01")
    for i in range(count):
        o = price
        c = max(cents, o + cents * rng.randint(-25, 25))
        h = max(o, c) + cents * rng.randint(0, 10)
        lo = max(cents, min(o, c) - cents * rng.randint(0, 10))
        price = c
        if i in skip:
            continue
        v = rng.randint(100, 50_000)
        bars.append(
            {
                "v": v,
                "vw": ((o + c + h + lo) / 4).quantize(Decimal("0.0001")),
                "o": o,
                "c": c,
                "h": h,
                "l": lo,
                "t": start_ms + i * MINUTE_MS,
                "n": rng.randint(1, 500),
            }
        )
    return bars


def make_second_bars(
    symbol: str, start_ms: int, count: int, *, skip: frozenset[int] = frozenset()
) -> list[RestBar]:
    """``count`` consecutive second bars from ``start_ms`` (``skip``: seconds without one).

    The same random walk as :func:`make_minute_bars`, a second a step.
    """
    bars = make_minute_bars(symbol, 0, count, skip=skip)
    return [{**b, "t": start_ms + b["t"] // MINUTE_MS * SECOND_MS} for b in bars]


def rest_bar_to_a(symbol: str, bar: RestBar) -> dict[str, Any]:
    """The WebSocket ``A`` (second aggregate) event for a REST bar of the same second."""
    return {
        **rest_bar_to_am(symbol, bar),
        "ev": "A",
        "e": bar["t"] + SECOND_MS,
    }


def rest_bar_to_am(symbol: str, bar: RestBar, *, day_volume: int = 0) -> dict[str, Any]:
    """The WebSocket ``AM`` (minute aggregate) event for a REST bar of the same minute."""
    return {
        "ev": "AM",
        "sym": symbol,
        "v": bar["v"],
        "av": day_volume or bar["v"],
        "op": bar["o"],
        "vw": bar["vw"],
        "o": bar["o"],
        "c": bar["c"],
        "h": bar["h"],
        "l": bar["l"],
        "a": bar["vw"],
        "z": max(1, int(bar["v"]) // max(1, int(bar.get("n") or 1))),
        "s": bar["t"],
        "e": bar["t"] + MINUTE_MS,
    }


def trade(
    symbol: str,
    seq: int,
    t_ms: int,
    price: Decimal | str,
    size: int = 100,
    *,
    exchange: int = 4,
    conditions: tuple[int, ...] = (),
    tape: int = 3,
) -> dict[str, Any]:
    """A WebSocket trade ``T`` event (``c`` left out when there are no conditions)."""
    event: dict[str, Any] = {
        "ev": "T",
        "sym": symbol,
        "i": str(52983525000000 + seq),
        "x": exchange,
        "p": Decimal(price),
        "s": size,
        "t": t_ms,
        "q": seq,
        "z": tape,
    }
    if conditions:
        event["c"] = list(conditions)
    return event


def quote(
    symbol: str,
    seq: int,
    t_ms: int,
    bid: Decimal | str,
    ask: Decimal | str,
    *,
    bid_size: int = 2,
    ask_size: int = 3,
    tape: int = 3,
) -> dict[str, Any]:
    """A WebSocket quote ``Q`` event (sizes in round lots, as Polygon sends them)."""
    return {
        "ev": "Q",
        "sym": symbol,
        "bx": 4,
        "bp": Decimal(bid),
        "bs": bid_size,
        "ax": 7,
        "ap": Decimal(ask),
        "as": ask_size,
        "c": 0,
        "i": [604],
        "t": t_ms,
        "q": seq,
        "z": tape,
    }
