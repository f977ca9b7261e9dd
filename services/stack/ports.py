"""The ports of ``tradebus up``: each server it starts listens on one of its own.

Every port is chosen before the server that takes it listens (the keeper
starts nats-server and PostgreSQL together, the services start once all
their ports are chosen), so a port that looks free may already be another
server's. :class:`Ports` therefore counts as taken every port it handed
out and every port an option asks for, and refuses two options asking for
one port before anything starts.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence

from libs.local.servers import free_port, port_is_free
from services.stack.preflight import UpError, UpOptions

PREFERRED_NATS_PORT = 14222
PREFERRED_POSTGRES_PORT = 15432
PREFERRED_PAPER_PORT = 8765
#: The first service's /metrics port; the next services take the next ports.
PREFERRED_METRICS_PORT = 19100
HIGHEST_PORT = 65535


class Ports:
    """Chooses the port of each server of one ``up`` (see :class:`UpOptions`:
    an option left out takes the preferred port if free, else any; 0 any
    free port; N exactly N).

    Raises :class:`UpError` at once if two options ask for one port, and
    when a port is chosen if the one its option asks for is in use."""

    def __init__(
        self,
        options: UpOptions,
        names: Sequence[str],
        note: Callable[[str], None],
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self._options = options
        self._note = note
        #: Where the services' /metrics listen: their ports must be free there.
        self._metrics_host = environ.get("TRADEBUS_METRICS_HOST") or "127.0.0.1"
        #: Each port an option asks for, and that option as the operator gave it.
        self._asked: dict[int, str] = {}
        #: Each port handed out, and what for.
        self._chosen: dict[int, str] = {}
        #: The paper broker's and each service's /metrics port, once chosen:
        #: asked again, the same port (see :meth:`choose_ahead`).
        self._paper: int | None = None
        self._metrics: dict[int, int] = {}
        for option, ports in _asked(options, len(names), environ):
            if ports.start < 0 or ports.stop - 1 > HIGHEST_PORT:
                raise UpError(
                    f"{option} asks for ports outside 1 to {HIGHEST_PORT}; "
                    "give a lower one (0: any free one)"
                )
            for port in ports:
                other = self._asked.setdefault(port, option)
                if other != option:
                    raise UpError(
                        f"{other} and {option} both ask for port {port}; "
                        "give each a port of its own (0: any free one)"
                    )

    def nats(self) -> int:
        return self._choose(self._options.nats_port, PREFERRED_NATS_PORT, "nats-server")

    def nats_monitor(self) -> int:
        """nats-server's monitoring port: any free one unless asked for."""
        return self._choose(self._options.nats_monitor_port, None, "nats-server monitoring")

    def postgres(self) -> int:
        return self._choose(self._options.postgres_port, PREFERRED_POSTGRES_PORT, "PostgreSQL")

    def paper(self) -> int:
        if self._paper is None:
            self._paper = self._choose(
                self._options.paper_port, PREFERRED_PAPER_PORT, "paper broker"
            )
        return self._paper

    def metrics(self, index: int, name: str) -> int:
        """The /metrics port of the ``index``-th service: ``--metrics-port`` N
        gives the first N, the next N + 1, and so on."""
        if index not in self._metrics:
            first = self._options.metrics_port
            requested = first + index if first else first
            self._metrics[index] = self._choose(
                requested, PREFERRED_METRICS_PORT + index, f"{name} metrics", self._metrics_host
            )
        return self._metrics[index]

    def choose_ahead(self, names: Sequence[str]) -> None:
        """Choose the paper broker's port and the /metrics ports of ``names``
        (in start order) now, before any server starts: one an option asks
        for that is in use is refused while nothing runs, not once nats-server
        and PostgreSQL are up and the store migrated."""
        self.paper()
        for index, name in enumerate(names):
            self.metrics(index, name)

    def _choose(
        self, requested: int | None, preferred: int | None, what: str, host: str = "127.0.0.1"
    ) -> int:
        if requested:
            # Asked for: no other option asks for it (checked at the start),
            # and no default is given it.
            if not _free_on(requested, host):
                where = "" if host == "127.0.0.1" else f" on {host} (TRADEBUS_METRICS_HOST)"
                raise UpError(
                    f"{what} port {requested} is in use{where} ({self._asked[requested]}); "
                    "pick another or pass 0 for any"
                )
            port = requested
        elif requested is None and preferred is not None and self._free(preferred, host):
            port = preferred
        else:
            port = self._any(host)
            if requested is None and preferred is not None:
                self._note(f"port {preferred} for {what} is {self._whose(preferred)}; using {port}")
        self._chosen[port] = what
        return port

    def _free(self, port: int, host: str) -> bool:
        return port not in self._asked and port not in self._chosen and _free_on(port, host)

    def _any(self, host: str) -> int:
        # free_port never hands out a port twice, but may one an option asks
        # for, or a preferred port handed out before, or one in use on host.
        while True:
            port = free_port()
            if self._free(port, host):
                return port

    def _whose(self, port: int) -> str:
        if port in self._asked:
            return f"the one {self._asked[port]} asks for"
        if port in self._chosen:
            return f"{self._chosen[port]}'s"
        return "taken"


def _free_on(port: int, host: str) -> bool:
    """A server could listen on ``port`` at ``host`` now: every address the
    host names binds, as the services' /metrics servers bind them."""
    if host == "127.0.0.1":
        return port_is_free(port)
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UpError(f"TRADEBUS_METRICS_HOST={host} is no address here ({e})") from e
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's servers
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind(address)
            except OSError:
                return False
    return True


def _asked(
    options: UpOptions, services: int, environ: Mapping[str, str]
) -> Iterator[tuple[str, range]]:
    """Each option that asks for ports (as the operator gave it) and those
    ports; the servers' only when up starts them (no NATS_URL, DATABASE_URL)."""

    def given(option: str, port: int | None) -> Iterator[tuple[str, range]]:
        if port:
            yield f"{option} {port}", range(port, port + 1)

    if not environ.get("NATS_URL"):
        yield from given("--nats-port", options.nats_port)
        yield from given("--nats-monitor-port", options.nats_monitor_port)
    if not environ.get("DATABASE_URL"):
        yield from given("--postgres-port", options.postgres_port)
    yield from given("--paper-port", options.paper_port)
    first = options.metrics_port
    if first and services > 1:
        last = first + services - 1
        yield (
            f"--metrics-port {first} ({first} to {last}, a port a service)",
            range(first, last + 1),
        )
    else:
        yield from given("--metrics-port", first)
