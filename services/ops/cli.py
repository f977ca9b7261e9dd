"""Operator commands: ``events``, ``audit``, ``db upgrade``."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from libs.cli import err, settings_or_exit
from libs.config import ServiceSettings

if TYPE_CHECKING:
    from libs.store.queries import Recorded

db_app = typer.Typer(help="The event store's schema.")
out = Console()


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision")] = "head",
) -> None:
    """Create the database if missing and migrate it (alembic)."""
    from libs.store.errors import StoreUnavailable
    from libs.store.migrate import upgrade

    settings = settings_or_exit(ServiceSettings)
    try:
        upgrade(settings.database_url.get_secret_value(), revision)
    except StoreUnavailable as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from e
    err.print(f"event store migrated to {revision}")


def _when(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).isoformat(timespec="milliseconds")


async def _connect() -> Any:
    """The event store of ``DATABASE_URL``; one that cannot be reached is a
    :class:`~libs.store.errors.StoreUnavailable` naming it, which the read
    commands' preamble (``libs.cli.reads_store``) prints as one line."""
    from libs.store.connect import connect

    settings = settings_or_exit(ServiceSettings)
    return await connect(settings.database_url.get_secret_value())


def as_tree(chain: Sequence[Recorded]) -> list[tuple[Recorded, int]]:
    """A causal chain as a tree, each event with its depth: every event
    followed by what it caused, each in sequence order (depth first), so that
    the legs of a signal with two intents read one after the other instead of
    interleaved. An event whose cause is not in the chain starts a tree."""
    ids = {r.id for r in chain}
    children: dict[uuid.UUID | None, list[Recorded]] = {}
    for r in chain:  # in sequence order
        parent = r.causation_id if r.causation_id in ids else None
        children.setdefault(parent, []).append(r)
    out: list[tuple[Recorded, int]] = []
    stack = [(r, 0) for r in reversed(children.get(None, []))]
    while stack:
        r, depth = stack.pop()
        out.append((r, depth))
        stack.extend((c, depth + 1) for c in reversed(children.get(r.id, [])))
    return out


def register(app: typer.Typer) -> None:
    @app.command("events")
    def events(
        subject: Annotated[str, typer.Option(help="NATS subject pattern")] = ">",
        after: Annotated[int, typer.Option(min=0, help="Only sequences after this")] = 0,
        limit: Annotated[int, typer.Option(min=1, help="At most this many")] = 50,
        type_: Annotated[str | None, typer.Option("--type", help="Only this event type")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
    ) -> None:
        """Print recorded events in sequence order."""
        from libs.store import queries

        async def go() -> list[queries.Recorded]:
            conn = await _connect()
            try:
                return await queries.list_events(
                    conn,
                    subject=subject,
                    after=after,
                    limit=limit,
                    type_=type_,
                )
            finally:
                await conn.close()

        rows = asyncio.run(go())
        if as_json:
            for r in rows:
                print(json.dumps(r.as_json(), default=str))
            return
        table = Table("seq", "ts_event", "type", "subject", "id", "correlation")
        for r in rows:
            table.add_row(
                str(r.seq),
                _when(r.ts_event),
                r.type,
                r.subject,
                str(r.id)[:8],
                str(r.correlation_id)[:8],
            )
        out.print(table)

    @app.command("audit")
    def audit(
        event_id: Annotated[str, typer.Argument(help="Any event id of the chain")],
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
    ) -> None:
        """Print the causal chain an event belongs to, root to leaves, in order."""
        from libs.store import queries

        try:
            eid = uuid.UUID(event_id)
        except ValueError as e:
            err.print(f"[red]error:[/red] not an event id: {event_id!r}")
            raise typer.Exit(2) from e

        async def go() -> list[queries.Recorded]:
            conn = await _connect()
            try:
                return await queries.causal_chain(conn, eid)
            finally:
                await conn.close()

        chain = asyncio.run(go())
        if not chain:
            err.print(f"[red]error:[/red] no recorded event {eid}")
            raise typer.Exit(1)
        if as_json:
            for r in chain:
                print(json.dumps(r.as_json(), default=str))
            return
        for r, d in as_tree(chain):
            mark = "*" if r.id == eid else " "
            out.print(
                f"{mark} {r.seq:>8}  {_when(r.ts_event)}  {'  ' * d}{r.type}  "
                f"[dim]{r.subject} {r.id}[/dim]"
            )
