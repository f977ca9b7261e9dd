"""Risk-gate checkpoints: the state folded from the store up to a sequence.

Without them, every start-up folds the whole store through ``evolve``,
market data included. That grows with every trade recorded: a live feed's
trades and quotes are millions of rows a day, and the fold costs about
20 µs per trade. With them, a start-up loads the newest checkpoint that fits
and folds only the events after it.

**Exact by construction.** A checkpoint is only ever written from a rebuild,
i.e. from the fold of the store's events 1..seq. It is never taken from the
live state, which holds the gate's own decisions before the store does. So
loading it and folding seq+1..N gives the state that folding 1..N gives
(``tests/unit/test_risk_checkpoint.py`` checks this at every split point of
mixed timelines). A checkpoint is used only when:

- its ``code_digest`` matches: a hash of the risk-gate's domain code (the
  state, ``evolve``, the limits model), of the event contract, of this
  module and of the installed exchange-calendars version (an option's expiry
  is its expiry day's close, which the calendar's holidays and early closes
  decide). A new release or a calendar upgrade ignores the old checkpoints;
- its ``limits_digest`` matches the limits the gate runs with now (``evolve``
  reads them: the daily-loss levels, the trading day);
- the store still holds, at ``seq``, the event it was folded from.

Otherwise it is ignored: the rebuild folds from the start, as it did
without checkpoints, and writes a new one.

The state is encoded as JSON, field by field (no pickle: loading a
checkpoint runs no code from the database), and zlib-compressed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import asyncpg
import orjson

from libs.contract.events import OrderIntentCreated
from libs.store.checkpoints import code_digest, installed_version, table_exists
from services.risk_gate.domain.limits import RiskLimits
from services.risk_gate.domain.state import (
    Carried,
    DayIds,
    IdSet,
    KillSwitch,
    Mark,
    Obligation,
    Order,
    Position,
    RiskState,
    ScopeState,
    frozen_map,
)

#: Bumped when the encoding below changes (2: an obligation's day; 3: an
#: order's closing flag; 4: the symbols carried into the day unpriced; 5: the
#: ids of the gate's own events made on a day after the state's, DayIds.ahead;
#: 6: the positions carried into the day unpriced, not only their symbols).
FORMAT = 6
#: Checkpoints kept per digest pair; older ones are deleted as new ones land.
KEEP = 3
_HERE = Path(__file__).resolve()
#: The code a fold depends on: the domain (state, evolve, limits), the events
#: it reads, and this codec.
_SOURCES = (
    *sorted((_HERE.parents[1] / "domain").glob("*.py")),
    # The event contract: the union and its families' modules.
    _HERE.parents[3] / "libs" / "contract" / "events.py",
    _HERE.parents[3] / "libs" / "contract" / "events_market.py",
    _HERE.parents[3] / "libs" / "contract" / "events_orders.py",
    _HERE.parents[3] / "libs" / "contract" / "events_risk.py",
    # Event.market_ns and CLOCK_SKEW_NS (marks, the trading day), and the
    # option contracts' expiries (contract_expired, settlements).
    _HERE.parents[3] / "libs" / "contract" / "envelope.py",
    _HERE.parents[3] / "libs" / "contract" / "options.py",
    # The expiry day's close (13:00 on a half day) options.py reads.
    _HERE.parents[3] / "libs" / "contract" / "sessions.py",
    # Its holidays and early closes for XNYS's days from 2000 to 2040.
    _HERE.parents[3] / "libs" / "contract" / "xnys_table.py",
    _HERE,
)


#: The distribution whose answers the fold takes as code for days outside
#: the committed table (xnys_table.py, in the digest above): an expiry day's
#: close (sessions.py). An upgrade that adds a holiday or an early close moves
#: an option's expiry, and so the state folded across it.
CALENDAR_DISTRIBUTION = "exchange-calendars"


def risk_code_digest(calendar_version: str | None) -> str:
    """What a checkpoint was folded by: the risk-gate's domain code, this
    format and the exchange-calendars version (None: not installed, every
    weekday a full session)."""
    return code_digest(FORMAT, _SOURCES, [(CALENDAR_DISTRIBUTION, calendar_version)])


#: The risk-gate's domain code, this format and the installed calendar.
CODE_DIGEST = risk_code_digest(installed_version(CALENDAR_DISTRIBUTION))


def limits_digest(limits: RiskLimits) -> str:
    """A hash of the limits a state was folded under."""
    return hashlib.sha256(limits.model_dump_json().encode()).hexdigest()[:32]


# ------------------------------------------------------------------ codec

Json = Any


def _opt_str(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _opt_decimal(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _position(p: Position) -> Json:
    return [str(p.quantity), str(p.avg_price), str(p.day_basis), str(p.realized_day),
            str(p.realized_total)]  # fmt: skip


def _position_from(v: Json) -> Position:
    return Position(*(Decimal(x) for x in v))


def _order(o: Order) -> Json:
    return [str(o.order_id), None if o.intent_id is None else str(o.intent_id), o.strategy,
            o.account, o.symbol, o.side, str(o.quantity), str(o.remaining),
            _opt_str(o.limit_price), o.ts_ns, o.closing]  # fmt: skip


def _order_from(v: Json) -> Order:
    return Order(
        uuid.UUID(v[0]),
        None if v[1] is None else uuid.UUID(v[1]),
        v[2],
        v[3],
        v[4],
        v[5],
        Decimal(v[6]),
        Decimal(v[7]),
        _opt_decimal(v[8]),
        v[9],
        bool(v[10]),
    )


def _obligation(o: Obligation) -> Json:
    return [o.kind, o.scope, str(o.trigger_id), str(o.correlation_id), o.reason,
            _opt_str(o.limit), _opt_str(o.value), o.operator,
            None if o.day is None else o.day.isoformat()]  # fmt: skip


def _obligation_from(v: Json) -> Obligation:
    limit, value = _opt_decimal(v[5]), _opt_decimal(v[6])
    return Obligation(
        v[0], v[1], uuid.UUID(v[2]), uuid.UUID(v[3]), v[4], limit, value, v[7], _date(v[8])
    )


def _id_set(ids: IdSet) -> Json:
    # Ids are UUIDs (decided intents) or strings (fills seen): tagged.
    return [f"u{k}" if isinstance(k, uuid.UUID) else f"s{k}" for k in ids]


def _id_set_from(v: Json) -> IdSet:
    out = IdSet()
    for tagged in v:
        out = out.add(uuid.UUID(tagged[1:]) if tagged[0] == "u" else tagged[1:])
    return out


def _carried(c: Carried) -> Json:
    return [
        [[list(k), _position(p)] for k, p in c.accounts],
        [[list(k), _position(p)] for k, p in c.strategies],
    ]


def _carried_from(v: Json) -> Carried:
    return Carried(
        tuple(((k[0], k[1]), _position_from(p)) for k, p in v[0]),
        tuple(((k[0], k[1], k[2]), _position_from(p)) for k, p in v[1]),
    )


def _day_ids(d: DayIds) -> Json:
    ahead = [[day.isoformat(), _id_set(ids)] for day, ids in d.ahead]
    return [_id_set(d.today), _id_set(d.yesterday), ahead]


def _day_ids_from(v: Json) -> DayIds:
    ahead = tuple((dt.date.fromisoformat(day), _id_set_from(ids)) for day, ids in v[2])
    return DayIds(_id_set_from(v[0]), _id_set_from(v[1]), ahead)


def _intent(e: OrderIntentCreated) -> Json:
    return e.model_dump(mode="json")


def _intent_from(v: Json) -> OrderIntentCreated:
    return OrderIntentCreated.model_validate(v)


def _pairs(m: Mapping[Any, Any], key: Callable[[Any], Json], value: Callable[[Any], Json]) -> Json:
    return [[key(k), value(v)] for k, v in m.items()]


def _map(v: Json, key: Callable[[Any], Any], value: Callable[[Any], Any]) -> Mapping[Any, Any]:
    return frozen_map((key(k), value(x)) for k, x in v)


def _same(x: Any) -> Any:
    return x


def _tuple(x: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(x)


def _date(v: str | None) -> dt.date | None:
    return None if v is None else dt.date.fromisoformat(v)


def _uuid_str(u: uuid.UUID) -> str:
    return str(u)


#: Every field of RiskState but ``limits`` (the gate's own, given on load):
#: how it is written and read back. A field missing here fails the codec's
#: test, so a new field cannot be forgotten silently.
FIELDS: dict[str, tuple[Callable[[Any], Json], Callable[[Json], Any]]] = {
    "day": (lambda d: None if d is None else d.isoformat(), _date),
    "marks": (
        lambda m: _pairs(m, _same, lambda k: [str(k.price), k.ts_ns]),
        lambda v: _map(v, _same, lambda x: Mark(Decimal(x[0]), x[1])),
    ),
    "unpriced_carried": (
        lambda m: _pairs(m, _same, _carried),
        lambda v: _map(v, _same, _carried_from),
    ),
    "positions": (
        lambda m: _pairs(m, list, _position),
        lambda v: _map(v, _tuple, _position_from),
    ),
    "strategy_positions": (
        lambda m: _pairs(m, list, _position),
        lambda v: _map(v, _tuple, _position_from),
    ),
    "orders": (
        lambda m: _pairs(m, _uuid_str, _order),
        lambda v: _map(v, uuid.UUID, _order_from),
    ),
    "open_quantity": (
        lambda m: _pairs(m, list, lambda s: [str(s[0]), str(s[1])]),
        lambda v: _map(v, _tuple, lambda s: (Decimal(s[0]), Decimal(s[1]))),
    ),
    "closed_orders": (
        lambda m: _pairs(m, _uuid_str, _order),
        lambda v: _map(v, uuid.UUID, _order_from),
    ),
    "rate_windows": (
        lambda m: _pairs(m, _same, list),
        lambda v: _map(v, _same, _tuple),
    ),
    "states": (
        lambda m: _pairs(m, _same, lambda s: [s.state, s.reason, s.since_ns]),
        lambda v: _map(v, _same, lambda s: ScopeState(*s)),
    ),
    "kill_switch": (
        lambda k: [k.engaged, k.operator, k.reason, k.since_ns],
        lambda v: KillSwitch(*v),
    ),
    "connections": (lambda m: _pairs(m, _same, _same), lambda v: _map(v, _same, _same)),
    "loss_tripped": (
        lambda m: _pairs(m, _same, lambda d: d.isoformat()),
        lambda v: _map(v, _same, dt.date.fromisoformat),
    ),
    "loss_reduced": (
        lambda m: _pairs(m, _same, lambda d: d.isoformat()),
        lambda v: _map(v, _same, dt.date.fromisoformat),
    ),
    "obligations": (
        lambda t: [_obligation(o) for o in t],
        lambda v: tuple(_obligation_from(o) for o in v),
    ),
    "pending_intents": (
        lambda m: _pairs(m, _uuid_str, _intent),
        lambda v: _map(v, uuid.UUID, _intent_from),
    ),
    "awaiting_order": (
        lambda m: _pairs(m, _uuid_str, _intent),
        lambda v: _map(v, uuid.UUID, _intent_from),
    ),
    "decided": (_day_ids, _day_ids_from),
    "fills_seen": (_day_ids, _day_ids_from),
    "applied": (_day_ids, _day_ids_from),
}


def encode(state: RiskState) -> bytes:
    """``state`` (all but its limits) as compressed JSON."""
    doc = {name: write(getattr(state, name)) for name, (write, _) in FIELDS.items()}
    return zlib.compress(orjson.dumps({"format": FORMAT, "state": doc}), 1)


def decode(data: bytes, limits: RiskLimits) -> RiskState:
    """The state :func:`encode` wrote, under ``limits``; ValueError if unreadable."""
    try:
        doc = orjson.loads(zlib.decompress(data))
        if doc.get("format") != FORMAT:
            raise ValueError(f"checkpoint format {doc.get('format')!r}, expected {FORMAT}")
        fields = doc["state"]
        values = {name: read(fields[name]) for name, (_, read) in FIELDS.items()}
    except (zlib.error, orjson.JSONDecodeError, KeyError, TypeError, IndexError) as e:
        raise ValueError(f"unreadable checkpoint: {type(e).__name__}: {e}") from e
    return RiskState(limits=limits, **values)


def field_names() -> set[str]:
    """RiskState's fields that a checkpoint must carry (all but ``limits``)."""
    return {f.name for f in dataclasses.fields(RiskState)} - {"limits"}


