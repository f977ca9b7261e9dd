"""docker-compose.yml and the deploy/ files it points at hang together.

No Docker needed: the files are parsed (YAML, JSON, a light regex reading of
the NATS config and the Dockerfile) and checked against each other.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from libs.bus.client import DUPLICATE_WINDOW_S, inbox_prefix
from libs.config import ServiceSettings
from services.marketdata.config import MarketdataSettings
from services.recorder.config import RecorderSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
NATS_CONF = ROOT / "deploy" / "nats" / "nats-server.conf"
PYTHON_BASE = "python:3.12-slim"
SERVICE_USERS = (
    "recorder",
    "marketdata",
    "strategy-runner",
    "risk-gate",
    "broker-gateway",
    "paper-broker",
)
NATS_USERS = {"admin", "operator", *SERVICE_USERS}
#: compose service -> (its command, the NATS user it runs as).
ORDER_PATH = {
    "marketdata": (["marketdata", "run"], "marketdata"),
    "strategy-runner": (["strategy-runner", "run"], "strategy-runner"),
    "risk-gate": (["risk-gate", "run"], "risk-gate"),
    "broker-gateway": (["broker-gateway", "run"], "broker-gateway"),
    "paper-broker": (["paper-broker", "run"], "paper-broker"),
}
PYPROJECT = ROOT / "pyproject.toml"
READONLY_ROLE = "tradebus_readonly"
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
#: The only non-consumer JetStream API a service may call: on TRADEBUS alone.
STREAM_API = {
    "$JS.API.STREAM.INFO.TRADEBUS",
    "$JS.API.STREAM.CREATE.TRADEBUS",
    "$JS.API.DIRECT.GET.TRADEBUS",
    "$JS.API.DIRECT.GET.TRADEBUS.>",
    "$JS.API.STREAM.MSG.GET.TRADEBUS",  # read one stored message (no consumer)
}
#: What the recorder alone may do besides: trim the stream below what it
#: recorded and every consumer's ack floor (services/recorder/adapters/trim.py).
RECORDER_TRIM_API = {
    "$JS.API.CONSUMER.LIST.TRADEBUS",  # every consumer's place, read only
    "$JS.API.STREAM.PURGE.TRADEBUS",
}
#: `${VAR}` or `${VAR:-dev default}`: how every credential enters compose.
ENV_REFERENCE = re.compile(r"^\$\{([A-Z][A-Z0-9_]*)(:-[^}]*)?\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


@pytest.fixture(scope="module")
def nats_conf() -> str:
    return NATS_CONF.read_text()


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path, for every bind mount (``./x:/y[:ro]``)."""
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        source, target, *_ = str(volume).split(":")
        if source.startswith((".", "/")):
            mounts[target] = (ROOT / source).resolve()
    return mounts


def dockerfile_of(service: dict[str, Any]) -> Path:
    build = service["build"]
    context = ROOT / build.get("context", ".")
    return Path(context / build.get("dockerfile", "Dockerfile")).resolve()


def nats_user_blocks(conf: str) -> dict[str, str]:
    """Each user's text in the authorization block, from ``user:`` to the next."""
    starts = list(re.finditer(r"^\s*user:\s*([\w-]+)\s*$", conf, re.MULTILINE))
    ends = [m.start() for m in starts[1:]] + [len(conf)]
    return {m.group(1): conf[m.start() : end] for m, end in zip(starts, ends, strict=True)}


def publish_allow(block: str) -> list[str]:
    match = re.search(r"publish:\s*\{\s*allow:\s*\[(.*?)\]", block, re.DOTALL)
    assert match, block
    return re.findall(r'"([^"]+)"', match.group(1))


def publish_deny(block: str) -> list[str]:
    match = re.search(r"deny:\s*\[(.*?)\]", block, re.DOTALL)
    return re.findall(r'"([^"]+)"', match.group(1)) if match else []


# ------------------------------------------------------------------ services


def test_the_stack_has_its_services(services: dict[str, dict[str, Any]]) -> None:
    assert {"nats", "postgres", "migrate", "recorder", "prometheus", "grafana"} <= set(services)
    assert set(ORDER_PATH) <= set(services)


