"""The ranks of one launch, joined before the run folder is touched, and torch.distributed's process group.

Every rank meets the others at torch.distributed's `env://` rendezvous, at the MASTER_ADDR/MASTER_PORT that
Lightning's cluster environment gives (as Lightning itself would before its `init_process_group`). The
key-value store that comes out of it serves three purposes:

- the start-up agreement (`exchange`, used by `dgggan_pl.startup`): rank 0's claim of the run folder and every
  rank's checks, so that a refusal on any rank stops every rank at once;
- a failing rank's one line for the others (`abort`, read by `watch.RankWatch`);
- torch.distributed's default process group (`init_process_group`, with `distributed.timeout_s`), which
  Lightning's DDP strategy then finds initialised and uses as it is (`DDPStrategy.setup_distributed` skips its
  own `init_process_group`).

Why the store and not collectives for the agreement: it needs no process group yet (a refusal never creates
one), no GPU (an NCCL collective needs its device set first), and its waits end after `startup_timeout_s`.
A process joins once (`join`); the run folder's resolver may have joined already when the ranks had to agree
on a new folder's name (`dgggan_pl.runs`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from dgggan_pl.distributed.cluster import RankLayout, cluster_environment, node_children
from dgggan_pl.distributed.watch import (
    ABORT_KEY,
    Abort,
    ExitHook,
    RankFailure,
    RankWatch,
    lost_a_peer,
    lost_contact,
    one_line,
)

KEY_PREFIX = "dgggan"
PROCESS_GROUP_PREFIX = "default_pg"  # the prefix torch's own init_process_group gives the rendezvous store
DONE = "done"
# Rank 0 hosts the store: after publishing its abort it waits this many watch intervals, so the others read it.
_ABORT_LINGER_INTERVALS = 3


@dataclass(frozen=True)
class GroupSettings:
    """`cfg.distributed` (conf/train.yaml says why each default)."""

    timeout_s: float
    startup_timeout_s: float
    stop_grace_s: float
    watch_interval_s: float
    shared_folder_wait_s: float

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> GroupSettings:
        return cls(**{name: float(node[name]) for name in cls.__dataclass_fields__})


class RankGroup:
    """This process's launch: its layout, and for several ranks the shared store and the watcher thread."""

    def __init__(self, layout: RankLayout, settings: GroupSettings) -> None:
        self.layout = layout
        self.settings = settings
        self.store: dist.Store | None = None
        self.watch: RankWatch | None = None
        self._base_store: dist.Store | None = None
        self._abort_client: dist.Store | None = None
        self._lingered = False  # rank 0 waits once after publishing its abort, however often it is asked
        self._exit_hook: ExitHook | None = None

    @property
    def rank(self) -> int:
        return self.layout.global_rank

    @property
    def world_size(self) -> int:
        return self.layout.world_size

    def rendezvous(self) -> None:
        """Meet every rank within `startup_timeout_s` and start the watcher (a no-op for one process)."""
        if not self.layout.distributed or self.store is not None:
            return
        self.watch = RankWatch(self.rank, self.settings.stop_grace_s, self.settings.watch_interval_s)
        self.watch.exit_hook = self._exit_hook
        # a child rank that dies before it meets the others ends this rank too
        self.watch.children = node_children()
        self.watch.start()  # from here a stop signal ends a rank stuck waiting for the others
        environment = cluster_environment()
        host, port = environment.main_address, environment.main_port
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = host, str(port)
        timeout = timedelta(seconds=self.settings.startup_timeout_s)
        try:
            store, _, _ = next(dist.rendezvous("env://", self.rank, self.world_size, timeout=timeout))
        except (RuntimeError, ValueError) as error:  # DistNetworkError, DistStoreError: no peer, port in use
            raise RankFailure(
                f"the {self.world_size} ranks did not all meet at MASTER_ADDR={host} MASTER_PORT={port} within "
                f"distributed.startup_timeout_s={self.settings.startup_timeout_s:g} ({one_line(error)}): start "
                "every rank with the same MASTER_ADDR and MASTER_PORT (a free port on rank 0's node)"
            ) from None
        store.set_timeout(timeout)
        # torchrun's agent keeps its store across restarts of the workers: each attempt gets its own keys
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self._base_store = store
        self.store = dist.PrefixStore(f"{KEY_PREFIX}/{attempt}", store)
        client = dist.TCPStore(host, port, is_master=False, timeout=timeout, wait_for_workers=False)
        self._abort_client = dist.PrefixStore(f"{KEY_PREFIX}/{attempt}", client)
        # The watcher's own connection: never queued behind a wait of the main thread on the store.
        self.watch.read_abort, self.watch.publish = self.peer_abort, self.abort

    def exchange(self, name: str, value: Any) -> list[Any]:
        """Every rank's JSON `value` for step `name`, in rank order: an all-gather through the store, each wait
        bounded by `startup_timeout_s` (one process: `[value]`)."""
        if self.store is None:
            return [value]
        self.store.set(f"{name}/{self.rank}", json.dumps(value))
        values = []
        for rank in range(self.world_size):
            try:
                values.append(json.loads(self.store.get(f"{name}/{rank}")))
            except RuntimeError as error:
                gone = "rank 0 (its store)" if rank == 0 else f"rank {rank}"
                raise RankFailure(
                    f"no answer from {gone} at start-up step '{name}' within distributed.startup_timeout_s="
                    f"{self.settings.startup_timeout_s:g} ({one_line(error)}); see that rank's output"
                ) from None
        return values

    def init_process_group(self, backend: str) -> None:
        """torch.distributed's default process group on this store, with `distributed.timeout_s`."""
        if self._base_store is None or dist.is_initialized():
            return
        timeout = timedelta(seconds=self.settings.timeout_s)
        self._base_store.set_timeout(timeout)
        store = dist.PrefixStore(PROCESS_GROUP_PREFIX, self._base_store)
        dist.init_process_group(
            backend, store=store, rank=self.rank, world_size=self.world_size, timeout=timeout
        )

    def set_exit_hook(self, hook: ExitHook | None) -> None:
        """What the watcher does before it ends this process (record the run, release its lock, the line)."""
        self._exit_hook = hook
        if self.watch is not None:
            self.watch.exit_hook = hook

    def peer_abort(self) -> Abort | None:
        """The first abort any rank published (None if none); raises when the store is gone."""
        client = self._abort_client
        if client is None or not client.check([ABORT_KEY]):
            return None
        return Abort.decode(client.get(ABORT_KEY))

    def abort(self, error: BaseException) -> Abort | None:
        """Publish that this rank ends with `error` (unless another rank's abort came first); returns the first
        abort, this one or the earlier one (None for one process). When the store is gone, rank 0 ended: the
        abort it published (if this rank read it) or `lost_contact`."""
        client = self._abort_client
        if client is None:
            return None
        mine = Abort.of(self.rank, error)
        try:
            first = Abort.decode(client.compare_set(ABORT_KEY, "", mine.encode()))
        except RuntimeError as gone:
            seen = self.watch.seen if self.watch is not None else None
            return seen if seen is not None or self.rank == 0 else lost_contact(gone)
        if first.rank == self.rank == 0 and not self._lingered:
            self._lingered = True
            time.sleep(_ABORT_LINGER_INTERVALS * self.settings.watch_interval_s)  # the others read it first
        return first

    def failure_of(self, error: BaseException) -> BaseException:
        """Publish `error` ending this rank (`abort`) and return what to report: `error` itself, or, when another
        rank ended first and `error` is this rank losing it (`lost_a_peer`: a collective on a closed connection),
        `RankFailure` naming that rank. Any error of this rank's own (the same bad config on every rank, its own
        stop signal) is reported as it is."""
        first = self.abort(error)
        if getattr(error, "every_rank", False):  # a stop every rank made at the same step (a SLURM requeue)
            return error
        if first is None or first.rank == self.rank or not lost_a_peer(error):
            return error
        return first.failure()

    def leave(self, completed: bool) -> None:
        """Stop the watcher. After a completed run every rank says so and rank 0, the store's host, waits for
        all of them (within `timeout_s`) before the store goes; then the process group is destroyed."""
        if self.watch is not None:
            self.watch.stop()
            self.watch = None
        if self.store is not None and completed:
            self.store.set(f"{DONE}/{self.rank}", "1")
            if self.rank == 0:
                self._wait_for_the_others()
            if dist.is_initialized():
                dist.destroy_process_group()
        self.store = self._base_store = self._abort_client = None

    def _wait_for_the_others(self) -> None:
        """Rank 0 keeps the store up until every rank said it is done, another rank published its end (it has
        read nothing more from the store since), or `timeout_s` passed: its own run is complete either way."""
        assert self.store is not None
        keys = [f"{DONE}/{rank}" for rank in range(self.world_size)]
        deadline = time.monotonic() + self.settings.timeout_s
        while not self.store.check(keys):  # polled: a timed-out wait would log a c10d warning each time
            if time.monotonic() >= deadline or self.peer_abort() is not None:
                return
            time.sleep(self.settings.watch_interval_s)


_joined: list[RankGroup] = []  # this process's group, kept between the run folder's resolver and `train`


def join(layout: RankLayout, settings: GroupSettings, exit_hook: ExitHook | None = None) -> RankGroup:
    """The group of this launch, meeting the other ranks the first time it is asked for; `exit_hook` is the
    watcher's (`RankGroup.set_exit_hook`) from the rendezvous on."""
    if _joined and _joined[0].layout == layout:
        group = _joined[0]
    else:
        leave_joined(completed=False)
        group = RankGroup(layout, settings)
        _joined.append(group)
    if exit_hook is not None:
        group.set_exit_hook(exit_hook)
    try:
        group.rendezvous()
    except BaseException:
        leave_joined(completed=False)
        raise
    return group


def leave_joined(completed: bool) -> None:
    """Leave the group this process joined, if any (see `RankGroup.leave`)."""
    if _joined:
        _joined.pop().leave(completed)
