"""Service settings: read from the environment, refused by name, secrets kept secret."""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

import pytest
import yaml
from pydantic import Field, SecretStr

from libs.config import (
    DEFAULT_DATABASE_URL,
    DEFAULT_NATS_URL,
    ConfigError,
    ServiceSettings,
    load_settings,
    masked_url,
)
from libs.yamlfile import DuplicateKeyError, load_yaml

SECRET = "hunter2-s3cr3t"  # noqa: S105 (a fake credential, to prove it never leaks)
DB_URL = f"postgresql://trader:{SECRET}@db.internal:5432/tradebus"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TRADEBUS_*, NATS_URL or DATABASE_URL from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("TRADEBUS_") or name in {"NATS_URL", "DATABASE_URL"}:
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = load_settings(ServiceSettings)
    assert settings.nats_url == DEFAULT_NATS_URL
    assert settings.database_url.get_secret_value() == DEFAULT_DATABASE_URL
    assert settings.log_level == "INFO"
    assert settings.metrics_port == 0
    assert settings.instance


@pytest.mark.parametrize(
    ("var", "value", "problem"),
    [
        ("TRADEBUS_METRICS_PORT", "abc", "valid integer"),
        ("TRADEBUS_METRICS_PORT", "70000", "less than or equal to 65535"),
        ("TRADEBUS_METRICS_PORT", "-1", "greater than or equal to 0"),
        ("TRADEBUS_LOG_LEVEL", "LOUD", "pattern"),
        ("TRADEBUS_LOG_JSON", "maybe", "valid boolean"),
        ("TRADEBUS_MAX_EVENT_BYTES", "10", "greater than or equal to 1024"),
        ("TRADEBUS_INSTANCE", "", "at least 1 character"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings(ServiceSettings)
    message = str(info.value)
    assert var in message
    assert problem in message


def test_every_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEBUS_METRICS_PORT", "abc")
    monkeypatch.setenv("TRADEBUS_LOG_LEVEL", "LOUD")
    with pytest.raises(ConfigError) as info:
        load_settings(ServiceSettings)
    assert "TRADEBUS_METRICS_PORT" in str(info.value)
    assert "TRADEBUS_LOG_LEVEL" in str(info.value)


def test_values_are_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEBUS_METRICS_PORT", "9100")
    monkeypatch.setenv("TRADEBUS_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("TRADEBUS_LOG_JSON", "true")
    monkeypatch.setenv("METRICS_PORT", "1")  # unprefixed: not ours
    settings = load_settings(ServiceSettings)
    assert settings.metrics_port == 9100
    assert settings.log_level == "DEBUG"
    assert settings.log_json is True


def test_database_and_nats_urls_are_read_without_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", DB_URL)
    monkeypatch.setenv("NATS_URL", "nats://10.0.0.5:4222")
    settings = load_settings(ServiceSettings)
    assert settings.database_url.get_secret_value() == DB_URL
    assert settings.nats_url == "nats://10.0.0.5:4222"


def test_unprefixed_database_url_wins_over_prefixed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEBUS_DATABASE_URL", "postgresql://other/db")
    assert load_settings(ServiceSettings).database_url.get_secret_value() == "postgresql://other/db"
    monkeypatch.setenv("DATABASE_URL", DB_URL)
    assert load_settings(ServiceSettings).database_url.get_secret_value() == DB_URL


def test_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEBUS_METRICS_PORT", "9100")
    assert load_settings(ServiceSettings, metrics_port=9200).metrics_port == 9200


def test_settings_are_frozen() -> None:
    settings = load_settings(ServiceSettings)
    with pytest.raises(ValueError, match="frozen"):
        settings.metrics_port = 1  # type: ignore[misc]


def test_secrets_stay_out_of_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", DB_URL)
    monkeypatch.setenv("NATS_URL", f"nats://trader:{SECRET}@10.0.0.5:4222")
    monkeypatch.setenv("TRADEBUS_NATS_USER", "trader")
    monkeypatch.setenv("TRADEBUS_NATS_PASSWORD", SECRET)
    settings = load_settings(ServiceSettings)

    assert settings.nats_password is not None
    assert settings.nats_password.get_secret_value() == SECRET
    for text in (repr(settings), str(settings), f"{settings!r}"):
        assert SECRET not in text


def test_secrets_stay_out_of_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", DB_URL)
    monkeypatch.setenv("TRADEBUS_NATS_PASSWORD", SECRET)
    monkeypatch.setenv("TRADEBUS_METRICS_PORT", "abc")
    with pytest.raises(ConfigError) as info:
        load_settings(ServiceSettings)

    assert "TRADEBUS_METRICS_PORT" in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)


class _KeyedSettings(ServiceSettings):
    """A service with a credential of its own, checked for shape."""

    api_key: SecretStr = Field(min_length=32)


def test_a_refused_secret_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    # The secret itself is the bad value: neither the message nor the printed
    # traceback (which would include a chained pydantic error) may show it.
    monkeypatch.setenv("TRADEBUS_API_KEY", SECRET)
    with pytest.raises(ConfigError) as info:
        load_settings(_KeyedSettings)

    assert "TRADEBUS_API_KEY" in str(info.value)
    printed = "".join(traceback.format_exception(info.value))
    assert SECRET not in printed
    assert info.value.__cause__ is None


def test_gateway_rebuild_window_is_refused_below_the_submit_delay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.broker_gateway.config import GatewaySettings

    assert load_settings(GatewaySettings).rebuild_settled_s == 7 * 86_400
    monkeypatch.setenv("TRADEBUS_MAX_SUBMIT_DELAY_S", "120")
    monkeypatch.setenv("TRADEBUS_REBUILD_SETTLED_S", "60")
    with pytest.raises(ConfigError) as info:
        load_settings(GatewaySettings)
    assert "TRADEBUS_REBUILD_SETTLED_S" in str(info.value)
    assert "at least max_submit_delay_s (120)" in str(info.value)
    monkeypatch.setenv("TRADEBUS_REBUILD_SETTLED_S", "120")
    assert load_settings(GatewaySettings).rebuild_settled_s == 120


@pytest.mark.parametrize("value", ["inf", "1e300", "1e12"])
def test_a_gateway_rebuild_window_past_what_nanoseconds_hold_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    from services.broker_gateway.config import GatewaySettings

    # Accepted until this: the rebuild's cut-off, now minus it in nanoseconds,
    # raised OverflowError (inf) or left the 64 bits of the store's BIGINT.
    monkeypatch.setenv("TRADEBUS_REBUILD_SETTLED_S", value)
    with pytest.raises(ConfigError, match="TRADEBUS_REBUILD_SETTLED_S"):
        load_settings(GatewaySettings)
    monkeypatch.setenv("TRADEBUS_REBUILD_SETTLED_S", str(36_525 * 86_400))  # a century
    assert time.time_ns() - int(load_settings(GatewaySettings).rebuild_settled_s * 1e9) > -(2**63)


def test_gateway_positions_check_period_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.broker_gateway.config import GatewaySettings

    assert load_settings(GatewaySettings).position_check_every_s == 300
    for bad in ("-1", "soon", "100000"):
        monkeypatch.setenv("TRADEBUS_POSITION_CHECK_EVERY_S", bad)
        with pytest.raises(ConfigError) as info:
            load_settings(GatewaySettings)
        assert "TRADEBUS_POSITION_CHECK_EVERY_S" in str(info.value)
    monkeypatch.setenv("TRADEBUS_POSITION_CHECK_EVERY_S", "0")
    assert load_settings(GatewaySettings).position_check_every_s == 0


def test_a_polygon_reconnect_backoff_starting_above_its_max_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.marketdata.config import MarketdataSettings

    # Accepted until this: the delays were capped at the max from the first on.
    # The max left at its default (30 s) is checked too.
    monkeypatch.setenv("TRADEBUS_POLYGON_RECONNECT_INITIAL_S", "60")
    with pytest.raises(ConfigError) as info:
        load_settings(MarketdataSettings)
    assert str(info.value) == (
        "invalid configuration: TRADEBUS_POLYGON_RECONNECT_MAX_S: "
        "must be at least TRADEBUS_POLYGON_RECONNECT_INITIAL_S (60)"
    )
    monkeypatch.setenv("TRADEBUS_POLYGON_RECONNECT_MAX_S", "60")
    assert load_settings(MarketdataSettings).polygon_reconnect_max_s == 60


@pytest.mark.parametrize("source", ["polygon", "synthetic", "cache"])
@pytest.mark.parametrize(
    ("symbols", "said"),
    [
        (
            "AAPL, O:SPY241340P00720000",
            "O:SPY241340P00720000 is not an option symbol: its expiry 241340 is not a date",
        ),
        ("AAPL,O:SPY", "O:SPY is not an option symbol: O: and the OCC symbol"),
        ("AAPL,MSFT$", "MSFT$: String should match pattern"),
    ],
)
def test_a_marketdata_symbol_the_contract_refuses_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, source: str, symbols: str, said: str
) -> None:
    from services.marketdata.config import MarketdataSettings

    # Only split and upper-cased until this: the polygon source subscribed to
    # a contract that cannot exist and never said a word; only the synthetic
    # source checked, without saying what was wrong.
    monkeypatch.setenv("TRADEBUS_SOURCE", source)
    monkeypatch.setenv("TRADEBUS_SYMBOLS", symbols)
    with pytest.raises(ConfigError) as info:
        load_settings(MarketdataSettings)
    assert str(info.value).startswith(f"invalid configuration: TRADEBUS_SYMBOLS: {said}")
    # Lower case is upper-cased, as before, and then taken.
    monkeypatch.setenv("TRADEBUS_SYMBOLS", "aapl, o:spy241220p00720000")
    taken = load_settings(MarketdataSettings).symbol_list
    assert taken == ("AAPL", "O:SPY241220P00720000")


def test_runner_rebuild_window_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.strategy_runner.config import RunnerSettings

    assert load_settings(RunnerSettings).rebuild_finished_s == 7 * 86_400
    monkeypatch.setenv("TRADEBUS_REBUILD_FINISHED_S", "0")
    with pytest.raises(ConfigError, match="TRADEBUS_REBUILD_FINISHED_S"):
        load_settings(RunnerSettings)


@pytest.mark.parametrize("value", ["inf", "1e300", "1e12"])
def test_a_runner_rebuild_window_past_what_nanoseconds_hold_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    from services.strategy_runner.config import RunnerSettings

    # Accepted until this: the rebuild's cut-off, now minus it in nanoseconds,
    # raised OverflowError (inf) or left the 64 bits of the store's BIGINT.
    monkeypatch.setenv("TRADEBUS_REBUILD_FINISHED_S", value)
    with pytest.raises(ConfigError, match="TRADEBUS_REBUILD_FINISHED_S"):
        load_settings(RunnerSettings)
    monkeypatch.setenv("TRADEBUS_REBUILD_FINISHED_S", str(36_525 * 86_400))  # a century
    assert time.time_ns() - int(load_settings(RunnerSettings).rebuild_finished_s * 1e9) > -(2**63)


def test_yaml_config_files_refuse_a_key_given_twice() -> None:
    assert load_yaml("a: 1\nb: {c: [1, {d: 2}]}\n") == {"a": 1, "b": {"c": [1, {"d": 2}]}}
    with pytest.raises(DuplicateKeyError) as e:
        load_yaml("s:\n  params:\n    quantity: 100\n    fast: 2\n    quantity: 100000\n")
    assert (e.value.key, e.value.line, e.value.first_line) == ("quantity", 5, 3)
    assert str(e.value).startswith("duplicate key 'quantity' on line 5 (first on line 3)")
    with pytest.raises(DuplicateKeyError, match="duplicate key 'x' on line 1"):
        load_yaml("{x: 1, x: 2}")
    with pytest.raises(DuplicateKeyError, match="duplicate key 1 on line 2"):
        load_yaml("1: a\n1: b\n")
    # Keys equal only as strings are different keys, as in safe_load.
    assert load_yaml("1: a\n'1': b\n") == {1: "a", "1": "b"}
    # Overriding a merged key is not a duplicate.
    assert load_yaml("b: &b {x: 1, y: 1}\nc:\n  <<: *b\n  x: 2\n")["c"] == {"x": 2, "y": 1}
    with pytest.raises(yaml.YAMLError):  # what every loader already catches
        load_yaml("a: 1\na: 1\n")


def test_a_time_of_day_written_unquoted_is_read_as_that_time() -> None:
    import datetime as dt

    from libs.strategy.spec import validate_strategies
    from services.paper_broker.config import PaperConfig
    from services.risk_gate.config import parse_limits

    # YAML 1.1 reads these as base-60 numbers (960, 570, 90.5); other numbers stay numbers.
    assert load_yaml("a: 16:00\nb: 9:30\nc: 1:30.5\nd: 1_000\ne: 0x10\nf: 1.5\n") == {
        "a": "16:00",
        "b": "9:30",
        "c": "1:30.5",
        "d": 1000,
        "e": 16,
        "f": 1.5,
    }
    paper = PaperConfig.model_validate(load_yaml("day_orders_expire_at: 16:00\n"))
    assert paper.day_orders_expire_at == dt.time(16, 0)  # was 00:16 UTC: a crash at a day order
    # Was 00:04 (a day P&L reset at midnight); "4:00" is no time pydantic takes: refused by key.
    with pytest.raises(ValueError, match=r"trading_day\.start: Input should be in a valid time"):
        parse_limits("trading_day: {start: 4:00}\n")
    orb = (
        "strategies:\n"
        "  - {name: orb, kind: opening_range_breakout, symbols: [SPY], account: paper,\n"
        "     params: {session_open: %s, flatten_at: 15:55}}\n"
    )
    # Was a TypeError out of the params' own check (00:15:55 UTC against a naive time).
    params = validate_strategies(load_yaml(orb % "09:30"))[0].params
    assert (params.session_open, params.flatten_at) == (dt.time(9, 30), dt.time(15, 55))  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"params\.session_open: Input should be in a valid time"):
        validate_strategies(load_yaml(orb % "9:30"))


def test_a_time_of_day_with_an_offset_is_refused_naming_the_key(tmp_path: Path) -> None:
    from libs.strategy.spec import StrategyConfigError, validate_strategies
    from services.paper_broker.config import load_paper_config
    from services.risk_gate.config import RiskConfigError, parse_limits

    # Each is read in a time zone of its own; an offset was a TypeError at the
    # paper broker's first day order, one out of the opening-range params' own
    # check (a traceback, no key named), and ignored by the risk-gate.
    paper = tmp_path / "paper.yaml"
    paper.write_text('day_orders_expire_at: "16:00-04:00"\n')
    with pytest.raises(ConfigError, match=r"day_orders_expire_at: .*must be a New York time"):
        load_paper_config(paper)
    with pytest.raises(RiskConfigError, match=r"trading_day\.start: .*without an offset"):
        parse_limits('trading_day: {start: "04:00-05:00"}\n')
    orb = {"name": "orb", "kind": "opening_range_breakout", "symbols": ["SPY"], "account": "a"}
    for key in ("session_open", "flatten_at"):
        with pytest.raises(StrategyConfigError, match=rf"params\.{key}: .*without an offset"):
            validate_strategies({"strategies": [{**orb, "params": {key: "09:30+00:00"}}]})


@pytest.mark.parametrize(
    "value",
    ["notaurl", f"mysql://trader:{SECRET}@db/x", f"trader:{SECRET}@db:5432/tradebus"],
)
def test_a_database_url_that_is_not_postgresql_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", value)
    with pytest.raises(ConfigError) as info:
        load_settings(ServiceSettings)
    message = str(info.value)
    assert message.startswith("invalid configuration: DATABASE_URL: must be a URL such as")
    assert SECRET not in message


@pytest.mark.parametrize(
    "value", [DB_URL, "postgres://db/x", "postgresql+asyncpg://db/x", "postgresql:///tradebus"]
)
def test_postgresql_urls_are_taken(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("DATABASE_URL", value)
    assert load_settings(ServiceSettings).database_url.get_secret_value() == value


def test_masked_url_hides_only_the_password() -> None:
    assert masked_url(DB_URL) == "postgresql://trader:***@db.internal:5432/tradebus"
    assert masked_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert masked_url("postgresql://postgres@h/x") == "postgresql://postgres@h/x"


def test_an_instance_too_long_for_an_event_s_source_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every service publishes with source "<service>/<instance>", which the
    # envelope takes up to 128 characters: the longest instance taken must fit
    # behind every service's name, and one longer is refused at start-up.
    from libs.contract.envelope import WallClock
    from libs.contract.events import KillSwitchEngaged, OperatorActionPayload
    from services.broker_gateway.main import SERVICE as GATEWAY
    from services.recorder.domain.rows import RECORDER_SOURCE
    from services.risk_gate.domain.commands import SOURCE as RISK_GATE
    from services.strategy_runner.runner import SERVICE as RUNNER

    longest = next(n for n in range(200, 0, -1) if _taken(monkeypatch, "x" * n))
    payload = OperatorActionPayload(operator="test", reason="test")
    for service in (RUNNER, GATEWAY, RECORDER_SOURCE, RISK_GATE, "marketdata", "paper-broker"):
        event = KillSwitchEngaged.create(
            payload, source=f"{service}/{'x' * longest}", clock=WallClock()
        )
        assert event.source.startswith(service)

    monkeypatch.setenv("TRADEBUS_INSTANCE", "x" * (longest + 1))
    with pytest.raises(ConfigError) as info:
        load_settings(ServiceSettings)
    assert str(info.value).startswith("invalid configuration: TRADEBUS_INSTANCE: ")


def _taken(monkeypatch: pytest.MonkeyPatch, instance: str) -> bool:
    monkeypatch.setenv("TRADEBUS_INSTANCE", instance)
    try:
        load_settings(ServiceSettings)
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("scheme", ["nats", "tls", "ws", "wss"])
def test_masked_url_hides_a_nats_token(scheme: str) -> None:
    # A NATS URL's user without a password is a token (nats-py logs in with
    # it): as secret as a password, and printed as plainly until this.
    assert masked_url(f"{scheme}://{SECRET}@10.0.0.5:4222") == f"{scheme}://***@10.0.0.5:4222"
    assert masked_url(f"{scheme}://trader:{SECRET}@h:4222") == f"{scheme}://trader:***@h:4222"
    assert masked_url(f"{scheme}://10.0.0.5:4222") == f"{scheme}://10.0.0.5:4222"
