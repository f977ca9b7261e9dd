"""The strategy-runner: one dispatcher, one asyncio task per strategy.

Start-up, in order (each step retried while NATS or Postgres is away):

1. connect to NATS and make sure the stream exists;
2. rebuild every strategy's books from the event store up to its last
   sequence ``S`` (positions, P&L marks, open intents, signal ownership);
3. note the stream's last sequence ``B``: events in ``(S, B]`` happened
   while the runner was down; they update the books ("catch-up") but are not
   shown to the strategies, which must not trade on stale data;
4. recreate the durable consumer at ``S + 1`` and start the tasks;
5. once the catch-up is read (or at once, if there is none), recreate the
   consumer at the next sequence without the strategies' own signals and
   intents: from here on they are in the books before they are published
   (see ``adapters/stream.py``).

The dispatcher reads the consumer, routes each event (the shared
:class:`~libs.strategy.routing.Router`) and puts it in the inbox of every
strategy it concerns; each task takes events from its own bounded inbox,
calls its :class:`~libs.strategy.host.StrategyHost` and publishes what the
strategy emitted. A strategy that raises is stopped or restarted by its host
(``StrategyFaulted`` is published); its task keeps running so that its
books stay right, and no other task notices.

SIGTERM: the dispatcher stops fetching, inboxes are closed and drained,
every strategy's ``on_stop`` runs and its last emissions are published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, get_args

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from libs.bus.client import Bus
from libs.bus.consumer import EventConsumer
from libs.bus.errors import BusError, BusUnavailable, DeliveryGap, PublishFailed, StreamMismatch
from libs.bus.pull import parse_ack_subject
from libs.continuity import refuse_a_reset_stream, refused
from libs.contract.envelope import Clock, Event, WallClock
from libs.contract.events import (
    AnyEvent,
    BarClosed,
    FillReceived,
    StrategyFaulted,
    StrategyFaultPayload,
)
from libs.contract.subjects import STREAM
from libs.store.errors import StoreError
from libs.store.queries import Tail
from libs.strategy.host import StrategyHost
from libs.strategy.runtime import InMemoryRuntime
from libs.strategy.spec import LoadedStrategy
from libs.strategy.watchdog import Watchdog
from services.strategy_runner import metrics
from services.strategy_runner.adapters.store import History, load_history, write_checkpoints
from services.strategy_runner.adapters.stream import (
    filter_subjects,
    reset_consumer,
)
from services.strategy_runner.config import RunnerSettings
from services.strategy_runner.inbox import Inbox, Item, OverflowAction

log = logging.getLogger(__name__)

T = TypeVar("T")

SERVICE = "strategy-runner"

Publish = Callable[[list[Event]], Awaitable[None]]


class StrategyTask:
    """One strategy's inbox and the loop that feeds its host."""

    def __init__(self, loaded: LoadedStrategy, host: StrategyHost, runtime: InMemoryRuntime):
        self.name = loaded.spec.name
        self.spec = loaded.spec
        self.host = host
        self.runtime = runtime
        self.inbox = Inbox(loaded.spec.inbox_size, loaded.spec.overflow, self._overflowed)
        self.emitted = 0
        # At 0 from the start: Prometheus's increase() starts from a series'
        # first sample, so a fault series first seen at 1 showed no increase
        # and the board's "Strategy faults" missed each strategy's first.
        for action in get_args(StrategyFaultPayload.model_fields["action"].annotation):
            metrics.FAULTS.labels(strategy=self.name, action=action)

    def _overflowed(self, action: OverflowAction) -> None:
        metrics.INBOX_OVERFLOW.labels(strategy=self.name, action=action).inc()
        if action == "dropped":
            log.warning("strategy %s is behind: oldest market data dropped", self.name)

    async def run(self, publish: Publish) -> None:
        """Start the strategy, handle its inbox until closed, then stop it."""
        # The store's latest bars, handed to the host by the rebuild: the
        # strategy is warmed up on them as it starts.
        past = len(self.host.recent_bars())
        await self._emit(self.host.start(), publish)
        if past:
            metrics.WARMUP_BARS.labels(strategy=self.name).inc(past)
            log.info("strategy %s warmed up on %d past bars", self.name, past)
        while (item := await self.inbox.get()) is not None:
            metrics.INBOX_DEPTH.labels(strategy=self.name).set(len(self.inbox))
            started = time.perf_counter()
            out: list[Event] = []
            if item.mark:
                self.host.mark_only(item.event)
            elif item.quiet:
                # Books only; a bar that closed while the runner was down also
                # warms the indicators up.
                self.host.restore(item.event)
                if isinstance(item.event, BarClosed):
                    out = self.host.warm_up(item.event)
                    metrics.WARMUP_BARS.labels(strategy=self.name).inc()
            else:
                out = self.host.handle(item.event)
            metrics.CALLBACK_SECONDS.labels(strategy=self.name).observe(
                time.perf_counter() - started
            )
            await self._emit(out, publish)
            if isinstance(item.event, FillReceived | BarClosed):
                self.export_books()
            if self.inbox:
                # More waiting: get() would return it without suspending, so a
                # backlog would hold the dispatcher and every other strategy
                # (an exit, perhaps) until this one is through it.
                await asyncio.sleep(0)
        await self._emit(self.host.stop(), publish)
        metrics.RUNNING.labels(strategy=self.name).set(0)

    async def _emit(self, events: list[Event], publish: Publish) -> None:
        if events:
            # Ownership first: a fill may come back before publish returns.
            self.runtime.router.note_emitted(self.name, events)
            await publish(events)
            self.emitted += len(events)
        for event in events:
            metrics.EVENTS_EMITTED.labels(strategy=self.name, type=event.type).inc()
            if isinstance(event, StrategyFaulted):
                metrics.FAULTS.labels(strategy=self.name, action=event.payload.action).inc()
        metrics.RUNNING.labels(strategy=self.name).set(1 if self.host.running else 0)

    def export_books(self) -> None:
        for symbol, position in self.host.ledger.positions.items():
            metrics.POSITION.labels(strategy=self.name, symbol=symbol).set(float(position.quantity))
        pnl = self.host.ledger.pnl()
        metrics.PNL.labels(strategy=self.name, kind="realized").set(float(pnl.realized))
        metrics.PNL.labels(strategy=self.name, kind="unrealized").set(float(pnl.unrealized))

    def status(self) -> dict[str, Any]:
        return {
            "state": self.host.state,
            "mode": self.spec.mode,
            "account": self.host.account,
            "restarts": self.host.restarts,
            "faults": self.host.faults,
            "last_error": self.host.last_error,
            "inbox": len(self.inbox),
            "emitted": self.emitted,
        }


