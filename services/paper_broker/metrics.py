"""The paper broker's Prometheus metrics."""

from __future__ import annotations

from libs.observability.metrics import Counter, Gauge

ORDERS = Counter(
    "tradebus_paper_orders_total",
    "Order submissions by outcome (accepted, duplicate client order id, refused)",
    ["account", "outcome"],
)
FILLS = Counter("tradebus_paper_fills_total", "Fills (partial or complete)", ["account"])
REQUESTS = Counter(
    "tradebus_paper_requests_total", "Order-entry requests answered", ["method", "status"]
)
MARKET_UPDATES = Counter(
    "tradebus_paper_market_updates_total", "Trades and bars taken from the feed", ["kind"]
)
MARKET_UPDATES_REPLAYED = Counter(
    "tradebus_paper_market_updates_replayed_total",
    "Trades and bars a reconnection brought again, skipped (taken in already)",
)
MARKET_UPDATES_HISTORY = Counter(
    "tradebus_paper_market_updates_history_total",
    "A symbol's first price stored before the feed connected: taken as the last price, "
    "filling nothing",
)
CONNECTIONS = Gauge("tradebus_paper_connections", "Open client WebSocket connections")
AUTH_FAILURES = Counter("tradebus_paper_auth_failures_total", "Refused authentications")
SLOW_CONSUMERS = Counter(
    "tradebus_paper_slow_consumers_total", "Clients disconnected for not reading their updates"
)
FEED_ERRORS = Counter(
    "tradebus_paper_feed_errors_total", "Market-data messages or connections that failed", ["cause"]
)
JOURNAL_COMPACTIONS = Counter(
    "tradebus_paper_journal_compactions_total",
    "Journals rewritten as a snapshot of the books (at start-up, or grown past the size set)",
)
JOURNAL_COMPACTION_FAILURES = Counter(
    "tradebus_paper_journal_compaction_failures_total",
    "Compactions that failed (the journal was kept as it was and appended to)",
)
ORDERS_FORGOTTEN = Counter(
    "tradebus_paper_orders_forgotten_total",
    "Finished orders older than the journal's window, dropped with their fill activities",
)
JOURNAL_BYTES = Gauge("tradebus_paper_journal_bytes", "Size of the journal file")
SETTLEMENTS = Counter(
    "tradebus_paper_option_settlements_total",
    "Option positions settled at their contract's expiry, by outcome (OPEXP, OPEXC, OPASN)",
    ["account", "activity_type"],
)
