"""The recorder's writer stage ends when its cycle is canceled, even when what
it waits for (the next batch, the answer to its idle ping) comes in that
same moment.

A cycle runs its stages in a task group; when the reader fails (NATS away),
the group cancels the writer. Through ``asyncio.wait_for`` (Python 3.11) a
result ready as the cancellation came was returned and the cancellation
dropped: the writer went back to waiting on a queue no reader fills any
more, pinging the store every second, and the cycle (and a stop) waited on
it for ever. The stand-ins here record what the stage did; no servers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, cast

import pytest

from libs.store.writer import EventWriter, Row
from services.recorder.adapters.stream import RecorderStream
from services.recorder.config import RecorderSettings
from services.recorder.recorder import Prepared, Recorder


class Batches(asyncio.Queue[Prepared | None]):
    """The queue between the stages; says when the writer waits on it."""

    def __init__(self) -> None:
        super().__init__(maxsize=2)
        self.waiting = asyncio.Event()

    async def get(self) -> Prepared | None:
        # Queue.get registers its waiter before it first suspends: once this
        # is set and the test runs again, the writer is waiting for a batch.
        self.waiting.set()
        return await super().get()


class Writer:
    """What the write loop uses of :class:`EventWriter`."""

    last_seq = 0

    def __init__(self) -> None:
        self.written: list[Sequence[Row]] = []

    async def write(self, rows: Sequence[Row]) -> int:
        self.written.append(rows)
        return len(rows)

    async def ping(self) -> None:
        pass


class Stream:
    """What the write loop uses of :class:`RecorderStream`."""

    async def ack_all(self, subject: str) -> None:
        pass


def batch() -> Prepared:
    return Prepared([], "$JS.ACK.TRADEBUS.recorder.1.1.1.0.0", 1, 0, time.perf_counter())


async def test_the_writer_canceled_as_a_batch_comes_is_canceled() -> None:
    recorder = Recorder(RecorderSettings(instance="canceled-test"))
    writer, queue = Writer(), Batches()
    stage = asyncio.create_task(
        recorder._write_loop(cast(EventWriter, writer), cast(RecorderStream, Stream()), queue)
    )
    await queue.waiting.wait()
    # In one step: a batch for the writer, and its cycle ending (the reader
    # failed). Both land in the writer's next step.
    queue.put_nowait(batch())
    stage.cancel()
    # The old code took the batch and went on; this lets it end (rather than
    # wait for ever), so that it fails here instead of hanging.
    queue.put_nowait(None)
    with pytest.raises(asyncio.CancelledError):
        await stage
    assert writer.written == []


class Connection:
    """An asyncpg connection whose answer to the ping the test gives."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.terminated = False

    def fetchval(self, query: str) -> asyncio.Future[Any]:
        self.asked.set()
        return self.answer

    def terminate(self) -> None:
        self.terminated = True


async def test_a_ping_canceled_as_its_answer_comes_is_canceled() -> None:
    conn = Connection()
    writer = EventWriter(cast(Any, conn), None)
    ping = asyncio.create_task(writer.ping())
    # The ping awaits the answer in the same step it asks for it.
    await conn.asked.wait()
    conn.answer.set_result(1)
    ping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await ping
    assert not conn.terminated
