"""One sweep job's process tree, started in its own session so that it can be signalled and killed as a whole.

A job started in the sweep's own process group gets the terminal's Ctrl-C directly, but a `kill` of the
sweep process reaches no job, and torchrun's ranks survive a killed torchrun (they are re-parented to PID 1).
Here each job leads its own session: the sweep forwards the signals it gets to the job's leader (torchrun or
the app), waits for the leader's own shutdown, and finally SIGKILLs whatever is left of the group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence


class JobProcess:
    """A running job: `poll()` it, `forward()` a signal to its leader, `kill_group()` at the end."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str]) -> None:
        self.popen = subprocess.Popen(list(command), env=dict(env), start_new_session=True)
        self.pgid = self.popen.pid  # a session leader's pid is its process group id
        self.started = time.monotonic()

    def poll(self) -> int | None:
        """The leader's exit status once it exited (negative: killed by that signal), else None."""
        return self.popen.poll()

    def forward(self, signum: int) -> None:
        """Send `signum` to the leader, which shuts its own children down (torchrun: SIGTERM, then SIGKILL)."""
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signum)

    def group_alive(self) -> bool:
        """Whether any process of the job's group still exists (the leader included, until reaped)."""
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # a member changed user: it exists
            return True
        return True

    def kill_group(self) -> None:
        """SIGKILL every process left in the job's group (orphaned ranks included), then reap the leader."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGKILL)
        self.popen.wait()

    def seconds(self) -> float:
        return round(time.monotonic() - self.started, 1)