# ------------------------------------------------------------------ store


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    #: Events folded into it, in all (what a rebuild from the start would count).
    events: int
    state: RiskState


async def latest(
    conn: asyncpg.Connection, *, up_to: int, limits: RiskLimits
) -> tuple[Checkpoint | None, str | None]:
    """The newest usable checkpoint at or below ``up_to`` (call inside the
    rebuild's snapshot transaction), and why a newer one was not used."""
    if not await table_exists(conn, "risk_checkpoints"):
        return None, "no risk_checkpoints table (the store is not migrated: tradebus db upgrade)"
    rows = await conn.fetch(
        "SELECT c.seq, c.events, c.state, e.id = c.event_id AS same_store "
        "FROM risk_checkpoints c LEFT JOIN events e ON e.seq = c.seq "
        "WHERE c.code_digest = $1 AND c.limits_digest = $2 AND c.seq <= $3 "
        "ORDER BY c.seq DESC LIMIT $4",
        CODE_DIGEST,
        limits_digest(limits),
        up_to,
        KEEP,
    )
    skipped: str | None = None
    for row in rows:
        if not row["same_store"]:
            skipped = f"checkpoint at {row['seq']} is of another store (event id differs)"
            continue
        try:
            state = decode(row["state"], limits)
        except ValueError as e:
            skipped = f"checkpoint at {row['seq']}: {e}"
            continue
        return Checkpoint(int(row["seq"]), int(row["events"]), state), skipped
    return None, skipped


