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


class SubjectPatternError(SubjectError):
    """A subject pattern or prefix given by a user is not one NATS would take."""


def check_pattern(pattern: str) -> str:
    """Check a NATS subject pattern (``md.bar.*.AAPL``, ``broker.>``) as NATS
    reads it: dot-separated non-empty tokens without white space, ``*`` and
    ``>`` standing for whole tokens, ``>`` only last. A pattern NATS would
    refuse is refused here rather than silently matching nothing."""
    if pattern == ">":
        return pattern
    what = f"not a NATS subject pattern: {pattern!r}"
    if not pattern or any(c.isspace() for c in pattern):
        raise SubjectPatternError(f"{what} (no spaces; tokens are separated by '.')")
    tokens = pattern.split(".")
    if "" in tokens:
        raise SubjectPatternError(f"{what} (an empty token: a leading, trailing or double '.')")
    for i, tok in enumerate(tokens):
        if tok == ">" and i != len(tokens) - 1:
            raise SubjectPatternError(f"{what} ('>' matches the rest: the last token only)")
        if tok not in ("*", ">") and ("*" in tok or ">" in tok):
            raise SubjectPatternError(f"{what} ('*' and '>' stand for whole tokens)")
    return pattern


def check_prefix(prefix: str) -> str:
    """Check a literal subject prefix to publish under (``replay``,
    ``replay.run7``): a valid pattern without wildcards."""
    check_pattern(prefix)
    if any(tok in ("*", ">") for tok in prefix.split(".")):
        raise SubjectPatternError(
            f"not a subject prefix: {prefix!r} (a wildcard names no subject to publish to)"
        )
    return prefix


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
