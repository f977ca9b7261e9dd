"""Replay round trip and the read commands (events, audit) against a real store."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import nats.errors
import pytest

from libs.bus.client import MSG_ID_HEADER, Bus, Outgoing
from libs.contract.codec import decode, encode
from libs.contract.envelope import Event, WallClock
from libs.contract.events import (
    BreakerPayload,
    BreakerTripped,
    FillReceived,
    FlattenAccount,
    FlattenAccountPayload,
    KillSwitchEngaged,
    MarkPayload,
    MarkUpdated,
    OperatorActionPayload,
    SignalGenerated,
    SubmitOrder,
)
from libs.contract.options import parse_option
from libs.contract.subjects import subject_for
from libs.local.servers import NatsServer, PostgresServer
from libs.replay import ORIGINAL_SEQ_HEADER, ReplayError, ReplayRefused, ReplayRequest, replay
from libs.store.migrate import upgrade_async
from libs.testing.procs import ServiceProcess
from libs.testing.producer import make_trades
from libs.testing.store import recorded_count
from libs.testing.wait import eventually
from services.broker_gateway.domain.model import BrokerFill, BrokerOrder, OrderUpdate
from services.broker_gateway.domain.tracker import OrderTracker
from services.broker_gateway.settlement import cross_events
from tests.integration.recording import record_events
from tests.integration.test_recorder import order_chain
from tests.unit.gateway_settlement_inputs import ACCOUNT, CALL, opened
from tests.unit.gateway_settlement_inputs import tracker as settlement_tracker


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


async def record(tmp_path: Path, bus: Bus, nats_url: str, database_url: str, events: list) -> None:  # type: ignore[type-arg]
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


async def test_replay_round_trip_same_events_in_order_under_prefix(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    events = list(make_trades(400, "rp"))
    await record(tmp_path, bus, nats_url, database_url, events)
    got: list[tuple[str, bytes, dict[str, str]]] = []
    sub = await bus.nc.subscribe("replay.>")
    live = await bus.nc.subscribe("md.>")  # live subjects must stay quiet
    result = await replay(
        database_url, bus, ReplayRequest(subject="md.trade.*", from_seq=101, to_seq=300)
    )
    assert (result.published, result.first_seq, result.last_seq) == (200, 101, 300)
    while len(got) < 200:
        msg = await sub.next_msg(timeout=5)
        got.append((msg.subject, msg.data, dict(msg.headers or {})))
    assert [decode(data) for _, data, _ in got] == events[100:300]
    assert [s for s, _, _ in got] == [
        f"replay.md.trade.{e.payload.symbol}" for e in events[100:300]
    ]
    assert [int(h[ORIGINAL_SEQ_HEADER]) for _, _, h in got] == list(range(101, 301))
    with pytest.raises(nats.errors.TimeoutError):
        await live.next_msg(timeout=0.2)
    # The replayed copies were not recorded: the stream does not capture replay.>.
    assert (await bus.js.stream_info("TRADEBUS")).state.messages == 400


async def test_a_replay_repeated_into_a_stream_is_stored_once(bus: Bus, database_url: str) -> None:
    """Replayed messages carry the event's id as Nats-Msg-Id, as the live
    publishers do: a stream an operator makes over replay.> stores a range
    replayed twice once. They carried no id, and it stored both copies."""
    trades: list[Event] = list(make_trades(20, "twice"))
    await record_events(database_url, trades)
    await bus.js.add_stream(name="REPLAYS", subjects=["replay.>"], duplicate_window=120)
    sub = await bus.nc.subscribe("replay.>")
    for _ in range(2):
        result = await replay(database_url, bus, ReplayRequest(from_seq=3, to_seq=12))
        assert result.published == 10
    # Acked once the stream has taken what this connection published before it.
    await bus.js.publish("replay.end", b"", headers={MSG_ID_HEADER: "end"})
    info = await bus.js.stream_info("REPLAYS")
    assert (info.state.messages, info.state.last_seq) == (11, 11)
    got = [await sub.next_msg(timeout=5) for _ in range(10)]
    assert [(m.headers or {}).get(MSG_ID_HEADER) for m in got] == [str(t.id) for t in trades[2:12]]
    await sub.unsubscribe()  # the second copies are left unread


async def test_replay_stops_at_the_store_s_end_as_it_started(bus: Bus, database_url: str) -> None:
    """With no --to-seq a replay ends at the last sequence the store held when
    it started: what the recorder adds meanwhile (a live feed) is left out,
    so a replay paced slower than the feed still ends, and its progress never
    passes its total."""
    trades: list[Event] = list(make_trades(30, "tail"))
    await record_events(database_url, trades[:20])
    seen: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        if not seen:  # counted, nothing read yet: the feed goes on meanwhile
            thread = threading.Thread(
                target=lambda: asyncio.run(record_events(database_url, trades[20:]))
            )
            thread.start()
            thread.join()
        seen.append((done, total))

    got: list[Event] = []
    sub = await bus.nc.subscribe("replay.>")
    result = await replay(database_url, bus, ReplayRequest(), progress=progress)
    assert await recorded_count(database_url) == 30
    assert (result.published, result.first_seq, result.last_seq) == (20, 1, 20)
    assert seen[0] == (0, 20)
    assert seen[-1] == (20, 20)
    while len(got) < 20:
        got.append(decode((await sub.next_msg(timeout=5)).data))
    assert got == trades[:20]
    with pytest.raises(nats.errors.TimeoutError):
        await sub.next_msg(timeout=0.2)


async def test_a_paced_replay_shows_its_progress_as_it_goes(bus: Bus, database_url: str) -> None:
    """A replay paced at 20/s shows how far it is at least every half second:
    its progress came every 500 events, so at --rate 10/s the bar stood at 0
    for the first 50 seconds (and a replay of fewer than 500 showed nothing
    until its end)."""
    await record_events(database_url, list(make_trades(30, "pace")))
    seen: list[int] = []
    started = time.monotonic()
    result = await replay(
        database_url,
        bus,
        ReplayRequest(rate_per_s=20),
        progress=lambda done, total: seen.append(done),
    )
    took = time.monotonic() - started
    assert result.published == 30
    assert took >= 29 / 20  # paced: 29 intervals
    assert seen[0] == 0
    assert seen[-1] == 30
    between = [done for done in seen if 0 < done < 30]
    assert between, seen  # took over PROGRESS_EVERY_S: shown on the way
    assert between == sorted(between)


async def test_an_interrupted_replay_says_how_far_it_got(
    bus: Bus, nats_url: str, database_url: str
) -> None:
    """Ctrl-C stops a paced replay with the JSON line of its counts (exit
    130, no traceback): every event up to its last_seq was published and
    none after it, so --from-seq last_seq + 1 resumes it. It ended with
    "Aborted!" alone, and the operator could not tell where to resume."""
    await record_events(database_url, list(make_trades(200, "int")))
    sub = await bus.nc.subscribe("replay.>")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")}
    proc = subprocess.Popen(  # noqa: ASYNC220 - signalled while it runs
        [sys.executable, "-m", "services.cli", "recorder", "replay", "--rate", "20/s"],
        env={**env, "DATABASE_URL": database_url, "NATS_URL": nats_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    got = [await sub.next_msg(timeout=30) for _ in range(3)]
    proc.send_signal(signal.SIGINT)
    stdout, stderr = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["first_seq"] == 1
    assert 3 <= summary["last_seq"] < 200
    assert summary["published"] == summary["last_seq"]
    assert f"--from-seq {summary['last_seq'] + 1} resumes" in stderr
    with contextlib.suppress(nats.errors.TimeoutError):
        while True:
            got.append(await sub.next_msg(timeout=0.5))
    assert [int((m.headers or {})[ORIGINAL_SEQ_HEADER]) for m in got] == list(
        range(1, summary["last_seq"] + 1)
    )


async def test_replay_subject_filter_and_refusals(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    events = list(make_trades(80, "rf"))
    await record(tmp_path, bus, nats_url, database_url, events)
    dry = await replay(database_url, None, ReplayRequest(subject="md.trade.MSFT", dry_run=True))
    assert dry.published == sum(1 for e in events if e.payload.symbol == "MSFT")
    for bad in (
        ReplayRequest(into="md"),
        ReplayRequest(into=""),
        ReplayRequest(from_seq=5, to_seq=2),
    ):
        with pytest.raises(ReplayError):
            await replay(database_url, bus, bad)
    proc = await asyncio.to_thread(
        cli,
        "recorder",
        "replay",
        "--into",
        "orders",
        database_url=database_url,
        nats_url=nats_url,
    )
    assert proc.returncode == 2
    assert "recorded domain" in proc.stderr
    proc = await asyncio.to_thread(
        cli,
        "recorder",
        "replay",
        "--subject",
        "md.>",
        "--rate",
        "2000/s",
        "--to-seq",
        "40",
        database_url=database_url,
        nats_url=nats_url,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["published"], summary["first_seq"], summary["last_seq"]) == (40, 1, 40)


async def test_marketdata_replays_option_marks_by_their_subject(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    """Recorded MarkUpdated events (md.mark.<option>, a ':' in the token) are
    replayed by `tradebus marketdata replay --subject 'md.mark.>'`, whole and
    in order, and nothing else is."""
    option = "O:SPY241220P00720000"
    marks = [
        MarkUpdated.create(
            MarkPayload(
                symbol=option,
                price=Decimal(2) + Decimal(k) / 100,
                bid_price=Decimal("1.95") + Decimal(k) / 100,
                ask_price=Decimal("2.05") + Decimal(k) / 100,
                feed="polygon",
            ),
            source="marketdata/test",
            clock=WallClock(),
        )
        for k in range(5)
    ]
    trades = list(make_trades(10, "mk"))
    await record(tmp_path, bus, nats_url, database_url, [*trades[:5], *marks, *trades[5:]])
    sub = await bus.nc.subscribe("replay.md.mark.>")
    proc = await asyncio.to_thread(
        cli,
        "marketdata",
        "replay",
        "--subject",
        "md.mark.>",
        database_url=database_url,
        nats_url=nats_url,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["published"], summary["first_seq"], summary["last_seq"]) == (5, 6, 10)
    got = [await sub.next_msg(timeout=5) for _ in marks]
    assert [decode(m.data) for m in got] == marks
    assert {m.subject for m in got} == {f"replay.{subject_for(marks[0])}"}
    assert subject_for(marks[0]) == f"md.mark.{option}"


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


async def test_replay_gives_up_clearly_when_nats_is_unreachable(database_url: str) -> None:
    from libs.local.servers import free_port

    env_url = f"nats://replayer:{SECRET}@127.0.0.1:{free_port()}"  # nobody listens there
    proc = await asyncio.to_thread(
        lambda: subprocess.run(
            [sys.executable, "-m", "services.cli", "recorder", "replay"],
            env={
                **os.environ,
                "DATABASE_URL": database_url,
                "NATS_URL": env_url,
                "TRADEBUS_COMMAND_CONNECT_TIMEOUT_S": "1",
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    )
    assert proc.returncode == 1, proc.stderr
    assert "cannot connect to NATS at nats://replayer:***@127.0.0.1:" in proc.stderr
    assert "connection refused" in proc.stderr
    assert SECRET not in proc.stderr


SECRET = "s3cr3t-pw"  # noqa: S105 - a fake password, to show it is never printed


def with_password(url: str) -> str:
    """``url`` with a password for its user (the test server trusts local logins)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{SECRET}@{host}"))


