"""Operator commands against a NATS without the stream; ``tradebus up`` on SIGHUP."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from libs.bus.client import Bus
from libs.testing.streams import delete_all_streams
from libs.testing.wait import eventually
from services import cli as root
from tests.integration.stack_up_runs import alive, kill_leftovers, start_up

runner = CliRunner()


async def _delete_streams(url: str) -> None:
    """A bare server: no stream captures any subject (other tests may have
    created one on this session's server)."""
    bus = await Bus.connect(url, name="test")
    async with bus:
        await delete_all_streams(bus.js)


@pytest.mark.parametrize(
    ("args", "event", "subject"),
    [
        (["kill-switch", "on"], "KillSwitchEngaged", "control.killswitch"),
        (["kill-switch", "off"], "KillSwitchReleased", "control.killswitch"),
        (["risk", "resume", "acct"], "TradingResumeRequested", "control.resume"),
    ],
)
def test_an_operator_command_to_a_nats_without_the_stream_fails_at_once_saying_so(
    nats_url: str, args: list[str], event: str, subject: str
) -> None:
    """The server answers at once that no stream stores the subject; the
    command waited 10 s all the same and then said "did not store it within
    10s (PublishFailed: ... NoStreamResponseError())"."""
    asyncio.run(_delete_streams(nats_url))
    started = time.monotonic()
    result = runner.invoke(
        root.app,
        [*args, "--reason", "runaway loop", "--operator", "ana"],
        env={"NATS_URL": nats_url, "COLUMNS": "300"},
    )
    took = time.monotonic() - started
    assert result.exit_code == 1, result.output
    [error] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: {event} NOT published: no JetStream stream at "), error
    assert f"stores {subject}" in error, error
    assert "is NATS_URL the one `tradebus up` printed?" in error, error
    assert took < 3, took


async def test_up_stops_in_order_on_sighup(tmp_path: Path) -> None:
    """Closing the terminal sends ``up`` SIGHUP. It died of it at once, and
    its services were SIGTERMed (their parent gone) while the keeper, its
    stdin closed, stopped PostgreSQL under them. Now SIGHUP is a SIGTERM:
    services first, then the servers, exit 0."""
    up = await start_up(tmp_path, tmp_path / "home", "sighup", "--only", "recorder")
    try:
        await eventually(lambda: "tradebus is up" in up.output(), timeout=180, message=up.tail)
        state = up.state()
        assert state is not None
        up.proc.send_signal(signal.SIGHUP)
        code = await asyncio.wait_for(up.proc.wait(), timeout=120)
    finally:
        await kill_leftovers(up)
    text = up.output()
    assert code == 0, text[-4000:]  # -1: killed by SIGHUP
    assert "recorder stopped (exit code 0)" in text, text[-4000:]
    ups = [line.split("| ", 1)[-1] for line in text.splitlines() if line.startswith("up ")]
    assert ups[-2:] == ["stopping the servers", "stopped"], text[-4000:]
    for pid in state["servers"].values():
        assert not alive(pid), f"a server (pid {pid}) outlived up"
