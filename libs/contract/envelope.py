"""The one envelope every event on the bus carries.

An event is a frozen pydantic model: the envelope fields below plus a typed
``payload``. ``type`` is the discriminator (the class name), ``id`` doubles as
the JetStream ``Nats-Msg-Id`` so that re-publishing an event is a no-op, and
``correlation_id`` / ``causation_id`` let any event be walked back to the root
of its chain (a fill to the signal that caused it) with ids alone.

Time is integer nanoseconds since the Unix epoch: ``ts_event`` when the thing
happened (exchange time for market data), ``ts_init`` when we created the
event. Domain code never reads the wall clock; it is handed a :class:`Clock`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Protocol, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from libs.contract.options import option_symbol

#: The range of a signed 64-bit integer: PostgreSQL's ``bigint``, and what
#: every reader of the contract's JSON (in any language) holds in a machine
#: integer; the contract takes this one range for all its integers.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def _refuse_float(value: Any) -> Any:
    # A float (a Python float, or a JSON number with a fraction or exponent,
    # which the JSON parser has already rounded to a binary double) has lost
    # digits before we see it: 12345678901234567890.12 would arrive as
    # 12345678901234567000. Decimal strings and integers are exact; take only those.
    if isinstance(value, float):
        raise ValueError("must be a decimal string or an integer, not a float")
    return value


_Exact = BeforeValidator(_refuse_float)

#: Prices, quantities and money: finite decimals, never floats (on the wire, strings),
#: at most 38 digits with 12 after the point (fits NUMERIC(38,12); no Overflow).
Money = Annotated[Decimal, Field(allow_inf_nan=False, max_digits=38, decimal_places=12), _Exact]
Price = Annotated[
    Decimal, Field(allow_inf_nan=False, max_digits=38, decimal_places=12, gt=0), _Exact
]
Quantity = Annotated[
    Decimal, Field(allow_inf_nan=False, max_digits=38, decimal_places=12, gt=0), _Exact
]
NonNegativeQuantity = Annotated[
    Decimal, Field(allow_inf_nan=False, max_digits=38, decimal_places=12, ge=0), _Exact
]
#: The latest time an event may carry: 2200-01-01T00:00:00Z, in ns since the
#: epoch (7.26e18). A signed 64-bit integer (the store's BIGINT columns) ends
#: at 2262-04-11, but the store also computes with times: its market-time
#: indexes (migrations 0013, 0014) add ``CLOCK_SKEW_NS`` to ``ts_init``, and
#: a time within 5 s of ``2**63 - 1`` made that overflow, so the store refused
#: an event every service had already acted on. 2200 leaves 62 years of
#: headroom for such sums and is far past any real clock (a broker's or
#: venue's time beyond it is a bad clock, refused like any malformed value).
NANOS_MAX = 7_258_118_400 * 1_000_000_000

#: Nanoseconds since the Unix epoch, from 0 (1970) to :data:`NANOS_MAX`
#: (2200): every time in the envelope and the payloads.
Nanos = Annotated[int, Field(ge=0, le=NANOS_MAX)]
#: The one text form of an id: lower-case hex, 8-4-4-4-12 with hyphens, as
#: ``str(uuid.UUID)`` writes it (and so ``encode``, for every id it writes).
CANONICAL_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
#: Why a text id is refused (the error every non-canonical form gets).
CANONICAL_ID_MESSAGE = (
    "must be a UUID in canonical form (lower-case hex, 8-4-4-4-12 with hyphens, "
    "as str(uuid) writes it)"
)


class _CanonicalId:
    """A UUID whose text must be canonical, checked inside pydantic-core.

    pydantic's UUID also takes "urn:uuid:...", braces, upper case, no
    hyphens, even surrounding blanks; the services would act on such an id
    while the store keeps the payload as sent, where PostgreSQL's ::uuid (the
    order-path index) refuses "urn:uuid:" and a text comparison would not
    find the id. One form, the one we write, is the only one we read.

    Text goes through a pattern, then the UUID parser, both in pydantic-core:
    a Python validator per id cost every decode about a fifth more (a
    ``SubmitOrder`` carries five ids). A UUID object (an event built in
    Python) is taken as it is.
    """

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        text = core_schema.custom_error_schema(
            core_schema.chain_schema(
                [core_schema.str_schema(pattern=CANONICAL_ID_PATTERN), handler(source)]
            ),
            custom_error_type="uuid_canonical",
            custom_error_message=CANONICAL_ID_MESSAGE,
        )
        return core_schema.json_or_python_schema(
            json_schema=text,
            python_schema=core_schema.union_schema(
                [core_schema.is_instance_schema(uuid.UUID), text],
                mode="left_to_right",
                custom_error_type="uuid_canonical",
                custom_error_message=f"a UUID, or text that is one; text {CANONICAL_ID_MESSAGE}",
            ),
        )

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """In ``proto/``: a string of format uuid with :data:`CANONICAL_ID_PATTERN`."""
        return {"format": "uuid", "pattern": CANONICAL_ID_PATTERN, "type": "string"}


#: An id (an event's, its chain's, an order's, an intent's): a UUID, and on
#: the wire only in its canonical text form (see :data:`CANONICAL_ID_PATTERN`).
Id = Annotated[uuid.UUID, _CanonicalId()]

#: Every integer of the contract but a time (a venue's exchange and condition
#: codes, sequence numbers, counts): at most 64 bits, signed. None needs
#: more, and a bigger one is refused at decode rather than carried into code
#: and stores (or JSON readers) that hold such integers in 64 bits. A decimal
#: (a price, a quantity) may be a JSON integer of any size: the store keeps
#: its digits (libs/store/exact_json.py).
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]

#: A subject token: a symbol, strategy or account name.
Token = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_:\-]+$")]

_SYMBOL = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_:.\-/]+$")
#: An ``O:`` symbol must name an option contract (``options.parse_option``).
_OPTION = AfterValidator(option_symbol)

#: A ticker as the venue writes it: share classes have a dot (``BRK.B``) or a
#: slash, options look like ``O:SPY241220P00720000`` (``O:`` and an OCC symbol
#: that parses: one that does not, ``O:SPY241340P00720000``, is refused). In a
#: subject its dots are written as ``~`` (see ``subjects.symbol_token``), since
#: a dot splits tokens.
Symbol = Annotated[str, _SYMBOL, _OPTION]


def _upper_case(value: str) -> str:
    if value != value.upper():
        raise ValueError(f"must be upper case, as market data names it: {value.upper()}")
    return value


#: A symbol as a config file names it (``strategies.yaml``, ``risk.yaml``): a
#: :data:`Symbol` in upper case (``BRK.B`` included, subscribed to as
#: ``BRK~B`` like every subject of it). Market data names symbols so
#: (marketdata upper-cases its ``TRADEBUS_SYMBOLS``), and a strategy on
#: ``aapl`` would get no bar, a limit on ``aapl`` would never apply to
#: ``AAPL``: refused, not normalised, since a strategy's own code compares
#: symbols as written.
#: Upper case is checked first, so ``O:spy…`` is told to be upper case.
SymbolToken = Annotated[str, _SYMBOL, AfterValidator(_upper_case), _OPTION]


#: The longest ``source`` an event may name (``strategy-runner/<instance>``).
SOURCE_MAX_LENGTH = 128

#: How far an event's own time may run ahead of when its publisher made it
#: and still count as its time (:attr:`Event.market_ns`): clock skew between a
#: venue and our hosts, milliseconds where both keep time.
CLOCK_SKEW_NS = 5_000_000_000


class Clock(Protocol):
    """Where domain code gets the time: wall clock live, simulated in backtests."""

    def now_ns(self) -> int: ...


class WallClock:
    """The real clock, for adapters and services."""

    def now_ns(self) -> int:
        return time.time_ns()


IdFactory = Callable[[], uuid.UUID]


class Caused(Protocol):
    """What a new event takes from its cause: the cause's id and its chain's id."""

    @property
    def id(self) -> uuid.UUID: ...

    @property
    def correlation_id(self) -> uuid.UUID: ...

    @property
    def type(self) -> str: ...


@dataclass(frozen=True, slots=True)
class CauseRef:
    """An event cut down to what its consequences name (see :class:`Caused`).

    For state that outlives the event by far: an order the broker-gateway
    keeps after it is done holds this instead of the whole command, whose
    payload it no longer needs.
    """

    id: uuid.UUID
    correlation_id: uuid.UUID
    type: str

    @classmethod
    def of(cls, cause: Caused) -> CauseRef:
        return cls(cause.id, cause.correlation_id, cause.type)


class Frozen(BaseModel):
    """Base for payloads: immutable, and unknown fields are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Event(Frozen):
    """The envelope. Subclasses fix ``type`` to a literal and type ``payload``."""

    #: The subject template this event type is published on (see ``subjects``).
    subject_template: ClassVar[str] = ""

    id: Id
    type: str
    ts_event: Nanos
    ts_init: Nanos
    source: Annotated[str, Field(min_length=1, max_length=SOURCE_MAX_LENGTH)]
    correlation_id: Id
    causation_id: Id | None = None
    payload: Any

    @classmethod
    def create(
        cls,
        payload: Any,
        *,
        source: str,
        clock: Clock,
        ts_event: int | None = None,
        cause: Caused | None = None,
        event_id: uuid.UUID | None = None,
        ids: IdFactory = uuid.uuid4,
    ) -> Self:
        """Build an event, chaining it to ``cause`` when there is one.

        The root of a chain (no cause) is its own correlation id; every
        descendant inherits the root's correlation id and names its direct
        parent as causation id.
        """
        now = clock.now_ns()
        eid = event_id if event_id is not None else ids()
        type_name = cls.model_fields["type"].default
        return cls(
            id=eid,
            type=type_name,
            ts_event=now if ts_event is None else ts_event,
            ts_init=now,
            source=source,
            correlation_id=cause.correlation_id if cause is not None else eid,
            causation_id=cause.id if cause is not None else None,
            payload=payload,
        )

    @property
    def market_ns(self) -> int:
        """The event's own time (``ts_event``), but no later than
        :data:`CLOCK_SKEW_NS` after its publisher made it (``ts_init``).

        A stamp further ahead is a bad clock (a feed's, a broker's, any
        publisher's). Ordered by its raw ``ts_event``, one print stamped a day
        ahead would be "the newest price" for a day, and would move a trading
        day that far: the risk-gate's trading day (``evolve``), a strategy's
        ledger marks and ``positions_marked`` (migration 0012) take this time.
        ``ts_init`` is in the event, so a fold of the store, a replay and the
        live services reach the same answer."""
        return min(self.ts_event, self.ts_init + CLOCK_SKEW_NS)
