"""Recorder settings: ``TRADEBUS_*`` environment variables (plus the shared ones)."""

from __future__ import annotations

from pydantic import Field

from libs.config import ServiceSettings


class RecorderSettings(ServiceSettings):
    #: Most messages written in one transaction.
    batch_size: int = Field(default=2000, ge=1, le=50_000)
    #: How long one fetch waits for messages before the loop checks in.
    fetch_timeout_s: float = Field(default=0.5, gt=0, le=30)
    #: Once a batch has started arriving, how long to wait for more. Longer
    #: means fewer, larger transactions (and acks) at low rates, at the cost
    #: of the store trailing the stream by up to this much; a full batch
    #: never waits.
    linger_s: float = Field(default=0.02, ge=0, le=1)
    #: Redelivery delay for a fetched-but-unacked message (crash recovery).
    ack_wait_s: float = Field(default=30.0, ge=1, le=3600)
    #: Pause between attempts when NATS or Postgres is down.
    retry_backoff_s: float = Field(default=0.5, gt=0, le=60)
