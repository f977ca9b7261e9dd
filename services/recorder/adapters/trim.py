"""Trimming the stream: read the limits from JetStream, purge below the floor.

The stream itself has no limits (``libs.bus.client.Bus.ensure_stream``): the
server would otherwise drop messages nobody recorded, or refuse publishes
once the file store is full. The recorder's writer trims it instead, below
the floor :func:`services.recorder.domain.trim.trim_floor` computes from

- the last sequence the store committed (given by the caller),
- the first message at or after now minus the keep window (a direct get by
  time, ``$JS.API.DIRECT.GET.TRADEBUS`` with ``start_time``), and
- every durable consumer's place (``$JS.API.CONSUMER.LIST.TRADEBUS``) and,
  for one that awaits messages, the first of them its filter matches (a
  direct get with ``next_by_subj``),

with one purge (``$JS.API.STREAM.PURGE.TRADEBUS`` with ``seq``: keep the
messages at or above it). The recorder's NATS user may send exactly these
(``deploy/nats/nats-server.conf``).

Why it is safe against what happens meanwhile: a message published after
the consumers were listed has a sequence above the stream's last at that
time, which is at least the store's committed sequence, so at least the
floor; a consumer created meanwhile starts at the store's tail or later (the
risk-gate, the strategy-runner) or within the keep window (the gateway's
``max_submit_delay_s``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import nats.js.errors
import orjson
from nats.js import api as js_api

from libs.bus.client import Bus
from libs.contract.envelope import Clock
from libs.contract.subjects import STREAM
from services.recorder.domain.trim import ConsumerPlace, Floor, Hold, needed_from, trim_floor

log = logging.getLogger(__name__)

#: How long one JetStream API request of a trim may take.
TRIM_REQUEST_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Trimmed:
    """What one trim did: ``purged`` messages below ``floor``; the stream now
    holds ``first_seq`` to ``last_seq`` (``first_seq`` is ``last_seq + 1``
    when it is empty)."""

    purged: int
    floor: Floor
    keep_from: int
    first_seq: int
    last_seq: int


def rfc3339(ns: int) -> str:
    """``ns`` since the epoch as the RFC 3339 time (UTC, nanoseconds) JetStream reads."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


class StreamTrimmer:
    """Purges the stream below what is recorded, kept and still awaited."""

    def __init__(
        self,
        bus: Bus,
        *,
        keep_s: float,
        clock: Clock,
        stream: str = STREAM,
        timeout_s: float = TRIM_REQUEST_TIMEOUT_S,
    ) -> None:
        self.bus = bus
        self.keep_ns = int(keep_s * 1_000_000_000)
        self.clock = clock
        self.stream = stream
        self.timeout_s = timeout_s

    async def trim(self, committed: int) -> Trimmed:
        """Purge below the floor; ``committed`` is the store's last committed
        sequence (the floor never goes above it plus one)."""
        info = await self.bus.js.stream_info(self.stream)
        first, last = info.state.first_seq, info.state.last_seq
        since = await self.first_seq_since(self.clock.now_ns() - self.keep_ns)
        keep_from = last + 1 if since is None else since
        floor = trim_floor(committed=committed, keep_from=keep_from, holds=await self.holds())
        if floor.seq <= first:
            return Trimmed(0, floor, keep_from, first, last)
        purged = await self.purge_below(floor.seq)
        after = await self.bus.js.stream_info(self.stream)
        return Trimmed(purged, floor, keep_from, after.state.first_seq, after.state.last_seq)

    async def first_seq_since(self, ns: int) -> int | None:
        """The sequence of the first message stored at or after ``ns``; None
        if there is none."""
        return await self._direct_get({"start_time": rfc3339(ns)})

    async def first_matching(self, subject: str, seq: int) -> int | None:
        """The sequence of the first message on ``subject`` (a pattern) at or
        after ``seq``; None if there is none."""
        return await self._direct_get({"seq": seq, "next_by_subj": subject})

    async def _direct_get(self, request: dict[str, object]) -> int | None:
        reply = await self.bus.nc.request(
            f"$JS.API.DIRECT.GET.{self.stream}", orjson.dumps(request), timeout=self.timeout_s
        )
        headers = reply.headers or {}
        status = headers.get("Status")
        if status == "404":
            return None
        if status is not None:
            nats.js.errors.APIError.from_msg(reply)  # raises
        return int(headers["Nats-Sequence"])

    async def holds(self) -> list[Hold]:
        """The first message each consumer that takes acks still needs."""
        infos: list[js_api.ConsumerInfo] = []
        while True:  # every page of the consumer list
            page = await self.bus.js.consumers_info(self.stream, offset=len(infos))
            if not page:
                break
            infos += page
        holds = []
        for info in infos:
            place = _place(info)
            start = needed_from(place)
            if start is None:
                continue
            # A filtered consumer's ack floor stays at the last message it
            # matched, maybe days back; what it awaits starts at the first
            # message after it on its subjects.
            found = [await self.first_matching(f, start) for f in _filters(info.config)]
            first = min((seq for seq in found if seq is not None), default=None)
            if first is not None:
                holds.append(Hold(place.name, first))
        return holds

    async def purge_below(self, seq: int) -> int:
        """Purge every message below ``seq``; returns how many went."""
        reply = await self.bus.nc.request(
            f"$JS.API.STREAM.PURGE.{self.stream}",
            orjson.dumps({"seq": seq}),
            timeout=self.timeout_s,
        )
        answer = orjson.loads(reply.data)
        if error := answer.get("error"):
            raise nats.js.errors.APIError(
                code=error.get("code"),
                err_code=error.get("err_code"),
                description=error.get("description"),
            )
        return int(answer.get("purged", 0))


def _filters(config: js_api.ConsumerConfig) -> list[str]:
    """The subjects a consumer takes (``>``: all of them)."""
    return list(config.filter_subjects or []) or [config.filter_subject or ">"]


def _place(info: js_api.ConsumerInfo) -> ConsumerPlace:
    config = info.config
    return ConsumerPlace(
        name=info.name or config.durable_name or config.name or "?",
        takes_acks=config.ack_policy != js_api.AckPolicy.NONE,
        ack_floor=info.ack_floor.stream_seq if info.ack_floor else 0,
        delivered=info.delivered.stream_seq if info.delivered else 0,
        ack_pending=info.num_ack_pending or 0,
        pending=info.num_pending or 0,
    )
