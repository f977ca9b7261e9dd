"""A plain summary of the risk state: states, kill switch, caps and their use,
and the positions whose day P&L rests on a stale price.

What ``tradebus risk status`` prints (and ``--json`` emits). Amounts are
decimal strings; ``used`` is the fraction of a cap in use (``"0.42"``), or
None where there is no cap.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, NamedTuple

from services.risk_gate.domain.decide import gross_exposure
from services.risk_gate.domain.evolve import roll_day
from services.risk_gate.domain.limits import GLOBAL, RateLimit
from services.risk_gate.domain.state import NS, ZERO, RiskState


class StaleMark(NamedTuple):
    """A symbol held whose price ``day_pnl`` marks it at is one ``decide``
    would not use (:func:`stale_marks`)."""

    symbol: str
    #: Its age at the time asked (negative: stamped ahead of it); None: no price.
    age_ns: int | None
    #: The symbol's ``max_mark_age_s`` (None: any age, and it has no price).
    max_age_s: float | None


def held_mark_ages(state: RiskState, account: str, now_ns: int) -> dict[str, int | None]:
    """Each symbol ``account`` holds, with the age at ``now_ns`` of the price
    its day P&L is marked at (negative: stamped ahead of ``now_ns``; None:
    no price, so its open quantity adds nothing)."""
    ages: dict[str, int | None] = {}
    for (acct, symbol), p in sorted(state.positions.items()):
        if acct == account and p.quantity != 0:
            mark = state.marks.get(symbol)
            ages[symbol] = None if mark is None else now_ns - mark.ts_ns
    return ages


def stale_marks(state: RiskState, account: str, now_ns: int) -> list[StaleMark]:
    """The symbols ``account`` holds whose price is one ``decide`` would no
    longer trade on: older than the symbol's ``max_mark_age_s``, stamped
    further ahead of ``now_ns`` than that, or none at all.

    ``day_pnl``, and so the daily-loss breaker, marks them at that last price
    all the same: it is the best estimate there is. This says where the
    figure stands still, so an operator does not read it as measured.
    """
    return stale_among(state, held_mark_ages(state, account, now_ns))


def stale_among(state: RiskState, ages: dict[str, int | None]) -> list[StaleMark]:
    """:func:`stale_marks` of the ages :func:`held_mark_ages` gave."""
    stale = []
    for symbol, age in ages.items():
        max_age = state.limits.price_band.of(symbol).max_mark_age_s
        if age is None or (max_age is not None and abs(age) > max_age * NS):
            stale.append(StaleMark(symbol, age, max_age))
    return stale


def _seconds(ns: int) -> str:
    return f"{ns / NS:.1f}"


def _used(value: Decimal, cap: Decimal | None) -> str | None:
    if cap is None or cap == 0:
        return None
    return f"{value / cap:.4f}"  # formatting never raises, unlike quantize


def _money(value: Decimal) -> str:
    return f"{value:.2f}"


def _rate(state: RiskState, key: str, limit: RateLimit | None, now_ns: int) -> dict[str, Any]:
    if limit is None:
        return {"limit": None}
    n = state.orders_in_window(key, now_ns, limit.window_ns)
    return {
        "orders_in_window": n,
        "max_orders": limit.max_orders,
        "per_seconds": limit.per_seconds,
        "used": _used(Decimal(n), Decimal(limit.max_orders)),
    }


def summarize(state: RiskState, now_ns: int) -> dict[str, Any]:
    """Everything an operator wants to see at a glance, JSON-ready."""
    state = roll_day(state, now_ns)
    limits = state.limits
    ks = state.kill_switch
    scopes = [GLOBAL, *sorted(set(limits.accounts) | (set(state.states) - {GLOBAL}))]
    accounts: dict[str, Any] = {}
    for name in sorted(set(limits.accounts) | set(state.accounts_known())):
        acct = limits.accounts.get(name)
        pnl = state.day_pnl(name)
        loss = -pnl if pnl < 0 else ZERO
        accounts[name] = {
            "state": state.scope_state(name).state,
            "broker_connection": state.connections.get(name),
            "day_pnl": _money(pnl),
            "daily_loss_limit": str(acct.daily_loss_limit) if acct else None,
            "daily_loss_used": _used(loss, acct.daily_loss_limit if acct else None),
            "breaker_tripped_today": state.loss_tripped.get(name) == state.day,
            "open_orders": len(state.open_orders(account=name)),
            "positions": {
                sym: str(p.quantity)
                for (a, sym), p in sorted(state.positions.items())
                if a == name and p.quantity != 0
            },
            "rate": _rate(state, f"account:{name}", acct.rate_limit if acct else None, now_ns),
            # Held symbols whose unrealized P&L rests on a price decide would
            # not use: seconds old (negative: stamped ahead; None: no price).
            "stale_marks": {
                m.symbol: {
                    "age_s": None if m.age_ns is None else _seconds(m.age_ns),
                    "max_age_s": m.max_age_s,
                }
                for m in stale_marks(state, name, now_ns)
            },
        }
    strategies: dict[str, Any] = {}
    for name, s in sorted(limits.strategies.items()):
        per_account: dict[str, Any] = {}
        for account in sorted({s.account, *([s.shadow_account] if s.shadow_account else [])}):
            gross = gross_exposure(state, name, account)
            positions = {}
            for (st, a, sym), p in sorted(state.strategy_positions.items()):
                if st != name or a != account or p.quantity == 0:
                    continue
                cap = s.max_position
                if s.symbols is not None:
                    # As decide checks it: a symbol off the list is capped at 0.
                    listed = s.symbols.get(sym)
                    cap = min(cap, listed.max_position) if listed is not None else ZERO
                positions[sym] = {
                    "quantity": str(p.quantity),
                    "max": str(cap),
                    "used": _used(abs(p.quantity), cap),
                }
            per_account[account] = {
                "gross_notional": _money(gross),
                "max_gross_notional": str(s.max_gross_notional),
                "gross_used": _used(gross, s.max_gross_notional),
                "open_orders": len(state.open_orders(account=account, strategy=name)),
                "positions": positions,
            }
        strategies[name] = {
            "account": s.account,
            "shadow_account": s.shadow_account,
            "max_order_quantity": str(s.max_order_quantity),
            "max_order_notional": str(s.max_order_notional),
            "accounts": per_account,
            "rate": _rate(state, f"strategy:{name}", s.rate_limit, now_ns),
        }
    return {
        "trading_day": str(state.day) if state.day else None,
        "kill_switch": {
            "engaged": ks.engaged,
            "operator": ks.operator or None,
            "reason": ks.reason or None,
            "since_ns": ks.since_ns or None,
        },
        "trading_states": {
            scope: {
                "state": state.scope_state(scope).state,
                "reason": state.scope_state(scope).reason,
                "since_ns": state.scope_state(scope).since_ns or None,
            }
            for scope in scopes
        },
        "accounts": accounts,
        "strategies": strategies,
        "pending": {
            "intents": len(state.pending_intents),
            "orders": len(state.awaiting_order),
            "reactions": [f"{o.kind}:{o.scope}" for o in state.obligations],
        },
    }
