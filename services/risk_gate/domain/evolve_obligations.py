"""The risk fold's obligations and trading states: the daily-loss and
reduce-only checks, what the gate owes a scope (a halt, a reduce, a resume)
and the events that create or settle those (breakers, broker connections,
the kill switch, resumes, trading-state changes). Part of
:func:`~services.risk_gate.domain.evolve.evolve`, which dispatches to these;
pure and synchronous as it is.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from decimal import Context, Decimal
from typing import Literal

from libs.contract.envelope import Event
from libs.contract.events import (
    BreakerTripped,
    BrokerConnectionChanged,
    KillSwitchEngaged,
    TradingResumeRequested,
    TradingState,
    TradingStateChanged,
)
from services.risk_gate.domain.limits import GLOBAL
from services.risk_gate.domain.state import (
    KillSwitch,
    Obligation,
    ObligationKind,
    RiskState,
    ScopeState,
    with_item,
)

replace = dataclasses.replace

#: What each obligation kind leaves the scope in once its reaction is applied.
RESULTING_STATE: dict[ObligationKind, TradingState] = {
    "daily_loss": "halted",
    "connection_lost": "halted",
    "kill_switch": "halted",
    "resume": "active",
    "reduce": "reducing",
}

#: The places an event can carry of an amount (the contract's ``Money``).
MONEY_QUANTUM = Decimal("1e-12")
_WIDE = Context(prec=60)


def reportable(amount: Decimal) -> Decimal:
    """``amount`` as an event can carry it. A day P&L marked against an
    average cost (a division) can have 28 significant digits; the contract
    takes 12 decimal places, and a breaker's event must not fail to build."""
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent >= -12:
        return amount
    return amount.quantize(MONEY_QUANTUM, context=_WIDE)


# ------------------------------------------------------------------- losses


def check_loss(state: RiskState, trigger: Event, accounts: set[str]) -> RiskState:
    """Record a daily-loss (or reduce-only) obligation for accounts past their limit."""
    for account in sorted(accounts):
        limits = state.limits.accounts.get(account)
        if limits is None:
            continue
        pnl = state.day_pnl(account)
        # Tripped today, or owed a trip for today (a fold can reach this
        # before the reaction the live gate had already published). A trip
        # owed for an earlier day is no trip of today's: the live gate had
        # reacted to it before this event, and this loss owes one of its own
        # (skipped, a rebuild cut before the new day's reaction owed none).
        tripped = state.loss_tripped.get(account) == state.day or any(
            o.kind == "daily_loss" and o.scope == account and o.day == state.day
            for o in state.obligations
        )
        # Once tripped, the loss is left to the reduce-only level below: a
        # resume overrides the breaker for the day, not that level, which a
        # loss past the limit is past too (else the account resumed past the
        # limit was freer than one resumed past the level alone).
        # copy_negate: exact; a minus sign rounds to 28 digits (state.EXACT).
        if pnl <= limits.daily_loss_limit.copy_negate() and not tripped:
            shown = reportable(pnl)
            state = _oblige(
                state,
                Obligation(
                    "daily_loss",
                    account,
                    trigger.id,
                    trigger.correlation_id,
                    f"day P&L {shown} reached the daily loss limit -{limits.daily_loss_limit}",
                    limit=limits.daily_loss_limit,
                    value=shown,
                    day=state.day,
                ),
            )
        elif (
            limits.reduce_only_at_loss is not None
            and pnl <= limits.reduce_only_at_loss.copy_negate()
        ):
            # Only from active, as the account is once what is owed to it is
            # reacted to: the stream holds the causes the gate saw before its
            # reactions to them, so a fold reaches this with a halt still owed
            # where the live gate had already halted (a reduce reacted to after
            # it would lower it to reducing), or with a resume still owed where
            # the live gate had already resumed and reduced.
            if (
                state.loss_reduced.get(account) == state.day
                or any(
                    o.kind == "reduce" and o.scope == account and o.day == state.day
                    for o in state.obligations
                )
                or _owed_state(state, account) != "active"
            ):
                continue
            shown = reportable(pnl)
            state = _oblige(
                state,
                Obligation(
                    "reduce",
                    account,
                    trigger.id,
                    trigger.correlation_id,
                    f"day P&L {shown} reached the reduce-only level -{limits.reduce_only_at_loss}",
                    limit=limits.reduce_only_at_loss,
                    value=shown,
                    day=state.day,
                ),
            )
    return state


def _oblige(state: RiskState, obligation: Obligation) -> RiskState:
    return replace(state, obligations=(*state.obligations, obligation))


