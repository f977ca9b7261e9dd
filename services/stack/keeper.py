"""The server keeper: nats-server and PostgreSQL for ``tradebus up``, in their own session.

``tradebus up`` starts this module as a child process in a new session
(``python -m services.stack.keeper``), and the keeper starts the servers from
the wheels (:mod:`libs.local.servers`). Two reasons for the extra process:

- Ctrl-C in a terminal signals the whole foreground process group. Servers
  in that group would shut down at the same moment as the services, while
  the services may still be committing; in their own session they only stop
  when ``up`` says so, after the services.
- If ``up`` dies without cleaning up (even SIGKILL), the keeper's stdin
  reaches end-of-file and it stops the servers: nothing is left running.
  Until it has, it holds ``<home>/servers.lock``, which the next ``up`` on
  that home waits for: its servers never run beside these on the same data.

With ``--nats-config`` nats-server runs that file (``tradebus up`` gives it
``deploy/nats/nats-server.conf``); the passwords it references reach the
server through the keeper's environment, never its command line.

Protocol: one JSON line on stdout once the servers run (``{"nats": {...},
"postgres": {...}}``, ``null`` for a server not asked for) or
``{"error": "..."}``; then it runs until SIGTERM/SIGINT or stdin EOF, restarts
a server that dies (loudly, with backoff), and stops both before exiting 0.
Its messages go to stderr, prefixed like the services' output.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from libs.local.servers import NatsServer, PostgresServer, ServerError

#: Held by the keeper while it runs (its servers with it), in the home.
SERVERS_LOCK = "servers.lock"
#: Seconds between two checks that the servers are still running.
WATCH_INTERVAL = 1.0
RESTART_BACKOFF_CAP = 30.0
#: Held (blocked) by up while it starts this process, which inherits the mask.
HELD_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


class Keeper:
    """Owns the two servers: start, watch (restart if one dies), stop."""

    def __init__(self, args: argparse.Namespace) -> None:
        home = Path(args.home)
        self.prefix: str = args.prefix
        self.nats = (
            NatsServer(
                home / "nats",
                port=args.nats_port,
                monitor_port=args.nats_monitor_port,
                config_file=Path(args.nats_config) if args.nats_config else None,
            )
            if args.nats_port
            else None
        )
        self.postgres = (
            PostgresServer(home / "pgdata", port=args.postgres_port) if args.postgres_port else None
        )
        self.stop_requested = threading.Event()
        self._backoff: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}

    def say(self, message: str) -> None:
        # Our stderr is up's output, which may be gone (``tradebus up | tee``,
        # tee killed by the same Ctrl-C): a message that cannot be shown must
        # not end the keeper before it has stopped both servers.
        with contextlib.suppress(OSError):
            for line in message.splitlines():
                print(f"{self.prefix}{line}", file=sys.stderr, flush=True)

    def start(self) -> dict[str, Any]:
        report: dict[str, Any] = {"nats": None, "postgres": None}
        if self.nats is not None:
            self.nats.start()
            assert self.nats.proc is not None
            report["nats"] = {
                "url": self.nats.url,
                "pid": self.nats.proc.pid,
                "monitor_url": f"http://127.0.0.1:{self.nats.monitor_port}",
                "log": str(self.nats.log_file),
            }
        if self.postgres is not None:
            try:
                self.postgres.start()
            except ServerError as e:
                raise ServerError(f"{e}{_stale_postmaster_hint(self.postgres.data_dir)}") from e
            assert self.postgres.proc is not None
            report["postgres"] = {
                "url": self.postgres.url(),
                "pid": self.postgres.proc.pid,
                "log": str(self.postgres.log_file),
            }
        return report

    def watch(self) -> None:
        """Until asked to stop: restart a server that exited on its own."""
        while not self.stop_requested.wait(WATCH_INTERVAL):
            for name, server in (("nats-server", self.nats), ("postgres", self.postgres)):
                if server is None or server.proc is None or server.proc.poll() is None:
                    continue
                now = time.monotonic()
                if now < self._retry_at.get(name, 0.0):
                    continue
                self.say(
                    f"!!! {name} exited unexpectedly (code {server.proc.returncode}); "
                    f"restarting it (log: {server.log_file})"
                )
                try:
                    # kill=True also reaps PostgreSQL backends orphaned by a crash.
                    server.stop(kill=True)
                    server.start()
                except ServerError as e:
                    delay = min(RESTART_BACKOFF_CAP, self._backoff.get(name, 0.5) * 2)
                    self._backoff[name] = delay
                    self._retry_at[name] = now + delay
                    self.say(f"!!! {name} did not come back ({e}); next try in {delay:.0f}s")
                else:
                    self._backoff.pop(name, None)
                    assert server.proc is not None
                    self.say(f"{name} restarted (pid {server.proc.pid})")

    def stop(self) -> None:
        for name, server in (("postgres", self.postgres), ("nats-server", self.nats)):
            if server is not None and server.proc is not None:
                try:
                    server.stop()
                except ServerError as e:
                    self.say(f"!!! stopping {name}: {e}")
                else:
                    self.say(f"{name} stopped")


def _stale_postmaster_hint(data_dir: Path) -> str:
    """A hint when a PostgreSQL from an earlier run still holds the data directory."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return ""
    return (
        f"; a PostgreSQL (pid {pid}) from an earlier run still holds {data_dir}: "
        f"stop it (kill {pid}) and try again"
    )


def _watch_stdin(stop: threading.Event) -> None:
    """Our parent holds the other end of stdin: end-of-file means it is gone."""
    while sys.stdin.buffer.read(4096):
        pass
    stop.set()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run nats-server and PostgreSQL for tradebus up.")
    ap.add_argument("--home", required=True)
    ap.add_argument("--nats-port", type=int, default=0, help="0: do not start nats-server")
    ap.add_argument("--nats-monitor-port", type=int, default=None)
    ap.add_argument(
        "--nats-config",
        default=None,
        help="nats-server config file (users, permissions); the passwords it "
        "references come from this process's environment",
    )
    ap.add_argument("--postgres-port", type=int, default=0, help="0: do not start PostgreSQL")
    ap.add_argument("--prefix", default="servers | ")
    args = ap.parse_args(argv)

    # Released when this process ends, however it ends: the next up waits for it.
    lock = (Path(args.home) / SERVERS_LOCK).open("a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    keeper = Keeper(args)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        keeper.stop_requested.set()

    for held in HELD_SIGNALS:
        signal.signal(held, on_signal)
    # Started with them held (LocalServers.start): let through now that they
    # stop us, before any server starts and inherits the mask. One held
    # since (up stopping at once) is taken here.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)
    threading.Thread(target=_watch_stdin, args=(keeper.stop_requested,), daemon=True).start()
    try:
        try:
            report = keeper.start()
        except (ServerError, OSError) as e:
            print(json.dumps({"error": str(e)}), flush=True)
            return 1
        print(json.dumps(report), flush=True)
        keeper.watch()
    finally:
        keeper.stop()
        # Stopped: a stop request from now on is moot. Held, not let through:
        # once main returns, the interpreter's finalization puts the default
        # handlers back, and a SIGTERM then (LocalServers.stop sends one to
        # a keeper still running) would end it -15 after a clean stop.
        signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
