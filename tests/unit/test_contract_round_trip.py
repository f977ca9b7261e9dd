"""The event contract, table by table: every event type round-trips on its
subject, causal chaining, an order command whole, a mark within its quote."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from itertools import pairwise

import pytest

from libs.contract.codec import DecodeError, decode, encode
from libs.contract.envelope import Event
from libs.contract.events import (
    EVENT_TYPES,
    FillReceived,
    MarkUpdated,
    OrderIntentCreated,
    OrderIntentPayload,
    RiskDecisionMade,
    SignalGenerated,
    SubmitOrder,
    SubmitOrderPayload,
)
from libs.contract.subjects import DOMAINS, is_recorded, replay_subject, subject_for, subject_map
from tests.unit.contract_samples import (
    ORDER_ID,
    SAMPLES,
    T0,
    Sample,
    StepClock,
    as_bytes,
    build,
    sample_id,
    sequential_ids,
)

# ------------------------------------------------------------------- coverage


def test_samples_cover_every_event_type() -> None:
    names = [s.cls.__name__ for s in SAMPLES]
    missing = sorted(EVENT_TYPES.keys() - set(names))
    assert not missing, f"add a sample to SAMPLES for: {missing}"
    assert len(names) == len(set(names)), "one sample per event type"
    assert set(names) == EVENT_TYPES.keys()


@pytest.mark.parametrize(("name", "cls"), sorted(EVENT_TYPES.items()))
def test_event_class_shape(name: str, cls: type[Event]) -> None:
    assert cls.__name__ == name
    assert cls.model_fields["type"].default == name
    assert (cls.__doc__ or "").strip(), f"{name} needs a docstring (it documents the subject)"
    assert cls.subject_template.split(".", 1)[0] in DOMAINS
    assert cls.model_config.get("frozen") is True
    assert cls.model_config.get("extra") == "forbid"


# ----------------------------------------------------------------- round trip


@pytest.mark.parametrize("sample", SAMPLES, ids=sample_id)
def test_round_trip(sample: Sample) -> None:
    event = build(sample)
    data = encode(event)

    decoded = decode(data)

    assert type(decoded) is sample.cls
    assert decoded == event
    assert decoded.payload == sample.payload
    assert encode(decoded) == data, "encoding is canonical: decode then encode is identity"


@pytest.mark.parametrize("sample", SAMPLES, ids=sample_id)
def test_subject_for(sample: Sample) -> None:
    event = build(sample)

    subject = subject_for(event)

    assert subject == sample.subject
    assert is_recorded(subject)
    assert not is_recorded(replay_subject(subject))
    assert subject_map()[sample.cls.__name__]["subject"] == sample.cls.subject_template


def test_create_stamps_clock_and_ids() -> None:
    sample = SAMPLES[0]
    event = sample.cls.create(
        sample.payload,
        source="marketdata",
        clock=StepClock(T0),
        ts_event=T0 - 5,
        ids=lambda: ORDER_ID,
    )
    assert event.id == ORDER_ID
    assert event.ts_event == T0 - 5
    assert event.ts_init == T0
    assert event.source == "marketdata"


# ---------------------------------------------------------- causal chaining


def test_correlation_and_causation_chain() -> None:
    by_cls = {s.cls: s for s in SAMPLES}
    clock = StepClock()
    ids = sequential_ids()

    chain: list[Event] = []
    for cls in (SignalGenerated, OrderIntentCreated, RiskDecisionMade, SubmitOrder, FillReceived):
        cause = chain[-1] if chain else None
        chain.append(
            cls.create(by_cls[cls].payload, source="test", clock=clock, cause=cause, ids=ids)
        )
    signal, *_, fill = chain

    assert signal.correlation_id == signal.id
    assert signal.causation_id is None
    for parent, child in pairwise(chain):
        assert child.correlation_id == signal.id
        assert child.causation_id == parent.id
        assert child.ts_init > parent.ts_init
    assert len({e.id for e in chain}) == len(chain)

    # Walk the fill back to its signal with ids alone, after a trip over the wire.
    store = {e.id: decode(encode(e)) for e in chain}
    walked = [store[fill.id]]
    while (parent_id := walked[-1].causation_id) is not None:
        walked.append(store[parent_id])
    assert [type(e) for e in walked] == [
        FillReceived,
        SubmitOrder,
        RiskDecisionMade,
        OrderIntentCreated,
        SignalGenerated,
    ]
    assert walked[-1].id == fill.correlation_id


def test_an_order_command_is_the_intents_order_whole() -> None:
    """SubmitOrderPayload.for_intent (the gate's command, the test helpers',
    the demo's) carries every field of the order asked for; the test helper
    used to drop type, prices and time in force: a limit became a market order."""
    from libs.strategy.testing import accept

    intent = OrderIntentCreated.create(
        OrderIntentPayload(
            strategy="opt",
            account="acct",
            symbol="O:SPY241220P00720000",
            side="sell",
            quantity=Decimal(3),
            order_type="stop_limit",
            limit_price=Decimal("4.9"),
            stop_price=Decimal("5.1"),
            time_in_force="gtc",
            asset_class="option",
        ),
        source="test",
        clock=StepClock(),
    )
    order_id = uuid.uuid4()
    command = SubmitOrderPayload.for_intent(intent, order_id)
    asked = intent.payload.model_dump()
    assert command.model_dump() == {**asked, "order_id": order_id, "intent_id": intent.id}
    _, helper_command = accept(intent)
    assert helper_command.payload.model_dump() == {
        **asked,
        "order_id": helper_command.payload.order_id,
        "intent_id": intent.id,
    }


@pytest.mark.parametrize(
    ("bid", "price", "ask", "ok"),
    [
        ("9.71", "9.76", "9.81", True),
        ("9.71", "9.71", "9.71", True),  # a locked quote: bid = ask = mid
        ("9.81", "9.76", "9.71", False),  # crossed
        ("9.71", "9.90", "9.81", False),  # above the ask
        ("9.71", "9.70", "9.81", False),  # below the bid
        ("0", "0.05", "0.10", False),  # one-sided: no bid
    ],
)
def test_a_mark_lies_within_the_quote_it_came_from(
    bid: str, price: str, ask: str, ok: bool
) -> None:
    """A mark is never made from a crossed or one-sided quote: the contract
    refuses one outside its bid and ask, or with a side at zero."""
    raw = json.loads(encode(build(next(s for s in SAMPLES if s.cls is MarkUpdated))))
    raw["payload"].update(bid_price=bid, price=price, ask_price=ask)
    if ok:
        mark = decode(as_bytes(raw))
        assert isinstance(mark, MarkUpdated)
        assert (mark.payload.basis, mark.payload.price) == ("quote_mid", Decimal(price))
        return
    with pytest.raises(DecodeError) as info:
        decode(as_bytes(raw))
    assert info.value.reason == "invalid_event"