class Runner:
    """Runs the configured strategies until :meth:`stop`."""

    def __init__(
        self,
        settings: RunnerSettings,
        strategies: list[LoadedStrategy],
        *,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.stopping = asyncio.Event()
        self.ready = False
        #: What keeps the runner from trading that an operator must fix.
        self.problem: str | None = None
        self.catch_up_until = 0
        #: Whether the consumer has left the catch-up (it no longer reads back
        #: the strategies' own signals and intents).
        self.live = False
        self._live_due = False
        #: Set to make the consumer return: on stop, or to recreate it live.
        self._interrupt = asyncio.Event()
        #: The stream sequence to read next (where a vanished consumer is recreated).
        self.next_seq = 1
        #: The last message read (or the store's last row before the first):
        #: what the stream must still hold for a vanished consumer to be
        #: recreated at ``next_seq`` (libs/continuity.py).
        self._last_seen: Tail | None = None
        self.bus: Bus | None = None
        #: Stops a callback that runs past its strategy's ``max_callback_s``
        #: (started by :meth:`run`): one endless loop must not freeze the others.
        self.watchdog = Watchdog()
        # The same runtime the backtest uses, minus its synchronous feed: the
        # runner drives each host from its own task instead.
        self.runtime = InMemoryRuntime(
            clock=clock or WallClock(),
            source=f"{SERVICE}/{settings.instance}",
            watchdog=self.watchdog,
        )
        self.tasks: dict[str, StrategyTask] = {}
        for loaded in strategies:
            host = self.runtime.add_loaded(loaded)
            # A chain finished longer ago is not read back at a restart
            # either: its ids need not be kept to drop a copy.
            host.forget_after_ns = int(settings.rebuild_finished_s * 1e9)
            self.tasks[loaded.spec.name] = StrategyTask(loaded, host, self.runtime)
            metrics.RUNNING.labels(strategy=loaded.spec.name).set(0)
        self.symbols = sorted({s for t in self.tasks.values() for s in t.spec.symbols})
        #: Symbols read only to mark ledgers: the underlyings of strategies'
        #: option contracts, not among their symbols (an exercise or an
        #: assignment books their shares to the contract's strategy).
        self.marked = self.runtime.router.marked_symbols()

    def stop(self) -> None:
        self.stopping.set()
        self._interrupt.set()

    def health(self) -> tuple[bool, dict[str, Any]]:
        connected = self.bus is not None and bool(self.bus.nc.is_connected)
        ok = self.ready and connected and self.problem is None
        detail: dict[str, Any] = {
            "service": SERVICE,
            "ready": self.ready,
            "connected": connected,
            "consuming": "live" if self.live else "catching up",
            "strategies": {name: t.status() for name, t in self.tasks.items()},
        }
        if self.problem is not None:
            detail["problem"] = self.problem
        return ok, detail

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T | None:
        """``attempt()`` until it works or we are stopped (then None)."""
        while not self.stopping.is_set():
            try:
                result = await attempt()
            except (BusError, StoreError, nats.errors.Error, OSError, TimeoutError) as e:
                problem, backoff = refused(e, self.settings.retry_backoff_s, log)
                if problem is not None:
                    self.problem = problem
                else:
                    log.warning("%s failed (%s: %s); retrying", what, type(e).__name__, e)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await self.stopping.wait()
            else:
                self.problem = None
                return result
        return None

    async def _connect(self) -> Bus:
        s = self.settings
        return await Bus.connect(
            s.nats_url,
            name=f"{SERVICE}/{s.instance}",
            user=s.nats_user,
            password=s.nats_password.get_secret_value() if s.nats_password else None,
        )

    async def run(self) -> None:
        """Start up, then dispatch until stopped; returns after a clean drain."""
        if threading.current_thread() is threading.main_thread():
            self.watchdog.start()
        else:  # signals reach the main thread only
            log.warning("not run in the main thread: strategy callbacks have no time limit")
        try:
            await self._run()
        finally:
            self.watchdog.close()

    async def _run(self) -> None:
        bus = await self._retrying("connecting to NATS", self._connect)
        if bus is None:
            return
        self.bus = bus
        async with bus:
            if await self._retrying("declaring the stream", bus.ensure_stream) is None:
                return
            rebuilt = await self._rebuild()
            if rebuilt is None:
                return
            tail = self._last_seen = rebuilt.tail
            start_seq = rebuilt.last_seq + 1
            self.next_seq = start_seq
            # Every event the rebuild read (hundreds of MB of a big store) is
            # in the books now; only its tail is needed from here. This frame
            # lives as long as the runner: held here, they would too.
            del rebuilt

            async def prepare() -> int:
                info = await bus.js.stream_info(STREAM)
                await refuse_a_reset_stream(bus, info, tail, "trading")
                until = int(info.state.last_seq)
                name = self.settings.consumer_name
                # Nothing to catch up on (the stream holds nothing after the
                # store, or nothing the catch-up reads): live at once.
                if (
                    until < start_seq
                    or await reset_consumer(bus, name, self._subjects(), start_seq) == 0
                ):
                    await reset_consumer(bus, name, self._subjects(live=True), start_seq)
                    self.live = True
                    log.info("nothing to catch up on; consuming live")
                return until

            until = await self._retrying("creating the consumer", prepare)
            if until is None:
                return
            self.catch_up_until = until
            log.info(
                "strategy-runner: %d strategies on %s; books up to store sequence %d, "
                "catching up to stream sequence %d",
                len(self.tasks),
                ",".join(self.symbols),
                start_seq - 1,
                until,
            )
            await self._serve(bus)

    async def _rebuild(self) -> History | None:
        """Restore the books from the store; what was read (None once stopped)."""
        if not self.settings.rebuild_from_store:
            # Nothing read back: the strategies' orders before now are not in
            # their histories (ctx.orders_complete_since_ns says so).
            empty = History([], complete_since_ns=self.runtime.clock.now_ns())
            empty.restore_into(self.runtime)
            return empty
        url = self.settings.database_url.get_secret_value()
        warmup: dict[tuple[str, str | None], int] = {}
        for task in self.tasks.values():
            for symbol in task.host.symbols:
                key = (symbol, task.host.bar_interval)
                warmup[key] = max(warmup.get(key, 0), task.host.warmup_bars)
        intervals = self._bar_intervals()
        for symbol, taken in self.marked.items():
            intervals.setdefault(symbol, set()).update(taken)
        history = await self._retrying(
            "reading the event store",
            lambda: load_history(
                url,
                list(self.tasks),
                sorted(intervals),
                warmup,
                bar_intervals=intervals,
                finished_before_ns=time.time_ns() - int(self.settings.rebuild_finished_s * 1e9),
            ),
        )
        if history is None:
            return None
        folded = history.restore_into(self.runtime)
        metrics.RESTORED.inc(len(history.events))
        for name, cp in sorted(history.checkpoints.items()):
            log.info("strategy %s: ledger from its checkpoint at %d", name, cp.seq)
        try:
            written = await write_checkpoints(
                url,
                history,
                self.runtime,
                folded,
                after_fills=self.settings.checkpoint_after_fills,
            )
        except StoreError as e:
            log.warning("no checkpoint written: %s", e)  # the next start-up folds more
        else:
            for name in written:
                log.info("strategy %s: checkpoint written at %d", name, history.last_seq)
        for task in self.tasks.values():
            task.host.remember(history.bars)
        for task in self.tasks.values():
            task.export_books()
            positions = {
                s: str(p.quantity) for s, p in task.host.ledger.positions.items() if p.quantity
            }
            log.info("strategy %s restored: positions %s", task.name, positions or "flat")
        return history

    def _bar_intervals(self) -> dict[str, set[str | None]]:
        """Each symbol the strategies trade and the bar intervals they take of it."""
        intervals: dict[str, set[str | None]] = {}
        for task in self.tasks.values():
            for symbol in task.spec.symbols:
                intervals.setdefault(symbol, set()).add(task.spec.bar_interval)
        return intervals

    def _subjects(self, *, live: bool | None = None) -> list[str]:
        return filter_subjects(
            self.tasks,
            self._bar_intervals(),
            live=self.live if live is None else live,
            marked=self.marked,
        )

    async def _serve(self, bus: Bus) -> None:
        consumer = EventConsumer(
            bus,
            service=SERVICE,
            durable=self.settings.consumer_name,
            stream=STREAM,
            batch=self.settings.fetch_batch,
            max_bytes=self.settings.max_event_bytes,
            dead_letter_deadline_s=self.settings.dead_letter_deadline_s,
            on_dead_letter=lambda reason: metrics.DEAD_LETTERS.labels(
                service=SERVICE, reason=reason
            ).inc(),
        )

        async def publish(events: list[Event]) -> None:
            await bus.publish_many(events)

        async with asyncio.TaskGroup() as group:
            runs = [
                group.create_task(task.run(publish), name=f"strategy:{name}")
                for name, task in self.tasks.items()
            ]
            self.ready = True
            try:
                await self._consume(bus, consumer)
            finally:
                self.ready = False
                for task in self.tasks.values():
                    task.inbox.close()
            _, late = await asyncio.wait(runs, timeout=self.settings.drain_timeout_s)
            for run in late:
                log.warning("%s did not drain in time; cancelled", run.get_name())
                run.cancel()

    async def _consume(self, bus: Bus, consumer: EventConsumer) -> None:
        """Run the consumer until stopped, recreating it where the runner left
        off after transient NATS errors.

        The consumer takes no acks, so the server counts a message as done once
        it has sent it: one sent into a connection that dropped, or past the
        client's limits, never comes again. So after a fault, or when the
        consumer sequence shows a message that never arrived
        (:class:`~libs.bus.errors.DeliveryGap`), the consumer is recreated at
        the next sequence the runner has not handled, not merely re-bound. The
        same happens should the consumer itself be gone (a server that lost its
        state, checked against the store first). Once the catch-up is read it
        is recreated live, at the next sequence (what was fetched and not yet
        handled comes again).
        """
        name = self.settings.consumer_name
        recreate = False
        while not self.stopping.is_set():
            try:
                if self._live_due:
                    await reset_consumer(bus, name, self._subjects(live=True), self.next_seq)
                    self.live, self._live_due = True, False
                    log.info("caught up; consuming live from sequence %d", self.next_seq)
                else:
                    try:
                        await bus.js.consumer_info(STREAM, name)
                    except nats.js.errors.NotFoundError:
                        log.warning("consumer %s is gone", name)
                        recreate = True
                    if recreate:
                        # Gone with the stream's data? Then not at next_seq.
                        info = await bus.js.stream_info(STREAM)
                        await refuse_a_reset_stream(bus, info, self._last_seen, "trading")
                        log.warning("recreating consumer %s at %d", name, self.next_seq)
                        await reset_consumer(bus, name, self._subjects(), self.next_seq)
                        recreate = False
                self.problem = None
                self._interrupt.clear()
                if self.stopping.is_set():
                    return
                await consumer.run(self._dispatch, stop=self._interrupt)
            except StreamMismatch as e:
                self.problem, backoff = refused(e, self.settings.retry_backoff_s, log)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await self.stopping.wait()
                continue
            # PublishFailed: a dead letter the stream did not take in time
            # (the undecodable message comes again at next_seq). Not
            # BusUnavailable: raised below on purpose, the connection closed.
            except (nats.errors.Error, OSError, TimeoutError, DeliveryGap, PublishFailed) as e:
                log.warning("consuming failed (%s: %s); recreating", type(e).__name__, e)
                metrics.CONSUMER_RECREATED.labels(cause=type(e).__name__).inc()
                recreate = True
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.retry_backoff_s):
                        await self.stopping.wait()
                continue
            if not self.stopping.is_set() and not self._live_due:
                raise BusUnavailable("the NATS connection was closed")

    async def _dispatch(self, event: AnyEvent, msg: Msg) -> None:
        seq = parse_ack_subject(msg.reply)[0]
        self.next_seq = seq + 1
        self._last_seen = Tail(seq, event.id, msg.subject, event.type)
        if not self.live and not self._live_due and seq >= self.catch_up_until:
            self._live_due = True  # the rest of this batch is handled first
            self._interrupt.set()
        router = self.runtime.router
        names = router.route(event)
        # A fill's price marks its symbol for the other strategies trading it;
        # an underlying's prices, the strategies whose contracts it settles into.
        markers = router.markers(event, names)
        if not names and not markers:
            metrics.UNROUTED.labels(type=event.type).inc()
            return
        quiet = seq <= self.catch_up_until
        if quiet:
            metrics.CATCH_UP.inc()
        for name, item in [(n, Item(event, quiet)) for n in names] + [
            (n, Item(event, quiet, mark=True)) for n in markers
        ]:
            task = self.tasks[name]
            await task.inbox.put(item)
            metrics.EVENTS_IN.labels(strategy=name, type=event.type).inc()
            metrics.INBOX_DEPTH.labels(strategy=name).set(len(task.inbox))
