"""The risk-gate as a real process under its own NATS user, with deploy/nats
permissions on."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from libs.bus.client import Bus
from libs.local.servers import NatsServer
from libs.testing.natsauth import config_users
from libs.testing.procs import ServiceProcess
from libs.testing.wait import eventually
from tests.integration import risk_gate_stack
from tests.integration.recording import record_stream
from tests.integration.risk_gate_stack import (
    OPTION,
    gate_live,
    mark,
    option_intent,
    quote_mark,
    submit_intent,
    tradebus,
)

# The risk-gate stack's fixtures, registered in this module.
limits_file = risk_gate_stack.limits_file
stack = risk_gate_stack.stack

NATS_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "nats-server.conf"
NATS_USERS = config_users()  # every user the config declares


def _metric(proc: ServiceProcess, line: str) -> bool:
    return line in proc.metrics()


async def test_gate_works_under_its_own_nats_user(
    tmp_path: Path, database_url: str, limits_file: Path
) -> None:
    """With deploy/nats permissions on: the gate (user risk-gate) starts on a
    store that is not empty (its start-up reads the stream's message at the
    store's last sequence), makes its consumer and issues orders, an option's
    priced by the quote mark user marketdata published; intents come from
    user strategy-runner, the kill switch from user operator (the CLI)."""
    passwords = {u: f"pw{secrets.token_hex(12)}" for u in NATS_USERS}
    server = NatsServer(tmp_path / "nats", config_file=NATS_CONFIG)
    with pytest.MonkeyPatch.context() as mp:
        for user, password in passwords.items():
            mp.setenv(f"NATS_{user.upper().replace('-', '_')}_PASSWORD", password)
        server.start()

    def creds(user: str) -> dict[str, str]:
        return {
            "NATS_URL": server.url,
            "DATABASE_URL": database_url,
            "TRADEBUS_NATS_USER": user,
            "TRADEBUS_NATS_PASSWORD": passwords[user],
        }

    gate: ServiceProcess | None = None
    try:
        async with await Bus.connect(
            server.url, name="test-admin", user="admin", password=passwords["admin"]
        ) as admin:
            await admin.ensure_stream()
            async with await Bus.connect(
                server.url, name="test-md", user="marketdata", password=passwords["marketdata"]
            ) as md:
                await md.publish(mark("AAPL", "100"))
                await md.publish(quote_mark(OPTION, "1.95", "2.05"))  # md.mark.<option>
            assert await record_stream(admin, database_url) == 2
        gate = ServiceProcess(
            ["risk-gate", "run", "--config", str(limits_file)],
            env=creds("risk-gate"),
            log_path=tmp_path / "gate-perm.log",
            name="gate-perm",
        ).start()
        await gate_live(gate)
        log_text = gate.log_text()
        assert "state rebuilt up to store sequence 2 in " in log_text
        assert ": 2 events folded from the start" in log_text
        async with await Bus.connect(
            server.url,
            name="test-strategy",
            user="strategy-runner",
            password=passwords["strategy-runner"],
        ) as strategies:
            await submit_intent(strategies, "good", 5)
            # Priced by the mark the marketdata user published (rebuilt from the store).
            await strategies.publish_many(option_intent("good", 1, "2.05"))
            submitted = 'tradebus_orders_submitted_total{account="acct-a"} 2.0'
            await eventually(lambda: _metric(gate, submitted), timeout=20, message=gate.log_text())
            await tradebus(creds("operator"), "kill-switch", "on", "--reason", "perm test")
            await eventually(lambda: _metric(gate, "tradebus_risk_kill_switch 1.0"), timeout=20)
            await submit_intent(strategies, "good", 5)
            denied = 'tradebus_orders_denied_total{reason="kill_switch"} 1.0'
            await eventually(lambda: _metric(gate, denied), timeout=20, message=gate.log_text())
        assert "Permissions Violation" not in gate.log_text()
        assert gate.terminate() == 0, gate.log_text()[-3000:]
    finally:
        if gate is not None:
            gate.kill()
        server.stop()
