"""Wiring of the broker-gateway: config, bus, history, adapters, workers, signals.

Start-up: connect to NATS and declare the stream; rebuild each account's
order tracker from the event store; start each adapter (connecting and
reconnecting on its own); then consume ``orders.cmd.>``. SIGTERM/SIGINT stops
taking commands, lets the command under way finish (up to a few seconds;
an unfinished one is simply redelivered later), closes the adapters and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterable
from typing import Any

import nats.js.errors
from nats.aio.msg import Msg

from libs.bus.client import Bus
from libs.contract.envelope import Clock, WallClock
from libs.contract.events import AnyEvent
from libs.contract.options import warm_calendar
from libs.contract.sessions import CalendarError
from libs.contract.subjects import STREAM
from libs.observability.http import MetricsServer
from libs.observability.logs import setup_logging
from libs.runtime import keep_for_good, leaf_errors, run_service
from services.broker_gateway import metrics
from services.broker_gateway.adapters.commands import CommandConsumer, command_dead_letter
from services.broker_gateway.adapters.history import order_path_history
from services.broker_gateway.adapters.paper.client import PaperBroker
from services.broker_gateway.config import BrokerAccount, GatewaySettings
from services.broker_gateway.domain.tracker import OrderTracker
from services.broker_gateway.gateway import AccountWorker
from services.broker_gateway.outbox import Outbox
from services.broker_gateway.ports import BrokerPort

log = logging.getLogger(__name__)

SERVICE = "broker-gateway"
STOP_GRACE_S = 5.0


def make_port(account: BrokerAccount) -> BrokerPort:
    """The adapter named in ``brokers.yaml`` (Alpaca and Tradier join here)."""
    s = account.section
    if s.adapter == "paper":
        return PaperBroker(
            account=account.name,
            url=s.url,
            key_id=account.key_id,
            secret_key=account.secret_key,
            heartbeat_interval_s=s.heartbeat.interval_s,
            heartbeat_timeout_s=s.heartbeat.timeout_s,
            request_timeout_s=s.request_timeout_s,
            reconnect_initial_s=s.reconnect.initial_s,
            reconnect_max_s=s.reconnect.max_s,
        )
    raise ValueError(f"no adapter {s.adapter!r}")


async def _rebuilt(
    settings: GatewaySettings,
    bus: Bus,
    names: list[str],
    stream_last_seq: int,
    clock: Clock,
    source: str,
) -> dict[str, OrderTracker]:
    """Each account's tracker, rebuilt from the store.

    A function of its own so that the recorded events are let go once the
    trackers have them (as a local of ``serve`` they lived as long as it).
    Old settled orders and old flattens are left out (``rebuild_settled_s``),
    except those a command the consumer may still deliver (after its ack
    floor) is about, and the flattens an order kept needs; a flatten before
    the ack floor is not waited for (it will not come again). With no
    consumer yet, nothing is after its floor: a new one delivers each
    command for the first time, and a first delivery never looks for an
    earlier run's closing orders.
    """
    try:
        info = await bus.js.consumer_info(STREAM, settings.consumer)
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
    except nats.js.errors.NotFoundError:
        # A new consumer replays max_submit_delay_s back, within rebuild_settled_s.
        floor = stream_last_seq
    history = await order_path_history(
        settings.database_url.get_secret_value(),
        names,
        stream_last_seq=stream_last_seq,
        wait_s=settings.rebuild_wait_s,
        pending_from_seq=floor + 1,
        settled_before_ns=time.time_ns() - int(settings.rebuild_settled_s * 1e9),
    )
    trackers = history.trackers(names, clock=clock, source=source)
    log.info(
        "rebuilt %d accounts from %d order-path events (%d orders; %d settled orders "
        "and %d flattens older than %gs left out)",
        len(trackers),
        len(history.events),
        sum(len(t.orders) for t in trackers.values()),
        history.orders_left_out,
        history.flattens_left_out,
        settings.rebuild_settled_s,
    )
    del history
    keep_for_good()
    return trackers


async def serve(settings: GatewaySettings, accounts: list[BrokerAccount]) -> None:
    clock = WallClock()
    source = f"{SERVICE}/{settings.instance}"
    password = settings.nats_password.get_secret_value() if settings.nats_password else None
    bus = await Bus.connect(
        settings.nats_url, name=source, user=settings.nats_user, password=password
    )
    async with bus:
        info = await bus.ensure_stream()
        names = [a.name for a in accounts]
        trackers = await _rebuilt(settings, bus, names, info.state.last_seq, clock, source)

        dead = command_dead_letter(
            bus,
            service=SERVICE,
            clock=clock,
            source=source,
            deadline_s=settings.dead_letter_deadline_s,
        )
        outbox = Outbox(bus)
        workers = {
            a.name: AccountWorker(
                a.name,
                make_port(a),
                trackers[a.name],
                outbox,
                clock=clock,
                source=source,
                max_submit_delay_s=settings.max_submit_delay_s,
                ack_wait_s=settings.command_ack_wait_s,
                dead_letter=dead,
                position_check_every_s=settings.position_check_every_s,
            )
            for a in accounts
        }
        unknown_accounts: set[str] = set()

        async def dispatch(command: AnyEvent, msg: Msg) -> None:
            account = str(getattr(command.payload, "account", ""))
            worker = workers.get(account)
            if worker is None:
                if account not in unknown_accounts:
                    unknown_accounts.add(account)
                    log.warning(
                        "commands for account %s, which this gateway does not serve", account
                    )
                metrics.COMMANDS.labels(account=account, type=command.type, outcome="unknown").inc()
                with contextlib.suppress(Exception):
                    await msg.ack()
                return
            await worker.offer(command, msg)

        consumer = CommandConsumer(
            bus,
            durable=settings.consumer,
            service=SERVICE,
            ack_wait_s=settings.command_ack_wait_s,
            start_back_s=settings.max_submit_delay_s,
            max_bytes=settings.max_event_bytes,
            dead_letter_deadline_s=settings.dead_letter_deadline_s,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)

        def health() -> tuple[bool, dict[str, Any]]:
            nats_up = bool(bus.nc.is_connected)
            return nats_up, {
                "service": SERVICE,
                "nats": nats_up,
                "accounts": {
                    name: {
                        "broker": w.port.broker,
                        "connected": w.port.connected,
                        "orders": len(w.tracker.orders),
                        "commands": w.handled,
                        "held": w.held,
                        "settlements_unsettled": w.settlements.given_up,
                    }
                    for name, w in workers.items()
                },
            }

        async with MetricsServer(settings.metrics_host, settings.metrics_port, health):
            for w in workers.values():
                await w.port.start()
            try:
                async with asyncio.TaskGroup() as tasks:
                    background = [tasks.create_task(outbox.run(), name="outbox")]
                    for name, w in workers.items():
                        background.append(tasks.create_task(w.run_events(), name=f"{name}-events"))
                        background.append(
                            tasks.create_task(w.run_commands(), name=f"{name}-commands")
                        )
                        background.append(
                            tasks.create_task(w.keep_alive(), name=f"{name}-keep-alive")
                        )
                    consuming = tasks.create_task(consumer.run(dispatch, stop), name="consumer")
                    await stop.wait()
                    await consuming
                    await _drain(workers.values())
                    for w in workers.values():
                        await w.acks.flush()
                    for task in background:
                        task.cancel()
            finally:
                for w in workers.values():
                    await w.port.close()
    log.info("broker-gateway stopped")


async def _drain(workers: Iterable[AccountWorker]) -> None:
    """Give the commands already taken a moment to finish (else: redelivered)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(STOP_GRACE_S):
            for w in workers:
                await w.wait_idle()


def main(settings: GatewaySettings, accounts: list[BrokerAccount]) -> int:
    from libs.bus.errors import BusError
    from libs.store.errors import StoreError

    setup_logging(settings.log_level, json_lines=settings.log_json)
    try:
        # The expiry days' closes: from the committed table (no import)
        # while it reaches four years ahead; the library past it.
        warm_calendar()
    except CalendarError as missing:
        log.error("broker-gateway cannot start: %s", missing)
        return 2
    failed = False
    try:
        run_service(serve(settings, accounts))
    except* (BusError, StoreError) as group:
        for e in leaf_errors(group):
            log.error("broker-gateway stopped: %s", e)
        failed = True
    return 1 if failed else 0
