"""Credentials of a local stack: one random NATS password per user, the paper keys.

``tradebus up`` runs nats-server with ``deploy/nats/nats-server.conf`` (NATS
permissions on) and hands it the passwords through the environment
(``NATS_<USER>_PASSWORD``, as the config reads them). They are generated once
per home and kept in ``<home>/credentials.json``, created with mode 0600, so
that a terminal that sourced ``<home>/env`` keeps working across runs. They
are never printed; the banner only names the file.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: The environment variables deploy/config/{paper,brokers}.yaml name for the paper keys.
PAPER_KEY_ID_ENV = "TRADEBUS_PAPER_KEY_ID"
PAPER_SECRET_KEY_ENV = "TRADEBUS_PAPER_SECRET_KEY"  # noqa: S105 - a variable's name

FILE_NAME = "credentials.json"


def password_variable(user: str) -> str:
    """The variable nats-server.conf reads ``user``'s password from."""
    return f"NATS_{user.upper().replace('-', '_')}_PASSWORD"


def new_password() -> str:
    # nats-server parses a variable's value as config: a letter, then hex,
    # keeps it a plain string (never a number, a date or a comment).
    return "p" + secrets.token_hex(24)


@dataclass(frozen=True)
class Credentials:
    nats: Mapping[str, str]
    paper_key_id: str
    paper_secret_key: str

    def server_env(self) -> dict[str, str]:
        """What nats-server needs in its environment: every user's password."""
        return {password_variable(u): p for u, p in self.nats.items()}

    def nats_env(self, user: str) -> dict[str, str]:
        """A service's own NATS identity (and nobody else's)."""
        return {"TRADEBUS_NATS_USER": user, "TRADEBUS_NATS_PASSWORD": self.nats[user]}

    def paper_env(self) -> dict[str, str]:
        return {PAPER_KEY_ID_ENV: self.paper_key_id, PAPER_SECRET_KEY_ENV: self.paper_secret_key}


def _valid(data: object, users: Sequence[str]) -> bool:
    if not isinstance(data, dict):
        return False
    nats = data.get("nats")
    return (
        isinstance(nats, dict)
        and all(isinstance(nats.get(u), str) and nats[u] for u in users)
        and isinstance(data.get("paper_key_id"), str)
        and isinstance(data.get("paper_secret_key"), str)
    )


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (mode 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # an older file may have had wider modes
        f.write(text)


def load_or_create(home: Path, users: Sequence[str]) -> Credentials:
    """The home's credentials for the NATS ``users`` (every user of
    nats-server.conf: ``services.stack.wiring.NATS_USERS``); created (mode
    0600) when missing or incomplete."""
    path = home / FILE_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = None
    if not _valid(data, users):
        data = {
            "nats": {u: new_password() for u in users},
            "paper_key_id": "PK" + secrets.token_hex(8).upper(),
            "paper_secret_key": new_password(),
        }
        write_private(path, json.dumps(data, indent=2))
    elif path.stat().st_mode & 0o077:
        path.chmod(0o600)
    assert isinstance(data, dict)
    return Credentials(
        nats={u: data["nats"][u] for u in users},
        paper_key_id=data["paper_key_id"],
        paper_secret_key=data["paper_secret_key"],
    )