@pytest.mark.parametrize("service", sorted(ORDER_PATH))
def test_order_path_services_build_their_extra_and_run_as_their_user(
    services: dict[str, dict[str, Any]], service: str
) -> None:
    spec = services[service]
    command, user = ORDER_PATH[service]
    assert spec["build"]["args"]["SERVICE"] == service
    assert dockerfile_of(spec) == dockerfile_of(services["recorder"])
    assert spec["command"][: len(command)] == command
    # The Dockerfile installs ".[${EXTRA}]", EXTRA defaulting to SERVICE.
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    assert service in extras
    env = environment(spec)
    assert env["NATS_URL"] == "nats://nats:4222"
    assert env["TRADEBUS_NATS_USER"] == user
    reference = ENV_REFERENCE.match(env["TRADEBUS_NATS_PASSWORD"])
    assert reference
    assert reference.group(1) == f"NATS_{user.upper().replace('-', '_')}_PASSWORD"
    assert spec["depends_on"]["nats"]["condition"] == "service_healthy"
    assert "healthcheck" in spec


def test_order_path_configs_are_mounted_and_valid(services: dict[str, dict[str, Any]]) -> None:
    from services.broker_gateway.config import load_brokers_config
    from services.paper_broker.config import load_paper_config
    from services.risk_gate.config import load_limits

    for service in ("strategy-runner", "risk-gate", "paper-broker", "broker-gateway"):
        spec = services[service]
        config = spec["command"][spec["command"].index("--config") + 1]
        mounts = bind_mounts(spec)
        host = next(
            (source / config.removeprefix(target).lstrip("/"))
            for target, source in mounts.items()
            if config == target or config.startswith(target + "/")
        )
        assert host.is_file(), (service, config)
        if service == "risk-gate":
            load_limits(host)
        elif service == "paper-broker":
            load_paper_config(host)
        elif service == "broker-gateway":
            brokers = load_brokers_config(host)
            assert all("127.0.0.1" not in a.url for a in brokers.accounts.values())


def test_each_start_of_the_synthetic_feed_has_ids_of_its_own(
    services: dict[str, dict[str, Any]],
) -> None:
    # A restarted marketdata container must not give its (different) prices
    # the last start's event ids: JetStream and the recorder would drop them.
    spec = services["marketdata"]
    assert spec["command"][-2:] == ["--source", "synthetic"]
    env = environment(spec)
    reference = ENV_REFERENCE.match(env["TRADEBUS_SYNTHETIC_RUN"])
    assert reference, "an operator may still pin the run from the environment"
    run = (reference.group(2) or ":-").removeprefix(":-")
    settings = MarketdataSettings(
        source="synthetic",
        symbols=env["TRADEBUS_SYMBOLS"],
        channels=env["TRADEBUS_CHANNELS"],
        synthetic_run=run,
    )
    assert_two_starts_share_no_ids(settings)


def assert_two_starts_share_no_ids(settings: MarketdataSettings) -> None:
    """Two starts of the synthetic source under ``settings`` give the same
    tick different event ids (none shared)."""
    from libs.contract.envelope import WallClock
    from services.marketdata.adapters.synthetic import SyntheticSource
    from services.marketdata.main import build_source

    first_ids = []
    for _start in range(2):
        source = build_source(settings, WallClock())
        assert isinstance(source, SyntheticSource)
        first_ids.append([e.id for e in source.market.tick(1_717_000_000_000_000_000)])
    assert first_ids[0]
    assert not set(first_ids[0]) & set(first_ids[1])


def test_paper_broker_and_gateway_share_the_paper_keys(
    services: dict[str, dict[str, Any]],
) -> None:
    keys = ("TRADEBUS_PAPER_KEY_ID", "TRADEBUS_PAPER_SECRET_KEY")
    broker, gateway = environment(services["paper-broker"]), environment(services["broker-gateway"])
    for key in keys:
        assert ENV_REFERENCE.match(broker[key]), key
        assert broker[key] == gateway[key]


@pytest.mark.parametrize(
    ("service", "image"),
    [
        ("nats", "nats:"),
        ("postgres", "postgres:"),
        ("prometheus", "prom/prometheus:"),
        ("grafana", "grafana/grafana:"),
    ],
)
def test_infrastructure_uses_official_pinned_images(
    services: dict[str, dict[str, Any]], service: str, image: str
) -> None:
    assert services[service]["image"].startswith(image)
    assert not services[service]["image"].endswith(":latest")
    assert "build" not in services[service]


