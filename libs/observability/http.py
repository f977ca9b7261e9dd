"""A tiny asyncio HTTP server for ``/metrics`` (Prometheus) and ``/health``.

It serves two read-only paths on loopback by default; anything else is 404.
``/health`` answers 200 with a JSON body while the service's health check
returns ok, 503 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from libs.config import ConfigError

log = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]


class MetricsServer:
    """Serves /metrics and /health until closed."""

    def __init__(
        self,
        host: str,
        port: int,
        health: HealthCheck,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.host = host
        self.port = port
        self.health = health
        self.registry = registry
        self._server: asyncio.Server | None = None

    async def start(self) -> Self:
        """Listen; a port taken (or a host this machine does not have) is a
        :class:`ConfigError` naming the variable: a service without /health
        and /metrics cannot be watched, nor told alive by ``tradebus up`` or
        a healthcheck, so it does not run blind (see ``run_service``)."""
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as e:
            port = e.errno in (errno.EADDRINUSE, errno.EACCES)
            raise ConfigError(
                f"TRADEBUS_METRICS_{'PORT' if port else 'HOST'}: cannot serve /metrics and "
                f"/health on {self.host}:{self.port} ({e.strerror or e}); "
                + ("choose a free port (0: any free one)" if port else "choose an address here")
            ) from e
        self.port = self._server.sockets[0].getsockname()[1]
        # An IPv6 address is bracketed in a URL, else its colons read as the port's.
        host = f"[{self.host}]" if ":" in self.host else self.host
        log.info("metrics on http://%s:%d/metrics, health on /health", host, self.port)
        return self

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def line() -> bytes:
            async with asyncio.timeout(5):
                return await reader.readline()

        try:
            request = await line()
            while (await line()) not in (b"\r\n", b""):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            if path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
            elif path == "/health":
                ok, detail = self.health()
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype = "application/json"
                body = json.dumps({"ok": ok, **detail}, default=str).encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