async def write(conn: asyncpg.Connection, checkpoint: Checkpoint) -> bool:
    """Store ``checkpoint`` (the fold up to its seq); keep the newest
    :data:`KEEP` of its digests. False if the store has no event at its seq
    (or no checkpoint table)."""
    if not await table_exists(conn, "risk_checkpoints"):
        return False
    limits = limits_digest(checkpoint.state.limits)
    data = encode(checkpoint.state)
    async with conn.transaction():
        done = cast(
            str,
            await conn.execute(
                "INSERT INTO risk_checkpoints "
                "(seq, event_id, code_digest, limits_digest, events, state) "
                "SELECT seq, id, $2, $3, $4, $5 FROM events WHERE seq = $1 "
                "ON CONFLICT DO NOTHING",
                checkpoint.seq,
                CODE_DIGEST,
                limits,
                checkpoint.events,
                data,
            ),
        )
        # Ours beyond the newest KEEP; others (an older release, other
        # limits) once a day old.
        await conn.execute(
            "DELETE FROM risk_checkpoints WHERE (code_digest = $1 AND limits_digest = $2 "
            "AND seq < (SELECT min(seq) FROM (SELECT seq FROM risk_checkpoints "
            "WHERE code_digest = $1 AND limits_digest = $2 ORDER BY seq DESC LIMIT $3) AS kept)) "
            "OR ((code_digest, limits_digest) <> ($1, $2) "
            "AND written_at < now() - interval '1 day')",
            CODE_DIGEST,
            limits,
            KEEP,
        )
    return done.endswith(" 1")