def _owed_state(state: RiskState, scope: str) -> TradingState:
    """The state ``scope`` is in once what is owed to it has been reacted to.

    Live, the gate reacts before it reads the next message, so every event
    finds the reactions to the ones before it applied; a fold of the store can
    reach an event ahead of reactions the live gate had already published
    (they land in the stream after it). Read this, not the state folded so
    far, where the answer must be the one the live gate gave.
    """
    owed = [o for o in state.obligations if o.scope == scope]
    return RESULTING_STATE[owed[-1].kind] if owed else state.scope_state(scope).state


# ----------------------------------------------------------------- broker


def on_breaker(state: RiskState, event: BreakerTripped) -> RiskState:
    """A daily-loss breaker is recorded as tripped on the day of the loss (its
    obligation's), not the day its reaction came on: a loss late on one day
    reacted to after the next day began must not disarm that day's breaker."""
    p = event.payload
    if p.breaker != "daily_loss":
        return state
    day = state.day
    for o in state.obligations:
        if o.kind == "daily_loss" and o.scope == p.account and o.trigger_id == event.causation_id:
            day = o.day or day
    return _record_day(state, "loss_tripped", p.account, day)


def _record_day(
    state: RiskState,
    name: Literal["loss_tripped", "loss_reduced"],
    account: str,
    day: dt.date | None,
) -> RiskState:
    """``state.<name>[account]`` moved forward to ``day`` (never back)."""
    days: Mapping[str, dt.date] = getattr(state, name)
    current = days.get(account)
    if day is None or (current is not None and current >= day):
        return state
    return replace(state, **{name: with_item(days, account, day)})


def on_connection(state: RiskState, event: BrokerConnectionChanged) -> RiskState:
    p = event.payload
    previous = state.connections.get(p.account)
    state = replace(state, connections=with_item(state.connections, p.account, p.state))
    limits = state.limits.accounts.get(p.account)
    if p.state != "disconnected" or previous == "disconnected" or limits is None:
        return state
    if not limits.flatten_on_disconnect:
        return state
    return _oblige(
        state,
        Obligation(
            "connection_lost",
            p.account,
            event.id,
            event.correlation_id,
            f"broker connection lost ({p.broker}): {p.detail}".rstrip(": "),
        ),
    )


# ---------------------------------------------------------------- control


def on_kill_switch(state: RiskState, event: KillSwitchEngaged) -> RiskState:
    p = event.payload
    if state.kill_switch.engaged:
        # Already on: who engaged it, why and when stay those of the first
        # (the halt it caused says so too); the repeat is in the store.
        return state
    state = replace(state, kill_switch=KillSwitch(True, p.operator, p.reason, event.ts_event))
    return _oblige(
        state,
        Obligation(
            "kill_switch",
            GLOBAL,
            event.id,
            event.correlation_id,
            f"kill switch engaged by {p.operator}: {p.reason}",
            operator=p.operator,
        ),
    )


def on_resume(state: RiskState, event: TradingResumeRequested) -> RiskState:
    p = event.payload
    if _owed_state(state, p.scope) == "active":
        # Nothing to resume, or a resume is owed already: a second one would
        # stay owed past the first one's reaction in a fold of the store, and
        # raise the scope again on a restart, whatever halted it since.
        return state
    kept = tuple(o for o in state.obligations if not (o.kind == "resume" and o.scope == p.scope))
    state = replace(
        state,
        obligations=(
            *kept,
            Obligation(
                "resume",
                p.scope,
                event.id,
                event.correlation_id,
                f"resumed by {p.operator}: {p.reason}",
                operator=p.operator,
            ),
        ),
    )
    # A loss that passed the reduce-only level while the account was halted
    # owed no reduce (a halt is never lowered); resumed, the account is past
    # it, and reduces now rather than at the next print of a symbol it holds
    # (none, if the halt flattened it). The reduce follows the resume.
    return check_loss(state, event, {p.scope})


def on_state_changed(state: RiskState, event: TradingStateChanged) -> RiskState:
    p = event.payload
    states = with_item(state.states, p.scope, ScopeState(p.state, p.reason, event.ts_event))
    done = [
        o
        for o in state.obligations
        if o.trigger_id == event.causation_id
        and o.scope == p.scope
        and RESULTING_STATE[o.kind] == p.state
    ]
    # A halt makes a reduce owed to the same scope moot: reacting to it after
    # the halt would lower the scope to reducing, which only a resume may do.
    # Not one owed after a resume still owed: the live gate had halted, then
    # resumed and reduced (a fold reaches the halt's reaction after them).
    moot: list[Obligation] = []
    for o in state.obligations if p.state == "halted" else ():
        if o.scope != p.scope:
            continue
        if o.kind == "resume":
            break
        if o.kind == "reduce":
            moot.append(o)
    state = replace(
        state,
        states=states,
        obligations=tuple(o for o in state.obligations if o not in done and o not in moot),
    )
    for o in done:
        if o.kind == "reduce":
            state = _record_day(state, "loss_reduced", p.scope, o.day or state.day)
    return state