@pytest.mark.parametrize(
    ("service", "command"),
    [("migrate", ["db", "upgrade"]), ("recorder", ["recorder", "run"])],
)
def test_tradebus_services_are_built_and_run_their_command(
    services: dict[str, dict[str, Any]], service: str, command: list[str]
) -> None:
    spec = services[service]
    assert spec["build"]["args"]["SERVICE"] == "recorder"
    assert spec["command"] == command


def test_every_dockerfile_exists_and_builds_on_python_slim(
    services: dict[str, dict[str, Any]],
) -> None:
    built = [spec for spec in services.values() if "build" in spec]
    assert built
    for spec in built:
        dockerfile = dockerfile_of(spec)
        assert dockerfile.is_file(), dockerfile
        bases = re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), re.MULTILINE)
        assert bases
        assert set(bases) == {PYTHON_BASE}, bases


def test_the_dockerfile_installs_only_the_package_as_non_root(
    services: dict[str, dict[str, Any]],
) -> None:
    text = dockerfile_of(services["recorder"]).read_text()
    assert re.search(r"^ARG SERVICE\b", text, re.MULTILINE)
    assert re.search(
        r"""pip install -c constraints\.txt "\.\[\$\{EXTRA\}\]"$""", text, re.MULTILINE
    )
    # The build backend is pinned as well: PIP_CONSTRAINT reaches pip's
    # isolated build environment, -c does not.
    assert re.search(r"PIP_CONSTRAINT=/src/constraints\.txt\b", text)
    assert re.search(r"^WORKDIR /src$", text, re.MULTILINE)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = dict(
        line.split("==")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    for requirement in pyproject["build-system"]["requires"]:
        name = re.split(r"[<>=!~ \[]", requirement)[0]
        assert name in pins, f"the build backend {name} is not pinned in constraints.txt"
    copied = {
        source
        for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.MULTILINE)
        for source in line.split()[:-1]
    }
    assert copied == {"pyproject.toml", "constraints.txt", "README.md", "libs/", "services/"}
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_migrations_wait_for_a_healthy_postgres(services: dict[str, dict[str, Any]]) -> None:
    assert "healthcheck" in services["postgres"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"].get("restart", "no") == "no"


def test_recorder_starts_after_nats_and_successful_migrations(
    services: dict[str, dict[str, Any]],
) -> None:
    depends = services["recorder"]["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["nats"]["condition"] == "service_healthy"
    assert "healthcheck" in services["nats"]


def test_every_bind_mount_exists(services: dict[str, dict[str, Any]]) -> None:
    for name, spec in services.items():
        for target, source in bind_mounts(spec).items():
            assert source.exists(), (name, target, source)


# ---------------------------------------------------------------------- NATS


def test_nats_runs_the_mounted_config_with_jetstream(services: dict[str, dict[str, Any]]) -> None:
    nats = services["nats"]
    mounts = bind_mounts(nats)
    command = [str(arg) for arg in nats["command"]]
    config_flag = next(i for i, arg in enumerate(command) if arg in {"-c", "--config"})
    target = command[config_flag + 1]
    assert mounts[target] == NATS_CONF.resolve()
    assert {"-js", "--jetstream"} & set(command)
    assert {"-sd", "--store_dir"} & set(command)


def test_nats_config_has_one_user_per_service(nats_conf: str) -> None:
    assert set(nats_user_blocks(nats_conf)) == NATS_USERS
    assert re.search(r"^jetstream\s*\{", nats_conf, re.MULTILINE)
    assert re.search(r"^http(_port)?:\s*\S+", nats_conf, re.MULTILINE)


def test_nats_config_holds_no_literal_password(nats_conf: str) -> None:
    values = re.findall(r"^\s*password:\s*(.+?)\s*$", nats_conf, re.MULTILINE)
    assert len(values) == len(NATS_USERS)
    for value in values:
        # An unquoted $NAME is a variable nats-server resolves from its env.
        assert re.fullmatch(r"\$[A-Z][A-Z0-9_]*", value), value


def test_every_nats_password_variable_is_documented_and_set_by_compose(
    nats_conf: str, services: dict[str, dict[str, Any]]
) -> None:
    variables = set(re.findall(r"^\s*password:\s*\$([A-Z0-9_]+)", nats_conf, re.MULTILINE))
    header = nats_conf.split("authorization", 1)[0]
    env = environment(services["nats"])
    for variable in variables:
        assert f"#   {variable}" in header, variable
        reference = ENV_REFERENCE.match(env[variable])
        assert reference, (variable, env[variable])
        assert reference.group(1) == variable


def test_only_risk_gate_publishes_orders_and_only_operator_control(nats_conf: str) -> None:
    blocks = nats_user_blocks(nats_conf)
    for user, block in blocks.items():
        allow = publish_allow(block)
        deny = publish_deny(block)
        assert ("orders.cmd.>" in allow) == (user == "risk-gate"), user
        assert ("control.>" in allow) == (user == "operator"), user
        if user != "risk-gate":
            assert "orders.cmd.>" in deny, user
        if user != "operator":
            assert "control.>" in deny, user
        assert ">" not in allow, user
        # Its own replies only (libs.bus.client.inbox_prefix), no one else's;
        # the operator may also watch replays.
        own_inbox = re.escape(f'"{inbox_prefix(user)}.>"')
        extra = ', "replay\\.>"' if user == "operator" else ""
        assert re.search(rf"subscribe:\s*\{{\s*allow:\s*\[{own_inbox}{extra}\]\s*\}}", block), user


def test_replays_are_published_by_the_recorder_and_the_operator_only(nats_conf: str) -> None:
    # `tradebus <service> replay` publishes plain NATS under replay.>; the env
    # file `tradebus up` writes signs a terminal in as the operator.
    for user, block in nats_user_blocks(nats_conf).items():
        assert ("replay.>" in publish_allow(block)) == (user in {"recorder", "operator"}), user


@pytest.mark.parametrize("user", SERVICE_USERS)
def test_services_reach_only_their_own_consumer(nats_conf: str, user: str) -> None:
    durable = "event-recorder" if user == "recorder" else user
    for subject in publish_allow(nats_user_blocks(nats_conf)[user]):
        if user == "recorder" and subject in RECORDER_TRIM_API:
            continue
        if subject.startswith(("$JS.API.CONSUMER.", "$JS.ACK.")):
            assert re.search(rf"\.TRADEBUS\.{re.escape(durable)}(\.>)?$", subject), subject
        elif subject.startswith("$JS."):
            assert subject in STREAM_API, subject


def test_only_the_recorder_may_trim_the_stream(nats_conf: str) -> None:
    # Without these the recorder's trims fail and the stream grows until the
    # file store is full (then every publish is refused, orders included).
    for user, block in nats_user_blocks(nats_conf).items():
        granted = RECORDER_TRIM_API & set(publish_allow(block))
        if user == "recorder":
            assert granted == RECORDER_TRIM_API
        elif user != "admin":  # the admin has the whole API ("$JS.API.>")
            assert not granted, user


def test_the_recorder_trims_the_stream_in_compose(services: dict[str, dict[str, Any]]) -> None:
    # The NATS file store is capped (max_file_store) and the stream has no
    # limits: trimming must be on, and keep at least the duplicate window.
    settings = RecorderSettings.model_validate(
        recorder_settings_env(environment(services["recorder"]))
    )
    assert settings.trim_every_s > 0
    assert settings.stream_keep_s >= DUPLICATE_WINDOW_S


def recorder_settings_env(env: dict[str, str]) -> dict[str, str]:
    """The recorder's own TRADEBUS_* settings from its compose environment."""
    own = set(RecorderSettings.model_fields) - set(ServiceSettings.model_fields)
    prefix = "TRADEBUS_"
    return {
        key[len(prefix) :].lower(): value
        for key, value in env.items()
        if key.startswith(prefix) and key[len(prefix) :].lower() in own
    }


# -------------------------------------------------------------- credentials


def test_credentials_in_compose_come_from_the_environment(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, spec in services.items():
        for key, value in environment(spec).items():
            if "PASSWORD" in key:
                assert ENV_REFERENCE.match(value), (name, key, value)
            if key == "DATABASE_URL":
                password = value.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
                assert ENV_REFERENCE.match(password), (name, value)


def test_services_use_their_own_nats_user(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["recorder"])
    assert env["TRADEBUS_NATS_USER"] == "recorder"
    reference = ENV_REFERENCE.match(env["TRADEBUS_NATS_PASSWORD"])
    assert reference
    assert reference.group(1) == "NATS_RECORDER_PASSWORD"


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
