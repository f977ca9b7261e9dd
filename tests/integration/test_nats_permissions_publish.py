"""The NATS server, not convention, decides who may publish what: order
commands (the risk-gate only), the kill switch (the operator only), each
user its own domain's subjects; no user subscribes to the domain subjects
or to another's inbox. The server and its users:
tests/integration/nats_permissions_cluster.py."""

from __future__ import annotations

from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
import pytest

from libs.bus.client import MSG_ID_HEADER, Bus, inbox_prefix
from libs.contract.codec import encode
from libs.contract.subjects import STREAM, subject_for
from libs.testing.producer import make_submit_order
from tests.integration import nats_permissions_cluster
from tests.integration.nats_permissions_cluster import (
    USERS,
    Cluster,
    bar,
    eventually,
    kill_switch,
    publish_core,
    settled,
    stored,
)

# The module's nats-server and its users, registered in this module.
cluster = nats_permissions_cluster.cluster
stream = nats_permissions_cluster.stream

# ------------------------------------------------------------ order commands


async def test_strategy_runner_cannot_publish_order_commands_but_risk_gate_can(
    cluster: Cluster, stream: str
) -> None:
    event = make_submit_order("acct-a")
    subject = subject_for(event)
    assert subject == "orders.cmd.acct-a"

    # (a) The strategy-runner's JetStream publish gets no ack: the server
    # refused it and says so through error_cb.
    async with cluster.conn("strategy-runner") as runner:
        with pytest.raises(nats.errors.TimeoutError):
            await runner.js.publish(subject, encode(event), headers={MSG_ID_HEADER: str(event.id)})
        await settled(runner.nc)
        assert runner.refused(subject), runner.errors

        # Same connection, own domain: accepted (the user itself works).
        intent_ack = await runner.nc.jetstream().publish("strategy.signal.s1", b"{}")
        assert intent_ack.stream == stream
        assert runner.refusals() == [f'nats: permissions violation for publish to "{subject}"']

    # (b) The risk-gate publishes the very same command and JetStream stores it.
    async with cluster.bus("risk-gate") as gate:
        ack = await gate.publish(event)
    assert ack.stream == stream
    assert not ack.duplicate  # the refused copy never reached the stream

    async def only_the_risk_gates_copy() -> bool:
        return await stored(cluster, subject) == 1

    await eventually(only_the_risk_gates_copy, what="one message on orders.cmd.acct-a")
    async with cluster.bus("admin") as admin:
        last = await admin.js.get_last_msg(STREAM, subject)
    assert last.seq == ack.seq
    assert last.headers is not None
    assert last.headers[MSG_ID_HEADER] == str(event.id)


async def test_no_user_but_risk_gate_may_publish_order_commands(
    cluster: Cluster, stream: str
) -> None:
    for user in (u for u in USERS if u != "risk-gate"):
        subject = f"orders.cmd.acct-{user}"
        async with cluster.conn(user) as conn:
            await publish_core(conn, make_submit_order(f"acct-{user}"), subject)
            assert conn.refused(subject), (user, conn.errors)
        assert await stored(cluster, subject) == 0, user


# --------------------------------------------------------------- control


async def test_only_operator_may_publish_kill_switch(cluster: Cluster, stream: str) -> None:
    subject = "control.killswitch"
    for user in (u for u in USERS if u != "operator"):
        async with cluster.conn(user) as conn:
            await publish_core(conn, kill_switch(), subject)
            assert conn.refused(subject), (user, conn.errors)
    assert await stored(cluster, subject) == 0

    async with cluster.bus("operator") as operator:
        ack = await operator.publish(kill_switch())
    assert ack.stream == stream

    async def stored_once() -> bool:
        return await stored(cluster, subject) == 1

    await eventually(stored_once, what="the operator's kill switch in the stream")


# ----------------------------------------------------------- domain ownership

