"""The main process's side: start `dns.workers - 1` worker processes, tell them what to serve, take their log rows
and counters, and start a worker again when it dies (with a growing pause, so a worker that cannot start does not
spin)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from filterd.config.schema import Config, Endpoint
from filterd.errors import FilterdError
from filterd.metrics import Metrics
from filterd.pipeline.ddr import Designation
from filterd.querylog.events import Row
from filterd.workers.channel import Channel
from filterd.workers.merge import Exported

log = logging.getLogger(__name__)

#: Environment a worker must not inherit: systemd's notify socket (only the main process says READY=1) and
#: socket activation.
_PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
#: A worker that ran this long before it died starts again at once; one that dies sooner waits longer each time.
_STEADY = 60.0
_MAX_PAUSE = 30.0


class WorkerError(FilterdError):
    pass


@dataclass(frozen=True, slots=True)
class Serve:
    """What a worker answers with: sent at its start and again after each change in the main process."""

    #: The config as a worker runs it: `dns.listen` is the addresses the main process bound (ports chosen), and
    #: the HTTP listeners are the main process's alone (as are DoT/DoH and state_dir, which a worker never opens).
    config: Config
    upstreams: tuple[Endpoint, ...]
    #: The list snapshot the main process maps (a worker maps the same file) and its fingerprint.
    snapshot: str
    fingerprint: str
    #: The admin's local entries (`filterd block/allow`).
    blocked: frozenset[str]
    allowed: frozenset[str]
    #: Whether answers are relayed for the query log and safeguarding alerts.
    events: bool
    #: DDR's answers for the main process's DoT/DoH (None: it serves neither).
    ddr: tuple[Designation, tuple[str, ...]] | None = None


@dataclass(eq=False)
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    channel: Channel
    started: float
    ready: asyncio.Future[None]
    sent: Serve
    reader: asyncio.Task[None] | None = None
    #: Its counters as last sent (used when it does not answer a scrape in time).
    samples: list[Exported] = field(default_factory=list)
    asked: dict[int, asyncio.Future[list[Exported]]] = field(default_factory=dict)


class WorkerPool:
    def __init__(
        self,
        count: int,
        serve: Callable[[], Serve],
        on_rows: Callable[[list[Row], int], None],
        metrics: Metrics,
        *,
        verbose: bool = False,
        start_timeout: float = 60.0,
    ) -> None:
        self.count = count
        self.serve = serve
        self.on_rows = on_rows
        self.metrics = metrics
        self.verbose = verbose
        self.start_timeout = start_timeout
        self.workers: dict[int, _Worker] = {}
        self._pauses: dict[int, float] = {}
        self._restarts: dict[int, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._requests = itertools.count(1)
        self._sync_due = False
        #: Set once every worker answered at start; from then on a worker that exits is started again.
        self.started = False
        self.stopping = False

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers.values() if w.process.returncode is None]

    async def start(self) -> None:
        """Start every worker and wait until each answers DNS; WorkerError (with the worker's reason) if one cannot."""
        for index in range(1, self.count):
            await self._spawn(index)
        futures = [w.ready for w in self.workers.values()]
        done, pending = await asyncio.wait(futures, timeout=self.start_timeout)
        if pending:
            raise WorkerError(f"dns.workers: a worker did not start within {self.start_timeout:.0f} s")
        errors = [future.exception() for future in done]  # (each one read: none is left unretrieved)
        for error in errors:
            if error is not None:
                raise error
        self.started = True
        self._export()

    async def _spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
        try:
            # -P: not the working directory on sys.path (the installed filterd runs, as for the compile child)
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",
                "-m",
                "filterd.workers.worker",
                str(theirs.fileno()),
                str(index),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
            )
        except OSError as exc:
            ours.close()
            raise WorkerError(f"dns.workers: cannot start a worker: {exc}") from None
        finally:
            theirs.close()
        channel = await Channel.open(ours)
        serve = self.serve()
        worker = _Worker(index, process, channel, time.monotonic(), asyncio.get_running_loop().create_future(), serve)
        channel.send("start", {"index": index, "serve": serve, "verbose": self.verbose})
        self.workers[index] = worker
        worker.reader = asyncio.get_running_loop().create_task(self._read(worker))

    async def _read(self, worker: _Worker) -> None:
        channel = worker.channel
        while (message := await channel.receive()) is not None:
            kind, payload = message
            if kind == "rows":
                rows, dropped = payload
                self.on_rows(rows, dropped)
            elif kind == "metrics":
                request, samples = payload
                worker.samples = samples
                asked = worker.asked.pop(request, None)
                if asked is not None and not asked.done():
                    asked.set_result(samples)
            elif kind == "ready":
                log.info(
                    "dns: worker %d (pid %d) answering on %s", worker.index, worker.process.pid, ", ".join(payload)
                )
                if not worker.ready.done():
                    worker.ready.set_result(None)
                if self.serve() != worker.sent:  # something changed while it started
                    self._send(worker)
            elif kind == "failed" and not worker.ready.done():
                worker.ready.set_exception(WorkerError(f"dns.workers: worker {worker.index}: {payload}"))
        channel.close()
        status = await worker.process.wait()
        for asked in worker.asked.values():
            if not asked.done():
                asked.set_result(worker.samples)
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        self._export()
        if self.stopping:
            return
        if not self.started:  # at filterd's start: it fails to start (start() says why)
            if not worker.ready.done():
                worker.ready.set_exception(
                    WorkerError(f"dns.workers: worker {worker.index} exited (status {status}) before it answered")
                )
            return
        ran = time.monotonic() - worker.started
        pause = 0.0 if ran >= _STEADY else min(_MAX_PAUSE, max(1.0, 2 * self._pauses.get(worker.index, 0.5)))
        self._pauses[worker.index] = pause
        log.error(
            "dns: worker %d (pid %d) exited (status %s) after %.0f s; starting it again in %.0f s",
            worker.index,
            worker.process.pid,
            status,
            ran,
            pause,
        )
        if not worker.ready.done():
            worker.ready.set_exception(WorkerError(f"dns.workers: worker {worker.index} exited (status {status})"))
        self.metrics.dns_worker_restarts.inc()
        self._restarts[worker.index] = asyncio.get_running_loop().call_later(pause, self._restart_soon, worker.index)

    def _restart_soon(self, index: int) -> None:
        task = asyncio.get_running_loop().create_task(self._restart(index))
        self._tasks.add(task)  # (a task nobody holds may be collected before it ends)
        task.add_done_callback(self._tasks.discard)

    async def _restart(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self.stopping or index in self.workers:
            return
        try:
            await self._spawn(index)
        except WorkerError as exc:
            log.error("%s", exc)
            return
        with contextlib.suppress(Exception):  # its own failure is logged by _read; it is started again from there
            await asyncio.wait_for(asyncio.shield(self.workers[index].ready), self.start_timeout)
        self._export()

    def _export(self) -> None:
        self.metrics.dns_workers.set(
            1 + sum(1 for w in self.workers.values() if w.ready.done() and not w.ready.exception())
        )

    def sync(self) -> None:
        """Tell every worker what to serve now (after a reload, a list update, a local entry); once per loop turn
        however many changes came together, and only to workers whose last word differs."""
        if self._sync_due or not self.workers:
            return
        self._sync_due = True
        asyncio.get_running_loop().call_soon(self._sync_now)

    def _sync_now(self) -> None:
        self._sync_due = False
        serve = self.serve()
        for worker in self.workers.values():
            if serve != worker.sent:
                self._send(worker, serve)

    def _send(self, worker: _Worker, serve: Serve | None = None) -> None:
        worker.sent = serve if serve is not None else self.serve()
        worker.channel.send("serve", worker.sent)

    async def samples(self, timeout: float = 1.0) -> list[list[Exported]]:
        """Every worker's counters now (or as last sent, for one that does not answer within `timeout`)."""
        loop = asyncio.get_running_loop()
        waiting = []
        for worker in self.workers.values():
            if not worker.ready.done():
                continue
            request = next(self._requests)
            future: asyncio.Future[list[Exported]] = loop.create_future()
            worker.asked[request] = future
            worker.channel.send("metrics", request)
            waiting.append((worker, request, future))
        if waiting:
            await asyncio.wait([f for _, _, f in waiting], timeout=timeout)
        out = []
        for worker, request, future in waiting:
            worker.asked.pop(request, None)
            out.append(future.result() if future.done() else worker.samples)
        return out

    async def stop(self, timeout: float = 5.0) -> None:
        self.stopping = True
        for handle in self._restarts.values():
            handle.cancel()
        self._restarts.clear()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        workers = list(self.workers.values())
        for worker in workers:
            worker.channel.send("stop")
        for worker in workers:
            try:
                await asyncio.wait_for(worker.process.wait(), timeout)
            except TimeoutError:
                log.warning("dns: worker %d (pid %d) did not stop; killed", worker.index, worker.process.pid)
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.process.wait()
            if worker.reader is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await worker.reader
            worker.channel.close()
        self.workers.clear()
        self._export()


def worker_config(config: Config, listening: list[Endpoint]) -> Config:
    """The config a worker runs: the main process's bound DNS addresses; none of what the main process alone
    serves (the HTTP listeners; a worker never opens state_dir)."""
    return replace(
        config,
        dns=replace(config.dns, listen=tuple(listening)),
        metrics=None,
        blockpage=None,
        admin=None,
    )
