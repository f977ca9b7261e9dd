"""The read commands (events, audit, positions, risk status, replay) name
the store they read, warn when it is empty, and end a user's mistake in one
error line and an exit code, never printing a password."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from libs.bus.client import Bus
from libs.testing.producer import make_trades
from tests.integration.recorded_chains import SECRET, cli, record


def with_password(url: str) -> str:
    """``url`` with a password for its user (the test server trusts local logins)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{SECRET}@{host}"))


def other_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


#: A missing database, named by its URL (password masked).
NO_DATABASE = "no database at postgresql://postgres:***@"
#: A store nobody answers for (port 1), and how every reader names it.
UNREACHABLE = f"postgresql://postgres:{SECRET}@127.0.0.1:1/x"
NOT_REACHED = "cannot reach the event store at postgresql://postgres:***@127.0.0.1:1/x"
NO_EVENT = "00000000-0000-0000-0000-000000000000"


@pytest.mark.parametrize(
    ("args", "url", "code", "says"),
    [
        # (the command, DATABASE_URL: "db" the test's store, else as given, exit, error)
        (("recorder", "replay", "--dry-run"), UNREACHABLE, 1, NOT_REACHED),
        (("positions",), UNREACHABLE, 1, NOT_REACHED),
        (("events",), UNREACHABLE, 1, NOT_REACHED),
        (("audit", NO_EVENT), UNREACHABLE, 1, NOT_REACHED),
        (("events",), "missing", 1, NO_DATABASE),
        (("recorder", "replay", "--dry-run"), "missing", 1, NO_DATABASE),
        (("risk", "status"), "missing", 1, NO_DATABASE),
        (("events", "--subject", "md.>.AAPL"), "db", 2, "not a NATS subject pattern: 'md.>.AAPL'"),
        (
            ("recorder", "replay", "--subject", "md.>.AAPL"),
            "db",
            2,
            "not a NATS subject pattern: 'md.>.AAPL'",
        ),
        (("events", "--subject", "md trade"), "db", 2, "'md trade' (no spaces"),
        (("recorder", "replay", "--subject", "md trade", "--dry-run"), "db", 2, "(no spaces"),
        (("recorder", "replay", "--into", ">"), "db", 2, "--into: not a subject prefix: '>'"),
        (("events",), "notaurl", 2, "DATABASE_URL: must be a URL such as postgresql://"),
        (("positions",), "notaurl", 2, "DATABASE_URL: must be a URL such as postgresql://"),
    ],
)
async def test_user_mistakes_end_in_one_line_and_an_exit_code(
    tmp_path: Path,
    bus: Bus,
    nats_url: str,
    database_url: str,
    args: tuple[str, ...],
    url: str,
    code: int,
    says: str,
) -> None:
    if url == "db":  # a store with events in it, so that a pattern could match
        await record(tmp_path, bus, nats_url, database_url, list(make_trades(5, "mistake")))
        url = database_url
    elif url == "missing":
        url = with_password(other_database(database_url, "no_such_database"))
    proc = await asyncio.to_thread(cli, *args, database_url=url, nats_url=nats_url)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("error: "), proc.stderr
    assert says in errors[0]
    assert SECRET not in proc.stderr + proc.stdout


async def test_read_commands_name_the_store_and_warn_when_it_is_empty(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    shown = with_password(database_url).replace(SECRET, "***")
    empty = "holds no events: is DATABASE_URL the one `tradebus up` printed?"
    for args in (
        ("events",),
        ("audit", "00000000-0000-0000-0000-000000000000"),
        ("positions",),
        ("risk", "status"),
        ("recorder", "replay", "--dry-run"),
    ):
        proc = await asyncio.to_thread(cli, *args, database_url=with_password(database_url))
        assert f"event store: {shown} (DATABASE_URL)" in proc.stderr, (args, proc.stderr)
        assert f"warning: the event store at {shown} {empty}" in proc.stderr, (args, proc.stderr)
        assert SECRET not in proc.stderr + proc.stdout
    await record(tmp_path, bus, nats_url, database_url, list(make_trades(3, "full")))
    proc = await asyncio.to_thread(cli, "risk", "status", "--json", database_url=database_url)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr
    assert json.loads(proc.stdout)["as_of_seq"] == 3
    # With no DATABASE_URL, the default is used, and said to be the default.
    proc = await asyncio.to_thread(cli, "events", database_url=None)
    assert (
        "event store: postgresql://postgres@127.0.0.1:5432/tradebus "
        "(the default: DATABASE_URL is not set)"
    ) in proc.stderr
