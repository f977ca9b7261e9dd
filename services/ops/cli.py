"""Operator commands: ``events``, ``audit``, ``db upgrade``."""

from __future__ import annotations

import asyncio
import datetime as dt
import difflib
import json
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from libs.cli import err, fail, reads_store, settings_or_exit
from libs.config import ServiceSettings, masked_url
from libs.tables import out, table
from services.ops.gist import gist

if TYPE_CHECKING:
    from libs.store.queries import Recorded

db_app = typer.Typer(help="The event store's schema.")


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision")] = "head",
) -> None:
    """Create the database if missing and migrate it (alembic)."""
    from libs.store.errors import MigrationFailed, StoreUnavailable, UnknownRevision
    from libs.store.migrate import upgrade

    settings = settings_or_exit(ServiceSettings)
    url = settings.database_url.get_secret_value()
    try:
        upgrade(url, revision)
    except UnknownRevision as e:
        fail(f"REVISION: {e}", 2)
    except MigrationFailed as e:
        fail(f"cannot migrate the event store at {masked_url(url)}: {e}", 1)
    except StoreUnavailable as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from e
    err.print(f"event store migrated to {revision}")


#: Events listed when neither --limit nor --last is given.
DEFAULT_LIMIT = 50
#: As --help shows it (escaped: typer reads help as rich markup, with tags in [ ]).
LIMIT_DEFAULT_SHOWN = escape(f"[default: {DEFAULT_LIMIT}]")
#: Digits of an id in the listings (``tradebus audit`` takes them).
SHORT_ID = 8
#: Ids an ambiguous prefix's error names (the listings show only SHORT_ID digits).
AMBIGUOUS_SHOWN = 5
#: Characters of a subject the listings show whole; tradebus's own subjects
#: are far shorter (``md.quote.O:SPY241220P00720000``). A longer one shows
#: its first SUBJECT_HEAD and last SUBJECT_TAIL characters.
SUBJECT_SHOWN = 120
SUBJECT_HEAD = 80
SUBJECT_TAIL = 40


def shown_subject(subject: str) -> str:
    """``subject`` as the listings print it: whole, or if longer than
    :data:`SUBJECT_SHOWN` characters its start and end around ``…``,
    followed by ``(1,028 bytes, shortened here; --json has it whole)``.

    Whole, a subject of a few KiB (NATS takes up to its 4 KiB control line)
    folds over dozens of a terminal's lines and pushes the rows around it
    apart; its end is kept, as the last tokens (symbol, account) are what
    tell subjects apart. The note is set off by a space, which no NATS
    subject holds, so it cannot be read as part of one; ``…`` alone could
    (a subject may hold any other character) and be taken for the subject,
    as the store's own cut of one on a subject too long for it was."""
    if len(subject) <= SUBJECT_SHOWN:
        return subject
    size = len(subject.encode(errors="replace"))
    return (
        f"{subject[:SUBJECT_HEAD]}…{subject[-SUBJECT_TAIL:]} "
        f"({size:,} bytes, shortened here; --json has it whole)"
    )


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


#: What the broker-gateway publishes about an order (``OrderTracker``): each
#: is caused by the order's command, SubmitOrder or FlattenAccount.
BROKER_FACTS = ("OrderAccepted", "OrderRejected", "OrderCanceled", "FillReceived")
#: How the broker order id of an internal cross's fill starts
#: (``services.broker_gateway.domain.cross._cross_fill``).
CROSS_PREFIX = "cross/"


def absent_causes(chain: Sequence[Recorded]) -> dict[uuid.UUID, uuid.UUID]:
    """The events of ``chain`` whose cause is not in it, each with that
    cause: a link the store does not hold (a message lost before it was
    recorded, or recorded undecodable) or, rarely, an event of another
    chain. Without a word, the event after the gap read as one more root.
    A DuplicateSuppressed row is left out: its cause is the event it
    repeats, of another chain by design, and its gist names it."""
    from libs.store.layout import DUPLICATE

    ids = {r.id for r in chain}
    return {
        r.id: r.causation_id
        for r in chain
        if r.causation_id is not None and r.causation_id not in ids and r.type != DUPLICATE
    }


