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
from collections.abc import Callable, Iterator, Mapping, Sequence

from libs.local.servers import free_port, port_is_free
from services.stack.preflight import UpError, UpOptions

PREFERRED_NATS_PORT = 14222
PREFERRED_POSTGRES_PORT = 15432
PREFERRED_PAPER_PORT = 8765
#: The first service's /metrics port; the next services take the next ports.
PREFERRED_METRICS_PORT = 19100


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
        #: Each port an option asks for, and that option as the operator gave it.
        self._asked: dict[int, str] = {}
        #: Each port handed out, and what for.
        self._chosen: dict[int, str] = {}
        for option, ports in _asked(options, len(names), environ):
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
        return self._choose(self._options.paper_port, PREFERRED_PAPER_PORT, "paper broker")

    def metrics(self, index: int, name: str) -> int:
        """The /metrics port of the ``index``-th service: ``--metrics-port`` N
        gives the first N, the next N + 1, and so on."""
        first = self._options.metrics_port
        requested = first + index if first else first
        return self._choose(requested, PREFERRED_METRICS_PORT + index, f"{name} metrics")

    def _choose(self, requested: int | None, preferred: int | None, what: str) -> int:
        if requested:
            # Asked for: no other option asks for it (checked at the start),
            # and no default is given it.
            if not port_is_free(requested):
                raise UpError(
                    f"{what} port {requested} is in use ({self._asked[requested]}); "
                    "pick another or pass 0 for any"
                )
            port = requested
        elif requested is None and preferred is not None and self._free(preferred):
            port = preferred
        else:
            port = self._any()
            if requested is None and preferred is not None:
                self._note(f"port {preferred} for {what} is {self._whose(preferred)}; using {port}")
        self._chosen[port] = what
        return port

    def _free(self, port: int) -> bool:
        return port not in self._asked and port not in self._chosen and port_is_free(port)

    def _any(self) -> int:
        # free_port never hands out a port twice, but may one an option asks
        # for, or a preferred port handed out before.
        while True:
            port = free_port()
            if port not in self._asked and port not in self._chosen:
                return port

    def _whose(self, port: int) -> str:
        if port in self._asked:
            return f"the one {self._asked[port]} asks for"
        if port in self._chosen:
            return f"{self._chosen[port]}'s"
        return "taken"


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
