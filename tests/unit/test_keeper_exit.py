"""The server keeper (``services/stack/keeper.py``) ends 0 once it has
stopped its servers, even if a stop request comes while it exits.

``LocalServers.stop`` closes the keeper's stdin (a stop request) and sends
SIGTERM if it is still running. The keeper may by then be past ``main``, in
the interpreter's finalization, which puts the default handlers back: the
SIGTERM killed it (exit -15) after it had stopped everything, and the stop
was reported as failed (seen under load in
test_stack_up_signals.py::test_the_keeper_and_its_servers_take_sigint_and_sigterm).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_stop_request_once_the_keeper_has_stopped_is_not_fatal(tmp_path: Path) -> None:
    # No server to start (ports 0); stdin at its end: asked to stop at once.
    # What finalization does after main returns is done here by hand: the
    # default SIGTERM handler back, then the SIGTERM.
    code = textwrap.dedent(
        f"""
        import os, signal
        from services.stack import keeper
        rc = keeper.main(["--home", {str(tmp_path)!r}, "--nats-port", "0", "--postgres-port", "0"])
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        print("exited", rc, flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "exited 0" in done.stdout
