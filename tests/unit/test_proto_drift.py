"""``proto/`` is what the models generate, and its schemas accept what we encode."""

from __future__ import annotations

import difflib
import json
import uuid
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from jsonschema import (  # type: ignore[import-untyped]  # no types-jsonschema in dev deps
    Draft202012Validator,
    FormatChecker,
)

from libs.contract import proto
from libs.contract.codec import DecodeError, dead_letter, encode
from libs.contract.envelope import Event
from libs.contract.events import (
    EVENT_TYPES,
    BarClosed,
    BarPayload,
    FillReceived,
    KillSwitchEngaged,
    OperatorActionPayload,
    ReasonCode,
    RiskDecisionMade,
    RiskDecisionPayload,
    SubmitOrder,
    SubmitOrderPayload,
    TradePayload,
    TradePrinted,
)
from libs.contract.subjects import RECORDED_SUBJECTS, REPLAY_PREFIX, STREAM
from tests.unit.contract_samples import T0, FixedClock, all_10_aapl_filled

PROTO = Path(__file__).resolve().parents[2] / "proto"
CLOCK = FixedClock()


# ---------------------------------------------------------------------- drift


def test_proto_matches_the_models() -> None:
    expected = proto.render()

    stale = proto.stale(PROTO, expected)

    if stale:
        first = stale[0]
        on_disk = PROTO / first
        diff = difflib.unified_diff(
            on_disk.read_text(encoding="utf-8").splitlines() if on_disk.exists() else [],
            expected.get(first, "").splitlines(),
            f"proto/{first} (on disk)",
            f"proto/{first} (generated)",
            lineterm="",
            n=1,
        )
        excerpt = "\n".join(list(diff)[:40])
        pytest.fail(
            f"proto/ is stale, run `make proto`. Differing files: "
            f"{', '.join('proto/' + p for p in stale)}\n{excerpt}"
        )


def test_render_is_deterministic() -> None:
    first, second = proto.render(), proto.render()
    assert first == second
    assert list(first) == sorted(first)
    for path, text in first.items():
        assert text.endswith("}\n"), path
        assert text == proto.dumps(json.loads(text)), f"{path} is not in canonical form"


def test_every_event_type_has_a_schema_file() -> None:
    files = proto.render()
    schemas = {p.removeprefix("schemas/").removesuffix(".json") for p in files if "/" in p}
    assert schemas == EVENT_TYPES.keys()
    assert {"events.schema.json", "subjects.json"} <= files.keys()


def test_subjects_file() -> None:
    document = json.loads(proto.render()["subjects.json"])
    assert document["stream"] == STREAM
    assert document["recorded_subjects"] == list(RECORDED_SUBJECTS)
    assert document["replay_prefix"] == REPLAY_PREFIX
    assert document["events"].keys() == EVENT_TYPES.keys()
    for name, entry in document["events"].items():
        assert entry["subject"] == EVENT_TYPES[name].subject_template
        assert set(entry) == {"subject", "domain", "doc"}


# ----------------------------------------------------------------- the CLI