ALL_SUBJECTS = (
    "md.bar.1m.AAPL",
    "md.mark.O:SPY241220P00720000",
    "strategy.intent.s1",
    "risk.decision.s1",
    "orders.cmd.acct-b",
    "broker.fill.acct-b",
    "broker.close.acct-b",
    "broker.positions.acct-b",
    "control.resume",
    "replay.md.bar.1m.AAPL",
    "deadletter.recorder",
    "deadletter.marketdata",
    "deadletter.strategy-runner",
    "deadletter.risk-gate",
    "deadletter.broker-gateway",
    "deadletter.paper-broker",
    "anything.else",
)

#: What each user may publish among ALL_SUBJECTS; everything else is refused.
MAY_PUBLISH = {
    "admin": set(),
    "operator": {"control.resume", "replay.md.bar.1m.AAPL"},
    "recorder": {"replay.md.bar.1m.AAPL", "deadletter.recorder"},
    "marketdata": {"md.bar.1m.AAPL", "md.mark.O:SPY241220P00720000", "deadletter.marketdata"},
    "strategy-runner": {"strategy.intent.s1", "deadletter.strategy-runner"},
    "risk-gate": {"risk.decision.s1", "orders.cmd.acct-b", "deadletter.risk-gate"},
    "broker-gateway": {
        "broker.fill.acct-b",
        "broker.close.acct-b",
        "broker.positions.acct-b",
        "deadletter.broker-gateway",
    },
    "paper-broker": {"deadletter.paper-broker"},
}


@pytest.mark.parametrize("user", USERS)
async def test_each_user_publishes_only_its_own_subjects(
    cluster: Cluster, stream: str, user: str
) -> None:
    async with cluster.conn(user) as conn:
        for subject in ALL_SUBJECTS:
            await conn.nc.publish(subject, b"{}")
        await settled(conn.nc)
        refused = {s for s in ALL_SUBJECTS if conn.refused(s)}
    assert refused == set(ALL_SUBJECTS) - MAY_PUBLISH[user]


@pytest.mark.parametrize("user", USERS)
async def test_no_user_may_subscribe_to_the_domain_subjects(cluster: Cluster, user: str) -> None:
    # Reading goes through each service's own durable consumer; a plain
    # subscription to live subjects (or another's JetStream acks) is refused.
    async with cluster.conn(user) as conn:
        for subject in ("md.>", "orders.cmd.>", "$JS.ACK.>", ">"):
            await conn.nc.subscribe(subject)
        await settled(conn.nc)
        denied = [e for e in conn.errors if "permissions violation for subscription" in e]
    assert len(denied) == 4, conn.errors


@pytest.mark.parametrize("user", USERS)
async def test_each_user_reads_only_its_own_inbox(cluster: Cluster, user: str) -> None:
    # Replies, JetStream publish acks and pull batches arrive under the
    # user's own inbox prefix; another user's, or all of them, are refused.
    other = "broker-gateway" if user == "risk-gate" else "risk-gate"
    refused = ["_INBOX.>", f"{inbox_prefix(other)}.>", f"{inbox_prefix(other)}.abc"]
    async with cluster.conn(user) as conn:
        await conn.nc.subscribe(f"{inbox_prefix(user)}.>")
        for subject in refused:
            await conn.nc.subscribe(subject)
        await settled(conn.nc)
        denied = [e for e in conn.errors if "permissions violation for subscription" in e]
    assert sorted(denied) == sorted(
        f'nats: permissions violation for subscription to "{s.lower()}"' for s in refused
    ), conn.errors


async def test_a_user_given_in_the_url_gets_its_own_inbox(cluster: Cluster, stream: str) -> None:
    # NATS_URL may carry the credentials (nats://user:password@host): the
    # inbox prefix then follows the URL's user, so its acks still arrive.
    parts = urlsplit(cluster.url)
    url = f"{parts.scheme}://marketdata:{cluster.passwords['marketdata']}@{parts.netloc}"
    async with await Bus.connect(url, name="test-url-user") as feed:
        ack = await feed.publish(bar("URLUSER"))
    assert ack.stream == stream
