"""Stops a strategy callback that runs past its time budget.

The strategies of one runner share one thread: while a callback runs, no
other strategy of the process is called, and asyncio cannot take the thread
back from it. An endless loop in one ``on_bar`` (a bad parameter, a bug)
would freeze every strategy of the runner, their exits included.

The watchdog can take it back. Each callback runs under :meth:`Watchdog.run`
with a budget. A thread of the watchdog looks at the running callback a few
times a second; once it is past its budget, the thread sends ``SIGUSR2`` to
the process, and the handler (which the interpreter runs in the main thread,
between two bytecodes of whatever runs there) raises :class:`CallbackOverrun`
inside the callback. The host treats that as the strategy's fault: it is
recorded, and the strategy is stopped or restarted by its policy, as for any
exception; the other strategies go on.

:class:`CallbackOverrun` derives from ``BaseException``, so a strategy's
``except Exception`` does not swallow it; a strategy that swallows it all the
same gets it again after each further budget.

What it cannot stop: a callback stuck in C code that holds the interpreter
lock (one long C call, a deadlock in an extension) until that returns.
Python code, ``time.sleep`` and blocking socket calls are interrupted.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

#: The signal the watchdog thread sends to the main thread.
SIGNAL = signal.SIGUSR2
#: How often the watchdog thread looks (seconds): an overrun is stopped
#: within its budget plus this.
DEFAULT_TICK_S = 0.05


class CallbackOverrun(BaseException):
    """Raised inside a callback that ran past its budget."""

    def __init__(self, budget_s: float) -> None:
        super().__init__(f"the callback ran past its budget of {budget_s:g}s")
        self.budget_s = budget_s


class Watchdog:
    """One per process; :meth:`start` it in the main thread before use.

    Until it is started (and after :meth:`close`), :meth:`run` just calls:
    the in-process runtime and the backtest run without one.
    """

    def __init__(self, tick_s: float = DEFAULT_TICK_S) -> None:
        self.tick_s = tick_s
        #: The callback running under :meth:`run`: (deadline, budget), by
        #: time.monotonic(); None when none runs. Written by the main thread
        #: only, read by the watchdog thread.
        self._armed: tuple[float, float] | None = None
        self._started = False
        self._main: int | None = None
        self._previous: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: How many callbacks were stopped.
        self.overruns = 0

    def start(self) -> Watchdog:
        """Install the signal handler and start the thread (main thread only)."""
        if self._started:
            return self
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("the watchdog must be started in the main thread")
        self._main = threading.get_ident()
        self._previous = signal.signal(SIGNAL, self._on_signal)
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="strategy-watchdog", daemon=True)
        self._started = True
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread and put the previous signal handler back."""
        if not self._started:
            return
        self._started = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._armed = None
        signal.signal(SIGNAL, self._previous if self._previous is not None else signal.SIG_DFL)

    def __enter__(self) -> Watchdog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ callbacks

    def run(self, call: Callable[[], None], budget_s: float | None) -> None:
        """``call()``, stopped by :class:`CallbackOverrun` once it runs longer
        than ``budget_s`` (no budget: just called)."""
        if not self._started or budget_s is None:
            call()
            return
        self._armed = (time.monotonic() + budget_s, budget_s)
        try:
            call()
        finally:
            self._armed = None

    def extend(self) -> None:
        """Give the running callback its whole budget again from now (for a
        callback that calls the strategy several times, as a warm-up does)."""
        armed = self._armed
        if armed is not None:
            self._armed = (time.monotonic() + armed[1], armed[1])

    # ------------------------------------------------------------ internals

    def _watch(self) -> None:
        main = self._main
        assert main is not None
        while not self._stop.wait(self.tick_s):
            armed = self._armed
            if armed is not None and time.monotonic() > armed[0]:
                with contextlib.suppress(ProcessLookupError):
                    signal.pthread_kill(main, SIGNAL)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        armed = self._armed
        if armed is None or time.monotonic() <= armed[0]:
            return  # the callback ended meanwhile
        where = _inside_run(frame)
        if where is None:
            self._armed = None  # no callback runs: nothing to stop
            return
        if where is frame:
            return  # in run() itself, between the callback and its end: it ends now
        # Once more after a further budget, should the strategy swallow this.
        self._armed = (time.monotonic() + armed[1], armed[1])
        self.overruns += 1
        raise CallbackOverrun(armed[1])


def _inside_run(frame: FrameType | None) -> FrameType | None:
    """The frame of :meth:`Watchdog.run` that ``frame`` runs under, if any."""
    code = Watchdog.run.__code__
    while frame is not None:
        if frame.f_code is code:
            return frame
        frame = frame.f_back
    return None
