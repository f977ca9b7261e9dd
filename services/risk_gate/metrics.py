"""The risk-gate's Prometheus metrics."""

from __future__ import annotations

from collections.abc import Iterable
from typing import get_args

from libs.contract.events import BreakerPayload, ReasonCode
from libs.observability.metrics import DEAD_LETTERS as DEAD_LETTERS  # shared family
from libs.observability.metrics import Counter, Gauge, Histogram, KnownGauge

DECISIONS = Counter(
    "tradebus_risk_decisions_total", "Intents decided", ["decision", "reason", "strategy"]
)
ORDERS_DENIED = Counter(
    "tradebus_orders_denied_total", "Intents denied by the risk-gate", ["reason"]
)
ORDERS_SUBMITTED = Counter(
    "tradebus_orders_submitted_total", "SubmitOrder commands published", ["account"]
)
COMMANDS = Counter(
    "tradebus_risk_commands_total", "Order commands and state events published", ["type"]
)
BREAKER_TRIPS = Counter(
    "tradebus_risk_breaker_trips_total", "Breakers tripped", ["account", "breaker"]
)
ORDERS_WITHDRAWN = Counter(
    "tradebus_risk_orders_withdrawn_total",
    "Accepted intents whose order had not gone out and was withdrawn at go-live",
    ["reason"],
)
DUPLICATE_INTENTS = Counter(
    "tradebus_risk_duplicate_intents_total", "Intents seen again after their decision"
)
DECISION_SECONDS = Histogram(
    "tradebus_risk_decision_seconds",
    "From an intent's delivery to its decision (and order) being stored by JetStream",
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.5),
)
TRADING_STATE = Gauge(
    "tradebus_risk_trading_state",
    "Trading state per scope: 0 active, 1 reducing, 2 halted",
    ["scope"],
)
# No sample until the gate has rebuilt its state (see kill_switch).
KILL_SWITCH = KnownGauge("tradebus_risk_kill_switch", "1 while the global kill switch is engaged")
DAY_PNL = Gauge("tradebus_risk_day_pnl", "Day P&L per account (realized + unrealized)", ["account"])
DAILY_LOSS_USED = Gauge(
    "tradebus_risk_daily_loss_used", "Day loss as a fraction of the daily-loss limit", ["account"]
)
GROSS_NOTIONAL_USED = Gauge(
    "tradebus_risk_gross_notional_used",
    "Strategy gross notional as a fraction of its cap",
    ["strategy", "account"],
)
STALE_MARKS = Gauge(
    "tradebus_risk_stale_marks",
    "Symbols an account holds whose day P&L rests on a price older than max_mark_age_s "
    "(or stamped that far ahead, or none): the breaker counts it all the same",
    ["account"],
)
OLDEST_MARK_AGE = Gauge(
    "tradebus_risk_oldest_mark_age_seconds",
    "Age of the oldest price a symbol an account holds is marked at (0: holds nothing priced)",
    ["account"],
)
OPEN_ORDERS = Gauge("tradebus_risk_open_orders", "Open orders per account", ["account"])
LAST_SEQUENCE = Gauge("tradebus_risk_last_sequence", "Last stream sequence folded into the state")
REBUILD_EVENTS = Gauge(
    "tradebus_risk_rebuild_events", "Events folded by the last rebuild (after its checkpoint)"
)
REBUILD_SECONDS = Gauge("tradebus_risk_rebuild_seconds", "Duration of the last state rebuild")
REBUILD_FROM = Gauge(
    "tradebus_risk_rebuild_from_checkpoint",
    "Store sequence of the checkpoint the last rebuild started from (0: from the start)",
)
CHECKPOINT_RUNS = Counter(
    "tradebus_risk_checkpoint_runs_total",
    "Periodic checkpoint folds (child processes) by outcome",
    ["outcome"],
)
RESTARTS = Counter(
    "tradebus_risk_restarts_total", "Rebuilds after NATS or Postgres went away", ["cause"]
)
LIVE = Gauge("tradebus_risk_live", "1 once the state is rebuilt and the gate decides intents")


def kill_switch(engaged: bool | None) -> None:
    """Export the kill switch: 1 engaged, 0 off; None (not known: the gate has
    not rebuilt its state yet) exports no sample. Exported at 0 from start-up,
    the board showed the switch off (green) for the rebuild after a restart
    while it was on."""
    if engaged is None:
        KILL_SWITCH.forget()
    else:
        KILL_SWITCH.set(1 if engaged else 0)


def gate_started(accounts: Iterable[str]) -> None:
    """Make the series the risk board counts with ``increase()``, at 0.

    Prometheus's ``increase()`` starts from a series' first sample, and a
    labelled counter's first sample is made by its first ``inc()``: a series
    first seen at 1 shows no increase, so the board would miss the first
    breaker an account trips (usually the only one), the first denial of each
    reason and the first dead letter (as the broker-gateway's
    ``account_started`` says of its own).
    """
    for account in accounts:
        for breaker in get_args(BreakerPayload.model_fields["breaker"].annotation):
            BREAKER_TRIPS.labels(account=account, breaker=breaker)
    for reason in ReasonCode:
        if reason is not ReasonCode.ACCEPTED:
            ORDERS_DENIED.labels(reason=reason.value)
    for cause in ("oversized", "malformed_json", "invalid_event"):  # DecodeError's reasons
        DEAD_LETTERS.labels(service="risk-gate", reason=cause)
