"""CLI pieces every service group shares: settings errors, times, the
event-store readers' preamble (:func:`reads_store`), ``replay``."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, NoReturn, ParamSpec, TypeVar
from urllib.parse import urlsplit

import typer
from pydantic_settings import BaseSettings
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from libs.config import ConfigError, ServiceSettings, load_settings, masked_url
from libs.contract.subjects import REPLAY_PREFIX, SubjectPatternError, check_pattern

if TYPE_CHECKING:
    from libs.replay import ReplayResult, ReplayStopped

S = TypeVar("S", bound=BaseSettings)
P = ParamSpec("P")
R = TypeVar("R")

#: Errors, warnings and notes for the operator; one message stays one line
#: (no wrapping at the terminal's width), so that logs and greps keep it whole.
err = Console(stderr=True, soft_wrap=True)


def settings_or_exit(cls: type[S]) -> S:
    """Load settings; on a bad value print which variable and exit 2."""
    try:
        return load_settings(cls)
    except ConfigError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e


def fail(message: object, code: int) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with ``code``
    (2: the command line is wrong, 1: a server could not be used)."""
    err.print(f"[red]error:[/red] {escape(str(message))}")
    raise typer.Exit(code)


def warn(message: object) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(str(message))}")


def _from_where(variable: str) -> str:
    """How a server's URL was chosen: by its variable, or the default."""
    if variable in os.environ or f"TRADEBUS_{variable}" in os.environ:
        return variable
    return f"the default: {variable} is not set"


def announce_store() -> str:
    """Name the event store about to be read (stderr, password masked, and
    whether ``DATABASE_URL`` chose it or the default did), make sure it can be
    read (else one line naming the URL, exit 1), warn when it holds no
    events; return its URL.

    The defaults point at this machine, where another PostgreSQL than the one
    ``tradebus up`` started may well answer: an empty answer from the wrong
    store must not pass for an empty world.
    """
    from libs.store.connect import WHICH_URL, summary
    from libs.store.errors import StoreUnavailable

    settings = settings_or_exit(ServiceSettings)
    url = settings.database_url.get_secret_value()
    err.print(
        f"event store: {escape(masked_url(url))} ({_from_where('DATABASE_URL')})",
        highlight=False,
    )
    try:
        found = asyncio.run(summary(url))
    except StoreUnavailable as e:
        fail(e, 1)
    if found.empty:
        warn(f"the event store at {found.url} holds no events: {WHICH_URL}")
    return url


def reads_store(command: Callable[P, R]) -> Callable[P, R]:
    """Give a command that reads the event store its preamble: a ``--subject``
    it takes is checked as a NATS pattern first (exit 2 naming it), then
    :func:`announce_store`; a bad pattern or an unusable store met later ends
    it with one line too, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from libs.store.errors import StoreUnavailable

        subject = kwargs.get("subject")
        if isinstance(subject, str):
            try:
                check_pattern(subject)
            except SubjectPatternError as e:
                fail(f"--subject: {e}", 2)
        announce_store()
        try:
            return command(*args, **kwargs)
        except SubjectPatternError as e:
            fail(e, 2)
        except StoreUnavailable as e:
            fail(e, 1)

    return wrapper


EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MICROSECOND = dt.timedelta(microseconds=1)


def parse_time(value: str | None, option: str | None = None) -> int | None:
    """Nanoseconds from an ISO 8601 time (UTC if no zone) or an integer of ns;
    a bad one is a usage error naming ``option`` (``--since``)."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError as e:
        raise typer.BadParameter(
            f"not an ISO 8601 time or nanoseconds: {value!r}", param_hint=_hint(option)
        ) from e
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    # In integers: through a float of seconds, three in four millisecond
    # times came out some tens of nanoseconds off, and an event stamped at
    # the very time given fell on the wrong side of --since or --until.
    return (t - EPOCH) // MICROSECOND * 1_000


def parse_rate(value: str | None, option: str | None = None) -> float | None:
    """``200``, ``200/s`` or ``max`` (None) as messages per second; a bad one
    is a usage error naming ``option`` (``--rate``)."""
    if value is None or value == "max":
        return None
    try:
        rate = float(value.removesuffix("/s"))
    except ValueError as e:
        raise typer.BadParameter(
            f"rate must look like 500/s or max, got {value!r}", param_hint=_hint(option)
        ) from e
    if rate <= 0:
        raise typer.BadParameter("rate must be positive", param_hint=_hint(option))
    return rate


def _hint(option: str | None) -> str | None:
    """How click names an option in a usage error: ``'--since'``. Checked in
    the command's body, not by click, a bad value was "Invalid value: ..."
    without it, and with --since and --until both given it did not say
    which was wrong."""
    return None if option is None else f"'{option}'"


