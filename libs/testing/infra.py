"""Where tests get real NATS and Postgres.

In order: ``NATS_URL`` / ``DATABASE_URL`` when set; testcontainers when a
Docker engine answers; otherwise our own ``nats-server`` and PostgreSQL from
the wheels (``libs.local.servers``) on free loopback ports. Tests never use
the machine's system services by accident.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from libs.local.servers import NatsServer, PostgresServer

log = logging.getLogger(__name__)


def docker_available() -> bool:
    """Whether a Docker engine answers on its socket (no engine here: False)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return False
    path = host.removeprefix("unix://")
    if not Path(path).exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(path)
            s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b"OK" in s.recv(256)
        except OSError:
            return False


@dataclass
class Infra:
    nats_url: str
    postgres_admin_url: str  # a database we may CREATE DATABASE from
    nats: NatsServer | None = None
    postgres: PostgresServer | None = None


@contextlib.contextmanager
def provide_nats(workdir: Path) -> Iterator[tuple[str, NatsServer | None]]:
    if url := os.environ.get("NATS_URL"):
        yield url, None
        return
    if docker_available():
        from testcontainers.nats import NatsContainer

        with NatsContainer().with_command("-js") as c:
            yield c.nats_uri(), None
        return
    server = NatsServer(workdir / "nats").start()
    try:
        yield server.url, server
    finally:
        server.stop()


@contextlib.contextmanager
def provide_postgres(workdir: Path) -> Iterator[tuple[str, PostgresServer | None]]:
    if url := os.environ.get("DATABASE_URL"):
        yield url, None
        return
    if docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as c:
            yield c.get_connection_url(), None
        return
    server = PostgresServer(workdir / "pgdata", fsync=False).start()
    try:
        yield server.url(), server
    finally:
        server.stop()