def absent_cause_note(cause: uuid.UUID, found: tuple[int, str] | None) -> str:
    """What to say under an event whose cause is not in its chain."""
    if found is None:
        return (
            f"(caused by {cause}, which is not recorded: a link of this chain is missing "
            "from the store)"
        )
    seq, type_ = found
    return f"(caused by {type_} {cause} at seq {seq}, of another chain: audit it for its own)"


def uncaused(chain: Sequence[Recorded]) -> str:
    """What to say of a chain whose root is a broker fact with no cause: an
    order no command of tradebus placed (by hand at the broker, another
    program, or a close-all whose answer the gateway could not read), an
    option position the broker settled at expiry (a settlement's fill), or
    the offsetting part of opposite positions the gateway crossed between
    strategies at the expiry (a cross's fill, no broker activity). Its
    audit was that one line, which did not say why there is no more."""
    root = next((r for r in chain if r.id == r.correlation_id), None)
    if root is None or root.type not in BROKER_FACTS or root.causation_id is not None:
        return ""
    payload = root.payload if isinstance(root.payload, dict) else {}
    order = payload.get("broker_order_id") or payload.get("order_id", "?")
    if root.type == "FillReceived" and payload.get("settlement"):
        booked = payload.get("strategy")
        whom = f"booked to {booked}" if booked else "booked to no strategy (none held it)"
        if str(order).startswith(CROSS_PREFIX):
            # Not the broker's: the gateway crossed what strategies held
            # against each other (domain/cross.py, cross_events); its name,
            # cross/<contract>/<strategy>/<leg>, is no activity at the broker.
            contract = str(order).split("/")[1]
            return (
                f"an internal cross at its contract's expiry ({payload['settlement']}, "
                f"{order}): strategies of {payload.get('account', '?')} held opposite "
                f"positions in {contract}, of which the broker held and settled only the "
                "net, so the broker-gateway settled the offsetting part between them: no "
                f"order, no tradebus command, no broker activity; {whom}"
            )
        # No order at all: the broker settled an option at its expiry
        # (services/broker_gateway/domain/settlement.py), booked to its holder.
        return (
            f"the broker settled an option position at its contract's expiry "
            f"({payload['settlement']}, its activity {order}): no order, no tradebus command; "
            + whom
        )
    return (
        f"no tradebus command caused broker order {order}: it was placed at the broker "
        "outside tradebus (by hand or by another program), or by a flatten's close-all "
        "whose answer the broker-gateway could not read; its fills are booked to no strategy"
    )