def other_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


#: A missing database, named by its URL (password masked).
NO_DATABASE = "no database at postgresql://postgres:***@"
#: A store nobody answers for (port 1), and how every reader names it.
UNREACHABLE = f"postgresql://postgres:{SECRET}@127.0.0.1:1/x"
NOT_REACHED = "cannot reach the event store at postgresql://postgres:***@127.0.0.1:1/x"
NO_EVENT = "00000000-0000-0000-0000-000000000000"


@pytest.mark.parametrize(
    ("args", "url", "code", "says"),
    [
        # (the command, DATABASE_URL: "db" the test's store, else as given, exit, error)
        (("recorder", "replay", "--dry-run"), UNREACHABLE, 1, NOT_REACHED),
        (("positions",), UNREACHABLE, 1, NOT_REACHED),
        (("events",), UNREACHABLE, 1, NOT_REACHED),
        (("audit", NO_EVENT), UNREACHABLE, 1, NOT_REACHED),
        (("events",), "missing", 1, NO_DATABASE),
        (("recorder", "replay", "--dry-run"), "missing", 1, NO_DATABASE),
        (("risk", "status"), "missing", 1, NO_DATABASE),
        (("events", "--subject", "md.>.AAPL"), "db", 2, "not a NATS subject pattern: 'md.>.AAPL'"),
        (
            ("recorder", "replay", "--subject", "md.>.AAPL"),
            "db",
            2,
            "not a NATS subject pattern: 'md.>.AAPL'",
        ),
        (("events", "--subject", "md trade"), "db", 2, "'md trade' (no spaces"),
        (("recorder", "replay", "--subject", "md trade", "--dry-run"), "db", 2, "(no spaces"),
        (("recorder", "replay", "--into", ">"), "db", 2, "--into: not a subject prefix: '>'"),
        (("events",), "notaurl", 2, "DATABASE_URL: must be a URL such as postgresql://"),
        (("positions",), "notaurl", 2, "DATABASE_URL: must be a URL such as postgresql://"),
    ],
)
async def test_user_mistakes_end_in_one_line_and_an_exit_code(
    tmp_path: Path,
    bus: Bus,
    nats_url: str,
    database_url: str,
    args: tuple[str, ...],
    url: str,
    code: int,
    says: str,
) -> None:
    if url == "db":  # a store with events in it, so that a pattern could match
        await record(tmp_path, bus, nats_url, database_url, list(make_trades(5, "mistake")))
        url = database_url
    elif url == "missing":
        url = with_password(other_database(database_url, "no_such_database"))
    proc = await asyncio.to_thread(cli, *args, database_url=url, nats_url=nats_url)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("error: "), proc.stderr
    assert says in errors[0]
    assert SECRET not in proc.stderr + proc.stdout


