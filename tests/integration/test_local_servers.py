"""The local nats-server's Go threads: one on a small machine, unless told otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.local.servers import SMALL_MACHINE_CORES, NatsServer, nats_gomaxprocs


def child_env(server: NatsServer) -> dict[str, str]:
    assert server.proc is not None
    raw = Path(f"/proc/{server.proc.pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_one_go_thread_on_a_small_machine_only() -> None:
    assert nats_gomaxprocs(2) == 1
    assert nats_gomaxprocs(SMALL_MACHINE_CORES) == 1
    assert nats_gomaxprocs(SMALL_MACHINE_CORES + 1) is None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")
@pytest.mark.parametrize(
    ("given", "environment", "expected"),
    [(1, None, "1"), (3, None, "3"), (1, "2", "2")],
)
def test_the_server_runs_with_its_gomaxprocs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    given: int,
    environment: str | None,
    expected: str,
) -> None:
    if environment is None:
        monkeypatch.delenv("GOMAXPROCS", raising=False)
    else:
        monkeypatch.setenv("GOMAXPROCS", environment)  # the operator's choice wins
    server = NatsServer(tmp_path / "nats", gomaxprocs=given).start()
    try:
        assert child_env(server)["GOMAXPROCS"] == expected
    finally:
        server.stop()
