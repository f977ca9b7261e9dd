"""A service whose /metrics and /health port is taken refuses to start, by name."""

from __future__ import annotations

import socket
from pathlib import Path

from libs.testing.procs import ServiceProcess


def test_a_taken_metrics_port_is_refused_naming_the_variable(tmp_path: Path) -> None:
    """Without /health and /metrics a trading service cannot be watched (nor
    told alive by ``tradebus up`` or a healthcheck). It died of an OSError
    traceback with exit 1, which ``tradebus up`` restarted for ever; now one
    line names TRADEBUS_METRICS_PORT and it exits 2, as for a bad value."""
    rec = ServiceProcess(
        ["recorder", "run"],
        # Never reached: the port is refused first.
        env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
        log_path=tmp_path / "recorder.log",
        name="port-taken",
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", rec.metrics_port))
        taken.listen()
        rec.start()
        assert rec.proc is not None
        code = rec.proc.wait(timeout=60)
    log = rec.log_text()
    assert code == 2, log
    assert (
        f"TRADEBUS_METRICS_PORT: cannot serve /metrics and /health on 127.0.0.1:{rec.metrics_port}"
        in log
    )
    assert "Traceback" not in log
