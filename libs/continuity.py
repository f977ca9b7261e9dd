"""Does the stream still continue the event store? Refuse to read on if not.

The recorder, the risk-gate and the strategy-runner keep their place in the
event store: each start reads the stream from right after the store's last
row. If the NATS data was wiped (the stream recreated) while the store was
kept, that place means nothing in the new stream, and reading on from it
would silently skip the new stream's first messages. Two signs give it away:

- the stream ends before the store does; or
- the stream holds a message at the store's last sequence, and it is not
  the one the store recorded there (another subject, or another event id):
  the new stream has already grown past the store.

Either way the service refuses (:class:`~libs.bus.errors.StreamMismatch`),
reports it in its health and looks again every :data:`STREAM_RESET_RECHECK_S`.
An operator decides: a new database, or the old stream back. Where the
stream no longer holds that message (trimmed by its limits, or never there:
the store's ``MessageMissing``), or the stream was made without direct gets,
nothing can be compared and nothing is said.
The one message is read with a direct get (``$JS.API.DIRECT.GET.TRADEBUS``,
which the three services' NATS users may send).
"""

from __future__ import annotations

import logging

import nats.js.errors
import orjson
from nats.js import api as js_api

from libs.bus.client import Bus
from libs.bus.errors import StreamMismatch
from libs.store.layout import DUPLICATE, MISSING, UNDECODABLE, storable, stored_subject
from libs.store.queries import Tail

#: How often a service that found the stream reset checks it again.
STREAM_RESET_RECHECK_S = 10.0


def refused(
    error: BaseException, retry_backoff_s: float, log: logging.Logger
) -> tuple[str | None, float]:
    """After a fault: the problem to report and how long to wait before trying
    again. A :class:`StreamMismatch` needs an operator: it is said at error
    level, reported, and looked at again only every
    :data:`STREAM_RESET_RECHECK_S`; any other fault is no such problem."""
    if not isinstance(error, StreamMismatch):
        return None, retry_backoff_s
    log.error("%s", error)
    return str(error), max(retry_backoff_s, STREAM_RESET_RECHECK_S)


async def refuse_a_reset_stream(
    bus: Bus, info: js_api.StreamInfo, tail: Tail | None, refusing: str
) -> None:
    """Raise :class:`StreamMismatch` if the stream does not continue the store
    whose last row is ``tail``; ``refusing`` says what the caller will not do."""
    if tail is None:
        return  # an empty store continues any stream
    name = info.config.name
    assert name is not None
    last = info.state.last_seq
    if last < tail.seq:
        raise StreamMismatch(
            f"stream {name} ends at sequence {last} but the event store already holds up to "
            f"{tail.seq}: the stream was reset; not {refusing} (its messages would be skipped)"
        )
    if tail.type == MISSING or tail.seq < info.state.first_seq or not info.config.allow_direct:
        return  # nothing there to compare, or no direct get (a stream made elsewhere)
    try:
        msg = await bus.js.get_msg(name, seq=tail.seq, direct=True)
    except nats.js.errors.NotFoundError:
        return  # deleted from the stream since: nothing to compare
    if _same(tail, msg.subject or "", msg.data or b""):
        return
    raise StreamMismatch(
        f"stream {name} holds at sequence {tail.seq} a message on {msg.subject} that is not "
        f"the {tail.type} {tail.id} on {tail.subject} the event store recorded there: the "
        f"stream was reset; not {refusing} (its messages would be skipped)"
    )


def _same(tail: Tail, subject: str, data: bytes) -> bool:
    # A row keeps the subject as the store can hold it: any row has U+0000
    # as U+FFFD, and the recorder's own rows (Undecodable) cut a long one.
    if tail.subject not in (subject, storable(subject), stored_subject(subject)):
        return False
    if tail.type in (DUPLICATE, UNDECODABLE):
        # The row's id is derived (the message carries the original's id, or
        # none that counts): its subject is all there is to compare.
        return True
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return isinstance(event, dict) and event.get("id") == str(tail.id)
