"""The real recorder, in this process, with a stopwatch around each step.

Runs :class:`services.recorder.recorder.Recorder` unchanged except that the
functions it calls are wrapped with timers (by patching module attributes at
run time, so nothing under ``services/`` or ``libs/`` is edited): fetch,
``to_stream_message``, the pydantic decode, the orjson payload round trip,
``dataclasses.astuple``, the asyncpg COPY, the rest of the transaction
(commit), and the ack. It drains the stream into the store until ``--until``
rows are committed and prints one JSON line: wall time, and per step the
seconds, the share of wall time and microseconds per event.

A wall-time profile complements py-spy's samples: in an asyncio process the
idle samples (waiting for Postgres to commit, for NATS to deliver) all look
alike, while a stopwatch around each await says which wait it was.

With ``--what-if`` two proposed fixes are patched in as well, to measure
them on the real loop before anyone edits the recorder: ``astuple`` becomes
an ``attrgetter`` over the row's fields (the rows hold only immutable
values, so the deep copy is wasted), and ``getattr(payload, name, None)``
in ``to_row`` reads the model's ``__dict__`` (no pydantic ``__getattr__``
and AttributeError for fields the payload type does not have).

Run by ``bench/recorder.py --profile``; needs NATS_URL and DATABASE_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import inspect
import json
import operator
import time
import types
from collections.abc import Callable
from typing import Any

import asyncpg
import nats.aio.msg
import orjson

import libs.store.writer as writer_module
import services.recorder.domain.rows as rows_module
import services.recorder.recorder as recorder_module
from libs.config import load_settings
from services.recorder.adapters.stream import RecorderStream
from services.recorder.config import RecorderSettings


class Stopwatch:
    """Seconds and calls per named step."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` (sync or async) timed under ``name``."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    self.add(name, time.perf_counter() - t0)

            return timed_async

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - t0)

        return timed


def instrument(watch: Stopwatch) -> None:
    """Wrap every step of the recorder's hot path with ``watch``."""

    def patch(owner: object, attr: str, label: str) -> None:
        # Attribute patching on purpose: the code under measure stays as it is.
        setattr(owner, attr, watch.wrap(label, getattr(owner, attr)))

    patch(recorder_module, "to_stream_message", "to_stream_message")
    patch(recorder_module, "to_row", "to_row")
    patch(recorder_module, "plan", "plan")
    patch(recorder_module, "merge", "merge")
    patch(rows_module, "decode", "to_row.decode")
    orjson_timed = types.SimpleNamespace(loads=orjson.loads, dumps=orjson.dumps)
    patch(orjson_timed, "loads", "to_row.orjson")
    patch(orjson_timed, "dumps", "to_row.orjson")
    setattr(rows_module, "orjson", orjson_timed)  # noqa: B010 - see patch()
    patch(writer_module, "astuple", "write.astuple")
    patch(asyncpg.connection.Connection, "copy_records_to_table", "write.copy")
    patch(writer_module.EventWriter, "write", "write")
    patch(RecorderStream, "fetch", "fetch")
    patch(nats.aio.msg.Msg, "ack", "ack")
    patch(recorder_module.Recorder, "_record", "record")


def what_if() -> None:
    """Patch in the proposed fixes for astuple and getattr (see the docstring)."""
    row_fields = operator.attrgetter(*(f.name for f in dataclasses.fields(writer_module.Row)))

    def fast_astuple(row: writer_module.Row) -> tuple[Any, ...]:
        return tuple(row_fields(row))

    def fast_getattr(obj: Any, name: str, default: Any = None) -> Any:
        return obj.__dict__.get(name, default)

    setattr(writer_module, "astuple", fast_astuple)  # noqa: B010 - see instrument()
    # to_row looks ``getattr`` up in its module before the builtins.
    setattr(rows_module, "getattr", fast_getattr)  # noqa: B010 - see instrument()


def breakdown(watch: Stopwatch, wall: float, events: int) -> dict[str, Any]:
    """Exclusive time per step (children subtracted from their parents)."""
    s = dict(watch.seconds)
    get = s.get
    steps = {
        "fetch": get("fetch", 0.0),
        "to_stream_message": get("to_stream_message", 0.0),
        "plan_merge_sort": get("plan", 0.0) + get("merge", 0.0),
        "decode_pydantic": get("to_row.decode", 0.0),
        "orjson_payload": get("to_row.orjson", 0.0),
        "to_row_other": get("to_row", 0.0) - get("to_row.decode", 0.0) - get("to_row.orjson", 0.0),
        "astuple": get("write.astuple", 0.0),
        "copy": get("write.copy", 0.0),
        "commit_and_rest_of_write": get("write", 0.0)
        - get("write.copy", 0.0)
        - get("write.astuple", 0.0),
        "ack": get("ack", 0.0),
    }
    inside_record = sum(v for k, v in steps.items() if k != "fetch")
    steps["record_other"] = get("record", 0.0) - inside_record
    steps["loop_other"] = wall - get("record", 0.0) - get("fetch", 0.0)
    return {
        "events": events,
        "wall_s": round(wall, 4),
        "events_per_s": round(events / wall, 1) if wall else 0.0,
        "batches": watch.calls.get("record", 0),
        "steps": {
            name: {
                "seconds": round(sec, 4),
                "share": round(sec / wall, 4) if wall else 0.0,
                "us_per_event": round(sec / events * 1e6, 2) if events else 0.0,
            }
            for name, sec in steps.items()
        },
    }


async def drain(until: int, *, proposed: bool) -> dict[str, Any]:
    settings = load_settings(RecorderSettings)
    if proposed:
        what_if()
    watch = Stopwatch()
    instrument(watch)
    recorder = recorder_module.Recorder(settings)
    marks: dict[str, float] = {}
    timed_fetch = RecorderStream.fetch
    timed_record = recorder_module.Recorder._record

    async def fetch(self: RecorderStream, batch: int, timeout: float) -> Any:
        marks.setdefault("start", time.perf_counter())
        return await timed_fetch(self, batch, timeout)

    async def record(self: recorder_module.Recorder, *args: Any) -> None:
        await timed_record(self, *args)
        if self.last_seq >= until and "end" not in marks:
            marks["end"] = time.perf_counter()
            self.stop()

    setattr(RecorderStream, "fetch", fetch)  # noqa: B010 - see instrument()
    setattr(recorder_module.Recorder, "_record", record)  # noqa: B010 - see instrument()
    await recorder.run()
    wall = marks["end"] - marks["start"]
    return breakdown(watch, wall, recorder.last_seq)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--until", type=int, required=True, help="stop once this many rows are in")
    ap.add_argument("--what-if", action="store_true", help="patch in the proposed fixes")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(drain(args.until, proposed=args.what_if))), flush=True)


if __name__ == "__main__":
    main()
