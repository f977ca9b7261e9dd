"""libs/local/servers.py: ports for our servers come from below the ephemeral range."""

from __future__ import annotations

import socket

import pytest

from libs.local import servers
from libs.local.servers import LOWEST_PORT, ephemeral_start, free_port


def test_ports_are_below_the_kernels_ephemeral_range_and_never_repeat() -> None:
    high = ephemeral_start()
    ports = [free_port() for _ in range(300)]
    assert all(LOWEST_PORT <= p < high for p in ports), [p for p in ports if p >= high]
    assert len(set(ports)) == len(ports)


def test_a_port_in_use_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy: int = taken.getsockname()[1]
        picks = iter([busy, busy, LOWEST_PORT + 7])
        monkeypatch.setattr(servers, "ephemeral_start", lambda: 65_535)
        monkeypatch.setattr(servers, "_handed_out", set())

        class Scripted:
            def randrange(self, low: int, high: int) -> int:
                return next(picks)

        monkeypatch.setattr(servers, "_rng", Scripted())
        assert free_port() == LOWEST_PORT + 7


def test_with_no_room_below_the_range_the_kernel_chooses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(servers, "ephemeral_start", lambda: LOWEST_PORT + 10)
    port = free_port()
    assert port > 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))  # free indeed
