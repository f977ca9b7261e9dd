"""``tradebus events`` and ``tradebus audit`` against a real store: the
listing, and the walk from a fill back to what caused it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from decimal import Decimal
from pathlib import Path

from libs.bus.client import Bus, Outgoing
from libs.contract.codec import encode
from libs.contract.envelope import WallClock
from libs.contract.events import (
    BreakerPayload,
    BreakerTripped,
    FillReceived,
    FlattenAccount,
    FlattenAccountPayload,
    KillSwitchEngaged,
    OperatorActionPayload,
    SignalGenerated,
    SubmitOrder,
)
from libs.contract.options import parse_option
from libs.contract.subjects import subject_for
from libs.testing.procs import ServiceProcess
from libs.testing.producer import make_trades
from libs.testing.store import recorded_count
from libs.testing.wait import eventually
from services.broker_gateway.domain.model import BrokerFill, BrokerOrder, OrderUpdate
from services.broker_gateway.domain.tracker import OrderTracker
from services.broker_gateway.settlement import cross_events
from tests.integration.recorded_chains import cli, order_chain, record
from tests.integration.recording import record_events
from tests.unit.gateway_settlement_inputs import ACCOUNT, CALL, opened
from tests.unit.gateway_settlement_inputs import tracker as settlement_tracker


async def test_events_json_and_audit_walk_a_fill_back_to_its_signal(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    noise = list(make_trades(10, "noise"))
    chain = order_chain()
    await record(tmp_path, bus, nats_url, database_url, [*noise[:5], *chain, *noise[5:]])
    proc = await asyncio.to_thread(
        cli, "events", "--json", "--subject", "broker.>", database_url=database_url
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [x["type"] for x in lines] == ["OrderAccepted", "FillReceived"]
    for key in (
        "seq",
        "id",
        "subject",
        "type",
        "ts_event",
        "correlation_id",
        "causation_id",
        "payload",
    ):
        assert key in lines[0]
    fill = lines[1]
    signal = chain[0]
    assert fill["correlation_id"] == str(signal.id)  # type: ignore[attr-defined]
    proc = await asyncio.to_thread(cli, "audit", fill["id"], "--json", database_url=database_url)
    assert proc.returncode == 0, proc.stderr
    walked = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [w["type"] for w in walked] == [
        "SignalGenerated",
        "OrderIntentCreated",
        "SubmitOrder",
        "OrderAccepted",
        "FillReceived",
    ]
    seqs = [w["seq"] for w in walked]
    assert seqs == sorted(seqs)
    # Each link names its parent: walk back from the fill by causation ids alone.
    by_id = {w["id"]: w for w in walked}
    node, path = fill["id"], []
    while node:
        path.append(by_id[node]["type"])
        node = by_id[node]["causation_id"]
    assert path[-1] == "SignalGenerated"
    assert len(path) == 5
    proc = await asyncio.to_thread(cli, "audit", fill["id"], database_url=database_url)
    assert "SignalGenerated" in proc.stdout
    assert "FillReceived" in proc.stdout
    proc = await asyncio.to_thread(
        cli, "audit", "00000000-0000-0000-0000-000000000000", database_url=database_url
    )
    assert proc.returncode == 1
    assert "no recorded event" in proc.stderr


async def test_the_listing_shows_the_newest_and_audit_takes_the_ids_it_shows(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    """`events --last N` lists the newest N; `audit` takes the eight digits the
    listing shows and prints what each event of the chain says."""
    noise = list(make_trades(10, "noise"))
    # Two trades whose ids share their first six digits: a prefix of them is ambiguous.
    twins = [
        t.model_copy(update={"id": uuid.UUID(f"abcdef{i:02d}-0000-4000-8000-000000000000")})
        for i, t in enumerate(make_trades(2, "twins"))
    ]
    chain = order_chain()
    await record(tmp_path, bus, nats_url, database_url, [*noise, *twins, *chain])
    proc = await asyncio.to_thread(
        cli, "events", "--json", "--last", "2", "--subject", "md.>", database_url=database_url
    )
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["id"] for line in proc.stdout.splitlines()] == [
        str(t.id) for t in twins
    ]
    proc = await asyncio.to_thread(
        cli, "events", "--limit", "2", "--last", "2", database_url=database_url
    )
    assert proc.returncode == 2
    assert "--limit and --last: give one" in proc.stderr
    proc = await asyncio.to_thread(
        cli, "events", "--last", "1", "--type", "FillReceived", database_url=database_url
    )
    assert proc.returncode == 0, proc.stderr
    fill = chain[-1]
    assert isinstance(fill, FillReceived)
    short = str(fill.id)[:8]
    assert short in proc.stdout
    proc = await asyncio.to_thread(cli, "audit", short, database_url=database_url)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(chain)
    marked = [line for line in lines if line.startswith("*")]
    assert len(marked) == 1
    assert "FillReceived" in marked[0]
    p = fill.payload
    assert f"{p.side} {p.quantity} {p.symbol} @ {p.price}" in marked[0]
    for given, code, says in (
        (
            "abcdef",
            1,
            "more than one recorded event id starts with 'abcdef': give more digits "
            f"({twins[0].id}, {twins[1].id})",
        ),
        ("abcdef01", 0, ""),
        ("0123abcd", 1, "no recorded event id starts with '0123abcd'"),
        ("abc", 2, "not an event id or the start of one"),
    ):
        proc = await asyncio.to_thread(cli, "audit", given, database_url=database_url)
        assert proc.returncode == code, (given, proc.stderr)
        assert says in proc.stderr


async def test_audit_of_a_duplicate_names_the_original_and_where_it_is(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    """An event id published again outside the dedup window is recorded as a
    DuplicateSuppressed row; its audit line says which event it repeats, and
    at which sequence, without --json."""
    chain = order_chain()
    signal = chain[0]
    assert isinstance(signal, SignalGenerated)
    await bus.publish_many(chain)  # type: ignore[arg-type]
    await bus.publish_raw(Outgoing(subject_for(signal), encode(signal), "another-msg-id"))
    rec = ServiceProcess(
        ["recorder", "run"],
        env={"NATS_URL": nats_url, "DATABASE_URL": database_url},
        log_path=tmp_path / "rec.log",
    ).start()
    try:

        async def done() -> bool:
            return await recorded_count(database_url) == len(chain) + 1

        await eventually(done, timeout=30)
    finally:
        rec.terminate()
    proc = await asyncio.to_thread(
        cli, "events", "--json", "--type", "DuplicateSuppressed", database_url=database_url
    )
    assert proc.returncode == 0, proc.stderr
    (duplicate,) = [json.loads(line) for line in proc.stdout.splitlines()]
    proc = await asyncio.to_thread(cli, "audit", duplicate["id"], database_url=database_url)
    assert proc.returncode == 0, proc.stderr
    assert f"DuplicateSuppressed  duplicate of {signal.id} at seq 1" in proc.stdout


def strategy_order_tracked() -> tuple[list[object], OrderTracker]:
    """``order_chain()`` (sma bought 10 AAPL on acct-a) and the gateway's
    tracker of acct-a with it taken in."""
    chain = order_chain()
    tracker = OrderTracker("acct-a", clock=WallClock(), source="broker-gateway")
    for event in chain[2:]:
        tracker.evolve(event)  # type: ignore[arg-type]
    return chain, tracker


def broker_order(broker_order_id: str, side: str, filled: int, status: str) -> BrokerOrder:
    return BrokerOrder(
        broker_order_id=broker_order_id,
        client_order_id=f"c-{broker_order_id}",
        symbol="AAPL",
        side=side,  # type: ignore[arg-type]
        quantity=Decimal(10),
        filled_quantity=Decimal(filled),
        filled_avg_price=Decimal(190) if filled else None,
        status=status,  # type: ignore[arg-type]
    )


def fill_update(order: BrokerOrder) -> OrderUpdate:
    return OrderUpdate(
        "fill",
        order,
        1,
        BrokerFill(
            order.broker_order_id,
            order.client_order_id,
            "AAPL",
            order.side,
            Decimal(10),
            Decimal(190),
            Decimal(10),
            Decimal(0),
            1,
        ),
    )


async def audit_lines(database_url: str, event_id: object) -> list[str]:
    proc = await asyncio.to_thread(cli, "audit", str(event_id), database_url=database_url)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


async def test_audit_of_a_flatten_s_closing_fill_says_why_and_whose_position_it_closed(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    """The kill switch flattens acct-a: the closing fill's chain is the
    kill switch's (the gateway's tracker makes it, the risk-gate's reaction is
    caused by the switch, as ``react`` makes it), and its line says which
    strategy's position it closed."""
    chain, tracker = strategy_order_tracked()
    kill = KillSwitchEngaged.create(
        OperatorActionPayload(operator="ana", reason="runaway loop"),
        source="operator/ana",
        clock=WallClock(),
    )
    breaker = BreakerTripped.create(
        BreakerPayload(account="acct-a", breaker="kill_switch", detail="by ana"),
        source="risk-gate",
        clock=WallClock(),
        cause=kill,
    )
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account="acct-a", reason="kill switch engaged by ana: runaway loop"),
        source="risk-gate",
        clock=WallClock(),
        cause=kill,
    )
    tracker.flatten_started(flatten)
    closing = tracker.flatten_done([broker_order("b-close", "sell", 0, "new")])
    (fill,) = tracker.on_update(fill_update(broker_order("b-close", "sell", 10, "filled")))
    assert isinstance(fill, FillReceived)
    assert fill.payload.strategy == "sma"
    await record(
        tmp_path, bus, nats_url, database_url, [*chain, kill, breaker, flatten, *closing, fill]
    )
    lines = await audit_lines(database_url, fill.id)
    assert "KillSwitchEngaged  by ana: runaway loop" in lines[0]
    said = "\n".join(lines)
    assert "FlattenAccount  acct-a: kill switch engaged by ana: runaway loop" in said
    (marked,) = [line for line in lines if line.startswith("*")]
    assert "sell 10 AAPL @ 190, complete, booked to sma" in marked


