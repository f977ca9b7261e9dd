"""The broker-gateway's Prometheus metrics."""

from __future__ import annotations

from libs.observability.metrics import DEAD_LETTERS as DEAD_LETTERS  # shared family
from libs.observability.metrics import Counter, Gauge, Histogram

COMMANDS = Counter(
    "tradebus_broker_commands_total",
    "Order commands handled, by type and outcome",
    ["account", "type", "outcome"],
)
EVENTS_PUBLISHED = Counter(
    "tradebus_broker_events_published_total", "Events published to the bus", ["account", "type"]
)
CONNECTED = Gauge(
    "tradebus_broker_connected", "1 while the account's broker connection is up", ["account"]
)
CONNECTION_CHANGES = Counter(
    "tradebus_broker_connection_changes_total",
    "Broker connection state changes",
    ["account", "state"],
)
CALL_SECONDS = Histogram(
    "tradebus_broker_call_seconds",
    "Broker call latency",
    ["account", "call"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CALL_ERRORS = Counter(
    "tradebus_broker_call_errors_total", "Broker calls that failed", ["account", "call", "error"]
)
RECONCILED_FILLS = Counter(
    "tradebus_broker_reconciled_fills_total",
    "Fills published by a reconciliation (missed on the stream)",
    ["account"],
)
ORDERS_UNKNOWN = Counter(
    "tradebus_broker_orders_unknown_total",
    "Orders the gateway still tracks as working (acknowledged by the broker) "
    "that the broker no longer knows at a reconciliation: their outcome is not known "
    "(each counted once, however often it is asked for again)",
    ["account"],
)
MALFORMED = Counter(
    "tradebus_broker_malformed_messages_total", "Broker messages that did not parse", ["account"]
)
FLATTEN_REFUSED = Counter(
    "tradebus_broker_flatten_refused_positions_total",
    "Positions a flatten's close-all left open: the broker refused to close them, "
    "or their closing orders ended short (canceled, expired or rejected)",
    ["account"],
)
FLATTENS_INCOMPLETE_LATE = Counter(
    "tradebus_broker_flattens_incomplete_late_total",
    "Flattens counted flattened (tradebus_broker_commands_total) that a closing order "
    "ending short after the close-all's answer left incomplete: a position still open "
    "(each flatten once; one run by a gateway before a restart is not counted)",
    ["account"],
)
FLATTEN_WORKING = Counter(
    "tradebus_broker_flatten_working_orders_total",
    "Orders a flatten's cancel-all left working: the broker refused to cancel them, "
    "and they may fill",
    ["account"],
)
RATE_LIMITED = Counter(
    "tradebus_broker_rate_limited_total",
    "Broker answers of 429 (rate limit) that made the gateway back off",
    ["account"],
)
RECONCILIATIONS_GIVEN_UP = Counter(
    "tradebus_broker_reconciliations_given_up_total",
    "Reconciliations given up because the broker refused one call (429) 5 times in a row, "
    "and orders a reconciliation skipped because the broker answered them with an error, "
    "or reconciliations and option settlement reads that failed on an unexpected error "
    "(each tried again after a backoff)",
    ["account"],
)
POSITION_DIFFERENCES = Gauge(
    "tradebus_broker_position_differences",
    "Symbols whose net position at the broker differs from the account's recorded fills, "
    "at the last positions check",
    ["account"],
)
POSITION_CHECKS = Counter(
    "tradebus_broker_position_checks_total",
    "Checks of the broker's positions against the recorded fills, by outcome "
    "(agree, differ, failed)",
    ["account", "outcome"],
)
SETTLEMENTS_UNSETTLED = Gauge(
    "tradebus_broker_settlements_unsettled",
    "Option settlements the broker has not listed a week after the contract's expiry "
    "(a contract held past it, an exercise's or assignment's shares): no longer read for "
    "but after a connection",
    ["account"],
)
DEAD_LETTERS_NOT_TAKEN = Counter(
    "tradebus_broker_dead_letters_not_taken_total",
    "Dead letters the stream did not take within TRADEBUS_DEAD_LETTER_DEADLINE_S: "
    "their message is handed back and dead-lettered again when it comes back",
    ["reason"],
)
COMMANDS_HELD = Gauge(
    "tradebus_broker_commands_held",
    "Commands held for the account: the one under way and those queued behind it "
    "(while the broker is away, they wait here)",
    ["account"],
)


#: The outcomes of each command the risk board shows as not carried out
#: ("Broker commands not carried out"), made at 0 with the account.
NOT_CARRIED_OUT = {
    "SubmitOrder": ("rejected", "stale", "failed", "deferred"),
    "CancelOrder": ("not_cancelable", "failed", "deferred"),
    "FlattenAccount": ("incomplete", "failed", "deferred"),
}


def account_started(account: str) -> None:
    """Make the account's series that the boards watch, at 0.

    Prometheus's ``increase()`` starts from a series' first sample, and a
    labelled counter's first sample is made by its first ``inc()``: a series
    first seen at 1 shows no increase, so a board would miss the first
    position a flatten left open (and, after a restart, one that brings the
    count back to no more than it was: not seen as a reset).
    """
    FLATTEN_REFUSED.labels(account=account)
    FLATTENS_INCOMPLETE_LATE.labels(account=account)
    FLATTEN_WORKING.labels(account=account)
    ORDERS_UNKNOWN.labels(account=account)
    RATE_LIMITED.labels(account=account)
    RECONCILIATIONS_GIVEN_UP.labels(account=account)
    POSITION_DIFFERENCES.labels(account=account)
    SETTLEMENTS_UNSETTLED.labels(account=account)
    for outcome in ("agree", "differ", "failed"):
        POSITION_CHECKS.labels(account=account, outcome=outcome)
    EVENTS_PUBLISHED.labels(account=account, type="OrderRejected")
    for command, outcomes in NOT_CARRIED_OUT.items():
        for outcome in outcomes:
            COMMANDS.labels(account=account, type=command, outcome=outcome)
