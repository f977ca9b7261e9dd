"""Recorder settings: ``TRADEBUS_*`` environment variables (plus the shared ones)."""

from __future__ import annotations

from pydantic import Field

from libs.config import ServiceSettings


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
