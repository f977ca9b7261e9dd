"""Profiling the recorder: where a drain's time goes.

:func:`profile` (``bench/recorder.py --profile``) drains a pre-filled
stream three more times: the recorder process under ``py-spy record``
(attached after the first batch, so start-up is left out), then in-process
with a stopwatch around each step (``bench/instrumented.py``), then the
same with the proposed fixes patched in.

``summarise`` puts every sample in one category of the recorder's work —
decode, getattr, orjson, astuple, COPY, commit, fetch, ack, the NATS
client's read loop, idle — by the deepest frame on its stack that names
one, and lists the hottest frames by self time. py-spy runs with
``--idle``, so the shares are of wall time; "idle" is the event loop
waiting on its sockets (Postgres answering a COPY or a commit, NATS
delivering a fetch).

``python bench/profiling.py FILE`` prints the summary of a saved profile.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from harness import (  # bench/harness.py
    INSTRUMENTED,
    STOP_TIMEOUT,
    BenchError,
    Children,
    Database,
    Options,
    check_timeline,
    recorder_process,
    say,
    store_poller,
    top_seq,
    wait_for_rows,
)

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?):(?P<line>\d+)\)$")

#: (category, function-name test, file test), most specific first. A frame
#: matches when its function name contains the first string (or it is empty)
#: and its file contains the second.
MARKERS: tuple[tuple[str, str, str], ...] = (
    ("decode (pydantic validate_json)", "decode", "contract/codec.py"),
    ("astuple (writer)", "astuple", "dataclasses.py"),
    # getattr(payload, "strategy", None) on a model without that field goes
    # through pydantic's __getattr__ and an AttributeError: slow.
    ("to_row: getattr on payload (pydantic)", "__getattr__", "pydantic/"),
    ("to_row: orjson payload, Row()", "to_row", "recorder/domain/rows.py"),
    ("COPY (asyncpg copy_records_to_table)", "copy", "asyncpg/"),
    ("transaction begin/commit (asyncpg)", "", "asyncpg/transaction.py"),
    ("ack", "ack", "nats/aio/msg.py"),
    ("to_stream_message (metadata, headers)", "to_stream_message", ""),
    ("plan / merge / sort", "plan", "recorder/domain/rows.py"),
    ("plan / merge / sort", "merge", "recorder/domain/rows.py"),
    ("plan / merge / sort", "<lambda>", "recorder/"),
    ("metrics (prometheus_client)", "", "prometheus_client/"),
    ("fetch (nats-py pull request)", "fetch", "nats/js/"),
    ("fetch (nats-py pull request)", "fetch", "recorder/adapters/stream.py"),
    ("NATS read loop (parse, Msg objects)", "_read_loop", "nats/aio/client.py"),
    ("NATS read loop (parse, Msg objects)", "", "nats/protocol/parser.py"),
    ("writer other (checks, list)", "write", "store/writer.py"),
    ("recorder _record other", "_record", "recorder/recorder.py"),
)


def py_spy_binary() -> str | None:
    """py-spy next to our python, or on PATH."""
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def _frames(stack: str) -> list[tuple[str, str]]:
    out = []
    for part in stack.split(";"):
        m = _FRAME.match(part)
        out.append((m["func"], m["file"]) if m else (part, ""))
    return out


def categorise(frames: list[tuple[str, str]]) -> str:
    """The category of one sample (frames root first)."""
    for func, file in reversed(frames):
        for name, func_part, file_part in MARKERS:
            if func_part in func and file_part in file:
                return name
    leaf_func, leaf_file = frames[-1] if frames else ("", "")
    if "select" in leaf_func and "selectors.py" in leaf_file:
        return "idle (event loop waiting on sockets)"
    if leaf_file.startswith("asyncio/") or "/asyncio/" in leaf_file:
        return "asyncio machinery"
    return "other"


def summarise(path: Path) -> dict[str, Any]:
    """Shares of wall time per category, and the hottest busy frames."""
    categories: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = busy = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        category = categorise(frames)
        categories[category] += count
        total += count
        if not category.startswith("idle"):
            busy += count
            leaves[stack.rsplit(";", 1)[-1]] += count
    return {
        "samples": total,
        "busy_share": round(busy / total, 4) if total else 0.0,
        "categories": {k: round(v / total, 4) for k, v in categories.most_common()},
        "top_frames": [(k, round(v / busy, 4)) for k, v in leaves.most_common(25)] if busy else [],
    }


# ---------------------------------------------------------------- the profiling phase


async def profile(
    children: Children, work: Path, nats_url: str, db: Database, opts: Options
) -> dict[str, Any]:
    """One drain under py-spy, one under the stopwatch; both on the same stream."""
    assert opts.profile is not None
    opts.profile.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    spy = py_spy_binary()
    if spy is None:
        say("py-spy not found (pip install py-spy): skipping the sampling profile")
    else:
        say("profile: drain under py-spy (--idle, 250 Hz)")
        raw = opts.profile / "recorder-drain.pyspy.txt"
        url = await db.fresh("profile")
        async with store_poller(url) as conn:
            rec = recorder_process(children, work, nats_url, url, opts.batch_size, "profile")
            while await top_seq(conn) == 0:
                if not rec.alive:
                    raise BenchError(f"recorder exited:\n{rec.log_text()[-2000:]}")
                await asyncio.sleep(0.005)  # polling the store
            assert rec.proc is not None
            # Attached once the first batch is in: the profile is the drain,
            # not the interpreter's start-up.
            args = ["record", "--pid", str(rec.proc.pid), "--idle", "--rate", "250",
                    "--format", "raw", "--output", str(raw)]  # fmt: skip
            sampler = children.add(
                await asyncio.create_subprocess_exec(
                    spy, *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
                )
            )
            await wait_for_rows(
                conn, opts.events, interval=0.01, timeout=opts.phase_timeout, recorder=rec
            )
        sampler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        await asyncio.wait_for(sampler.wait(), STOP_TIMEOUT)
        rec.terminate(timeout=STOP_TIMEOUT)
        if raw.exists():
            result["py_spy"] = summarise(raw)
            (opts.profile / "recorder-drain.pyspy.json").write_text(
                json.dumps(result["py_spy"], indent=2)
            )
    say("profile: drain in-process with a stopwatch around each step")
    result["stopwatch"] = await stopwatch_drain(children, work, nats_url, db, opts, what_if=False)
    say("profile: the same with the proposed astuple and getattr fixes patched in")
    result["what_if"] = await stopwatch_drain(children, work, nats_url, db, opts, what_if=True)
    for name in ("stopwatch", "what_if"):
        path = opts.profile / f"recorder-drain.{name}.json"
        path.write_text(json.dumps(result[name], indent=2))
    return result


async def stopwatch_drain(
    children: Children, work: Path, nats_url: str, db: Database, opts: Options, *, what_if: bool
) -> dict[str, Any]:
    """``bench/instrumented.py`` on the pre-filled stream: seconds per step."""
    url = await db.fresh("stopwatch")
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "DATABASE_URL": url,
        "TRADEBUS_BATCH_SIZE": str(opts.batch_size),
        "TRADEBUS_INSTANCE": "bench-stopwatch",
    }
    args = [str(INSTRUMENTED), "--until", str(opts.events), *(["--what-if"] if what_if else [])]
    log_path = work / "stopwatch.log"
    with log_path.open("ab") as log:
        proc = children.add(
            await asyncio.create_subprocess_exec(
                sys.executable, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=log
            )
        )
    out, _ = await asyncio.wait_for(proc.communicate(), opts.phase_timeout)
    if proc.returncode != 0:
        raise BenchError(f"instrumented drain failed:\n{log_path.read_text()[-2000:]}")
    await check_timeline(url, opts.events)
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def profile_table(profile: dict[str, Any]) -> str:
    out = []
    sw = profile.get("stopwatch")
    if sw:
        out.append(
            f"\nstopwatch drain: {sw['events_per_s']:,.0f} events/s over {sw['wall_s']:.2f}s"
        )
        out.append(f"{'step':<26}{'seconds':>9}{'share':>8}{'µs/event':>10}")
        for name, v in sorted(sw["steps"].items(), key=lambda kv: -kv[1]["seconds"]):
            out.append(
                f"{name:<26}{v['seconds']:>9.3f}{v['share']:>8.1%}{v['us_per_event']:>10.1f}"
            )
    wi = profile.get("what_if")
    if wi and sw:
        out.append(
            f"with astuple -> attrgetter and getattr -> __dict__.get patched in: "
            f"{wi['events_per_s']:,.0f} events/s (x{wi['events_per_s'] / sw['events_per_s']:.2f})"
        )
    spy = profile.get("py_spy")
    if spy:
        out.append(f"\npy-spy drain: {spy['samples']} samples (idle included)")
        for name, share in spy["categories"].items():
            out.append(f"  {name:<40}{share:>7.1%}")
        out.append("  hottest frames (self, busy samples only):")
        for frame, share in spy["top_frames"][:12]:
            out.append(f"    {share:>6.1%}  {frame}")
    return "\n".join(out)


if __name__ == "__main__":
    print(json.dumps(summarise(Path(sys.argv[1])), indent=2))
