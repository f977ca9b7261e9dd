"""docker-compose.yml hangs together: its services, their images,
Dockerfiles, commands, mounts and start order, and the credentials they take
from the environment. The parsed files: tests/unit/compose_files.py."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest

from services.marketdata.config import MarketdataSettings
from tests.unit import compose_files
from tests.unit.compose_files import (
    ENV_REFERENCE,
    ORDER_PATH,
    PYPROJECT,
    PYTHON_BASE,
    ROOT,
    assert_two_starts_share_no_ids,
    bind_mounts,
    dockerfile_of,
    environment,
)

# The compose files' fixtures, registered in this module.
compose = compose_files.compose
services = compose_files.services

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
