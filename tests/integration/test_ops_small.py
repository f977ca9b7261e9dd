"""Operator commands against a NATS that has no TRADEBUS stream."""

from __future__ import annotations

import asyncio
import time

import pytest
from typer.testing import CliRunner

from libs.bus.client import Bus
from services import cli as root

runner = CliRunner()


async def _delete_streams(url: str) -> None:
    """A bare server: no stream captures any subject (other tests may have
    created one on this session's server)."""
    bus = await Bus.connect(url, name="test")
    async with bus:
        for info in await bus.js.streams_info():
            assert info.config.name is not None
            await bus.js.delete_stream(info.config.name)


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
