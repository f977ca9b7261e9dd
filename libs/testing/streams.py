"""Deleting a JetStream stream for a test, so that the next one made under
its name starts empty.

nats-server (seen with 2.15.1) answers a stream delete before it has let go
of the stream's messages: a stream added again under the same name right
after can come back holding them, its sequence going on from the old one
(seen in about one in ten delete-and-add rounds on a loaded host). A test
that counts on sequence 1 being its first publish, or on a "reset" stream
being empty, then fails at random. :func:`delete_stream` adds the stream
back (with its own configuration) until it comes back empty, and deletes
that empty one: a stream made under the name after that starts at 1.
"""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

#: How long deleting may take before the test fails (seconds).
DELETE_TIMEOUT_S = 10.0


async def delete_stream(js: JetStreamContext, name: str) -> None:
    """Delete stream ``name`` (gone already: nothing to do) so that a stream
    made under its name next starts empty, at sequence 1."""
    try:
        config = (await js.stream_info(name)).config
    except NotFoundError:
        return
    async with asyncio.timeout(DELETE_TIMEOUT_S):
        while True:
            await js.delete_stream(name)
            info = await js.add_stream(config)
            if info.state.last_seq == 0:
                break
    await js.delete_stream(name)


async def delete_all_streams(js: JetStreamContext) -> None:
    """:func:`delete_stream` every stream of the account."""
    for info in await js.streams_info():
        assert info.config.name is not None
        await delete_stream(js, info.config.name)


__all__ = ["DELETE_TIMEOUT_S", "delete_all_streams", "delete_stream"]
