"""Ending a rank that cannot end itself: another rank failed, or a stop signal finds it stuck in a collective.

A Python signal handler runs only when the main thread returns to the interpreter. A rank blocked in a
collective (an all-reduce that waits for a rank that is gone or stopped, NCCL's or gloo's) or in the start-up
rendezvous never does, so Ctrl+C and `kill` used to do nothing until the process-group timeout. `RankWatch` is a
daemon thread beside the training:

- **stop signals**: `signal.set_wakeup_fd` makes the interpreter's C-level handler write each caught signal's
  number to a pipe, which the thread reads at once. After SIGINT or SIGTERM it samples the main thread's
  Python frame; when that frame has not moved for `stop_grace_s` (the handler could not run: the main thread
  is stuck in C), it ends the process with the signal's status (130 / 143). A main thread that runs Python
  (Lightning stopping at the batch end, a requeue checkpoint being saved) is left to finish.
- **other ranks**: a rank that fails publishes one line under the group's `abort` key (`RankGroup.abort`);
  every other rank's thread polls it every `watch_interval_s` and ends its own process with that rank's status
  and a line naming it. A failure ends them at once; a rank that was stopped by a signal ends them only after
  `stop_grace_s` unless they received a stop signal themselves (SLURM, torchrun and Ctrl+C signal every rank:
  each then stops on its own, e.g. after saving a requeue checkpoint). Losing the store (rank 0's process is
  gone) ends the rank too.
- **this node's child processes** (the ranks `cluster.start_node_processes` started): one that ends non-zero
  without any abort published (killed, out of memory, a crash below Python, a failure before the rendezvous)
  ends this rank as well, naming it.
  This replaces Lightning's observer thread, which SIGKILLed the parent before it could record the run.

Before the process ends, a rank ended for its own stop signal publishes its abort too (`publish`), and
`exit_hook` (set by `dgggan_pl.train`) records the run as failed, releases its lock and returns the line to
print. The exit is `os._exit`: the main thread is stuck, so nothing else would run.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dgggan_pl.utils.exits import HANDLED_SIGNALS, SIGNAL_EXIT_BASE, Interrupted, exit_status

ABORT_KEY = "abort"
FAILED, STOPPED = "failed", "stopped"
EXIT_FAILED = 1

ExitHook = Callable[[BaseException], str | None]


class RankFailure(RuntimeError):
    """Another rank of the launch refused to start or failed; this one stops too (`status`: that rank's exit)."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Abort:
    """What a rank that ended publishes for the others: who, how (failed | stopped), its exit status and line."""

    rank: int
    kind: str
    status: int
    line: str

    def encode(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def decode(cls, raw: bytes | str) -> Abort:
        return cls(**json.loads(raw))

    def failure(self) -> RankFailure:
        """The error another rank raises for this abort: one line naming this rank, with its exit status."""
        what = f"failed: {self.line}" if self.kind == FAILED else self.line
        return RankFailure(f"stopped because rank {self.rank} {what}", self.status)

    @classmethod
    def of(cls, rank: int, error: BaseException) -> Abort:
        """The abort for `error` ending rank `rank`: a signal or a deliberate exit is `stopped`, anything else
        `failed` with the error's one line."""
        status = exit_status(error)
        if status is not None:
            return cls(
                rank, STOPPED, status, f"was stopped by {signal.Signals(status - SIGNAL_EXIT_BASE).name}"
            )
        if isinstance(error, SystemExit):
            code = error.code if isinstance(error.code, int) and error.code else EXIT_FAILED
            return cls(rank, STOPPED, code, f"exited with status {code}")
        if isinstance(error, RankFailure):
            return cls(rank, FAILED, error.status, str(error))
        return cls(rank, FAILED, EXIT_FAILED, one_line(error))


def one_line(error: BaseException) -> str:
    """The first line of `error`, with the first line of its cause when it has one (Hydra's `Error in call to
    target ...:` says what failed, its cause why)."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    cause = error.__cause__
    if cause is not None and str(cause).strip():
        line += f" ({type(cause).__name__}: {str(cause).strip().splitlines()[0]})"
    return line


def lost_a_peer(error: BaseException) -> bool:
    """Whether `error` is a collective or the store failing because another rank is gone (gloo's closed
    connection, NCCL's and the store's `DistError`s): then that rank's failure is the one to report."""
    import torch.distributed as dist

    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("/gloo/" in text or "NCCL" in text)


def lost_contact(error: BaseException) -> Abort:
    """Rank 0 hosts the store: when it cannot be reached, rank 0's process has ended."""
    return Abort(
        0, FAILED, EXIT_FAILED, f"its process ended (its store does not answer: {type(error).__name__})"
    )


_wakeup_owner: list[int] = []


def _drop_wakeup_fd_in_child() -> None:
    """A forked DataLoader worker must not report its own signals through the parent's pipe."""
    if _wakeup_owner and _wakeup_owner[0] != os.getpid():
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        _wakeup_owner.clear()


os.register_at_fork(after_in_child=_drop_wakeup_fd_in_child)


class RankWatch(threading.Thread):
    """The watcher thread of one rank (see the module docstring); `stop()` before the process ends normally."""

    def __init__(self, rank: int, stop_grace_s: float, interval_s: float) -> None:
        super().__init__(daemon=True, name="dgggan-rank-watch")
        self.rank = rank
        self.stop_grace_s, self.interval_s = stop_grace_s, interval_s
        self.read_abort: Callable[[], Abort | None] | None = None  # set once the ranks share a store
        self.publish: Callable[[BaseException], Abort | None] | None = None
        self.exit_hook: ExitHook | None = None
        self.stop_signal: int | None = None
        self.seen: Abort | None = None  # another rank's abort, once read
        self.any_abort = False  # some rank (this one included) published an abort: its line says why
        self.children: list[subprocess.Popen] = []  # set by the group: this node's ranks this process started
        self._child_ended_since: float | None = None
        self._stopping = threading.Event()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._previous_fd: int | None = None
        self._main = threading.main_thread()
        self._frame: tuple[int, int] | None = None
        self._still_since: float | None = None
        self._peer_stopped_since: float | None = None

    def start(self) -> None:
        """Catch stop signals through the wakeup pipe (main thread only), then start polling."""
        try:
            self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
            _wakeup_owner[:] = [os.getpid()]
        except ValueError:  # not the main thread: other ranks' aborts are still watched
            self._previous_fd = None
        super().start()

    def stop(self) -> None:
        """End the thread and give the wakeup fd back (the process ends normally from here)."""
        self._stopping.set()
        if self._previous_fd is not None:
            with contextlib.suppress(ValueError):
                signal.set_wakeup_fd(self._previous_fd)
            _wakeup_owner.clear()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=max(1.0, 4 * self.interval_s))
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                readable, _, _ = select.select([self._read_fd], [], [], self.interval_s)
            except (OSError, ValueError):  # the pipe was closed by stop()
                return
            if self._stopping.is_set():
                return
            if readable:
                self._read_signals()
            if self.stop_signal is not None:
                self._check_main_thread()
            self._check_peers()
            self._check_children()

    def _read_signals(self) -> None:
        with contextlib.suppress(OSError):
            for signum in os.read(self._read_fd, 512):
                if signum in HANDLED_SIGNALS and self.stop_signal is None:
                    self.stop_signal = signum

    def _check_main_thread(self) -> None:
        """End the process once the main thread's Python frame has not moved for `stop_grace_s`."""
        frame = sys._current_frames().get(self._main.ident or -1)
        if frame is None:
            return
        now, position = time.monotonic(), (id(frame), frame.f_lasti)
        if position != self._frame:
            self._frame, self._still_since = position, now
        elif self._still_since is not None and now - self._still_since >= self.stop_grace_s:
            assert self.stop_signal is not None
            self.end(Interrupted(self.stop_signal), SIGNAL_EXIT_BASE + self.stop_signal)

    def _check_peers(self) -> None:
        if self.read_abort is None:
            return
        try:
            abort = self.read_abort()
        except Exception as error:  # rank 0's store is gone: its process ended
            if not self._stopping.is_set():
                failure = (self.seen or lost_contact(error)).failure()
                self.end(failure, failure.status)
            return
        if abort is None:
            return
        self.any_abort = True
        if abort.rank == self.rank:
            return
        self.seen = abort
        if abort.kind == STOPPED:
            if self.stop_signal is not None:  # stopped too: this rank stops itself
                return
            now = time.monotonic()
            self._peer_stopped_since = self._peer_stopped_since or now
            if now - self._peer_stopped_since < self.stop_grace_s:
                return
        failure = abort.failure()
        self.end(failure, failure.status)

    def _check_children(self) -> None:
        """End this rank when a child rank ended non-zero and no rank published why within two watch intervals
        (a child that fails in Python publishes before it exits; one stopped with this rank is left to it)."""
        if not self.children or self.any_abort or self.stop_signal is not None or self._stopping.is_set():
            return
        ended = [(local, child) for local, child in enumerate(self.children, start=1) if child.poll()]
        if not ended:
            return
        now = time.monotonic()
        self._child_ended_since = self._child_ended_since or now
        if now - self._child_ended_since < 2 * self.interval_s:
            return
        local, child = ended[0]
        code = int(child.returncode)
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        status = SIGNAL_EXIT_BASE - code if code < 0 else code
        failure = RankFailure(
            f"stopped because rank {self.rank + local} (pid {child.pid}) {how} before it could tell the others why",
            status,
        )
        self.end(failure, failure.status)

    def end(self, error: BaseException, status: int) -> None:
        """Publish this rank's own stop, run the exit hook, print its line (or the error's) and end the process
        with `status`."""
        line: Any = None
        if self.publish is not None and not isinstance(error, RankFailure):
            with contextlib.suppress(Exception):
                self.publish(error)
        if self.exit_hook is not None:
            with contextlib.suppress(Exception):
                line = self.exit_hook(error)
        if line is None:
            line = f"error: {error}" if isinstance(error, RankFailure) else str(error)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            print(line, file=sys.stderr, flush=True)
        os._exit(status)
