"""Recorder settings: ``TRADEBUS_*`` environment variables (plus the shared ones)."""

from __future__ import annotations

from pydantic import Field, field_validator

from libs.bus.client import DUPLICATE_WINDOW_S
from libs.config import ServiceSettings

DAY_S = 86_400.0
#: The shortest period of the writer's trims and snapshots (tests use 0.05 s).
MIN_PERIOD_S = 0.01


class RecorderSettings(ServiceSettings):
    #: Most messages written in one transaction.
    batch_size: int = Field(default=2000, ge=1, le=50_000)
    #: How long one fetch waits for messages before the loop checks in.
    fetch_timeout_s: float = Field(default=0.5, gt=0, le=30)
    #: Once a batch's first message has arrived, how long the rest may gather
    #: on the server before it is taken in one pull: fewer wake-ups and fewer,
    #: larger transactions, at the cost of the store trailing the stream by up
    #: to this much. A backlog is taken in full batches without waiting.
    linger_s: float = Field(default=0.02, ge=0, le=1)
    #: Redelivery delay for a fetched-but-unacked message (crash recovery).
    ack_wait_s: float = Field(default=30.0, ge=1, le=3600)
    #: Pause between attempts when NATS or Postgres is down.
    retry_backoff_s: float = Field(default=0.5, gt=0, le=60)
    #: How often the writer trims the stream below what the store holds
    #: (``services/recorder/adapters/trim.py``); 0 or less: never (the stream
    #: then grows until the server's file store is full).
    trim_every_s: float = Field(default=60.0, le=DAY_S)
    #: How often the writer snapshots the positions fold (migration 0010,
    #: ``services/recorder/adapters/snapshot.py``), so reading positions folds
    #: only the fills after it; 0 or less: never (positions are the same,
    #: read from the last snapshot, or from the start without one).
    position_snapshot_every_s: float = Field(default=30.0, le=DAY_S)
    #: What the stream keeps however much is recorded: messages younger than
    #: this (by their stream time), for late readers and the duplicate window.
    stream_keep_s: float = Field(default=2 * DAY_S, le=366 * DAY_S)

    @field_validator("trim_every_s", "position_snapshot_every_s")
    @classmethod
    def _off_or_a_period(cls, value: float) -> float:
        # 1e-12 was taken: the writer's loop then trimmed (or snapshotted)
        # without pause, a busy loop against NATS or PostgreSQL.
        if 0 < value < MIN_PERIOD_S:
            raise ValueError(f"must be 0 or less (never) or at least {MIN_PERIOD_S:g} s")
        return value

    @field_validator("stream_keep_s")
    @classmethod
    def _covers_the_duplicate_window(cls, value: float) -> float:
        # JetStream's duplicate detection is only sure for messages it still
        # holds (after a restart it rebuilds it from them): a publish retried
        # after its first copy was purged could be stored twice.
        if value < DUPLICATE_WINDOW_S:
            raise ValueError(
                f"must be at least the stream's duplicate window, {DUPLICATE_WINDOW_S:g} s "
                "(to stop trimming, set TRADEBUS_TRIM_EVERY_S to 0)"
            )
        return value