def test_check_flags_missing_changed_and_orphan_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "proto"
    assert proto.main(["--check", "--root", str(root)]) == 1
    assert "schemas/FillReceived.json" in capsys.readouterr().err

    assert proto.main(["--root", str(root)]) == 0
    assert proto.main(["--check", "--root", str(root)]) == 0
    capsys.readouterr()

    (root / "subjects.json").write_text("{}\n", encoding="utf-8")
    (root / "schemas" / "OrderVanished.json").write_text("{}\n", encoding="utf-8")
    assert proto.main(["--check", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "subjects.json" in err
    assert "schemas/OrderVanished.json" in err
    assert "schemas/FillReceived.json" not in err

    assert proto.main(["--root", str(root)]) == 0
    assert not (root / "schemas" / "OrderVanished.json").exists()
    assert proto.stale(root, proto.render()) == []


# ---------------------------------------------------- schemas accept our bytes


@cache
def validator(relative: str) -> Draft202012Validator:
    schema = json.loads(proto.render()[relative])
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


def real_events() -> list[Event]:
    order_id = uuid.UUID("00000000-0000-4000-8000-0000000000aa")
    trade = TradePrinted.create(
        TradePayload(
            symbol="AAPL",
            price=Decimal("187.2300"),
            size=Decimal("1E+2"),
            conditions=(12, 37),
            feed="polygon",
        ),
        source="marketdata",
        clock=CLOCK,
    )
    bar = BarClosed.create(
        BarPayload(
            symbol="SPY",
            interval="1s",
            open=Decimal("501"),
            high=Decimal("501.5"),
            low=Decimal("0.0000001"),
            close=Decimal("501.20"),
            volume=Decimal("0"),
            start_ns=T0,
            end_ns=T0 + 10**9,
            feed="synthetic",
        ),
        source="marketdata",
        clock=CLOCK,
    )
    decision = RiskDecisionMade.create(
        RiskDecisionPayload(
            intent_id=trade.id,
            strategy="mean_rev",
            account="acct-a",
            symbol="AAPL",
            decision="accepted",
            reason=ReasonCode.ACCEPTED,
            order_id=order_id,
        ),
        source="risk-gate",
        clock=CLOCK,
        cause=trade,
    )
    order = SubmitOrder.create(
        SubmitOrderPayload(
            order_id=order_id,
            strategy="mean_rev",
            account="acct-a",
            symbol="AAPL",
            side="buy",
            quantity=Decimal("10"),
            order_type="limit",
            limit_price=Decimal("187.20"),
        ),
        source="risk-gate",
        clock=CLOCK,
        cause=decision,
    )
    fill = all_10_aapl_filled(order_id, "187.19", CLOCK, cause=order)
    kill = KillSwitchEngaged.create(
        OperatorActionPayload(operator="jo", reason="ü — unicode is fine"),
        source="ops",
        clock=CLOCK,
    )
    dead = dead_letter(
        service="event-recorder",
        subject="md.trade.AAPL",
        data=b"\x00\xff not json",
        error=DecodeError("malformed_json", "expected value"),
        clock=CLOCK,
        source="recorder-1",
        stream_seq=9,
    )
    return [trade, bar, decision, order, fill, kill, dead]


@pytest.mark.parametrize("event", real_events(), ids=lambda e: e.type)
def test_schemas_accept_what_we_encode(event: Event) -> None:
    wire = json.loads(encode(event))

    for relative in (f"schemas/{event.type}.json", "events.schema.json"):
        errors = [e.message for e in validator(relative).iter_errors(wire)]
        assert not errors, f"proto/{relative} refuses an encoded {event.type}: {errors}"


def _fill_wire() -> dict[str, Any]:
    fill = next(e for e in real_events() if isinstance(e, FillReceived))
    wire: dict[str, Any] = json.loads(encode(fill))
    return wire


@pytest.mark.parametrize(
    ("case", "mutate"),
    [
        ("price as a JSON number", lambda w: w["payload"].__setitem__("price", 187.19)),
        ("price NaN", lambda w: w["payload"].__setitem__("price", "NaN")),
        ("price with spaces", lambda w: w["payload"].__setitem__("price", " 1.5")),
        ("unknown envelope key", lambda w: w.__setitem__("extra", 1)),
        ("unknown payload key", lambda w: w["payload"].__setitem__("venue", "XNAS")),
        ("missing type", lambda w: w.pop("type")),
        ("wildcard symbol", lambda w: w["payload"].__setitem__("symbol", "BRK*B")),
        ("not a uuid", lambda w: w.__setitem__("id", "fill-1")),
        ("timestamp past int64", lambda w: w.__setitem__("ts_event", 2**63)),
    ],
)
def test_schemas_refuse_what_the_decoder_refuses(case: str, mutate: Any) -> None:
    wire = _fill_wire()
    mutate(wire)
    for relative in ("schemas/FillReceived.json", "events.schema.json"):
        assert not validator(relative).is_valid(wire), f"proto/{relative} accepts {case}"


def test_decimals_are_strings_in_the_schema() -> None:
    payload = json.loads(proto.render()["schemas/FillReceived.json"])["$defs"]["FillPayload"]
    for field in ("price", "quantity", "commission", "leaves_quantity"):
        prop = payload["properties"][field]
        assert prop["type"] == "string", field
        assert "pattern" in prop, field
