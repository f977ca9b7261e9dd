"""The one place that names every NATS subject and stream.

Subjects name the domain first (``md.bar.1m.AAPL``, ``orders.cmd.acct-a``).
Everything under :data:`RECORDED_SUBJECTS` is captured by the single
:data:`STREAM` whose stream sequence is the global order of the audit
timeline. Replays go under :data:`REPLAY_PREFIX`, which that stream does not
capture, so a replay never re-enters the timeline or reaches live consumers.
"""

from __future__ import annotations

import re
import string
from functools import cache

from libs.contract.envelope import Event
from libs.contract.events import EVENT_TYPES

#: The stream that captures every recorded subject; its sequence is the order.
STREAM = "TRADEBUS"

#: Durable consumer the event-recorder reads the whole stream through.
RECORDER_CONSUMER = "event-recorder"

#: Domain roots captured by :data:`STREAM`.
DOMAINS = ("md", "strategy", "risk", "orders", "broker", "control", "deadletter")
RECORDED_SUBJECTS = tuple(f"{d}.>" for d in DOMAINS)

#: Default prefix for replays (``replay.md.bar.1m.AAPL``): not recorded.
REPLAY_PREFIX = "replay"

# Concrete patterns, for permissions, dashboards and docs.
MD_ALL = "md.>"
ORDERS_CMD_ALL = "orders.cmd.>"
CONTROL_ALL = "control.>"
DEADLETTER_ALL = "deadletter.>"

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_:~/\-]+$")


class SubjectError(ValueError):
    """A value cannot be used as a subject token."""


def token(value: str) -> str:
    """Check that ``value`` is one safe subject token (no dots or wildcards)."""
    if not _TOKEN_RE.fullmatch(value):
        raise SubjectError(f"not a valid subject token: {value!r}")
    return value


def symbol_token(symbol: str) -> str:
    """A ticker as one subject token: ``BRK.B`` -> ``BRK~B`` (a dot splits tokens)."""
    return token(symbol.replace(".", "~"))


@cache
def _template_fields(template: str) -> tuple[str, ...]:
    return tuple(name for _, name, _, _ in string.Formatter().parse(template) if name)


def subject_for(event: Event) -> str:
    """The subject ``event`` is published on, from its class's template."""
    template = type(event).subject_template
    fields = _template_fields(template)
    if not fields:
        return template
    values = {
        name: symbol_token(value) if name == "symbol" else token(value)
        for name in fields
        for value in (str(getattr(event.payload, name)),)
    }
    return template.format(**values)


def replay_subject(subject: str, prefix: str = REPLAY_PREFIX) -> str:
    """Where a recorded subject goes when replayed under ``prefix``."""
    if not prefix:
        return subject
    return f"{prefix}.{subject}"


def subject_map() -> dict[str, dict[str, str]]:
    """Every event type with its subject template and domain (for ``proto/``)."""
    return {
        name: {
            "subject": cls.subject_template,
            "domain": cls.subject_template.split(".", 1)[0],
            "doc": next(iter((cls.__doc__ or "").strip().splitlines()), ""),
        }
        for name, cls in sorted(EVENT_TYPES.items())
    }


def is_recorded(subject: str) -> bool:
    """Whether ``subject`` falls inside the recorded stream."""
    return subject.split(".", 1)[0] in DOMAINS