def _skipped(result: ReplayResult, into: str) -> str:
    """How many rows of each kind a replay left out, and why."""
    from libs.bus.client import MAX_CONTROL_LINE

    bad, dup, missing = result.skipped_undecodable, result.skipped_duplicate, result.skipped_missing
    long = result.skipped_too_long
    kinds = [
        (
            bad,
            f"undecodable (--include-undecodable republishes {'its' if bad == 1 else 'their'} "
            "bytes)",
        ),
        (
            dup,
            "duplicate pointer (the event it repeats is replayed)"
            if dup == 1
            else "duplicate pointers (the events they repeat are replayed)",
        ),
        (
            missing,
            f"missing position{'' if missing == 1 else 's'} "
            "(gone from the stream before recording)",
        ),
        (
            long,
            f"too long for NATS under '{into}.' ("
            + ("a publish line" if long == 1 else "publish lines")
            + f" over its {MAX_CONTROL_LINE:,}-byte max_control_line, for which the server "
            "closes the connection)",
        ),
    ]
    return ", ".join(f"{n} {what}" for n, what in kinds if n)


def how_far(stopped: ReplayStopped, from_seq: int) -> str:
    """How far a stopped replay got and where it resumes (``from_seq``: the
    one it was asked to start from); when the server's verdict on the
    messages sent after that did not come (NATS lost or stalled, Ctrl-C did
    not wait for it), also how far those went: some of them may have gone
    out."""
    last = stopped.result.last_seq
    unjudged = None
    if stopped.unjudged_to is not None:
        unjudged = (
            f"the server's verdict on those sent after it, up to store sequence "
            f"{stopped.unjudged_to}, never came: some of them may have gone out"
        )
    if last is None:
        resumes = f"--from-seq {from_seq} resumes"
        if unjudged is None:
            return f"nothing replayed; {resumes}"
        return f"nothing known to be replayed ({unjudged}); {resumes}"
    aside = ", none after it" if unjudged is None else f" ({unjudged})"
    return (
        f"every selected event up to store sequence {last} replayed{aside}; "
        f"--from-seq {last + 1} resumes"
    )


