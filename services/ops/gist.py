"""One line of what an order-path event (or a mark) says, for ``tradebus audit``.

A chain printed as types and ids alone tells that a fill came from a signal,
not what was bought at what price, or why the gate said no: the trader had to
ask for ``--json`` and read the payloads. :func:`gist` picks the few fields
that matter for each event type (``buy 100 AAPL limit 190.5``, ``denied:
max_position (AAPL 400 > 300)``, ``buy 100 AAPL @ 190.78, complete, booked to
sma-aapl``; an option's mark, whose chain is the quote it came from and its
re-marks: ``mark O:SPY241220P00720000 2.525 (bid 2.50 / ask 2.55)``; a row the recorder
wrote for a duplicate: ``duplicate of <id> at seq 812``). It reads the
payload as stored (JSON), so it works on any recorded row, and it leaves out
what a payload does not have rather than failing: an event type it does not
know gets no gist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from libs.store.layout import DUPLICATE, MISSING, UNDECODABLE

Payload = dict[str, Any]


def _order(p: Payload) -> str:
    """``buy 100 AAPL``, then its stop and limit prices (``stop 500 limit 499``)
    and a time in force other than ``day``."""
    text = f"{p.get('side', '?')} {p.get('quantity', '?')} {p.get('symbol', '?')}"
    if p.get("stop_price") is not None:
        text += f" stop {p['stop_price']}"
    if p.get("limit_price") is not None:
        text += f" limit {p['limit_price']}"
    tif = p.get("time_in_force", "day")
    if tif != "day":
        text += f" {tif}"
    return text


def _signal(p: Payload) -> str:
    text = f"{p.get('strategy', '?')}: {p.get('name', '?')} {p.get('direction', '?')}"
    text += f" {p.get('symbol', '?')}"
    return f"{text} ({p['reason']})" if p.get("reason") else text


def _intent(p: Payload) -> str:
    return f"{p.get('strategy', '?')}: {_order(p)} on {p.get('account', '?')}"


def _decision(p: Payload) -> str:
    decision, reason = p.get("decision", "?"), p.get("reason", "?")
    text = decision if reason == decision else f"{decision}: {reason}"
    return f"{text} ({p['detail']})" if p.get("detail") else text


def _accepted(p: Payload) -> str:
    return f"broker order {p.get('broker_order_id', '?')}"


def _fill(p: Payload) -> str:
    """``sell 100 AAPL @ 190.78, complete, booked to sma-aapl``: the strategy
    says whose position it moved, which for a flatten's closing fill is not
    in its chain (the flatten's, not the strategy's signal)."""
    text = f"{p.get('side', '?')} {p.get('quantity', '?')} {p.get('symbol', '?')}"
    text += f" @ {p.get('price', '?')}, {p.get('status', '?')}"
    if p.get("status") == "partial":
        text += f" ({p.get('leaves_quantity', '?')} left)"
    if p.get("settlement"):
        # An option's expiry settled by the broker: not a trade, no order.
        text += f", option {p['settlement']} at expiry"
    if p.get("strategy"):
        text += f", booked to {p['strategy']}"
    return text


def _closing(p: Payload) -> str:
    """``AAPL sell 100 (60 working, sma-aapl); MSFT buy 5``."""
    orders = [o for o in p.get("orders") or [] if isinstance(o, dict)]
    if not orders:
        return f"{p.get('account', '?')}: no closing orders"

    def one(o: Payload) -> str:
        text = f"{o.get('side', '?')} {o.get('quantity', '?')} {o.get('symbol', '?')}"
        working = o.get("leaves_quantity")
        notes = [] if working == o.get("quantity") else [f"{working} working"]
        if o.get("strategy"):
            notes.append(str(o["strategy"]))
        return f"{text} ({', '.join(notes)})" if notes else text

    return f"{p.get('account', '?')}: " + "; ".join(one(o) for o in orders)


def _because(p: Payload) -> str:
    code = f" [{p['code']}]" if p.get("code") else ""
    return f"{p.get('reason', '')}{code}"


def _state(p: Payload) -> str:
    change = f"{p.get('previous', '?')} -> {p.get('state', '?')}"
    return f"{p.get('scope', '?')}: {change} ({p.get('reason', '')})"


def _breaker(p: Payload) -> str:
    text = f"{p.get('account', '?')}: {p.get('breaker', '?')}"
    if p.get("value") is not None and p.get("limit") is not None:
        text += f" {p['value']} against {p['limit']}"
    return f"{text} ({p['detail']})" if p.get("detail") else text


def _operator(p: Payload) -> str:
    scope = f" {p['scope']}" if p.get("scope") else ""
    return f"by {p.get('operator', '?')}{scope}: {p.get('reason', '')}"


def _connection(p: Payload) -> str:
    text = f"{p.get('account', '?')} {p.get('state', '?')}"
    return f"{text} ({p['detail']})" if p.get("detail") else text


def _positions(p: Payload) -> str:
    differences = p.get("differences") or []
    if not differences:
        return f"{p.get('account', '?')}: positions agree with the broker's"
    said = "; ".join(
        f"{d.get('symbol', '?')} {d.get('broker_quantity', '?')} at the broker, "
        f"{d.get('recorded_quantity', '?')} recorded"
        for d in differences
        if isinstance(d, dict)
    )
    return f"{p.get('account', '?')}: positions differ: {said}"


def _fault(p: Payload) -> str:
    return f"{p.get('strategy', '?')} {p.get('action', '?')}: {p.get('error', '')}"


def _mark(p: Payload) -> str:
    text = f"mark {p.get('symbol', '?')} {p.get('price', '?')}"
    return f"{text} (bid {p.get('bid_price', '?')} / ask {p.get('ask_price', '?')})"


def _duplicate(p: Payload) -> str:
    """Where the original is: its own chain is the one to audit. A copy that
    said something else keeps its bytes in the row (``raw``): said here."""
    text = f"duplicate of {p.get('duplicate_of', '?')} at seq {p.get('first_seq', '?')}"
    differs = p.get("differs")
    if isinstance(differs, list) and differs:
        text += f", differing in {', '.join(str(d) for d in differs)}"
    return text


GISTS: dict[str, Callable[[Payload], str]] = {
    "SignalGenerated": _signal,
    "OrderIntentCreated": _intent,
    "RiskDecisionMade": _decision,
    "SubmitOrder": _order,
    "OrderAccepted": _accepted,
    "FillReceived": _fill,
    "OrderRejected": _because,
    "OrderCanceled": _because,
    "CancelOrder": _because,
    "ClosingOrdersPlaced": _closing,
    "FlattenAccount": lambda p: f"{p.get('account', '?')}: {p.get('reason', '')}",
    "TradingStateChanged": _state,
    "BreakerTripped": _breaker,
    "KillSwitchEngaged": _operator,
    "KillSwitchReleased": _operator,
    "TradingResumeRequested": _operator,
    "BrokerConnectionChanged": _connection,
    "BrokerPositionsChecked": _positions,
    "StrategyFaulted": _fault,
    "MarkUpdated": _mark,
    # The rows the recorder writes itself for positions that hold no event.
    DUPLICATE: _duplicate,
    UNDECODABLE: lambda p: f"{p.get('reason', '?')}: {p.get('error', '')}",
    MISSING: lambda p: p.get("reason", ""),
}


def gist(type_: str, payload: Any) -> str:
    """What an event of ``type_`` with ``payload`` says, in one line; ``""``
    for a type without a gist or a payload that is not an object."""
    make = GISTS.get(type_)
    if make is None or not isinstance(payload, dict):
        return ""
    return " ".join(make(payload).split())  # one line, whatever the texts hold
