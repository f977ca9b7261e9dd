"""The marketdata service's Prometheus metrics (shared by every source)."""

from __future__ import annotations

from libs.observability.metrics import DEAD_LETTERS as DEAD_LETTERS  # shared family
from libs.observability.metrics import Counter, Gauge

MESSAGES_IN = Counter(
    "tradebus_marketdata_messages_in_total", "Records received from the source", ["channel"]
)
EVENTS_OUT = Counter(
    "tradebus_marketdata_events_out_total", "Events acknowledged by JetStream", ["channel"]
)
MARKS_SKIPPED = Counter(
    "tradebus_marketdata_marks_skipped_total",
    "Option quotes that made no mark (one_sided, crossed, out_of_order, wide_spread, "
    "unchanged; throttled: held back, marked when the interval ends unless a newer quote "
    "replaces it)",
    ["reason"],
)
REMARKS = Counter(
    "tradebus_marketdata_remarks_total",
    "Marks re-made of option quotes that still stand (the feed sent no new quote)",
)
STANDING_ENDED = Counter(
    "tradebus_marketdata_marks_standing_ended_total",
    "Standing option quotes no longer re-marked (feed_lost: a disconnect or gap of their "
    "feed; max_standing: TRADEBUS_MARK_MAX_STANDING_S passed since the quote)",
    ["reason"],
)
RECONNECTS = Counter(
    "tradebus_marketdata_reconnects_total", "Feed reconnections", ["feed", "reason"]
)
GAP_FILLED_BARS = Counter(
    "tradebus_marketdata_gap_filled_bars_total", "Bars published by REST gap-fill"
)
FEED_LAG = Gauge(
    "tradebus_marketdata_feed_lag_seconds", "Now minus the event time of the latest record"
)
STALE = Gauge("tradebus_marketdata_stale", "1 while the feed is stale during market hours")

# Synthetic and cache sources (services/marketdata/adapters/synthetic.py, cache.py).
SCHEDULE_RESETS = Counter(
    "tradebus_marketdata_schedule_resets_total",
    "Times a paced source fell too far behind and restarted its pace from now",
    ["feed"],
)
CACHE_BARS_REPLAYED = Counter(
    "tradebus_marketdata_cache_bars_replayed_total", "Cached bars published by --source cache"
)
CACHE_REPLAY_POSITION = Gauge(
    "tradebus_marketdata_cache_replay_position_seconds",
    "Window start (Unix seconds) of the last cached bar published",
)