def add_replay_command(group: typer.Typer, service: str, default_subject: str = ">") -> None:
    """Give a service's CLI group its ``replay`` command."""

    @group.command("replay")
    def replay_cmd(
        subject: Annotated[
            str, typer.Option(help="NATS subject pattern to replay, e.g. 'md.bar.*.AAPL'")
        ] = default_subject,
        from_seq: Annotated[int, typer.Option(min=1, help="First sequence")] = 1,
        to_seq: Annotated[
            int | None,
            typer.Option(min=1, help="Last sequence (default: the store's last as it starts)"),
        ] = None,
        since: Annotated[str | None, typer.Option(help="ts_event >= this (ISO 8601)")] = None,
        until: Annotated[str | None, typer.Option(help="ts_event < this (ISO 8601)")] = None,
        rate: Annotated[str | None, typer.Option(help="Pace, e.g. 500/s (default: max)")] = None,
        into: Annotated[
            str, typer.Option(help="Subject prefix to publish under (never a live domain)")
        ] = REPLAY_PREFIX,
        dry_run: Annotated[
            bool,
            typer.Option(
                help="Publish nothing: count what would be published and skipped (the JSON "
                "line); `tradebus events --subject` lists the events themselves"
            ),
        ] = False,
        include_undecodable: Annotated[
            bool, typer.Option(help="Also republish the raw bytes of undecodable messages")
        ] = False,
    ) -> None:
        """Republish recorded events from the store onto NATS, in order."""
        from libs.bus.client import Bus
        from libs.bus.errors import BusUnavailable
        from libs.replay import (
            ReplayBusLost,
            ReplayError,
            ReplayInterrupted,
            ReplayRefused,
            ReplayRequest,
            ReplayResult,
            ReplaySoFar,
            ReplayStoreLost,
            replay,
        )
        from libs.store.errors import StoreUnavailable

        settings = settings_or_exit(ServiceSettings)
        request = ReplayRequest(
            subject=subject,
            from_seq=from_seq,
            to_seq=to_seq,
            since_ns=parse_time(since, "--since"),
            until_ns=parse_time(until, "--until"),
            rate_per_s=parse_rate(rate, "--rate"),
            into=into,
            dry_run=dry_run,
            include_undecodable=include_undecodable,
        )
        try:
            request.check()
        except ReplayError as e:
            fail(e, 2)

        def report(result: ReplayResult) -> None:
            print(json.dumps({**result.__dict__, "dry_run": dry_run, "into": into}))
            if result.skipped:
                rows = "1 row" if result.skipped == 1 else f"{result.skipped} rows"
                err.print(f"skipped {rows}: {escape(_skipped(result, into))}", highlight=False)

        def interrupted(stopped: ReplayInterrupted) -> NoReturn:
            """Say how far an interrupted replay got, and exit 130; "not
            settled" when the server's verdict on its last messages did not come."""
            if shown is not None:
                shown.stop()  # the bar's last state above, not below, what is said
            report(stopped.result)
            settled = "" if stopped.unjudged_to is None else " (not settled)"
            err.print(f"replay interrupted{settled}: {how_far(stopped, from_seq)}", highlight=False)
            raise typer.Exit(130)

        def waiting(sent: int, seconds: float) -> None:
            messages = "message" if sent == 1 else f"{sent} messages"
            err.print(
                f"replay stopping: waiting up to {seconds:g} s for the server's verdict on the "
                f"last {messages} sent; Ctrl-C again stops waiting (it then says where to "
                "resume as far as is known)",
                highlight=False,
            )

        # Set once replay() runs: from then on it says how far a Ctrl-C let it
        # get, and so_far how far it is known to have got at any moment.
        replaying = False
        so_far = ReplaySoFar()
        shown: Progress | None = None

        async def go() -> None:
            nonlocal replaying, shown
            bus = None
            if not dry_run:
                user = settings.nats_user or urlsplit(settings.nats_url).username
                err.print(
                    f"NATS: {escape(masked_url(settings.nats_url))} ({_from_where('NATS_URL')}), "
                    f"as {f'user {user}' if user else 'no user (TRADEBUS_NATS_USER is not set)'}",
                    highlight=False,
                )
                bus = await Bus.connect(
                    settings.nats_url,
                    name=f"{service}-replay",
                    user=settings.nats_user,
                    password=(
                        settings.nats_password.get_secret_value()
                        if settings.nats_password
                        else None
                    ),
                    first_connect_deadline_s=settings.command_connect_timeout_s,
                )
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err,
            ) as bar:
                task = bar.add_task(f"replay {subject} -> {into}.", total=None)
                replaying, shown = True, bar
                try:
                    result = await replay(
                        settings.database_url.get_secret_value(),
                        bus,
                        request,
                        progress=lambda done, total: bar.update(task, completed=done, total=total),
                        so_far=so_far,
                        waiting=waiting,
                    )
                finally:
                    # Not drained: every message sent was judged by the server,
                    # or is said to be unjudged (a stopped replay); a drain
                    # would wait out a flush timeout (10 s) for a server that
                    # stalls, after the wait for its verdict already said
                    # what is known (SETTLE_ON_STOP_S, announced).
                    if bus is not None:
                        await bus.close_now()
            report(result)

        try:
            try:
                announce_store()
            except KeyboardInterrupt:
                # Ctrl-C while the store is checked: nothing went out, and it
                # ends as a later Ctrl-C does.
                raise ReplayInterrupted(ReplayResult()) from None
            with asyncio.Runner() as runner:
                try:
                    runner.run(go())
                except KeyboardInterrupt:
                    # Before replay() runs (NATS connected to): nothing went
                    # out. Once it runs, a second Ctrl-C while the stopped
                    # replay waits for the server's verdict on its last
                    # messages: what is known now, those not judged said so
                    # (it ended bare, exit 130, and nobody knew where to
                    # resume). Said at once, before the runner's close
                    # cancels what still runs and waits for it.
                    interrupted(
                        so_far.interrupted() if replaying else ReplayInterrupted(ReplayResult())
                    )
        except (BusUnavailable, StoreUnavailable) as e:
            fail(e, 1)
        except ReplayInterrupted as e:
            interrupted(e)
        except ReplayStoreLost as e:
            report(e.result)
            fail(f"{e.cause}; {how_far(e, from_seq)}", 1)
        except ReplayBusLost as e:
            report(e.result)
            fail(f"NATS at {e.url} was lost mid-replay ({e.cause}); {how_far(e, from_seq)}", 1)
        except ReplayRefused as e:
            report(e.result)
            allowed = into == REPLAY_PREFIX or into.startswith(f"{REPLAY_PREFIX}.")
            fail(
                f"{e}. Hint: replays may be published only under '{REPLAY_PREFIX}.>'"
                + ("" if allowed else f" (--into {into!r} is outside it)")
                + ", and only by the NATS users recorder and operator "
                "(deploy/nats/nats-server.conf); name one with TRADEBUS_NATS_USER and "
                "TRADEBUS_NATS_PASSWORD (the env file `tradebus up` writes signs in as operator)",
                1,
            )
