"""The strategy-runner's Prometheus metrics (labels: the strategy's name)."""

from __future__ import annotations

from libs.observability.metrics import DEAD_LETTERS as DEAD_LETTERS  # shared family
from libs.observability.metrics import Counter, Gauge, Histogram

EVENTS_IN = Counter(
    "tradebus_strategy_events_in_total",
    "Events handed to a strategy's inbox",
    ["strategy", "type"],
)
EVENTS_EMITTED = Counter(
    "tradebus_strategy_events_emitted_total",
    "Events a strategy emitted and JetStream acknowledged",
    ["strategy", "type"],
)
INBOX_DEPTH = Gauge(
    "tradebus_strategy_inbox_depth", "Events waiting in a strategy's inbox", ["strategy"]
)
INBOX_OVERFLOW = Counter(
    "tradebus_strategy_inbox_overflow_total",
    "Puts into a full inbox: market data dropped (drop_oldest) or the dispatcher waited",
    ["strategy", "action"],
)
FAULTS = Counter(
    "tradebus_strategy_faults_total", "Strategy callbacks that raised", ["strategy", "action"]
)
RUNNING = Gauge(
    "tradebus_strategy_running", "1 while the strategy runs, 0 once stopped", ["strategy"]
)
CALLBACK_SECONDS = Histogram(
    "tradebus_strategy_callback_seconds",
    "Time a strategy spent handling one event (its callback and the books)",
    ["strategy"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5),
)
POSITION = Gauge(
    "tradebus_strategy_position", "A strategy's position (signed quantity)", ["strategy", "symbol"]
)
PNL = Gauge("tradebus_strategy_pnl", "A strategy's P&L", ["strategy", "kind"])
UNROUTED = Counter(
    "tradebus_strategy_runner_unrouted_total",
    "Consumed events no strategy here owns (another runner's orders, other symbols)",
    ["type"],
)
CATCH_UP = Counter(
    "tradebus_strategy_runner_catch_up_events_total",
    "Events already in the stream at start-up: applied to the books, not shown to strategies",
)
RESTORED = Counter(
    "tradebus_strategy_runner_restored_events_total",
    "Events read from the event store at start-up to rebuild strategies' books",
)
WARMUP_BARS = Counter(
    "tradebus_strategy_warmup_bars_total",
    "Past bars shown to a strategy's on_warmup (from the store at start-up, or closed while "
    "the runner was down)",
    ["strategy"],
)
CONSUMER_RECREATED = Counter(
    "tradebus_strategy_runner_consumer_recreated_total",
    "Times the runner recreated its consumer where it left off after a fault (cause: the "
    "error; DeliveryGap: a message the server sent never arrived)",
    ["cause"],
)
