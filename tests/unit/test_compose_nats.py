"""deploy/nats/nats-server.conf and the compose services it serves: one user
per service, no literal password, who may publish orders, control,
replays, which consumers and stream API each may use, and the recorder's
trimming. The parsed files: tests/unit/compose_files.py."""

from __future__ import annotations

import re
from typing import Any

import pytest

from libs.bus.client import DUPLICATE_WINDOW_S, inbox_prefix
from libs.config import ServiceSettings
from services.recorder.config import RecorderSettings
from tests.unit import compose_files
from tests.unit.compose_files import (
    ENV_REFERENCE,
    NATS_CONF,
    NATS_USERS,
    SERVICE_USERS,
    bind_mounts,
    environment,
    nats_user_blocks,
    publish_allow,
    publish_deny,
)

# The compose files' fixtures, registered in this module.
compose = compose_files.compose
services = compose_files.services
nats_conf = compose_files.nats_conf

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
