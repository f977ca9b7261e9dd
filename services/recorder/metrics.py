"""The recorder's Prometheus metrics."""

from __future__ import annotations

from libs.observability.metrics import DEAD_LETTERS as DEAD_LETTERS  # shared family
from libs.observability.metrics import Counter, Gauge, Histogram, KnownGauge

EVENTS_RECORDED = Counter(
    "tradebus_recorder_events_recorded_total", "Stream positions committed to the event store"
)
BATCH_SECONDS = Histogram(
    "tradebus_recorder_batch_seconds",
    "Time to commit one batch (decode + write + ack)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BATCH_SIZE = Histogram(
    "tradebus_recorder_batch_size",
    "Messages per committed batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
)
CONSUMER_LAG = KnownGauge(
    "tradebus_recorder_consumer_lag",
    "Messages in the stream not yet delivered to the recorder, at its last commit "
    "(no sample while it is not the writer: not recording, it does not know)",
)
LAST_SEQUENCE = Gauge("tradebus_recorder_last_sequence", "Last committed stream sequence")
ID_REUSES = Counter(
    "tradebus_recorder_id_reuses_total",
    "Messages under a recorded event's id that say something else, kept in their "
    "DuplicateSuppressed pointer (differs: the fields that differ, comma-separated)",
    ["differs"],
)
HOLES_FILLED = Counter(
    "tradebus_recorder_holes_filled_total", "Positions read directly from the stream"
)
RESTARTS = Counter(
    "tradebus_recorder_restarts_total", "Times the recorder loop restarted after a fault", ["cause"]
)
IS_WRITER = Gauge("tradebus_recorder_is_writer", "1 while this instance holds the writer lock")
STREAM_TRIMMED = Counter(
    "tradebus_recorder_stream_trimmed_total", "Messages the recorder purged from the stream"
)
STREAM_FIRST_SEQUENCE = Gauge(
    "tradebus_recorder_stream_first_sequence",
    "The stream's first sequence after the recorder's last trim",
)
TRIM_FAILURES = Counter(
    "tradebus_recorder_trim_failures_total",
    "Trims of the stream that failed (tried again at the next)",
    ["cause"],
)
POSITION_SNAPSHOT_SEQUENCE = Gauge(
    "tradebus_recorder_position_snapshot_sequence",
    "The stream sequence of the last snapshot of the positions fold the recorder wrote",
)
POSITION_SNAPSHOT_FAILURES = Counter(
    "tradebus_recorder_position_snapshot_failures_total",
    "Snapshots of the positions fold that failed (tried again at the next)",
    ["cause"],
)
