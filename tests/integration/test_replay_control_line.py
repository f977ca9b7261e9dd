"""A replay of a message whose subject NATS took as sent but not under the
replay's prefix: nats-server takes a client's protocol line up to its
``max_control_line`` (4 KiB by default), and ``replay.`` (or a longer
``--into``) makes the subject longer. Sent, such a line made the server close
the connection (``-ERR 'Maximum Control Line Exceeded'``), nats-py closed it
for good, and the replay stopped as "NATS lost" at that row, whatever came
after it. It is skipped instead, counted and said."""

from __future__ import annotations

import asyncio
import contextlib
import json

import nats.errors
import pytest
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from libs.bus.client import Bus
from libs.contract.codec import DEFAULT_MAX_BYTES, encode
from libs.replay import ORIGINAL_SEQ_HEADER, ReplayRequest, replay
from libs.store.writer import EventWriter
from libs.testing.producer import make_trades
from services.recorder.domain.rows import StreamMessage, to_row
from tests.integration.recorded_chains import cli

BAD = b"{not json"
#: nats-server's default max_control_line (as tradebus's servers run).
MAX_CONTROL_LINE = 4096


def _subject(length: int) -> str:
    return "md.trade." + "y" * (length - len("md.trade.") - len(".tail")) + ".tail"


#: Its plain publish (``PUB <subject>  9``) fits the control line with room
#: to spare; under ``replay.``, with the replay's headers, it does not.
NEAR_THE_LIMIT = _subject(MAX_CONTROL_LINE - 16)


async def _store(database_url: str, subject: str) -> None:
    """A trade, a bad message on ``subject`` (seq 2) and another trade."""
    trade, later = make_trades(2, "line")
    sent = {1: encode(trade), 2: BAD, 3: encode(later)}
    subjects = {1: "md.trade.AAPL", 2: subject, 3: "md.trade.MSFT"}
    recorded = [
        to_row(StreamMessage(seq, subjects[seq], data), max_bytes=DEFAULT_MAX_BYTES).row
        for seq, data in sent.items()
    ]
    async with await EventWriter.open(database_url) as writer:
        await writer.write(recorded, sent=sent.get)


async def _drain(sub: Subscription) -> list[Msg]:
    got: list[Msg] = []
    with contextlib.suppress(nats.errors.TimeoutError):
        while True:  # all that came: the replay was judged, so it is here or nowhere
            got.append(await sub.next_msg(timeout=1))
    return got


async def test_nats_takes_the_subject_as_sent(bus: Bus) -> None:
    """What was recorded could be sent: the store holds no message NATS refused."""
    sub = await bus.nc.subscribe(NEAR_THE_LIMIT)
    await bus.nc.flush()
    await bus.publish_plain(NEAR_THE_LIMIT, BAD)
    assert (await sub.next_msg(timeout=5)).data == BAD


async def test_a_row_too_long_for_nats_under_the_prefix_is_skipped_and_the_replay_goes_on(
    bus: Bus, nats_url: str, database_url: str
) -> None:
    await _store(database_url, NEAR_THE_LIMIT)
    sub = await bus.nc.subscribe("replay.>")
    await bus.nc.flush()
    request = ReplayRequest(include_undecodable=True)
    replayer = await Bus.connect(nats_url, name="replay-control-line", first_connect_deadline_s=10)
    async with replayer:
        result = await replay(database_url, replayer, request)
        assert replayer.nc.is_connected, "the server kept the connection"
    assert (result.published, result.skipped, result.skipped_too_long) == (2, 1, 1)
    assert (result.first_seq, result.last_seq, result.refused) == (1, 3, 0)
    got = await _drain(sub)
    assert [(m.subject, int((m.headers or {})[ORIGINAL_SEQ_HEADER])) for m in got] == [
        ("replay.md.trade.AAPL", 1),
        ("replay.md.trade.MSFT", 3),
    ]
    dry = await replay(database_url, None, ReplayRequest(include_undecodable=True, dry_run=True))
    assert (dry.published, dry.skipped_too_long) == (2, 1), "a dry run says the same"


@pytest.mark.parametrize(
    ("into", "skipped"), [("replay", 0), ("replay.run-2026-12-07.operator-check", 1)]
)
async def test_a_longer_into_prefix_can_make_a_row_too_long(
    nats_url: str, database_url: str, into: str, skipped: int
) -> None:
    """A subject that fits under ``replay.`` may not under a longer prefix."""
    subject = _subject(MAX_CONTROL_LINE - 40)
    await _store(database_url, subject)
    replayer = await Bus.connect(nats_url, name="replay-control-line", first_connect_deadline_s=10)
    async with replayer:
        sub = await replayer.nc.subscribe(f"{into}.>")
        await replayer.nc.flush()
        result = await replay(
            database_url, replayer, ReplayRequest(include_undecodable=True, into=into)
        )
        got = await _drain(sub)
    assert (result.published, result.skipped_too_long) == (3 - skipped, skipped)
    assert len(got) == 3 - skipped


async def test_the_replay_command_says_what_was_too_long(database_url: str) -> None:
    await _store(database_url, NEAR_THE_LIMIT)
    proc = await asyncio.to_thread(
        cli,
        "recorder",
        "replay",
        "--dry-run",
        "--include-undecodable",
        database_url=database_url,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["published"], summary["skipped"], summary["skipped_too_long"]) == (2, 1, 1)
    assert (
        "skipped 1 row: 1 too long for NATS under 'replay.' (a publish line over its "
        "4,096-byte max_control_line, for which the server closes the connection)"
    ) in proc.stderr, proc.stderr
