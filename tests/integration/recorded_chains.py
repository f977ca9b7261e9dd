"""Events put in a test's store by a real recorder, and the ``tradebus``
commands that read them back: the recorder's process (:func:`recorder`),
events published and waited for until recorded (:func:`record`), a
strategy's order from its signal to its fill (:func:`order_chain`), and
:func:`cli`, with the fake password no command may print (``SECRET``)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

from libs.bus.client import Bus
from libs.contract.envelope import WallClock
from libs.contract.events import (
    OrderAccepted,
    OrderAcceptedPayload,
    SignalGenerated,
    SignalPayload,
    SubmitOrder,
    SubmitOrderPayload,
)
from libs.testing.procs import ServiceProcess
from libs.testing.store import recorded_count
from libs.testing.wait import eventually
from tests.unit.contract_samples import all_10_aapl_filled, intent_to_buy_10_aapl

CLOCK = WallClock()
SECRET = "s3cr3t-pw"  # noqa: S105 - a fake password, to show it is never printed


def recorder(tmp_path: Path, nats_url: str, database_url: str, name: str = "r1") -> ServiceProcess:
    """The recorder's process (not started), batches of 500, logging to ``name``.log."""
    return ServiceProcess(
        ["recorder", "run"],
        env={
            "NATS_URL": nats_url,
            "DATABASE_URL": database_url,
            "TRADEBUS_BATCH_SIZE": "500",
        },
        log_path=tmp_path / f"{name}.log",
        name=name,
    )


async def record(tmp_path: Path, bus: Bus, nats_url: str, database_url: str, events: list) -> None:  # type: ignore[type-arg]
    """Publish ``events`` and run a recorder until the store holds as many rows."""
    rec = ServiceProcess(
        ["recorder", "run"],
        env={"NATS_URL": nats_url, "DATABASE_URL": database_url},
        log_path=tmp_path / "rec.log",
    ).start()
    try:
        await bus.publish_many(events)

        async def done() -> bool:
            return await recorded_count(database_url) >= len(events)

        await eventually(done, timeout=30)
    finally:
        rec.terminate()


def order_chain() -> list[object]:
    """sma's buy of 10 AAPL on acct-a, each event caused by the one before:
    signal, intent, SubmitOrder, OrderAccepted, FillReceived."""
    signal = SignalGenerated.create(
        SignalPayload(strategy="sma", symbol="AAPL", name="cross", direction="long"),
        source="strategy-runner",
        clock=CLOCK,
    )
    intent = intent_to_buy_10_aapl(CLOCK, cause=signal)
    order_id = uuid.uuid4()
    cmd = SubmitOrder.create(
        SubmitOrderPayload(
            order_id=order_id,
            intent_id=intent.id,
            strategy="sma",
            account="acct-a",
            symbol="AAPL",
            side="buy",
            quantity=Decimal(10),
        ),
        source="risk-gate",
        clock=CLOCK,
        cause=intent,
    )
    ack = OrderAccepted.create(
        OrderAcceptedPayload(
            order_id=order_id, account="acct-a", broker_order_id="b-1", symbol="AAPL"
        ),
        source="broker-gateway",
        clock=CLOCK,
        cause=cmd,
    )
    fill = all_10_aapl_filled(order_id, "187.25", CLOCK, cause=ack)
    return [signal, intent, cmd, ack, fill]


def cli(
    *args: str, database_url: str | None, nats_url: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run ``tradebus ARGS``; ``database_url=None`` leaves DATABASE_URL unset."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    if nats_url:
        env["NATS_URL"] = nats_url
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
