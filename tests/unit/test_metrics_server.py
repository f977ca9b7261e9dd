"""The /metrics and /health server says where it listens, as a URL."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from libs.observability.http import MetricsServer


@pytest.mark.parametrize(("host", "shown"), [("127.0.0.1", "127.0.0.1"), ("::1", "[::1]")])
async def test_the_metrics_server_logs_where_it_listens_as_a_url(
    caplog: pytest.LogCaptureFixture, host: str, shown: str
) -> None:
    """TRADEBUS_METRICS_HOST=::1: the service logged ``http://::1:PORT/metrics``,
    which is no URL (its colons read as the port's)."""
    caplog.set_level(logging.INFO, logger="libs.observability.http")
    async with MetricsServer(host, 0, lambda: (True, {}), CollectorRegistry()) as server:
        assert server.port != 0
    assert f"metrics on http://{shown}:{server.port}/metrics, health on /health" in caplog.messages
