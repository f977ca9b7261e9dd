"""Acknowledgements sent together, a little later.

An ack is a message of its own: sent the moment each command is done, it costs
a write here and a read (and a wake-up) in the server, per message. Where a
late ack costs nothing but a redelivery after a crash, which the reader
absorbs anyway (the gateway: the broker keeps one order per client order id),
:class:`DeferredAcks` holds them for up to ``delay`` and sends them at once,
in one write.
"""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors
from nats.aio.msg import Msg

#: How long an ack may wait for others to go with it.
ACK_DELAY_S = 0.05


class DeferredAcks:
    """Queue acks with :meth:`add`; they leave within ``delay``, or at :meth:`flush`."""

    def __init__(self, delay: float = ACK_DELAY_S) -> None:
        self.delay = delay
        self._pending: list[Msg] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def add(self, msg: Msg) -> None:
        self._pending.append(msg)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        task = asyncio.create_task(self._send(self._take()))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def _take(self) -> list[Msg]:
        msgs, self._pending = self._pending, []
        return msgs

    async def flush(self) -> None:
        """Send what is queued now, and wait for sends under way."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self._send(self._take())
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    @staticmethod
    async def _send(msgs: list[Msg]) -> None:
        for msg in msgs:
            # A lost ack only means a redelivery, which the reader absorbs.
            with contextlib.suppress(nats.errors.Error):
                await msg.ack()
