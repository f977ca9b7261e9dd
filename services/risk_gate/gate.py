"""The risk-gate loop: rebuild, replay the backlog, then decide live.

One cycle:

1. **Rebuild** the state from the event store (every event up to the store's
   last sequence N through ``evolve``).
2. **Replay** the stream from N + 1 up to where it ended when the cycle
   began (the consumer's backlog), through ``evolve`` only: whatever the
   previous run decided or reacted to is in there, so nothing is decided
   twice.
3. **Go live**: apply what the state still owes (reactions to breakers,
   kill switch, resumes; then the order commands of accepted intents, each
   checked again and withdrawn if it no longer passes), decide every intent
   no decision was seen for, then handle each new message: evolve, decide an
   intent, react, publish, and only then acknowledge.

What the gate publishes it applies to its state at once (the next intent
must see the order just submitted); once live, its consumer leaves the
gate's own subjects out, so those copies never come back to be applied a
second time (while catching up they are read: they are a previous run's
decisions). Ids derive from the cause (see ``domain/commands.py``), so an
intent redelivered, or re-published under a new message id, never becomes a
second order.

Any NATS or Postgres fault ends the cycle; the next one starts again from
the store, which is why a crash at any point loses no intent and repeats
no order. A stream that does not continue the store (reset; see
``libs/continuity.py``) is refused: the gate stays unhealthy, says why and
looks again every ``libs.continuity.STREAM_RESET_RECHECK_S``.
Only one risk-gate instance may run at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from libs import trace
from libs.bus.client import Bus
from libs.bus.consumer import header_dict
from libs.bus.errors import BusError
from libs.bus.pull import stream_seq
from libs.continuity import refused
from libs.contract.codec import DecodeError, dead_letter, decode, order_id_for
from libs.contract.envelope import Clock, Event, WallClock
from libs.contract.events import OrderIntentCreated, SubmitOrder
from libs.store.errors import StoreError
from services.risk_gate import metrics
from services.risk_gate.adapters.store import rebuild
from services.risk_gate.adapters.stream import RiskStream
from services.risk_gate.config import RiskGateSettings
from services.risk_gate.domain.commands import SOURCE
from services.risk_gate.domain.decide import decide, gross_exposure
from services.risk_gate.domain.evolve import evolve, roll_day
from services.risk_gate.domain.limits import GLOBAL, RiskLimits
from services.risk_gate.domain.react import react
from services.risk_gate.domain.state import NS, RiskState
from services.risk_gate.domain.status import held_mark_ages, stale_among

log = logging.getLogger(__name__)

SERVICE = "risk-gate"
#: Faults after which the gate rebuilds from the store and starts again.
RETRYABLE: tuple[type[BaseException], ...] = (
    StoreError,
    BusError,
    nats.errors.Error,
    OSError,
    TimeoutError,
)
STATE_LEVEL = {"active": 0, "reducing": 1, "halted": 2}
#: How often, at most, the gate acknowledges what it handled (ack-all). Its
#: place is kept by the store, not the consumer, so a late ack costs nothing
#: but saves a message per delivery.
ACK_INTERVAL_S = 0.1
GAUGE_INTERVAL_S = 0.5


class RiskGate:
    """Runs gate cycles until stopped."""

    def __init__(
        self, settings: RiskGateSettings, limits: RiskLimits, *, clock: Clock | None = None
    ) -> None:
        self.settings = settings
        self.limits = limits
        self.clock = clock or WallClock()
        self.source = f"{SOURCE}/{settings.instance}"
        self.state = RiskState.initial(limits)
        self.stopping = asyncio.Event()
        self.phase = "starting"
        self.last_seq = 0
        self.bus: Bus | None = None
        #: What keeps the gate from going live that an operator must fix.
        self.problem: str | None = None
        self._gauges_at = 0.0
        #: Whether the state has been rebuilt from the store once: until then
        #: its kill switch (off) is not known, and is not shown.
        self.rebuilt = False
        metrics.gate_started(limits.accounts)
        metrics.kill_switch(None)

    # ------------------------------------------------------------ control

    def stop(self) -> None:
        self.stopping.set()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy once live (rebuilt and caught up) with NATS connected."""
        connected = self.bus is not None and bool(self.bus.nc.is_connected)
        ok = self.phase == "live" and connected
        detail: dict[str, Any] = {
            "service": SERVICE,
            "phase": self.phase,
            "last_seq": self.last_seq,
            "kill_switch": self.state.kill_switch.engaged if self.rebuilt else None,
            "states": {k: v.state for k, v in sorted(self.state.states.items())},
        }
        if self.problem is not None:
            detail["problem"] = self.problem
        return ok, detail

    async def run(self) -> None:
        """Cycle until :meth:`stop`; each fault rebuilds from the store."""
        while not self.stopping.is_set():
            try:
                await self._cycle()
            except RETRYABLE as e:
                cause = type(e).__name__
                metrics.RESTARTS.labels(cause=cause).inc()
                problem, backoff = refused(e, self.settings.retry_backoff_s, log)
                if problem is not None:
                    self.problem = problem
                else:
                    log.warning("risk-gate cycle ended (%s: %s); rebuilding", cause, e)
                self._set_phase("restarting")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await self.stopping.wait()

    # -------------------------------------------------------------- cycle

    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        metrics.LIVE.set(1 if phase == "live" else 0)

    async def _cycle(self) -> None:
        s = self.settings
        self._set_phase("rebuilding")
        started = time.perf_counter()
        rebuilt = await rebuild(
            s.database_url.get_secret_value(),
            RiskState.initial(self.limits),
            write_checkpoint=True,
            progress=_log_progress,
        )
        self.state, self.last_seq = rebuilt.state, rebuilt.last_seq
        self.rebuilt = True
        metrics.REBUILD_EVENTS.set(rebuilt.folded)
        metrics.REBUILD_SECONDS.set(time.perf_counter() - started)
        metrics.REBUILD_FROM.set(rebuilt.from_checkpoint or 0)
        log.info(
            "state rebuilt up to store sequence %d in %.2fs: %d events folded from %s%s",
            rebuilt.last_seq,
            time.perf_counter() - started,
            rebuilt.folded,
            f"the checkpoint at {rebuilt.from_checkpoint}"
            if rebuilt.from_checkpoint is not None
            else "the start",
            "; checkpoint written" if rebuilt.wrote_checkpoint else "",
        )
        bus = await Bus.connect(
            s.nats_url,
            name=f"{SERVICE}/{s.instance}",
            user=s.nats_user,
            password=s.nats_password.get_secret_value() if s.nats_password else None,
        )
        async with bus:
            self.bus = bus
            stream = RiskStream(bus)
            try:
                backlog = await stream.start_at(rebuilt.tail)
                self.problem = None
                self._set_phase("catching_up")
                if backlog == 0:
                    await self._go_live(stream)
                unacked: Msg | None = None
                acked_at = time.monotonic()
                while not self.stopping.is_set():
                    msgs = await stream.fetch(s.fetch_batch, s.fetch_timeout_s)
                    if not msgs and self.phase != "live":
                        await self._go_live(stream)  # the backlog shrank (messages deleted)
                    for msg in msgs:
                        await self._on_message(msg)
                        if self.phase != "live":
                            backlog -= 1
                            if backlog <= 0:
                                await self._go_live(stream)
                    # Ack-all: everything up to here is handled and what it
                    # caused is published (publish before ack); sent at most
                    # every ACK_INTERVAL_S, or once a fetch comes back empty.
                    if msgs:
                        unacked = msgs[-1]
                    if unacked is not None and (
                        not msgs or time.monotonic() - acked_at >= ACK_INTERVAL_S
                    ):
                        await unacked.ack()
                        unacked, acked_at = None, time.monotonic()
                    self._update_gauges()
            finally:
                await stream.close()
                self.bus = None

    async def _go_live(self, stream: RiskStream) -> None:
        """Settle what the rebuilt state owes, decide orphaned intents, go live."""
        # No roll of the trading day on the wall clock here or in _decide:
        # the state rolls on the events' own times, as a fold of the store
        # does (decide rolls a copy for its checks).
        await self._react()
        orphans = list(self.state.pending_intents.values())
        for intent in orphans:
            if intent.id in self.state.pending_intents:
                await self._decide(intent)
        await self._react()
        # From here on what the gate publishes is applied as it is published:
        # its copies on the stream are left out.
        await stream.go_live(self.last_seq + 1)
        self._set_phase("live")
        log.info(
            "live at sequence %d (%d undecided intents decided); kill switch %s; states %s",
            self.last_seq,
            len(orphans),
            "ON" if self.state.kill_switch.engaged else "off",
            {k: v.state for k, v in sorted(self.state.states.items())} or "all active",
        )
        self._update_gauges(force=True)

    # ----------------------------------------------------------- messages

    async def _on_message(self, msg: Msg) -> None:
        arrived = time.time_ns() if trace.ON else 0
        seq = stream_seq(msg)
        if seq <= self.last_seq:
            return  # redelivered: already folded in
        try:
            event = decode(msg.data, max_bytes=self.settings.max_event_bytes)
        except DecodeError as e:
            await self._dead_letter(msg, seq, e)
            self.last_seq = seq
            return
        self.state = evolve(self.state, event)
        if self.phase == "live":
            if isinstance(event, OrderIntentCreated):
                if trace.ON:
                    trace.mark("risk-gate: intent in", order_id_for(event.id), arrived)
                if event.id in self.state.pending_intents:
                    await self._decide(event)
                else:
                    metrics.DUPLICATE_INTENTS.inc()
                    log.info("intent %s seen again; already decided", event.id)
            await self._react()
        self.last_seq = seq
        metrics.LAST_SEQUENCE.set(seq)

    async def _decide(self, intent: OrderIntentCreated) -> None:
        started = time.perf_counter()
        now = self.clock.now_ns()
        d = decide(self.state, intent, now, source=self.source)
        p = intent.payload
        # The decision and its order leave back to back on one connection, so
        # the stream stores the decision first; both acks are awaited together
        # (one round trip, not two) and a failed one is retried before the
        # intent is acknowledged, so an order is never out for good without
        # the decision that allowed it.
        await self._publish(*d.events)
        metrics.DECISION_SECONDS.observe(time.perf_counter() - started)
        metrics.DECISIONS.labels(
            decision="accepted" if d.accepted else "denied",
            reason=d.reason.value,
            strategy=p.strategy,
        ).inc()
        if not d.accepted:
            metrics.ORDERS_DENIED.labels(reason=d.reason.value).inc()
            log.info(
                "denied %s %s %s %s for %s on %s: %s (%s)",
                intent.id,
                p.side,
                p.quantity,
                p.symbol,
                p.strategy,
                p.account,
                d.reason.value,
                d.detail,
            )

    async def _react(self) -> None:
        for e in react(self.state, self.clock.now_ns(), source=self.source):
            await self._publish(e)
            if e.type == "BreakerTripped":
                p = e.payload
                metrics.BREAKER_TRIPS.labels(account=p.account, breaker=p.breaker).inc()
                log.warning("breaker %s tripped on %s: %s", p.breaker, p.account, p.detail)
            elif e.type == "TradingStateChanged":
                p = e.payload
                log.warning("%s: %s -> %s (%s)", p.scope, p.previous, p.state, p.reason)
            elif e.type == "RiskDecisionMade":
                p = e.payload
                metrics.ORDERS_WITHDRAWN.labels(reason=p.reason.value).inc()
                log.warning(
                    "withdrew the order of accepted intent %s of %s on %s: %s (%s)",
                    p.intent_id,
                    p.strategy,
                    p.account,
                    p.reason.value,
                    p.detail,
                )

    async def _publish(self, *events: Event) -> None:
        """Publish, then apply: the state reflects them before the next message."""
        assert self.bus is not None
        if not events:
            return
        await self.bus.publish_together(events)
        for event in events:
            self.state = evolve(self.state, event)
            metrics.COMMANDS.labels(type=event.type).inc()
            if isinstance(event, SubmitOrder):
                metrics.ORDERS_SUBMITTED.labels(account=event.payload.account).inc()

    async def _dead_letter(self, msg: Msg, seq: int, error: DecodeError) -> None:
        assert self.bus is not None
        record = dead_letter(
            service=SERVICE,
            subject=msg.subject,
            data=msg.data,
            error=error,
            clock=self.clock,
            source=self.source,
            headers=header_dict(msg),
            stream_seq=seq,
        )
        log.warning("dead-lettered stream sequence %d on %s: %s", seq, msg.subject, error)
        await self.bus.publish(record)
        metrics.DEAD_LETTERS.labels(service=SERVICE, reason=error.reason).inc()

    # ------------------------------------------------------------- gauges

    def _update_gauges(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._gauges_at < GAUGE_INTERVAL_S:
            return
        self._gauges_at = now
        # Today's figures even before today's first event: a rolled copy.
        now_ns = self.clock.now_ns()
        st = roll_day(self.state, now_ns)
        if self.rebuilt:
            metrics.kill_switch(st.kill_switch.engaged)
        for scope in {GLOBAL, *self.limits.accounts, *st.states}:
            metrics.TRADING_STATE.labels(scope=scope).set(STATE_LEVEL[st.scope_state(scope).state])
        for name, acct in self.limits.accounts.items():
            pnl = st.day_pnl(name)
            metrics.DAY_PNL.labels(account=name).set(float(pnl))
            loss = -pnl if pnl < 0 else 0
            metrics.DAILY_LOSS_USED.labels(account=name).set(float(loss / acct.daily_loss_limit))
            metrics.OPEN_ORDERS.labels(account=name).set(len(st.open_orders(account=name)))
            held = held_mark_ages(st, name, now_ns)
            ages = [a for a in held.values() if a is not None]
            metrics.OLDEST_MARK_AGE.labels(account=name).set(max([0, *ages]) / NS)
            metrics.STALE_MARKS.labels(account=name).set(len(stale_among(st, held)))
        for name, strat in self.limits.strategies.items():
            gross = gross_exposure(st, name, strat.account)
            metrics.GROSS_NOTIONAL_USED.labels(strategy=name, account=strat.account).set(
                float(gross / strat.max_gross_notional)
            )


def _log_progress(folded: int, seq: int, last: int) -> None:
    log.info("rebuilding: %d events folded, at sequence %d of %d", folded, seq, last)
