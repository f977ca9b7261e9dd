"""The line nats-server judges against its ``max_control_line`` (4 KiB by
default) for a plain publish, as :func:`libs.bus.client.publish_line_length`
measures it, and :meth:`~libs.bus.client.Bus.publish_plain` refusing one
longer: sent, the server closes the connection and nats-py closes it for
good (no reconnect)."""

from __future__ import annotations

import contextlib

import nats
import nats.errors
import pytest

from libs.bus.client import MAX_CONTROL_LINE, Bus, publish_line_length
from libs.bus.errors import ControlLineTooLong
from libs.testing.wait import eventually


async def test_the_line_measured_is_the_one_the_server_judges(nats_url: str) -> None:
    """publish_line_length is what nats-server compares with its
    max_control_line: a line of exactly MAX_CONTROL_LINE bytes goes out, one
    a byte longer closes the connection (so publish_plain refuses it)."""
    headers = {"Tradebus-Original-Seq": "7"}
    fits = "replay." + "z" * (MAX_CONTROL_LINE - 7 - len("  38 41"))
    assert publish_line_length(fits, b"abc", headers) == MAX_CONTROL_LINE
    over = fits + "z"
    async with await Bus.connect(nats_url, name="line", first_connect_deadline_s=10) as bus:
        sub = await bus.nc.subscribe("replay.>")
        await bus.nc.flush()
        await bus.publish_plain(fits, b"abc", headers=headers)
        assert (await sub.next_msg(timeout=5)).subject == fits
        with pytest.raises(ControlLineTooLong, match="4,097-byte publish line"):
            await bus.publish_plain(over, b"abc", headers=headers)
        bare = "replay." + "b" * (MAX_CONTROL_LINE - 7 - len("  3"))  # PUB, no headers
        assert publish_line_length(bare, b"abc") == MAX_CONTROL_LINE
        await bus.publish_plain(bare, b"abc")
        assert (await sub.next_msg(timeout=5)).subject == bare
        with pytest.raises(ControlLineTooLong, match="4,097-byte publish line"):
            await bus.publish_plain(bare + "b", b"abc")
        assert await bus.settle() == []
        assert bus.nc.is_connected
    # What publish_plain spares the connection: the server closes it.
    raw = await nats.connect(nats_url, allow_reconnect=False)
    try:
        await raw.publish(over, b"abc", headers=headers)
        with contextlib.suppress(nats.errors.Error):
            await raw.flush(timeout=5)
        await eventually(lambda: raw.is_closed, timeout=10)
        assert "maximum control line exceeded" in str(raw.last_error).lower()
    finally:
        await raw.close()
