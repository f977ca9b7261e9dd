"""Postgres, Prometheus and Grafana as compose runs them: the read-only role,
every service scraped, dashboards that use only defined metrics and show
the risk and recorder state, and the recorder keeping what a recreated
gateway consumer replays. The parsed files: tests/unit/compose_files.py."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.unit import compose_files
from tests.unit.compose_files import (
    ENV_REFERENCE,
    ORDER_PATH,
    READONLY_ROLE,
    ROOT,
    bind_mounts,
    environment,
)

# The compose files' fixtures, registered in this module.
compose = compose_files.compose
services = compose_files.services

RECORDER_METRICS = (
    "tradebus_recorder_events_recorded_total",
    "tradebus_recorder_batch_seconds",
    "tradebus_recorder_batch_size",
    "tradebus_recorder_consumer_lag",
    "tradebus_dead_letters_total",
    "tradebus_recorder_stream_trimmed_total",
    "tradebus_recorder_stream_first_sequence",
    "tradebus_recorder_trim_failures_total",
    "tradebus_recorder_position_snapshot_sequence",
    "tradebus_recorder_position_snapshot_failures_total",
)
#: What "Grafana boards for risk state" must show: switches, states, money, caps.
RISK_STATE_METRICS = (
    "tradebus_risk_kill_switch",
    "tradebus_risk_live",
    "tradebus_risk_trading_state",
    "tradebus_broker_connected",
    "tradebus_risk_day_pnl",
    "tradebus_risk_daily_loss_used",
    "tradebus_risk_gross_notional_used",
    "tradebus_risk_open_orders",
    "tradebus_orders_denied_total",
    "tradebus_risk_breaker_trips_total",
    "tradebus_strategy_running",
    "tradebus_strategy_faults_total",
)
#: What a trader must see of the broker side on the risk board: positions a
#: flatten left open and orders it left working, rejections, held and
#: handed-back commands, the connection.
RISK_BROKER_METRICS = (
    "tradebus_broker_flatten_refused_positions_total",
    "tradebus_broker_flatten_working_orders_total",
    "tradebus_broker_events_published_total",
    "tradebus_broker_commands_held",
    "tradebus_broker_commands_total",
    "tradebus_broker_connection_changes_total",
    "tradebus_broker_call_errors_total",
    "tradebus_broker_rate_limited_total",
    "tradebus_broker_reconciliations_given_up_total",
    "tradebus_broker_position_differences",
    # The option marks that price contracts which seldom trade.
    "tradebus_marketdata_events_out_total",
    "tradebus_marketdata_remarks_total",
    "tradebus_marketdata_marks_skipped_total",
    "tradebus_marketdata_marks_standing_ended_total",
)


# ------------------------------------------------- Postgres, Prometheus, Grafana


def test_postgres_init_creates_a_read_only_role(services: dict[str, dict[str, Any]]) -> None:
    init_dir = bind_mounts(services["postgres"])["/docker-entrypoint-initdb.d"]
    sql = "\n".join(p.read_text() for p in sorted(init_dir.glob("*.sql")))
    assert f"CREATE ROLE {READONLY_ROLE}" in sql
    grants = re.findall(rf"GRANT\s+(\w+)\s+ON[^;]*\bTO\s+{READONLY_ROLE}", sql)
    assert set(grants) == {"CONNECT", "USAGE", "SELECT"}
    password_var = re.search(r"\\getenv\s+\w+\s+([A-Z_]+)", sql)
    assert password_var
    assert password_var.group(1) in environment(services["postgres"])


def test_prometheus_scrapes_every_service_that_serves_metrics(
    services: dict[str, dict[str, Any]],
) -> None:
    config_path = bind_mounts(services["prometheus"])["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_path.read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    serving = {
        name: env["TRADEBUS_METRICS_PORT"]
        for name, service in services.items()
        if "TRADEBUS_METRICS_PORT" in (env := environment(service))
    }
    assert set(serving) == {"recorder", *ORDER_PATH}
    for name, port in serving.items():
        # Reachable from the Prometheus container, not only on the service's loopback.
        assert environment(services[name]).get("TRADEBUS_METRICS_HOST") == "0.0.0.0", name
        assert f"{name}:{port}" in targets, name


def _defined_metric_names() -> set[str]:
    """Every sample name the services can expose (counters as ``_total``,
    histograms as ``_bucket``/``_sum``/``_count``), whether or not a child
    has been made yet."""
    import importlib

    from prometheus_client import REGISTRY

    for module in sorted(ROOT.glob("services/*/metrics.py")):
        importlib.import_module(f"services.{module.parent.name}.metrics")
    importlib.import_module("libs.observability.metrics")
    names: set[str] = set()
    for family in REGISTRY.collect():
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("_sum", "_count", ""),
        }.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


def _expressions(board: dict[str, Any]) -> str:
    return " ".join(
        target.get("expr", "") for panel in board["panels"] for target in panel["targets"]
    )


def test_dashboards_use_only_metrics_the_services_define(
    services: dict[str, dict[str, Any]],
) -> None:
    dashboards = bind_mounts(services["grafana"])["/etc/grafana/dashboards/tradebus"]
    defined = _defined_metric_names()
    boards = sorted(dashboards.glob("*.json"))
    assert {b.name for b in boards} >= {"recorder.json", "risk.json"}
    for path in boards:
        used = set(re.findall(r"\btradebus_[a-z0-9_]+", _expressions(json.loads(path.read_text()))))
        assert used, path.name
        assert used <= defined, (path.name, sorted(used - defined))


def test_the_risk_dashboard_shows_the_risk_state(services: dict[str, dict[str, Any]]) -> None:
    dashboards = bind_mounts(services["grafana"])["/etc/grafana/dashboards/tradebus"]
    board = json.loads((dashboards / "risk.json").read_text())
    expressions = _expressions(board)
    for metric in (*RISK_STATE_METRICS, *RISK_BROKER_METRICS):
        assert metric in expressions, metric
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    [flatten] = [p for p in board["panels"] if "flatten_refused" in _expressions({"panels": [p]})]
    assert "flatten left open" in flatten["title"]
    assert "by (account)" in flatten["targets"][0]["expr"]
    [working] = [t for t in flatten["targets"] if "flatten_working_orders" in t["expr"]]
    assert "by (account)" in working["expr"]
    [red] = [s for s in flatten["fieldConfig"]["defaults"]["thresholds"]["steps"] if s["value"]]
    assert (red["color"], red["value"]) == ("red", 1)


def test_dashboard_panels_fit_the_grid_without_overlapping(
    services: dict[str, dict[str, Any]],
) -> None:
    dashboards = bind_mounts(services["grafana"])["/etc/grafana/dashboards/tradebus"]
    for path in sorted(dashboards.glob("*.json")):
        cells: dict[tuple[int, int], str] = {}
        for panel in json.loads(path.read_text())["panels"]:
            pos, where = panel["gridPos"], (path.name, panel["title"])
            assert min(pos["w"], pos["h"], pos["x"], pos["y"]) >= 0, where
            assert pos["w"] * pos["h"] > 0, where
            assert pos["x"] + pos["w"] <= 24, where  # Grafana's grid is 24 wide
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    other = cells.setdefault((x, y), panel["title"])
                    assert other == panel["title"], (path.name, other, panel["title"])


def test_grafana_provisions_prometheus_and_the_read_only_database(
    services: dict[str, dict[str, Any]],
) -> None:
    mounts = bind_mounts(services["grafana"])
    provisioning = mounts["/etc/grafana/provisioning"]
    datasources = [
        ds
        for path in sorted((provisioning / "datasources").glob("*.y*ml"))
        for ds in yaml.safe_load(path.read_text())["datasources"]
    ]
    by_type = {ds["type"]: ds for ds in datasources}
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"
    postgres = by_type["grafana-postgresql-datasource"]
    assert postgres["user"] == READONLY_ROLE
    reference = re.fullmatch(r"\$\{([A-Z_]+)\}", postgres["secureJsonData"]["password"])
    assert reference
    assert reference.group(1) in environment(services["grafana"])

    dashboards = [
        yaml.safe_load(path.read_text())
        for path in sorted((provisioning / "dashboards").glob("*.y*ml"))
    ]
    dashboard_dir = dashboards[0]["providers"][0]["options"]["path"]
    assert dashboard_dir in mounts
    uids = {ds["uid"] for ds in datasources}
    for path in mounts[dashboard_dir].glob("*.json"):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] in uids, (path.name, panel["title"])


def test_recorder_dashboard_shows_the_recorder_metrics(
    services: dict[str, dict[str, Any]],
) -> None:
    dashboards = bind_mounts(services["grafana"])["/etc/grafana/dashboards/tradebus"]
    board = json.loads((dashboards / "recorder.json").read_text())
    expressions = " ".join(
        target.get("expr", "") for panel in board["panels"] for target in panel["targets"]
    )
    for metric in RECORDER_METRICS:
        assert metric in expressions, metric
    assert "tradebus_recorder_batch_seconds_bucket" in expressions  # a histogram


def test_the_recorder_keeps_what_a_recreated_gateway_consumer_replays(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check ``tradebus config check`` makes of one environment, made of
    the recorder's and the gateway's own (each service's default where its
    service does not set a variable)."""
    from services.stack.configs import settings_problems

    owners = {
        "TRADEBUS_STREAM_KEEP_S": "recorder",
        "TRADEBUS_TRIM_EVERY_S": "recorder",
        "TRADEBUS_MAX_SUBMIT_DELAY_S": "broker-gateway",
    }
    for name, service in owners.items():
        value = environment(services[service]).get(name)
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            assert not ENV_REFERENCE.match(value), name  # a value, not ${...}: compared here
            monkeypatch.setenv(name, value)
    assert settings_problems(("recorder", "broker-gateway")) == []
