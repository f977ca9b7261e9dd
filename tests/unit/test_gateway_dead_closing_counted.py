"""A flatten counted ``flattened`` that a closing order's late end leaves
incomplete (test_gateway_dead_closing_late.py: the position is said open
after the close-all's answer) is counted as such:
``tradebus_broker_flattens_incomplete_late_total``, once per flatten, so
that the flattens that did flatten are the ``flattened`` ones less these.
Its outcome counter cannot be taken back. Not a flatten already counted
``incomplete``, nor one whose late end is in an option contract past its
expiry (the broker settles it). The broker is a stand-in; the clock is the
test's."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from services.broker_gateway.domain.model import ClosedAll, CloseRefused, OrderUpdate
from tests.unit.gateway_closing_inputs import closed_by, closing, holding, outcomes, streamed

BOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "risk.json"


def turned_incomplete(account: str) -> float | None:
    return REGISTRY.get_sample_value(
        "tradebus_broker_flattens_incomplete_late_total", {"account": account}
    )


async def test_a_flattened_flatten_a_late_end_leaves_open_is_counted_once() -> None:
    """The answer lists AAPL's c-1 and MSFT's c-2 working: ``flattened``.
    Both end unfilled afterwards: two positions said open, one flatten
    counted as turned incomplete."""
    account = f"late-{uuid.uuid4().hex[:8]}"
    w = holding(account)
    assert turned_incomplete(account) == 0, "made at 0 with the account"
    published: list[Any] = []
    answer = ClosedAll((closing("accepted"), closing("accepted", symbol="MSFT", oid="c-2")))
    await closed_by(w, answer, published)
    assert outcomes(account) == {"flattened": 1, "incomplete": 0, "refused": 0}
    assert turned_incomplete(account) == 0

    await streamed(w, [OrderUpdate("canceled", closing("canceled"), 5)], published)
    assert outcomes(account) == {"flattened": 1, "incomplete": 0, "refused": 1}
    assert turned_incomplete(account) == 1
    ended = closing("expired", symbol="MSFT", oid="c-2")
    await streamed(w, [OrderUpdate("expired", ended, 6)], published)
    assert outcomes(account)["refused"] == 2
    assert turned_incomplete(account) == 1


async def test_a_flatten_counted_incomplete_is_not_counted_again() -> None:
    """The broker refused MSFT at the answer (``incomplete``); AAPL's c-1
    ends unfilled afterwards: one more position open, the flatten not
    counted again."""
    account = f"late-{uuid.uuid4().hex[:8]}"
    w = holding(account)
    published: list[Any] = []
    refused = CloseRefused("MSFT", "halted", "403", entry=0)
    await closed_by(w, ClosedAll((closing("accepted"),), (refused,)), published)
    assert outcomes(account) == {"flattened": 0, "incomplete": 1, "refused": 1}
    await streamed(w, [OrderUpdate("canceled", closing("canceled"), 5)], published)
    assert outcomes(account)["refused"] == 2
    assert turned_incomplete(account) == 0


async def test_an_expired_option_contract_ending_late_leaves_the_flatten_flattened() -> None:
    """Its closing order's late end is not counted as left open (the broker
    settles the contract), so the flatten did not turn incomplete; a later
    end of its AAPL order does."""
    account = f"late-{uuid.uuid4().hex[:8]}"
    w = holding(account)
    published: list[Any] = []
    option = "O:SPY200117C00300000"
    answer = ClosedAll((closing("accepted", symbol=option, oid="c-2"), closing("accepted")))
    await closed_by(w, answer, published)
    ended = closing("expired", symbol=option, oid="c-2")
    await streamed(w, [OrderUpdate("expired", ended, 5)], published)
    assert outcomes(account) == {"flattened": 1, "incomplete": 0, "refused": 0}
    assert turned_incomplete(account) == 0
    await streamed(w, [OrderUpdate("canceled", closing("canceled"), 6)], published)
    assert turned_incomplete(account) == 1


def test_the_risk_board_shows_it_beside_the_commands_not_carried_out() -> None:
    board = json.loads(BOARD.read_text())
    [panel] = [p for p in board["panels"] if p["title"] == "Broker commands not carried out"]
    [target] = [
        t for t in panel["targets"] if "tradebus_broker_flattens_incomplete_late_total" in t["expr"]
    ]
    assert "by (account)" in target["expr"]
    assert "incomplete" in target["legendFormat"]
    assert "flattened" in panel["description"]
