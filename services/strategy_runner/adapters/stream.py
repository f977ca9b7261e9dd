"""The runner's durable consumer: what it reads, and from where.

The event store decides where reading starts, not the consumer's ack floor:
on every start the durable consumer is recreated at ``S + 1``, where ``S`` is
the last sequence the store held when the books were rebuilt. Events up to
``S`` are in the books already; everything after is applied from the stream,
once.

Acknowledgements play no part (ack policy *none*): where to resume comes from
the store, and with nothing to acknowledge nothing is ever redelivered — a
dispatcher held up by a full ``block`` inbox for longer than an ack wait
would otherwise see the same bar delivered twice.

The filter is narrow on purpose: market data of the configured symbols only
(their marks included: the ledger is marked by them, as the risk-gate is),
the prices (trades, bars, marks; not quotes, which mark nothing) of the
underlyings of the strategies' option contracts, which mark the shares an
exercise or an assignment books to a strategy,
the risk-gate's denials of the strategies' intents (not its acceptances: an
accepted intent's order id derives from the intent's id, so the books know it
from the start, and the accepted decision leaves the gate together with its
order command; reading it would wake the runner just when the gateway needs
a core), and broker acks, rejects, cancels and fills. While catching up it
also takes the strategies' own signals and intents: those a previous run
emitted after the store's last sequence belong in the books, so that their
chains route back to their strategy. Once live, the runner has every signal and intent in its books
before it publishes them; reading them back would cost two deliveries per
order for nothing, so the consumer is then recreated without them
(:func:`filter_subjects` with ``live``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from nats.js import api as js_api

from libs.bus.client import Bus
from libs.bus.consumer import restart_consumer_at
from libs.contract.subjects import STREAM, symbol_token

BROKER_SUBJECTS = ("broker.ack.>", "broker.reject.>", "broker.fill.>", "broker.cancel.>")


def filter_subjects(
    strategies: Iterable[str],
    symbols: Mapping[str, Collection[str | None]],
    *,
    live: bool = False,
    marked: Mapping[str, Collection[str | None]] | None = None,
) -> list[str]:
    """The subjects the runner consumes (non-overlapping, as JetStream requires):
    while catching up, or (``live``) without the strategies' own signals and
    intents. ``symbols`` maps each symbol to the bar intervals its strategies
    take (None among them: every interval); ``marked``, the same of the
    symbols whose prices only mark ledgers (options' underlyings): their
    quotes are not read."""
    marked = marked or {}
    out: list[str] = []
    for symbol in sorted({*symbols, *marked}):
        tok = symbol_token(symbol)
        intervals = {*symbols.get(symbol, ()), *marked.get(symbol, ())}
        if None in intervals or not intervals:
            out.append(f"md.bar.*.{tok}")
        else:
            out += [f"md.bar.{iv}.{tok}" for iv in sorted(i for i in intervals if i is not None)]
        # Marks (marketdata's, of option quotes) price the ledger as they
        # price the risk-gate's positions; none come for an equity.
        out.append(f"md.trade.{tok}")
        if symbol in symbols:
            out.append(f"md.quote.{tok}")
        out.append(f"md.mark.{tok}")
    for name in sorted(set(strategies)):
        if not live:
            out += [f"strategy.signal.{name}", f"strategy.intent.{name}"]
        # Denials only: an accepted intent's order id is known from the intent
        # (``order_id_for``). ``risk.decision.<name>`` is where releases before
        # the verdict went into the subject published both kinds.
        out += [f"risk.decision.{name}.denied", f"risk.decision.{name}"]
    out += BROKER_SUBJECTS
    return out


async def reset_consumer(
    bus: Bus, durable: str, subjects: list[str], start_seq: int, stream: str = STREAM
) -> int:
    """Recreate ``durable`` to deliver ``subjects`` from ``start_seq`` on;
    returns how many of its messages are already in the stream."""
    info = await restart_consumer_at(
        bus,
        durable,
        start_seq,
        stream=stream,
        filter_subjects=subjects,
        # Its place is kept by the store (see runner.py): EventConsumer sends no acks.
        ack_policy=js_api.AckPolicy.NONE,
    )
    return int(info.num_pending or 0)
