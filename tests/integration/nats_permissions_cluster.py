"""The NATS server, not convention, decides who may publish what: the
``cluster`` and ``stream`` fixtures of the test_nats_permissions* files, and
how their tests connect as each user and see what the server refused.

One nats-server runs ``deploy/nats/nats-server.conf`` for each test module
that registers the fixtures, with random passwords handed to it through its
environment (``NatsServer`` starts it with ``subprocess.Popen``, which
inherits ``os.environ``).

How a refusal is observed: the server answers a forbidden publish with
``-ERR 'Permissions Violation ...'`` and drops the message; nats-py hands that
error to ``error_cb`` from its read loop. The server handles one connection's
messages in order, so once a PING sent after the publishes is answered, every
violation for them has reached ``error_cb`` (see :func:`settled`). Stream
contents are checked with ``eventually`` (polling with a deadline), never with
a sleep."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from libs.bus.client import MSG_ID_HEADER, Bus, inbox_prefix
from libs.contract.codec import encode
from libs.contract.envelope import Event, WallClock
from libs.contract.events import BarClosed, BarPayload, KillSwitchEngaged, OperatorActionPayload
from libs.contract.subjects import STREAM, subject_for
from libs.local.servers import NatsServer

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "nats-server.conf"
SERVICES = (
    "recorder",
    "marketdata",
    "strategy-runner",
    "risk-gate",
    "broker-gateway",
    "paper-broker",
)
USERS = ("admin", "operator", *SERVICES)

#: How long a request the server refuses is given before we call it refused.
DENIED_REQUEST_TIMEOUT = 0.5
CLOCK = WallClock()


def password_variable(user: str) -> str:
    """The environment variable nats-server.conf reads ``user``'s password from."""
    return f"NATS_{user.upper().replace('-', '_')}_PASSWORD"


async def eventually(
    check: Callable[[], Awaitable[bool]], *, within: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it is true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    delay = 0.01
    while not await check():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(delay)  # polling interval, not synchronisation
        delay = min(delay * 2, 0.2)


async def settled(nc: NatsClient) -> None:
    """Return once the server has judged everything ``nc`` published so far."""
    # nats-py 2.16's flush() writes its PING straight to the socket, ahead of
    # publishes still in the client's buffer, and only then kicks the flusher
    # task that writes them: one flush() is not an ordering barrier. The buffer
    # is on the wire before the first PONG is read, so a second PING follows it.
    await nc.flush()
    await nc.flush()


@dataclass
class Conn:
    """A raw nats-py connection that records what the server refused."""

    nc: NatsClient
    errors: list[str] = field(default_factory=list)

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream(timeout=DENIED_REQUEST_TIMEOUT)

    def refused(self, subject: str) -> bool:
        """Whether the server reported a publish to ``subject`` as forbidden."""
        wanted = f'permissions violation for publish to "{subject.lower()}"'
        return any(wanted in e for e in self.errors)

    def refusals(self) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e]


@dataclass(frozen=True)
class Cluster:
    url: str
    passwords: dict[str, str]

    @contextlib.asynccontextmanager
    async def conn(self, user: str) -> AsyncIterator[Conn]:
        errors: list[str] = []

        async def on_error(e: Exception) -> None:
            errors.append(str(e).lower())

        nc = await nats.connect(
            self.url,
            user=user,
            password=self.passwords[user],
            inbox_prefix=inbox_prefix(user),
            name=f"test-{user}",
            error_cb=on_error,
            allow_reconnect=False,
            connect_timeout=2,
        )
        try:
            yield Conn(nc, errors)
        finally:
            await nc.close()

    @contextlib.asynccontextmanager
    async def bus(self, user: str) -> AsyncIterator[Bus]:
        bus = await Bus.connect(
            self.url, name=f"test-{user}", user=user, password=self.passwords[user]
        )
        async with bus:
            yield bus


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # nats-server parses a variable's value as config: a letter first and hex
    # after it keeps a random password a plain string (not a date or number).
    passwords = {user: f"pw{secrets.token_hex(16)}" for user in USERS}
    server = NatsServer(tmp_path_factory.mktemp("nats"), config_file=CONFIG)
    try:
        # The passwords exist only in the child's inherited environment.
        with pytest.MonkeyPatch.context() as mp:
            for user, password in passwords.items():
                mp.setenv(password_variable(user), password)
            server.start()
        yield Cluster(server.url, passwords)
    finally:
        server.stop()  # also closes the log file when start() failed


@pytest.fixture(scope="module")
async def stream(cluster: Cluster) -> str:
    """The TRADEBUS stream, declared by the admin user."""
    async with cluster.bus("admin") as bus:
        await bus.ensure_stream()
    return STREAM


async def stored(cluster: Cluster, subject: str) -> int:
    """How many messages the stream holds on exactly ``subject`` (asked as admin)."""
    async with cluster.bus("admin") as bus:
        info = await bus.js.stream_info(STREAM, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


def kill_switch() -> KillSwitchEngaged:
    return KillSwitchEngaged.create(
        OperatorActionPayload(operator="test", reason="drill"), source="test", clock=CLOCK
    )


def bar(symbol: str) -> BarClosed:
    now = CLOCK.now_ns()
    return BarClosed.create(
        BarPayload(
            symbol=symbol,
            interval="1m",
            open=Decimal("1.5"),
            high=Decimal("2.5"),
            low=Decimal("1.25"),
            close=Decimal(2),
            volume=Decimal(100),
            start_ns=now - 60_000_000_000,
            end_ns=now,
            feed="synthetic",
        ),
        source="test",
        clock=CLOCK,
    )


async def publish_core(conn: Conn, event: Event, subject: str | None = None) -> str:
    """Publish ``event`` with plain NATS and wait for the server to have judged it."""
    subject = subject or subject_for(event)
    await conn.nc.publish(subject, encode(event), headers={MSG_ID_HEADER: str(event.id)})
    await settled(conn.nc)
    return subject