async def test_read_commands_name_the_store_and_warn_when_it_is_empty(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    shown = with_password(database_url).replace(SECRET, "***")
    empty = "holds no events: is DATABASE_URL the one `tradebus up` printed?"
    for args in (
        ("events",),
        ("audit", "00000000-0000-0000-0000-000000000000"),
        ("positions",),
        ("risk", "status"),
        ("recorder", "replay", "--dry-run"),
    ):
        proc = await asyncio.to_thread(cli, *args, database_url=with_password(database_url))
        assert f"event store: {shown} (DATABASE_URL)" in proc.stderr, (args, proc.stderr)
        assert f"warning: the event store at {shown} {empty}" in proc.stderr, (args, proc.stderr)
        assert SECRET not in proc.stderr + proc.stdout
    await record(tmp_path, bus, nats_url, database_url, list(make_trades(3, "full")))
    proc = await asyncio.to_thread(cli, "risk", "status", "--json", database_url=database_url)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr
    assert json.loads(proc.stdout)["as_of_seq"] == 3
    # With no DATABASE_URL, the default is used, and said to be the default.
    proc = await asyncio.to_thread(cli, "events", database_url=None)
    assert (
        "event store: postgresql://postgres@127.0.0.1:5432/tradebus "
        "(the default: DATABASE_URL is not set)"
    ) in proc.stderr


async def test_a_store_lost_mid_replay_ends_in_one_line_saying_how_far_it_got(
    tmp_path: Path, bus: Bus, nats_url: str
) -> None:
    """PostgreSQL stops while a paced replay runs: the next page's read fails,
    and the replay ends with the JSON line of its counts and one error line
    naming the store and the --from-seq that resumes it (exit 1). asyncpg's
    error went through as a traceback, with no counts."""
    server = PostgresServer(tmp_path / "pg", fsync=False).start()
    try:
        url = server.url("tradebus")
        await upgrade_async(url)
        # More than one page (iter_range reads 2000 rows at a time), paced so
        # that the first page takes 10 s: the server is gone by the next (its
        # stop takes well under a second; a margin for a slow host).
        await record_events(url, list(make_trades(2100, "lost")))
        sub = await bus.nc.subscribe("replay.>")
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")}
        proc = subprocess.Popen(  # noqa: ASYNC220 - the store stops while it runs
            [sys.executable, "-m", "services.cli", "recorder", "replay", "--rate", "200/s"],
            env={**env, "DATABASE_URL": url, "NATS_URL": nats_url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        got = [await sub.next_msg(timeout=30)]
        await asyncio.to_thread(server.stop)
        stdout, stderr = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        server.stop()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    last = summary["last_seq"]
    assert summary["first_seq"] == 1
    assert 1 <= last < 2100
    assert summary["published"] == last
    [error] = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert error.startswith("error: reading the event store at postgresql://postgres@127.0.0.1:")
    assert f"--from-seq {last + 1} resumes" in error
    with contextlib.suppress(nats.errors.TimeoutError):
        while True:
            got.append(await sub.next_msg(timeout=0.5))
    assert [int((m.headers or {})[ORIGINAL_SEQ_HEADER]) for m in got] == list(range(1, last + 1))


async def test_nats_lost_mid_replay_ends_in_one_line_saying_how_far_it_got(
    tmp_path: Path, database_url: str
) -> None:
    """NATS is killed while a paced replay runs: the replay ends with the JSON
    line of its counts and one error line naming NATS and the --from-seq that
    resumes it (exit 1), as when the store is lost. It ended in a bare error
    line with no counts (the flush in flight timed out), or, once the client
    had seen the server go, went on to the end counting every message it
    buffered for a server that was gone as published (exit 0)."""
    total = 600
    await record_events(database_url, list(make_trades(total, "natslost")))
    server = NatsServer(tmp_path / "nats").start()
    try:
        watcher = await Bus.connect(server.url, name="test-watcher")
        try:
            sub = await watcher.nc.subscribe("replay.>")
            env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")}
            # 100/s: six seconds to go when the server is killed, a tenth of
            # a second in; the client sees its connection drop at once.
            proc = subprocess.Popen(  # noqa: ASYNC220 - NATS is killed while it runs
                [sys.executable, "-m", "services.cli", "recorder", "replay", "--rate", "100/s"],
                env={**env, "DATABASE_URL": database_url, "NATS_URL": server.url},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            got = [await sub.next_msg(timeout=30) for _ in range(10)]
            await asyncio.to_thread(server.stop, kill=True)
            stdout, stderr = await asyncio.to_thread(proc.communicate, timeout=60)
            # What the server delivered before it went.
            with contextlib.suppress(nats.errors.TimeoutError):
                while True:
                    got.append(await sub.next_msg(timeout=0.5))
        finally:
            await watcher.close()
    finally:
        server.stop()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    last = summary["last_seq"]
    # The first message is judged alone before any other goes out.
    assert 1 <= last < total
    assert summary["published"] == last
    assert summary["first_seq"] == 1
    # (the client's own "nats error:" log lines aside)
    [error] = [line for line in stderr.splitlines() if line.startswith("error")]
    assert error.startswith(f"error: NATS at {server.url} was lost mid-replay"), error
    assert f"--from-seq {last + 1} resumes" in error
    # Every event up to last_seq went out, in order and without a hole; those
    # after it that the server forwarded before it died are a prefix of the
    # rest (the error line says so), never more than was read.
    seqs = [int((m.headers or {})[ORIGINAL_SEQ_HEADER]) for m in got]
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) >= max(last, 10)


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


PARTIAL_PASSWORD = "pw"  # noqa: S105 - PARTIAL_NATS's, a test server's on loopback
PARTIAL_NATS = """
authorization {
  users = [
    {
      user: partial, password: pw,
      permissions: {
        publish: { allow: ["replay.md.>"] },
        subscribe: { allow: ["_INBOX_partial.>"] }
      }
    }
  ]
}
"""


async def test_a_refused_replay_s_last_seq_is_the_last_row_before_the_refusal(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    """A user who may publish replay.md.> only: a signal among trades is
    refused. last_seq is the last row before it, up to which every selected
    event went out; it was the last row read, which the window (up to 256
    messages judged together) carried past the refused one."""
    trades = list(make_trades(10, "part"))
    signal = order_chain()[0]
    await record(tmp_path, bus, nats_url, database_url, [*trades[:5], signal, *trades[5:]])
    config = tmp_path / "partial.conf"
    config.write_text(PARTIAL_NATS)
    server = NatsServer(tmp_path / "nats", config_file=config).start()
    try:
        async with await Bus.connect(
            server.url, name="test-partial", user="partial", password=PARTIAL_PASSWORD
        ) as partial:
            with pytest.raises(ReplayRefused) as info:
                await replay(database_url, partial, ReplayRequest())
            # Refused on its first message: nothing went out.
            with pytest.raises(ReplayRefused) as first:
                await replay(database_url, partial, ReplayRequest(from_seq=6))
    finally:
        server.stop()
    refused = info.value
    assert refused.seq == 6
    assert refused.subject == f"replay.{subject_for(signal)}"  # type: ignore[arg-type]
    assert (refused.result.first_seq, refused.result.last_seq) == (1, 5)
    assert refused.result.published >= 5
    assert first.value.seq == 6
    assert (first.value.result.published, first.value.result.first_seq) == (0, None)
    assert first.value.result.last_seq is None
