"""Services as real OS processes, for integration and fault tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from libs.local.servers import free_port


class ServiceProcess:
    """``tradebus <args>`` in a child process with its own metrics port."""

    def __init__(
        self,
        args: list[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        name: str = "svc",
    ) -> None:
        self.args = args
        self.metrics_port = free_port()
        self.env = {
            **os.environ,
            **env,
            "TRADEBUS_METRICS_PORT": str(self.metrics_port),
            "TRADEBUS_INSTANCE": name,
            "PYTHONUNBUFFERED": "1",
        }
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def health(self) -> dict[str, Any] | None:
        """The /health JSON (``ok`` false on a 503), or None while it does not answer."""
        url = f"http://127.0.0.1:{self.metrics_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=0.5) as r:
                body: dict[str, Any] = json.loads(r.read())
                return body
        except urllib.error.HTTPError as e:  # 503: unhealthy, and it says why
            unhealthy: dict[str, Any] = json.loads(e.read())
            return unhealthy
        except OSError:
            return None

    def healthy(self) -> bool:
        """Whether /health answers ``ok`` (answering 503 is not ready)."""
        return bool((self.health() or {}).get("ok"))

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as r:
            return str(r.read().decode())

    def kill(self) -> None:
        """SIGKILL: no clean-up, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 15) -> int | None:
        """SIGTERM and wait for a clean exit; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