async def test_audit_of_a_fill_of_an_order_placed_by_hand_says_nothing_here_caused_it(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    """An order placed at the broker outside tradebus: its fill has no
    cause, and its audit says so rather than print one bare line."""
    chain, tracker = strategy_order_tracked()
    by_hand = tracker.on_update(fill_update(broker_order("b-hand", "buy", 10, "filled")))
    fill = by_hand[-1]
    assert isinstance(fill, FillReceived)
    assert (fill.causation_id, fill.payload.strategy) == (None, None)
    await record(tmp_path, bus, nats_url, database_url, [*chain, *by_hand])
    lines = await audit_lines(database_url, fill.id)
    assert "FillReceived  buy 10 AAPL @ 190, complete " in lines[0]
    assert "no tradebus command caused broker order b-hand" in " ".join(lines[1:])


async def test_audit_of_a_cross_s_fill_says_tradebus_crossed_it_not_the_broker(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    """s1 long 1 call, s2 short 1 of one account: the broker held none and
    settled nothing, so the gateway crossed them at the expiry itself
    (``settlement.cross_events``). Each leg's fill has no cause, as a
    settlement's; its audit said the broker had settled it, naming the
    cross's name as the broker's activity: the operator would look for an
    activity no broker listed."""
    held = opened([("s1", CALL, "1"), ("s2", CALL, "-1")])
    t = settlement_tracker(held)
    crossed = cross_events(t, [], {}, now_ns=parse_option(CALL).expires_at_ns + 1)
    assert len(crossed) == 2
    await record(tmp_path, bus, nats_url, database_url, [*held, *crossed])
    for fill, strategy in zip(crossed, ("s2", "s1"), strict=True):
        said = " ".join(await audit_lines(database_url, fill.id))
        assert "the broker settled" not in said, said
        assert "no broker activity" in said, said
        assert f"strategies of {ACCOUNT} held opposite positions in {CALL}" in said, said
        assert f"cross/{CALL}/{strategy}/contracts" in said, said
        assert f"booked to {strategy}" in said, said


async def test_audit_of_a_reconciled_fill_walks_back_to_its_signal(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    """A fill the stream missed, published from a reconciliation (or from
    the lookup of a dead-lettered submit, which takes the answer in the same
    way), is caused by the order's SubmitOrder like any other."""
    chain, tracker = strategy_order_tracked()
    submit = chain[2]
    assert isinstance(submit, SubmitOrder)
    second = submit.model_copy(
        update={
            "id": uuid.uuid4(),
            "payload": submit.payload.model_copy(update={"order_id": uuid.uuid4()}),
        }
    )
    tracker.evolve(second)
    order = broker_order("b-2", "buy", 10, "filled")
    order = dataclasses.replace(order, client_order_id=str(second.payload.order_id))
    reconciled = tracker.reconcile(order, None)
    fill = reconciled[-1]
    assert isinstance(fill, FillReceived)
    assert fill.payload.fill_id.startswith("reconciled:")
    await record(tmp_path, bus, nats_url, database_url, [*chain, second, *reconciled])
    lines = await audit_lines(database_url, fill.id)
    assert "SignalGenerated  sma: cross long AAPL" in lines[0]
    (marked,) = [line for line in lines if line.startswith("*")]
    assert "FillReceived  buy 10 AAPL @ 190" in marked  # the price inferred, to 12 places
    assert "complete, booked to sma" in marked


async def test_events_refuses_a_mistyped_type_naming_the_right_one(database_url: str) -> None:
    """`events --type Fillreceived` listed nothing and said nothing, as if no
    fill had been recorded; it names the type meant, or every known type."""
    chain = order_chain()
    await record_events(database_url, chain)  # type: ignore[arg-type]
    for given, says in (
        ("Fillreceived", "did you mean 'FillReceived'?"),
        ("fill_received", "did you mean 'FillReceived'?"),
        ("Nonsense", "known types: BarClosed, BreakerTripped, "),
    ):
        proc = await asyncio.to_thread(cli, "events", "--type", given, database_url=database_url)
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == ""
        [error] = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
        assert error.startswith(
            f"error: --type {given!r}: no event type of that name, and none recorded"
        ), error
        assert says in error, error
    assert "DuplicateSuppressed" in error  # the recorder's own rows are types too
    # A known type, none of it recorded: an empty listing, no error.
    proc = await asyncio.to_thread(
        cli, "events", "--json", "--type", "DuplicateSuppressed", database_url=database_url
    )
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    proc = await asyncio.to_thread(
        cli, "events", "--json", "--type", "FillReceived", database_url=database_url
    )
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["type"] for line in proc.stdout.splitlines()] == ["FillReceived"]
