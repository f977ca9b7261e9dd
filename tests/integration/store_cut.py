"""A TCP proxy to a test's PostgreSQL that closes one connection under its
client once the client has had the answer to its first query: what a reader
meets when the store's connection is lost while it holds it idle (its next
query is asyncpg's ``InterfaceError``, "connection is closed": not a
``PostgresError`` nor an ``OSError``; a connection lost mid-query is a
``ConnectionDoesNotExistError``, a ``PostgresError``)."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit

#: The first byte of a query message (Parse, simple Query); the start-up and
#: SSL request begin with their length, the login replies with ``p``.
QUERY_TYPES = (b"P", b"Q")
#: ReadyForQuery, less its status byte: the server's answer is complete.
READY = b"Z\x00\x00\x00\x05"


class CuttingProxy:
    """Passes connections to ``database_url``'s server; the ``cut``-th one
    (from 1) is closed both ways once its first query has been answered."""

    def __init__(self, database_url: str, cut: int) -> None:
        self.url = database_url
        parts = urlsplit(database_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._cut = cut
        self.connections = 0
        self.cut_done = False
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        parts = urlsplit(self.url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{port}"
        self.url = urlunsplit(
            parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        cutting = self.connections == self._cut
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)

        queried = False

        async def pump(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool
        ) -> None:
            nonlocal queried
            try:
                while data := await src.read(65536):
                    if upstream and data[:1] in QUERY_TYPES:
                        queried = True
                    dst.write(data)
                    await dst.drain()
                    if cutting and queried and not upstream and data[-6:-1] == READY:
                        self.cut_done = True
                        return
            except ConnectionError:
                pass
            finally:
                for w in (writer, up_writer):
                    w.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))
        for w in (writer, up_writer):
            with contextlib.suppress(ConnectionError):
                await w.wait_closed()
