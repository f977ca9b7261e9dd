"""strategy-runner settings: the shared ones plus ``TRADEBUS_*`` of its own.

What to run is not here but in ``strategies.yaml`` (``--config``, or
``TRADEBUS_STRATEGIES_CONFIG``), validated by :mod:`libs.strategy.spec`.
"""

from __future__ import annotations

from pydantic import Field

from libs.config import ServiceSettings
from libs.contract.envelope import Token


class RunnerSettings(ServiceSettings):
    #: Path of strategies.yaml (the ``--config`` option overrides it).
    strategies_config: str = "deploy/config/strategies.yaml"
    #: Durable JetStream consumer the runner reads through (NATS permissions
    #: allow the ``strategy-runner`` user exactly this name).
    consumer_name: Token = "strategy-runner"
    #: Rebuild positions from the event store before starting (off: start flat).
    rebuild_from_store: bool = True
    #: A strategy's chain (signal, intents, decisions, orders) whose every
    #: intent is finished and whose last event is older than this is not read
    #: back at start-up; its fills still are (positions and P&L span all of
    #: them). At most a century: beyond (``inf`` too), the cut-off in
    #: nanoseconds overflows when the store is read.
    rebuild_finished_s: float = Field(default=7 * 86_400, gt=0, le=36_525 * 86_400)
    #: A start-up that folded at least this many of a strategy's fills from
    #: the store writes a checkpoint of its ledger, so that the next one
    #: folds only the fills after it (``adapters/checkpoint.py``).
    checkpoint_after_fills: int = Field(default=1_000, ge=1)
    #: Pause between attempts while NATS or Postgres is unreachable at start-up.
    retry_backoff_s: float = Field(default=1.0, gt=0, le=60)
    #: How long an undecodable message's dead letter is retried before the
    #: consumer is recreated and the message read (and dead-lettered) again:
    #: the bus's own 30 s would hold every strategy's data back that long.
    dead_letter_deadline_s: float = Field(default=5.0, gt=0, le=60)
    #: How long SIGTERM waits for inboxes to drain and ``on_stop`` to run.
    drain_timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: Most messages fetched from JetStream at once.
    fetch_batch: int = Field(default=256, ge=1, le=10_000)
