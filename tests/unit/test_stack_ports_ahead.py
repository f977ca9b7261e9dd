"""``tradebus up`` refuses a port an option asks for that is in use before it
starts any server: the paper broker's and the services' /metrics ports used to
be chosen only after nats-server and PostgreSQL had started and the store was
migrated."""

from __future__ import annotations

import io
import re
import socket
from pathlib import Path

import pytest

from services.stack.ports import Ports
from services.stack.up import UpOptions, run_up


@pytest.fixture
def no_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers that do not answer: a ``run_up`` that got as far as using them
    fails at once ("cannot migrate the event store")."""
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/tradebus")


def up_output(tmp_path: Path, **options: int) -> tuple[int, str]:
    out = io.StringIO()
    code = run_up(UpOptions(home=tmp_path / "home", **options), out)  # type: ignore[arg-type]
    return code, re.sub(r"(?m)^[a-z-]+ +\| ", "", out.getvalue())


@pytest.mark.usefixtures("no_servers")
@pytest.mark.parametrize(
    ("option", "what"), [("paper_port", "paper broker"), ("metrics_port", "recorder metrics")]
)
def test_a_port_in_use_is_refused_before_the_store_is_touched(
    tmp_path: Path, option: str, what: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, text = up_output(tmp_path, **{option: port})
    flag = "--" + option.replace("_", "-")
    assert code == 1
    assert f"!!! {what} port {port} is in use ({flag} {port}" in text
    assert "migrating" not in text
    assert "cannot migrate" not in text


def test_ports_chosen_ahead_are_the_ones_handed_out_later(tmp_path: Path) -> None:
    ports = Ports(UpOptions(home=tmp_path), ["recorder", "risk-gate"], print)
    ports.choose_ahead(["recorder", "risk-gate"])
    chosen = (ports.paper(), ports.metrics(0, "recorder"), ports.metrics(1, "risk-gate"))
    assert len(set(chosen)) == 3
    ports.choose_ahead(["recorder", "risk-gate"])
    assert (ports.paper(), ports.metrics(0, "recorder"), ports.metrics(1, "risk-gate")) == chosen
