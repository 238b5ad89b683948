"""A worker process (`python -m filterd.workers.worker FD INDEX`): the main process's pipeline on its own
SO_REUSEPORT sockets, answering DNS and nothing else, until the main process says stop or goes away.

It keeps no state of its own: the config, the list snapshot to map, the local entries and the upstreams come from
the main process (`Serve`), first at start and again after every change there; its answers go back there for the
query log and the alerts, and its counters when the metrics endpoint asks.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from filterd import logs
from filterd.app import App
from filterd.blocklists.compiled import CompiledMatcher
from filterd.blocklists.load import LoadedLists, Prepared
from filterd.querylog.events import RelayEvents, Row
from filterd.transport.handler import QueryHandler
from filterd.workers.channel import Channel
from filterd.workers.merge import export
from filterd.workers.pool import Serve

log = logging.getLogger(__name__)

#: Rows waiting for the main process beyond this many bytes: it is not keeping up, and a batch is dropped.
_MAX_BACKLOG = 8 << 20


def open_lists(serve: Serve) -> LoadedLists:
    """The main process's snapshot, mapped here too (the page cache holds one copy for every process)."""
    matcher = CompiledMatcher(Path(serve.snapshot))
    if matcher.fingerprint != serve.fingerprint:
        log.debug("lists: the snapshot changed again since; the main process's next word names it")
    return LoadedLists(matcher, matcher.entry_counts(), {})


class WorkerApp(App):
    """App's DNS side only: no state_dir, HTTP, DoT/DoH or list downloads (the main process's), and answers
    relayed to the main process for the query log and the alerts."""

    def __init__(self, serve: Serve, channel: Channel) -> None:
        super().__init__(serve.config)
        self.served = serve
        self.channel = channel
        self.reuse_port = self.join_port = True
        self.relay = RelayEvents(self._send_rows)

    def _send_rows(self, rows: list[Row], dropped: int) -> bool:
        if self.channel.backlog() > _MAX_BACKLOG:
            return False
        self.channel.send("rows", (rows, dropped))
        return True

    async def start(self, prepared: Prepared | None = None) -> None:
        """(`prepared` is the main process's business: a worker maps the snapshot it is told.)"""
        serve = self.served
        self.upstreams = serve.upstreams
        self.local_lists.blocked, self.local_lists.allowed = set(serve.blocked), set(serve.allowed)
        self.lists = open_lists(serve)
        self.pipeline = self.build_pipeline(self.lists, self.upstreams)
        assert self.resolver is not None
        await self.resolver.start()
        self.handler = QueryHandler(self.pipeline, self.metrics)
        self._configure_events()
        try:
            for endpoint in self.config.dns.listen:
                await self._listen_dns(endpoint, self.handler)
        except BaseException:
            await self.stop()
            raise
        self._start_group_tasks()

    async def apply(self, serve: Serve) -> None:
        """What the main process serves now: the parts that changed, swapped in as its own reload does."""
        old, self.served = self.served, serve
        assert self.lists is not None and self.policy is not None
        lists = self.lists
        if (serve.snapshot, serve.fingerprint) != (old.snapshot, old.fingerprint):
            lists = open_lists(serve)
        lists_changed = lists is not self.lists
        self.local_lists.blocked, self.local_lists.allowed = set(serve.blocked), set(serve.allowed)
        if (serve.config, serve.upstreams, serve.ddr) != (self.config, self.upstreams, old.ddr):
            await self._rebuild(serve.config, serve.upstreams, lists, lists_changed)
        elif lists_changed:
            self._swap_lists(lists)
        if (serve.blocked, serve.allowed) != (old.blocked, old.allowed):
            self.policy.changed()  # a cached answer may be for a name now blocked
        self._configure_events()

    def _designate(self) -> None:
        if self.served.ddr is not None:
            designation, names = self.served.ddr
            self.ddr.designate(designation, names)

    def _start_refresher(self) -> None:
        pass  # list downloads are the main process's

    def _configure_events(self) -> None:
        if self.handler is not None:
            self.handler.events = self.relay if self.served.events else None


async def run(sock: socket.socket) -> int:
    channel = await Channel.open(sock)
    first = await channel.receive()
    if first is None or first[0] != "start":
        return 2
    start: dict[str, Any] = first[1]
    index, serve = int(start["index"]), start["serve"]
    logs.setup(bool(start.get("verbose")))
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(logs.FORMAT.replace("%(message)s", f"worker {index}: %(message)s")))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # Ctrl-C in a terminal and SIGHUP reach the main process, which decides for its workers.
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    app = WorkerApp(serve, channel)
    try:
        await app.start()
    except Exception as exc:  # everything it could not do is said to the main process, which reports it
        channel.send("failed", str(exc))
        await asyncio.sleep(0.1)  # (the message out before the socket closes)
        return 1
    from filterd.cli import settle_heap

    settle_heap()
    channel.send("ready", [str(ep) for ep in app.listening.dns])
    receiving = loop.create_task(_serve(app, channel))
    stopping = loop.create_task(stop.wait())
    try:
        await asyncio.wait([receiving, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        receiving.cancel()
        stopping.cancel()
        app.relay.flush()
        await app.stop()
        channel.close()
    return 0


async def _serve(app: WorkerApp, channel: Channel) -> None:
    while (message := await channel.receive()) is not None:
        kind, payload = message
        if kind == "serve":
            try:
                await app.apply(payload)
            except Exception:
                log.exception("could not apply the main process's change; serving what was in use")
        elif kind == "metrics":
            channel.send("metrics", (payload, export(app.registry.collect())))
        elif kind == "stop":
            return
    log.warning("the main process is gone; stopping")


def main(argv: list[str]) -> int:
    fd, _index = int(argv[0]), int(argv[1])
    sock = socket.socket(fileno=fd)
    from filterd.cli import event_loop_runner

    result: list[int] = []

    async def go() -> None:
        result.append(await run(sock))

    event_loop_runner()(go())
    return result[0] if result else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
