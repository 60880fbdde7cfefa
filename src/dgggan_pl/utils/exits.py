"""How the command-line tools end when they are stopped: one line and the shell's status for the signal.

Ctrl+C (SIGINT) exits 130 and `kill` (SIGTERM) 143 (128 + the signal number, as a shell reports a process
killed by it), never 0 and never with a traceback. Both signals raise `Interrupted` in the process that
installed the handlers, so `finally` blocks run and atomic writes remove their temp files on the way out.

While a Lightning Trainer runs, its own SIGTERM handler is the active one and calls this one as well; then this
one does nothing and Lightning stops at the next batch end with `SIGTERMException` (a `SystemExit` without a
code, i.e. status 0), which `exit_status` maps to 143 too. Forked children (DataLoader or pool workers) get the
default behaviour, not the exception.

A handler runs only when the main thread returns to the interpreter; a training rank blocked in a collective
never does. `dgggan_pl.distributed.watch` ends such a rank with the same line and status.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

SIGNAL_EXIT_BASE = 128  # a shell reports a process killed by signal N as 128 + N
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (a BaseException, like KeyboardInterrupt: `except Exception` must not eat it)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def exit_status(error: BaseException) -> int | None:
    """128 + the signal for an interruption (SIGINT 130, SIGTERM 143), None for any other error."""
    if isinstance(error, Interrupted):
        return SIGNAL_EXIT_BASE + error.signum
    # Lightning's exception, looked up only where Lightning is loaded: inference entry points never import it.
    lightning = sys.modules.get("lightning.pytorch.utilities.exceptions")
    if lightning is not None and isinstance(error, lightning.SIGTERMException):
        return SIGNAL_EXIT_BASE + signal.SIGTERM
    if isinstance(error, KeyboardInterrupt):
        return SIGNAL_EXIT_BASE + signal.SIGINT
    return None


def signal_name(status: int) -> str:
    return signal.Signals(status - SIGNAL_EXIT_BASE).name


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """Within the block SIGINT and SIGTERM raise `Interrupted` in this process (see the module docstring).

    A handler someone else installed (e.g. a cluster launcher's) is left in place; so is everything outside
    the main thread, where Python cannot set signal handlers.
    """
    owner = os.getpid()

    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:  # a forked worker: behave as if no handler had been installed
            signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)
            os.kill(os.getpid(), signum)
            return
        if signal.getsignal(signum) is not handler:  # a Trainer's handler called this one: it stops itself
            return
        raise Interrupted(signum)

    previous = {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS}
    replaceable = (signal.SIG_DFL, signal.default_int_handler, None)
    with contextlib.suppress(ValueError):  # not the main thread
        for signum, old in previous.items():
            if old in replaceable:
                signal.signal(signum, handler)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError, TypeError):
            for signum, old in previous.items():
                if signal.getsignal(signum) is handler and old is not None:
                    signal.signal(signum, old)


def interruption_line(error: BaseException, prog: str, advice: str) -> str | None:
    """`<prog>: stopped by SIGINT (Ctrl+C); <advice>` for an interruption, else None."""
    status = exit_status(error)
    if status is None:
        return None
    how = " (Ctrl+C)" if status == SIGNAL_EXIT_BASE + signal.SIGINT else ""
    return f"{prog}: stopped by {signal_name(status)}{how}; {advice}"


def report_interruption(error: BaseException, prog: str, advice: str) -> int | None:
    """Print `interruption_line` to stderr and return the exit status (None: not an interruption, the caller
    re-raises)."""
    line = interruption_line(error, prog, advice)
    if line is None:
        return None
    print(line, file=sys.stderr, flush=True)
    return exit_status(error)


def interruptible(prog: str, advice: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a CLI `main` returning its exit status: signals end it with one line and 130 / 143."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapped(*args: Any, **kwargs: Any) -> int:
            with exit_on_signals():
                try:
                    return main(*args, **kwargs)
                except BaseException as error:
                    status = report_interruption(error, prog, advice)
                    if status is None:
                        raise
                    return status

        return wrapped

    return decorate