def register(app: typer.Typer) -> None:
    @app.command("events")
    @reads_store
    def events(
        subject: Annotated[str, typer.Option(help="NATS subject pattern")] = ">",
        after: Annotated[int, typer.Option(min=0, help="Only sequences after this")] = 0,
        limit: Annotated[
            int | None,
            typer.Option(min=1, help=f"At most this many, the first {LIMIT_DEFAULT_SHOWN}"),
        ] = None,
        last: Annotated[
            int | None, typer.Option(min=1, help="The newest this many instead of the first")
        ] = None,
        type_: Annotated[
            str | None,
            typer.Option("--type", help="Only this event type, e.g. FillReceived"),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
    ) -> None:
        """Print recorded events in sequence order: the first (--limit) or the
        newest (--last) that match. The id columns are the ids' first digits,
        which `tradebus audit` takes."""
        from libs.store import queries

        if limit is not None and last is not None:
            fail("--limit and --last: give one (the first N, or the newest N)", 2)

        async def go() -> list[queries.Recorded]:
            conn = await _connect()
            try:
                return await queries.list_events(
                    conn,
                    subject=subject,
                    after=after,
                    limit=last or limit or DEFAULT_LIMIT,
                    type_=type_,
                    newest=last is not None,
                )
            finally:
                await conn.close()

        rows = asyncio.run(go())
        if not rows and type_ is not None:
            _check_type(type_)
        if as_json:
            for r in rows:
                print(json.dumps(r.as_json(), default=str))
            return
        listing = table("seq", "ts_event", "type", "subject", "id", "correlation")
        for r in rows:
            listing.add_row(
                str(r.seq),
                _when(r.ts_event),
                r.type,
                # A subject may hold [ ], which rich would take for markup.
                escape(shown_subject(r.sent_subject)),
                str(r.id)[:SHORT_ID],
                str(r.correlation_id)[:SHORT_ID],
            )
        out.print(listing)

    @app.command("audit")
    @reads_store
    def audit(
        event_id: Annotated[
            str,
            typer.Argument(
                help="Any event id of the chain, or its first digits "
                "(at least four; `tradebus events` shows eight)"
            ),
        ],
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
    ) -> None:
        """Print the causal chain an event belongs to, root to leaves, in order,
        each event with what it says (side, quantity, price, decision, reason)."""
        from libs.store import queries

        async def go() -> tuple[
            uuid.UUID, list[queries.Recorded], dict[uuid.UUID, tuple[int, str]]
        ]:
            conn = await _connect()
            try:
                eid = await _resolve(conn, event_id)
                chain = await queries.causal_chain(conn, eid)
                causes = list(set(absent_causes(chain).values()))
                return eid, chain, await queries.where_recorded(conn, causes)
            finally:
                await conn.close()

        eid, chain, elsewhere = asyncio.run(go())
        if not chain:
            fail(f"no recorded event {eid}", 1)
        if as_json:
            for r in chain:
                print(json.dumps(r.as_json(), default=str))
            return
        absent = absent_causes(chain)
        for r, d in as_tree(chain):
            mark = "*" if r.id == eid else " "
            said = gist(r.type, r.payload)
            when = _when(r.ts_event)
            out.print(
                f"{mark} {r.seq:>8}  {when}  {'  ' * d}{r.type}  "
                + (f"{escape(said)}  " if said else "")
                + f"[dim]{escape(shown_subject(r.sent_subject))} {r.id}[/dim]"
            )
            if r.id in absent:
                cause = absent[r.id]
                note = absent_cause_note(cause, elsewhere.get(cause))
                out.print(f"{' ' * (12 + len(when))}{'  ' * d}  {escape(note)}")
        note = uncaused(chain)
        if note:
            out.print(escape(note))


def known_types() -> list[str]:
    """Every type a row of the store can have: the contract's events and the
    rows the recorder writes itself (undecodable, duplicate, missing)."""
    from libs.contract.events import EVENT_TYPES
    from libs.store.layout import DUPLICATE, MISSING, UNDECODABLE

    return sorted([*EVENT_TYPES, DUPLICATE, MISSING, UNDECODABLE])


def _check_type(given: str) -> None:
    """Exit 2 when ``given`` names no type tradebus knows (the listing of it
    came out empty): with the type meant, or else every known one. Checked
    only once nothing matched, so that rows of a type an older contract had
    are still listed."""
    known = known_types()
    if given in known:
        return
    folded = {"".join(c for c in t.lower() if c.isalnum()): t for t in known}
    key = "".join(c for c in given.lower() if c.isalnum())
    close = [folded[k] for k in difflib.get_close_matches(key, folded, n=3, cutoff=0.75)]
    hint = (
        f"did you mean {' or '.join(repr(t) for t in close)}?"
        if close
        else f"known types: {', '.join(known)}"
    )
    fail(f"--type {given!r}: no event type of that name, and none recorded; {hint}", 2)


async def _resolve(conn: Any, given: str) -> uuid.UUID:
    """The event id ``given`` names: a whole id, or the first digits of exactly
    one recorded id. Exits 2 for what is not an id, 1 for a prefix that
    matches no event or several."""
    from libs.store.queries import IdPrefixError, ids_starting_with

    try:
        return uuid.UUID(given)
    except ValueError:
        pass
    try:
        found = await ids_starting_with(conn, given, limit=AMBIGUOUS_SHOWN + 1)
    except IdPrefixError as e:
        fail(e, 2)
    if not found:
        fail(f"no recorded event id starts with {given!r}", 1)
    if len(found) > 1:
        shown = ", ".join(str(i) for i in found[:AMBIGUOUS_SHOWN])
        more = ", ..." if len(found) > AMBIGUOUS_SHOWN else ""
        fail(
            f"more than one recorded event id starts with {given!r}: give more digits "
            f"({shown}{more})",
            1,
        )
    return found[0]
