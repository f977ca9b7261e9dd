"""``tradebus up`` end to end.

The stack test runs ``python -m services.cli up`` as a real process with
NATS_URL / DATABASE_URL unset, so it starts its own nats-server (with
deploy/nats/nats-server.conf: permissions on) and PostgreSQL on ports the
test chose, and the whole order path as processes: synthetic marketdata,
strategy-runner, risk-gate, broker-gateway, paper broker, recorder. The
strategies file is the test's own (a 2/3 moving-average crossover on
one-second bars), so that the first fill comes within seconds. Also: a
service refusing its settings, and up on a NATS of the environment."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import stat
import time
from pathlib import Path

from libs.local.servers import NatsServer
from libs.testing.wait import eventually
from services.risk_gate.config import load_limits
from services.stack.wiring import CONFIG_DIR
from tests.integration.stack_up_runs import (
    CHAIN,
    CHAIN_SOURCES,
    FAST_STRATEGIES,
    SERVICES,
    alive,
    cli,
    fetch,
    get_json,
    kill_leftovers,
    nats_passwords,
    sourced,
    start_up,
    stop,
)


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_up_runs_the_order_path_and_stops_cleanly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    strategies = tmp_path / "strategies.yaml"
    strategies.write_text(FAST_STRATEGIES)
    up = await start_up(tmp_path, home, "first", "--strategies", str(strategies))
    try:
        fill_rows = await eventually(
            lambda: fetch(
                up,
                "SELECT id FROM events WHERE type = 'FillReceived' "
                "AND source LIKE 'broker-gateway/%' ORDER BY seq LIMIT 1",
            ),
            timeout=240,
            interval=0.5,
            message=lambda: f"a FillReceived from the gateway in the store\n{up.tail()}",
        )
        fill_id = str(fill_rows[0]["id"])
        await eventually(lambda: "tradebus is up" in up.output(), timeout=120, message="banner")

        # The fill walks back to the strategy's signal, every link from the
        # service that owns it: the real path, not a stand-in.
        code, out = await cli(up, "audit", "--json", fill_id)
        assert code == 0, out
        chain = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert [e["type"] for e in chain] == CHAIN
        assert [e["source"].split("/")[0] for e in chain] == [CHAIN_SOURCES[t] for t in CHAIN]
        assert chain[0]["causation_id"] is None
        for parent, child in itertools.pairwise(chain[:5]):  # signal ... ack: one line
            assert child["causation_id"] == parent["id"]
        # The fill is the order's (the command's or its ack's) child.
        assert chain[5]["causation_id"] in {chain[3]["id"], chain[4]["id"]}
        assert {e["correlation_id"] for e in chain} == {chain[0]["id"]}
        assert chain[2]["payload"]["decision"] == "accepted"
        code, out = await cli(up, "audit", fill_id)
        assert code == 0, out
        assert fill_id in out

        # Every service answers /health; the servers are up's own children.
        state = up.state()
        assert state is not None
        assert set(state["services"]) == SERVICES
        for url in state["services"].values():
            health = await asyncio.to_thread(get_json, url)
            assert health["ok"] is True
        servers = state["servers"]
        assert set(servers) == {"nats", "postgres"}

        # Permissions are on: the passwords are the home's, private, never printed.
        passwords = nats_passwords(up)
        assert private(home / "credentials.json")
        assert private(home / "env")
        assert passwords["operator"] in (home / "env").read_text()
        # Sourced as the banner says, the env file is all `risk status` needs:
        # the stack's URLs and the limits its risk-gate runs with (no --config).
        code, out, errors = await sourced(home / "env", "risk", "status", "--json")
        assert code == 0, errors
        status = json.loads(out)
        limits = load_limits(CONFIG_DIR / "risk.yaml")
        assert set(status["strategies"]) == set(limits.strategies)
        assert set(status["accounts"]) == set(limits.accounts)
        output = up.output()
        for password in passwords.values():
            assert password not in output
        code, out = await cli(up, "kill-switch", "on", "--reason", "test", nats_user="risk-gate")
        assert code == 1, out  # only the operator may publish control.>

        # The kill switch, as the operator: from its sequence on, no order
        # command but those decided before it (in flight), and intents denied.
        code, out = await cli(
            up,
            "kill-switch",
            "on",
            "--reason",
            "test",
            "--operator",
            "tester",
            nats_user="operator",
        )
        assert code == 0, out
        engaged = await eventually(
            lambda: fetch(up, "SELECT seq FROM events WHERE type = 'KillSwitchEngaged'"),
            timeout=60,
            message="KillSwitchEngaged in the store",
        )
        ks_seq = engaged[0]["seq"]
        await eventually(
            lambda: fetch(
                up,
                "SELECT 1 FROM events WHERE type = 'RiskDecisionMade' AND seq > $1 "
                "AND payload->>'reason' = 'kill_switch'",
                ks_seq,
            ),
            timeout=90,
            interval=0.5,
            message="an intent denied for the kill switch",
        )
        after = await fetch(
            up,
            "SELECT o.seq, d.seq AS decided_at, d.payload->>'decision' AS decision "
            "FROM events o LEFT JOIN events d ON d.id = o.causation_id "
            "WHERE o.type = 'SubmitOrder' AND o.seq > $1",
            ks_seq,
        )
        assert after is not None
        late = [dict(r) for r in after if r["decided_at"] is None or r["decided_at"] > ks_seq]
        assert not late, late
        accepted_after = await fetch(
            up,
            "SELECT seq FROM events WHERE type = 'RiskDecisionMade' AND seq > $1 "
            "AND payload->>'decision' = 'accepted'",
            ks_seq,
        )
        assert accepted_after == []

        code, tree = await stop(up)
        output = up.output()
        assert code == 0, up.tail()
        assert set(servers.values()) <= tree
        await eventually(
            lambda: not [p for p in tree if alive(p)], timeout=30, message="children gone"
        )
        assert up.state() is None
        for expected in (
            "tradebus is up",
            up.nats_url,
            up.database_url,
            "/metrics",
            "/health",
            "events --limit 20",
            "audit <fill id>",
            "tradebus positions",
            "risk status",
            "kill-switch on --reason",
            f"psql '{up.database_url}'",
        ):
            assert expected in output, f"{expected!r} not in output:\n{output[-4000:]}"
        for name in SERVICES:
            assert any(
                line.startswith(f"{name} ") and " | " in line for line in output.splitlines()
            ), name
            assert f"{name} stopped" in output
        assert "exited unexpectedly" not in output
        assert output.index("marketdata stopped") < output.index("strategy-runner stopped")
        assert output.index("risk-gate stopped") < output.index("recorder stopped")
        assert output.index("recorder stopped") < output.index("postgres stopped")
    finally:
        await kill_leftovers(up)

    # Again on the same home with only two services: same credentials, and
    # the timeline continues.
    first_run_over = time.time_ns()
    again = await start_up(tmp_path, home, "second", "--only", "recorder,marketdata")
    try:
        await eventually(
            lambda: fetch(again, "SELECT 1 FROM events WHERE ts_init > $1 LIMIT 1", first_run_over),
            timeout=120,
            interval=0.5,
            message="events of the second run",
        )
        assert nats_passwords(again) == passwords
        rows = await fetch(
            again,
            "SELECT count(*) AS n, max(seq) AS last, "
            "count(*) FILTER (WHERE id::text = $1) AS first_fill FROM events",
            fill_id,
        )
        assert rows is not None
        assert rows[0]["first_fill"] == 1
        assert rows[0]["n"] == rows[0]["last"]  # one gapless timeline across both runs
        state = again.state()
        assert state is not None
        assert set(state["services"]) == {"recorder", "marketdata"}
        code, _ = await stop(again)
        assert code == 0, again.tail()
    finally:
        await kill_leftovers(again)


async def test_up_stops_when_a_service_refuses_its_settings(tmp_path: Path) -> None:
    """A bad TRADEBUS_* value makes the risk-gate exit 2; ``up`` stops the whole
    stack and exits 1 instead of restarting it for ever (the rest trading on
    without a gate)."""
    up = await start_up(
        tmp_path,
        tmp_path / "home",
        "refused",
        "--only",
        "recorder,risk-gate",
        env={"TRADEBUS_FETCH_BATCH": "0"},
    )
    try:
        code = await asyncio.wait_for(up.proc.wait(), timeout=120)
    finally:
        await kill_leftovers(up)
    text = up.output()
    assert code == 1, text[-4000:]
    assert "TRADEBUS_FETCH_BATCH" in text
    assert "risk-gate exited with exit code 2: it refused its configuration" in text
    assert "restarting in" not in text
    # The recorder is stopped with the rest: cleanly, or, when the gate's
    # refusal came while the recorder was still importing (before it handles
    # SIGTERM), by the signal itself. Which one is a race of start-up times.
    assert re.search(r"recorder stopped \((exit code 0|killed by SIGTERM)\)", text), text
    assert "stopping the servers" in text
    assert "!!! stopped because risk-gate exited with exit code 2" in text
    assert not (up.home / "stack.json").exists()


async def test_up_on_a_nats_of_the_environment_gives_the_paper_keys(tmp_path: Path) -> None:
    """With ``NATS_URL`` set (the machine's own nats-server), ``up`` still
    hands the paper broker and the gateway the paper account's keys, as it
    does with its own server. It used to hand them none: the paper broker
    exited 2 (TRADEBUS_PAPER_KEY_ID is not set) and the stack stopped."""
    with NatsServer(tmp_path / "nats") as nats:
        up = await start_up(
            tmp_path,
            tmp_path / "home",
            "nats-url",
            "--only",
            "paper-broker,broker-gateway",
            env={"NATS_URL": nats.url},
        )

        def trading() -> bool:
            up.check_running()  # a stack that stopped fails the test at once
            text = up.output()
            return "tradebus is up" in text and "broker paper connected" in text

        try:
            await eventually(
                trading,
                timeout=180,
                interval=0.5,
                message=up.tail,
            )
            code, _ = await stop(up)
        finally:
            await kill_leftovers(up)
    text = up.output()
    assert code == 0, text[-4000:]
    assert "refused its configuration" not in text
