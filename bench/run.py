#!/usr/bin/env python3
"""filterd's benchmark: filterd beside dnsmasq and unbound, same list, same upstream, same machine, same run; and
beside the Python floor (floor.py: the least a Python server on the same event loop does for a query).

    python3 bench/run.py [--smoke] [--out DIR] [--reps N] [--seconds S] [--work DIR] [--python PY]

Steps (bench/README.md explains every number):
  1. setup: the Debian packages (dnsperf, dnsmasq-base, nsd, unbound; the smoke run needs only the first two)
     and a venv in WORK/venv with filterd installed from this checkout with its [fast] extra (uvloop);
  2. data (bench/gen.py, deterministic): the N-name list in each server's syntax, the upstream's zone, the
     dnsperf query files (a: 100% blocked, b: 100% cache hits, c: 10% blocked / 85% hits / 5% misses);
  3. the upstream (nsd, else dnsmasq) serving the zone; then, one at a time so no load disturbs another:
     each server without the list (memory), with the list (load time, memory), and filterd once more on the
     same state_dir (restart time);
  4. a spot check of every server (blocked -> 0.0.0.0 or NXDOMAIN, allowed -> its address, miss -> the
     upstream's wildcard address): a wrong answer aborts the run;
  5. per repetition: warm every cache with the 1,000 allowed names, then dnsperf throughput on a, b, c and
     latency at a fixed offered rate on a, b, c, servers interleaved (the order rotates each repetition);
  6. memory after the runs, then a reload of the list (SIGHUP, memory sampled every 20 ms);
  7. the tables (bench/report.py): printed, and written with the raw JSON to OUT (default bench/results/).

Every server listens on 127.0.0.1 only, every dnsperf run is bounded by -l and by `timeout`, and every process
started here is stopped by its PID (also on SIGINT/SIGTERM, so `timeout -s INT` bounds the whole run).
Exit status: 0 when every server started and answered right and every dnsperf run completed, else 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import gen  # noqa: E402
import report  # noqa: E402

HOST = "127.0.0.1"  # every packet of the benchmark goes to loopback
FULL_DEBS = ("dnsperf", "dnsmasq-base", "nsd", "unbound")
SMOKE_DEBS = ("dnsperf", "dnsmasq-base")
FILES = ("a", "b", "c", "d")
#: dnsperf for throughput: 8 client sockets, 100 queries outstanding, no rate cap. More outstanding queries
#: than a server's socket buffer holds (about 190 with Linux's default 208 KiB) lose the first burst, and a
#: lost query holds its slot until dnsperf's 5 s timeout: bench/README.md.
TPUT_ARGS = ("-c", "8", "-q", "100")
#: dnsperf for latency: the same clients at a fixed offered rate, every answer's latency printed (-v).
LAT_RATE = 10_000
#: The c files must not wrap around within a run (a repeated miss is a hit): lines >= this rate x seconds.
C_MAX_QPS = 250_000
#: Nor the d files (every query a miss): no server here forwards faster than this.
D_MAX_QPS = 60_000


class BenchError(Exception):
    """The run cannot go on: a server did not start, answered wrong, or a tool failed."""


# ------------------------------------------------------------------------------------------- DNS client


def build_query(name: str, qid: int, qtype: int = 1) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode("ascii") for p in name.rstrip(".").split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\x00" + struct.pack("!HH", qtype, 1)


def _skip_name(data: bytes, i: int) -> int:
    while True:
        n = data[i]
        if n == 0:
            return i + 1
        if n & 0xC0:
            return i + 2
        i += n + 1


RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def ask(port: int, name: str, timeout: float = 1.0) -> tuple[str, list[str]] | None:
    """(rcode, A addresses) from 127.0.0.1:port, or None (no answer in time, or nothing listening)."""
    qid = random.randrange(65536)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((HOST, port))  # connected: "port unreachable" comes back at once as an error
            sock.send(build_query(name, qid))
            deadline = time.monotonic() + timeout
            while True:
                data = sock.recv(4096)
                if len(data) >= 12 and struct.unpack("!H", data[:2])[0] == qid:
                    break
                if time.monotonic() > deadline:
                    return None
        except OSError:  # timeout, ECONNREFUSED
            return None
    flags, qd, an = struct.unpack("!HHH", data[2:8])
    i = 12
    for _ in range(qd):
        i = _skip_name(data, i) + 4
    addrs = []
    try:
        for _ in range(an):
            i = _skip_name(data, i)
            rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", data[i : i + 10])
            i += 10
            if rtype == 1 and rdlen == 4:
                addrs.append(socket.inet_ntoa(data[i : i + 4]))
            i += rdlen
    except (IndexError, struct.error):
        return ("MALFORMED", addrs)
    return (RCODES.get(flags & 15, str(flags & 15)), addrs)


def is_blocked(answer: tuple[str, list[str]] | None) -> bool:
    return answer is not None and (answer[0] == "NXDOMAIN" or (answer[0] == "NOERROR" and answer[1] == ["0.0.0.0"]))


def is_addr(answer: tuple[str, list[str]] | None, addr: str) -> bool:
    return answer is not None and answer[0] == "NOERROR" and answer[1] == [addr]


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 now (every server here gets its own)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((HOST, 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((HOST, port))
                except OSError:
                    continue
        return port
    raise BenchError("no free port pair on 127.0.0.1")


# ------------------------------------------------------------------------------------------- /proc


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float, float]:
    """CPU seconds used so far (/proc/PID/stat): the process's user and system time, and its live descendants'
    (user + system: filterd's query-log writer, workers). A descendant that exits in between is not counted."""

    def ticks(p: int) -> tuple[int, int]:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0, 0
        return int(fields[11]), int(fields[12])  # utime, stime (the stat file's fields 14 and 15)

    user, system = ticks(pid)
    children = sum(sum(ticks(child)) for child in descendants(pid))
    return user / _TICK, system / _TICK, children / _TICK


def memory(pid: int) -> dict[str, int]:
    """RSS and PSS in bytes (/proc/PID/smaps_rollup) of the process and all its descendants, and how many."""
    kids = _children()
    todo, rss, pss, procs = [pid], 0, 0, 0
    while todo:
        p = todo.pop()
        todo.extend(kids.get(p, []))
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
            procs += 1
        except OSError:
            pass
    return {"rss": rss, "pss": pss, "procs": procs}


def catches(pid: int, sig: int) -> bool:
    """Whether the process has a handler for `sig` (SigCgt in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    return False


def mapped_snapshot(pid: int) -> int:
    """Resident bytes of filterd's mapped snapshot file(s) (/proc/PID/smaps): the list's table as lookups touched
    it, without the caches the same lookups fill."""
    total, inside = 0, False
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split(maxsplit=1)[0]
                if "-" in head and not head.endswith(":"):  # a mapping's first line: address range ... path
                    inside = line.rstrip().endswith(".snapshot")
                elif inside and head == "Rss:":
                    total += int(line.split()[1]) * 1024
    except OSError:
        return 0
    return total


def list_store(pid: int) -> str:
    """How filterd holds the list: a mapped snapshot file (filterd/blocklists/compiled.py) or Python objects."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    except OSError:
        return "unknown"
    for line in maps:
        if line.endswith(".snapshot"):
            path = line.split()[-1]
            with contextlib.suppress(OSError):
                return f"compiled snapshot, mapped ({os.path.getsize(path) / 1e6:.1f} MB file)"
            return "compiled snapshot, mapped"
    return "in memory (Python objects)"


def event_loop(pid: int) -> str:
    """uvloop when its extension module is mapped into the process, else stock asyncio."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return "unknown"
    return "uvloop" if "/uvloop/loop." in maps else "asyncio"


# ------------------------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    port: int
    cmd: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.started = time.monotonic()
            self.popen = subprocess.Popen(
                self.cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self) -> None:
        """SIGTERM to this PID, SIGKILL to it after 20 s."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self.popen = None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_until(self, check: Any, limit: float) -> float:
        """Seconds from process start to the first reply that passes `check` (polled every 5 ms)."""
        while True:
            if not self.alive():
                raise BenchError(
                    f"{self.name} exited (status {self.popen and self.popen.returncode}):\n{self.log_tail()}"
                )
            if check():
                return time.monotonic() - self.started
            if time.monotonic() - self.started > limit:
                raise BenchError(f"{self.name}: no correct answer within {limit:.0f} s:\n{self.log_tail()}")
            time.sleep(0.005)


@dataclass
class Ctx:
    args: argparse.Namespace
    work: Path
    data: Path
    manifest: dict[str, Any]
    python: str
    filterd_cmd: list[str]
    upstream_port: int = 0
    #: filterd's metrics port (with the list and the query log on): where its log's row counts are read
    metrics_port: int = 0
    running: list[Proc] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def server_cpus(self) -> list[str]:
        """`--pin`: the server under test runs on the last CPU alone (`taskset`); its children, once it answers,
        on the others (`bring_up`)."""
        n = os.cpu_count() or 1
        return ["taskset", "-c", str(n - 1)] if self.args.pin else []

    @property
    def client_cpus(self) -> list[str]:
        """`--pin`: dnsperf and the upstream run on the other CPUs."""
        n = os.cpu_count() or 1
        return ["taskset", "-c", f"0-{n - 2}" if n > 2 else "0"] if self.args.pin else []

    def launch(self, proc: Proc) -> Proc:
        proc.start()
        self.running.append(proc)
        return proc

    def halt(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.running:
            self.running.remove(proc)


def run(cmd: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a tool to its end; on a timeout or an interrupt, SIGTERM to its PID (`timeout` passes it on to the
    command it watches), SIGKILL 5 s later."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            proc.terminate()
            try:
                proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


# ------------------------------------------------------------------------------------------- setup


def ensure_debs(pkgs: tuple[str, ...]) -> list[str]:
    """Install the missing Debian packages (apt-get, via sudo when not root); the ones installed."""
    missing = []
    for pkg in pkgs:
        status = run(["dpkg-query", "-W", "-f=${Status}", pkg], 30).stdout
        if "install ok installed" not in status:
            missing.append(pkg)
    if not missing:
        return []
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print(f"setup: apt-get install {' '.join(missing)}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run([*sudo, "apt-get", "update", "-qq"], 600, env=env)
    done = run([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], 900, env=env)
    if done.returncode != 0:
        raise BenchError(f"apt-get install {' '.join(missing)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    if Path("/run/systemd/system").is_dir():
        # The packages start their own daemons on port 53 under systemd; the benchmark runs its own.
        for unit in ("nsd", "unbound"):
            if unit in missing:
                run([*sudo, "systemctl", "disable", "--now", unit], 60)
    return missing


def ensure_venv(work: Path) -> str:
    """WORK/venv with filterd installed (not editable: this run measures the code as it was at its start)."""
    venv = work / "venv"
    python = venv / "bin" / "python"
    if not python.exists():
        made = run([sys.executable, "-m", "venv", str(venv)], 300)
        if made.returncode != 0:
            raise BenchError(f"python -m venv failed: {made.stderr[-2000:]}")
    print(f"setup: pip install {ROOT}[fast] into {venv}", flush=True)
    done = run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{ROOT}[fast]"], 900)
    if done.returncode != 0:
        raise BenchError(f"pip install failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return str(python)


def tool_versions(python: str) -> dict[str, str]:
    def first(cmd: list[str], pattern: str = r"(\d+\.\d+(?:\.\d+)?)") -> str:
        if shutil.which(cmd[0]) is None:
            return "not installed"
        try:
            done = run(cmd, 30)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        m = re.search(pattern, done.stdout + done.stderr)
        return m.group(1) if m else "?"

    py = run([python, "-c", "import sys, filterd; print(sys.version.split()[0], filterd.__version__)"], 60)
    uv = run([python, "-c", "import uvloop; print(uvloop.__version__)"], 60)
    py_version, _, filterd_version = py.stdout.strip().partition(" ")
    return {
        "python": py_version or "?",
        "filterd": filterd_version or "?",
        "uvloop": uv.stdout.strip() or "not installed",
        "dnsperf": first(["dnsperf", "-h"], r"Version (\S+)"),
        "dnsmasq": first(["dnsmasq", "--version"], r"version (\S+)"),
        "unbound": first(["unbound", "-V"], r"Version (\S+)"),
        "nsd": first(["nsd", "-v"], r"NSD version (\S+)"),
    }


def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB"
    debian = "?"
    with contextlib.suppress(OSError):
        debian = Path("/etc/debian_version").read_text().strip()
    git = run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], 30).stdout.strip()
    dirty = run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "filterd"], 30).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "kernel": os.uname().release,
        "debian": debian,
        "filterd_commit": (git or "?") + (" + uncommitted changes in filterd/" if dirty else ""),
    }


def querylog_rows(port: int) -> dict[str, Any]:
    """filterd_querylog_rows_total by result (written, dropped, failed), after the log's next write; or the error."""
    time.sleep(2.5)  # (the log writes once a second; its writer, at nice 10, may still lag after a busy run)
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError as exc:
        return {"error": str(exc)}
    found = re.findall(r'^filterd_querylog_rows_total\{result="(\w+)"\} (\S+)$', text, re.M)
    return {result: float(value) for result, value in found}


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# ------------------------------------------------------------------------------------------- configs


def filterd_config(ctx: Ctx, port: int, with_list: bool, state: Path) -> Path:
    lists = (
        f'  - {{name: bench, path: "{ctx.data / "blocklist.domains"}", format: domains}}\n' if with_list else "  []\n"
    )
    text = (
        "# filterd under the benchmark: loopback only, the local upstream, null answers (0.0.0.0) like dnsmasq's\n"
        "# addn-hosts; no metrics, no block page. The admin API is on (loopback) as in production: filterd then\n"
        "# uses state_dir, where it keeps the compiled lists for a fast restart.\n"
        f'dns:\n  listen: ["{HOST}:{port}"]\n  upstreams: ["{HOST}:{ctx.upstream_port}"]\n'
        # the upstream's zone answers 127.10.x.y, which rebinding protection would drop
        '  rebind_allow: ["bench.test"]\n'
        f"  workers: {ctx.args.workers}\n"
        'blocking:\n  mode: "null"\n'
        f"lists:\n{lists}"
        "cache:\n  size: 10000\n"
        f'state_dir: "{state}"\n'
        f'admin:\n  listen: "{HOST}:{free_port()}"\n'
    )
    text += f"querylog: {{privacy: {ctx.args.querylog}}}\n"  # the query log, as production runs it (or off)
    if with_list and ctx.args.querylog != "off":  # (read once, after the runs: what the log kept and dropped)
        ctx.metrics_port = free_port()
        text += f'metrics:\n  listen: "{HOST}:{ctx.metrics_port}"\n'
    if ctx.args.groups:  # two client groups, the benchmark's client in the second: every query is a group's
        only = "[bench]" if with_list else "[]"
        text += (
            "groups:\n"
            "  - {name: elsewhere, clients: [192.0.2.0/24, '2001:db8::/32'], lists: []}\n"
            f"  - {{name: bench, clients: [{HOST}], lists: {only}}}\n"
        )
    path = ctx.work / f"filterd-{'list' if with_list else 'nolist'}.yaml"
    path.write_text(text)
    return path


def dnsmasq_config(ctx: Ctx, port: int, with_list: bool) -> Path:
    tag = "list" if with_list else "nolist"
    text = (
        f"port={port}\nlisten-address={HOST}\nbind-interfaces\nno-resolv\nno-hosts\nno-poll\n"
        f"server={HOST}#{ctx.upstream_port}\ncache-size=10000\nuser=root\npid-file=\n"
        f"log-facility={ctx.work / f'dnsmasq-{tag}.syslog'}\n"
    )
    if with_list:
        text += f"addn-hosts={ctx.data / 'blocklist.hosts'}\n"
    path = ctx.work / f"dnsmasq-{tag}.conf"
    path.write_text(text)
    return path


def unbound_config(ctx: Ctx, port: int, with_list: bool) -> Path:
    tag = "list" if with_list else "nolist"
    include = f'  include: "{ctx.data / "blocklist.unbound.conf"}"\n' if with_list else ""
    text = (
        "server:\n"
        f"  interface: {HOST}\n  port: {port}\n  num-threads: 1\n  do-ip6: no\n"
        f'  do-daemonize: no\n  username: ""\n  chroot: ""\n  directory: "{ctx.work}"\n  pidfile: ""\n'
        '  use-syslog: no\n  logfile: ""\n  verbosity: 1\n'
        '  module-config: "iterator"\n  do-not-query-localhost: no\n  access-control: 127.0.0.0/8 allow\n'
        # unbound answers the special-use name test. itself (NXDOMAIN) unless told not to
        '  local-zone: "test." nodefault\n'
        f"{include}"
        "remote-control:\n  control-enable: no\n"
        f'forward-zone:\n  name: "."\n  forward-addr: {HOST}@{ctx.upstream_port}\n'
    )
    path = ctx.work / f"unbound-{tag}.conf"
    path.write_text(text)
    return path


NSD_CONF = """server:
    ip-address: {host}@{port}
    do-ip6: no
    server-count: 1
    username: ""
    chroot: ""
    database: ""
    zonesdir: "{data}"
    pidfile: "{work}/nsd.pid"
    xfrdfile: "{work}/nsd-xfrd.state"
    zonelistfile: "{work}/nsd-zone.list"
    xfrdir: "{work}"
    logfile: "{work}/nsd.log"
    verbosity: 1
    # Rate limiting off: every forwarded query comes from 127.0.0.1 and the misses share one wildcard.
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: "bench.test"
    zonefile: "bench.test.zone"
"""


def server_cmd(ctx: Ctx, kind: str, port: int, with_list: bool, state: Path | None = None) -> list[str]:
    if kind == "filterd":
        assert state is not None
        return [*ctx.filterd_cmd, "serve", "--config", str(filterd_config(ctx, port, with_list, state))]
    if kind == "dnsmasq":
        return ["dnsmasq", "--keep-in-foreground", "--conf-file=" + str(dnsmasq_config(ctx, port, with_list))]
    if kind == "unbound":
        return ["unbound", "-d", "-c", str(unbound_config(ctx, port, with_list))]
    if kind == "floor":
        listed = ["--list", str(ctx.data / "blocklist.domains")] if with_list else []
        upstream = f"{HOST}:{ctx.upstream_port}"
        return [
            ctx.python,
            str(HERE / "floor.py"),
            "--addr",
            HOST,
            "--port",
            str(port),
            *listed,
            "--upstream",
            upstream,
        ]
    raise ValueError(kind)


# ------------------------------------------------------------------------------------------- phases


def start_upstream(ctx: Ctx) -> Proc:
    port = free_port()
    ctx.upstream_port = port
    use_nsd = ctx.args.upstream == "nsd" or (ctx.args.upstream == "auto" and shutil.which("nsd"))
    if use_nsd:
        conf = ctx.work / "nsd.conf"
        conf.write_text(NSD_CONF.format(host=HOST, port=port, data=ctx.data, work=ctx.work))
        proc = Proc("upstream (nsd)", port, [*ctx.client_cpus, "nsd", "-d", "-c", str(conf)], ctx.work / "upstream.log")
    else:
        proc = Proc(
            "upstream (dnsmasq)",
            port,
            [
                *ctx.client_cpus,
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                f"--port={port}",
                f"--listen-address={HOST}",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--pid-file",
                f"--conf-file={ctx.data / 'upstream-dnsmasq.conf'}",
            ],
            ctx.work / "upstream.log",
        )
    ctx.launch(proc)
    name, addr = ctx.manifest["allowed"]
    proc.wait_until(lambda: is_addr(ask(port, name, 0.05), addr), 60)
    miss = f"probe-{random.getrandbits(40):x}.{ctx.manifest['miss_zone']}"
    if not is_addr(ask(port, miss), ctx.manifest["miss_addr"]):
        raise BenchError(f"{proc.name} does not answer the miss wildcard")
    print(f"upstream: {proc.name} on {HOST}:{port}", flush=True)
    ctx.results["upstream"] = proc.name.split("(")[1].rstrip(")")
    return proc


def bring_up(ctx: Ctx, kind: str, with_list: bool, state: Path | None = None, label: str = "") -> tuple[Proc, float]:
    """Start one server; seconds to its first correct answer: the last listed name blocked, else an allowed name."""
    port = free_port()
    tag = label or ("list" if with_list else "nolist")
    cmd = [*ctx.server_cpus, *server_cmd(ctx, kind, port, with_list, state)]
    proc = Proc(kind, port, cmd, ctx.work / f"{kind}-{tag}.log")
    ctx.launch(proc)
    limit = 600.0
    if with_list:
        last = ctx.manifest["last_blocked"]
        seconds = proc.wait_until(lambda: is_blocked(ask(port, last, 0.05)), limit)
    else:
        name, addr = ctx.manifest["allowed"]
        seconds = proc.wait_until(lambda: is_addr(ask(port, name, 0.05), addr), limit)
    if ctx.args.pin:
        # A server's helper processes (filterd's query-log writer) on the other CPUs, as on a machine with cores to
        # spare; only the process that answers keeps the last CPU to itself.
        for child in descendants(proc.pid):
            run(["taskset", "-a", "-p", "-c", ctx.client_cpus[-1], str(child)], 10)
    return proc, seconds


def spot_check(ctx: Ctx, proc: Proc) -> dict[str, Any]:
    name, addr = ctx.manifest["allowed"]
    miss = f"check-{random.getrandbits(40):x}.{ctx.manifest['miss_zone']}"
    got = {
        "blocked_last": ask(proc.port, ctx.manifest["last_blocked"]),
        "blocked_sample": ask(proc.port, ctx.manifest["sample_blocked"]),
        "allowed": ask(proc.port, name),
        "miss": ask(proc.port, miss),
    }
    ok = (
        is_blocked(got["blocked_last"])
        and is_blocked(got["blocked_sample"])
        and is_addr(got["allowed"], addr)
        and is_addr(got["miss"], ctx.manifest["miss_addr"])
    )
    if not ok:
        raise BenchError(f"{proc.name} answers wrong: {got} (expected 0.0.0.0/NXDOMAIN, {addr}, the wildcard)")
    return got


SETTLE_S = 1.0  # memory is read this long after the first correct answer


def settle_memory(proc: Proc) -> dict[str, int]:
    time.sleep(SETTLE_S)
    return memory(proc.pid)


def measure_servers(ctx: Ctx, kinds: list[str]) -> dict[str, Proc]:
    """Load time and memory, one server at a time; returns the servers left running with the list."""
    servers: dict[str, Any] = ctx.results["servers"]
    running: dict[str, Proc] = {}
    for kind in kinds:
        info: dict[str, Any] = servers.setdefault(kind, {})
        state = ctx.work / f"{kind}-state"
        shutil.rmtree(state, ignore_errors=True)
        proc, info["ready_nolist_s"] = bring_up(ctx, kind, False, ctx.work / f"{kind}-state-nolist")
        info["mem_nolist"] = settle_memory(proc)
        ctx.halt(proc)
        proc, info["load_s"] = bring_up(ctx, kind, True, state)
        info["mem_list"] = settle_memory(proc)
        info["mapped_list"] = mapped_snapshot(proc.pid)
        # A store that maps its table from a file is resident only where lookups touched it: blocked queries
        # from the whole list (file a: not cached by any of the servers) touch all of it.
        dnsperf(proc.port, ctx.data / "q-a.txt", ctx.args.touch_seconds, TPUT_ARGS, prefix=ctx.client_cpus)
        info["mem_list_touched"] = memory(proc.pid)
        info["mapped_list_touched"] = mapped_snapshot(proc.pid)
        if kind == "filterd":
            info["store"] = list_store(proc.pid)
            # Again on the same state_dir: a store that keeps a compiled copy there starts faster the second time.
            info["event_loop"] = event_loop(proc.pid)
            ctx.halt(proc)
            proc, info["restart_s"] = bring_up(ctx, kind, True, state, label="restart")
            info["mem_restart"] = settle_memory(proc)
        info["cmd"] = " ".join(proc.cmd)
        info["port"] = proc.port
        info["check"] = spot_check(ctx, proc)
        running[kind] = proc
        print(
            f"{kind:8} load {info['load_s']:6.2f} s"
            + (f" (restart {info['restart_s']:.2f} s)" if "restart_s" in info else "")
            + f"  RSS {info['mem_list']['rss'] / 1e6:7.1f} MB (no list {info['mem_nolist']['rss'] / 1e6:.1f})"
            + f"  PSS {info['mem_list']['pss'] / 1e6:7.1f} MB"
            + f"  RSS after lookups {info['mem_list_touched']['rss'] / 1e6:7.1f} MB"
            + (f"  loop {info['event_loop']}" if "event_loop" in info else ""),
            flush=True,
        )
    return running


def parse_dnsperf(out: str) -> dict[str, Any]:
    r: dict[str, Any] = {}
    for key, pattern in (
        ("sent", r"Queries sent:\s+(\d+)"),
        ("completed", r"Queries completed:\s+(\d+)"),
        ("lost", r"Queries lost:\s+(\d+)"),
        ("qps", r"Queries per second:\s+([0-9.]+)"),
        ("avg_ms", r"Average Latency \(s\):\s+([0-9.]+)"),
        ("runtime_s", r"Run time \(s\):\s+([0-9.]+)"),
    ):
        m = re.search(pattern, out)
        if m:
            value = float(m.group(1))
            r[key] = value * 1000 if key == "avg_ms" else value
    m = re.search(r"Response codes:\s+(.*)", out)
    r["rcodes"] = m.group(1).strip() if m else ""
    return r


def percentile(values: list[float], p: float) -> float:
    """Nearest rank on sorted values."""
    k = max(0, min(len(values) - 1, int(-(-p * len(values) // 100)) - 1))
    return values[k]


def dnsperf(
    port: int,
    qfile: Path,
    seconds: float,
    extra: tuple[str, ...],
    verbose: bool = False,
    prefix: list[str] | None = None,
) -> dict[str, Any]:
    """`prefix`: `taskset` and its CPUs (`--pin`)."""
    cmd = ["dnsperf", "-s", HOST, "-p", str(port), "-d", str(qfile), "-l", str(seconds), *extra]
    if verbose:
        cmd.append("-v")
    limit = seconds + 30
    done = run([*(prefix or []), "timeout", "-s", "INT", "-k", "5", str(int(limit)), *cmd], limit + 15)
    r = parse_dnsperf(done.stdout + done.stderr)
    if verbose:
        lat = sorted(
            float(line.rsplit(" ", 1)[1]) * 1000
            for line in done.stdout.splitlines()
            if line.startswith("> ") and not line.startswith("> T ")
        )
        if lat:
            r.update(p50_ms=statistics.median(lat), p90_ms=percentile(lat, 90), p99_ms=percentile(lat, 99))
            r.update(p999_ms=percentile(lat, 99.9), max_ms=lat[-1])
    r["cmd"] = " ".join(cmd)
    if "qps" not in r or not r.get("completed"):
        raise BenchError(f"dnsperf gave no result ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-1500:]}")
    return r


def warm(ctx: Ctx, proc: Proc) -> None:
    dnsperf(proc.port, ctx.data / "q-warm.txt", 10, ("-n", "1"), prefix=ctx.client_cpus)


def qfile(ctx: Ctx, f: str, rep: int, kind: str) -> Path:
    return ctx.data / (f"q-{f}-{kind}-{rep}.txt" if f in ("c", "d") else f"q-{f}.txt")


def measure_queries(ctx: Ctx, running: dict[str, Proc]) -> None:
    a = ctx.args
    runs: list[dict[str, Any]] = ctx.results["runs"]
    names = list(running)
    for rep in range(1, a.reps + 1):
        order = names[(rep - 1) % len(names) :] + names[: (rep - 1) % len(names)]
        print(f"rep {rep}/{a.reps}: order {', '.join(order)} (load average {loadavg()})", flush=True)
        for name in order:
            warm(ctx, running[name])
        for f in FILES:
            for name in order:
                before = cpu_seconds(running[name].pid)
                r = dnsperf(
                    running[name].port, qfile(ctx, f, rep, "tput"), a.seconds, TPUT_ARGS, prefix=ctx.client_cpus
                )
                after = cpu_seconds(running[name].pid)
                # microseconds of CPU a completed query: the server's user and system time, its children's
                r["cpu_us"] = [round((b - a) * 1e6 / r["completed"], 2) for a, b in zip(before, after, strict=True)]
                r.update(server=name, file=f, rep=rep, kind="tput", lines=ctx.manifest["lines"][f], load=loadavg())
                runs.append(r)
                print(f"  {f} {name:8} {r['qps']:10.0f} q/s  lost {int(r.get('lost', 0))}  {r['rcodes']}", flush=True)
        for f in FILES:
            for name in order:
                extra = (*TPUT_ARGS, "-Q", str(a.lat_rate))
                r = dnsperf(
                    running[name].port,
                    qfile(ctx, f, rep, "lat"),
                    a.lat_seconds,
                    extra,
                    verbose=True,
                    prefix=ctx.client_cpus,
                )
                r.update(server=name, file=f, rep=rep, kind="lat", load=loadavg())
                runs.append(r)
                print(
                    f"  {f} {name:8} at {a.lat_rate} q/s: p50 {r.get('p50_ms', -1):.3f} ms"
                    f"  p99 {r.get('p99_ms', -1):.3f} ms  lost {int(r.get('lost', 0))}",
                    flush=True,
                )
        save(ctx)


#: A log line that says the reload happened (its end, where the server says so).
RELOAD_SEEN = {
    "filterd": r"reload|snapshot|list bench",
    "dnsmasq": r"read .*blocklist\.hosts",
    "unbound": r"start of service|restart|reload",
}
RELOAD_DONE = {
    "filterd": r"reload: done|reload.*(done|failed)",
    "dnsmasq": RELOAD_SEEN["dnsmasq"],
    "unbound": r"info: start of service",  # not "notice: Restart of unbound", which comes first
}


def _new_text(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def measure_reload(ctx: Ctx, proc: Proc, load_s: float) -> dict[str, Any]:
    """The list file changes (a comment appended), then SIGHUP; memory sampled every 20 ms during the reload."""
    if proc.name == "floor":
        return {"status": "n/a", "why": "a benchmark reference: no reload"}
    if not catches(proc.pid, signal.SIGHUP):
        # The default action of SIGHUP is to end the process: not sent.
        return {"status": "n/a", "why": "SIGHUP not handled (reload not implemented yet)"}
    listfile = ctx.data / {"filterd": "blocklist.domains", "dnsmasq": "blocklist.hosts"}.get(
        proc.name, "blocklist.unbound.conf"
    )
    size = listfile.stat().st_size
    steady = memory(proc.pid)
    log_at = proc.log.stat().st_size if proc.log.exists() else 0
    syslog = ctx.work / "dnsmasq-list.syslog"
    syslog_at = syslog.stat().st_size if proc.name == "dnsmasq" and syslog.exists() else 0
    # Sampled until the log says the reload is done, and 1 s more; at most 3 load times + 2 s (+ 5 s).
    window = min(120.0, max(5.0, 3 * load_s + 2))
    samples: list[dict[str, int]] = []
    done_at = None

    def new_log() -> str:
        text = _new_text(proc.log, log_at)
        return text + (_new_text(syslog, syslog_at) if proc.name == "dnsmasq" else "")

    try:
        with listfile.open("a") as f:
            f.write(f"# reload {time.time():.0f}\n")
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGHUP)
        while proc.alive():
            now = time.monotonic()
            if now - t0 > window or (done_at is not None and now - done_at > 1.0):
                break
            samples.append(memory(proc.pid))
            if done_at is None and len(samples) % 5 == 0 and re.search(RELOAD_DONE[proc.name], new_log(), re.I):
                done_at = time.monotonic()
            time.sleep(0.02)
    finally:
        with listfile.open("r+b") as raw:
            raw.truncate(size)
    if not proc.alive():
        raise BenchError(f"{proc.name} died during the reload:\n{proc.log_tail()}")
    # unbound does not answer while it reloads: wait for it (the others answer all along).
    last = ctx.manifest["last_blocked"]
    answering = proc.wait_until(lambda: is_blocked(ask(proc.port, last, 0.2)), time.monotonic() - proc.started + 60)
    answering_s = round(answering - (t0 - proc.started), 2)
    text = new_log()
    seen = bool(re.search(RELOAD_SEEN.get(proc.name, "reload"), text, re.IGNORECASE))
    took = re.search(r"done in ([0-9.]+) ?s", text)
    peak_rss = max((s["rss"] for s in samples), default=0)
    peak_pss = max((s["pss"] for s in samples), default=0)
    result: dict[str, Any] = {
        "status": "ok" if seen else "n/a",
        "steady": steady,
        "peak": {"rss": peak_rss, "pss": peak_pss, "procs": max((s["procs"] for s in samples), default=0)},
        "after": memory(proc.pid),
        "samples": len(samples),
        "sampled_s": round(time.monotonic() - t0, 2),
        "done_s": round(done_at - t0, 2) if done_at is not None else None,
        "reload_s": float(took.group(1)) if took else None,
        "answering_s": answering_s,
        "log": text[-2000:],
        "check_after": spot_check(ctx, proc),
    }
    if not seen:
        result["why"] = "no reload in the log after SIGHUP"
    return result


def save(ctx: Ctx) -> None:
    path: Path = ctx.results["_json"]
    data = {k: v for k, v in ctx.results.items() if not k.startswith("_")}
    path.write_text(json.dumps(data, indent=1, default=str))


# ------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="20,000 names, 2 s runs, 1 repetition: the CI check")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="where the table and JSON go")
    ap.add_argument("--work", type=Path, help="data, configs, logs, venv (default /tmp/filterd-bench[-smoke])")
    ap.add_argument("--reps", type=int, help="repetitions (default 3; smoke 1; 0: load, memory and reload only)")
    ap.add_argument("--seconds", type=int, help="seconds per throughput run (default 15; smoke 2)")
    ap.add_argument("--lat-seconds", type=int, help="seconds per latency run (default 10; smoke 1)")
    ap.add_argument("--lat-rate", type=int, default=LAT_RATE, help="offered queries/s of the latency runs")
    ap.add_argument("--names", type=int, help="names in the list (default 1,000,000; smoke 20,000)")
    ap.add_argument(
        "--servers",
        help="comma list of filterd,dnsmasq,unbound,floor (default: those installed; floor.py but in smoke)",
    )
    ap.add_argument("--python", help="a Python with filterd installed; skips the venv (and its [fast] extra)")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install missing packages")
    ap.add_argument("--upstream", choices=("auto", "nsd", "dnsmasq"), default="auto", help="auto: nsd if installed")
    ap.add_argument(
        "--querylog", choices=("full", "blocked-only", "off"), default="full", help="filterd's query log privacy"
    )
    ap.add_argument("--groups", action="store_true", help="filterd with two client groups (the client in one)")
    ap.add_argument("--workers", default="1", help="filterd's dns.workers (a number or auto)")
    ap.add_argument(
        "--pin",
        action="store_true",
        help="each server under test on the last CPU alone, dnsperf, the upstream and the server's children on the "
        "others (taskset)",
    )
    a = ap.parse_args(argv)
    smoke = a.smoke
    a.reps = (1 if smoke else 3) if a.reps is None else a.reps
    a.seconds = a.seconds or (2 if smoke else 15)
    a.lat_seconds = a.lat_seconds or (1 if smoke else 10)
    a.touch_seconds = 1 if smoke else 3
    a.names = a.names or (20_000 if smoke else 1_000_000)
    a.work = a.work or Path("/tmp/filterd-bench-smoke" if smoke else "/tmp/filterd-bench")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    mode = "smoke" if a.smoke else "full"
    t_start = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    a.out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a job started with `&` from a script inherits SIGINT ignored, and `timeout -s INT` must work.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_term)
    results: dict[str, Any] = {
        "mode": mode,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "settings": {
            "names": a.names,
            "reps": a.reps,
            "seconds": a.seconds,
            "lat_seconds": a.lat_seconds,
            "lat_rate": a.lat_rate,
            "tput_args": " ".join(TPUT_ARGS),
            "querylog": a.querylog,
            "pin": a.pin,
        },
        "servers": {},
        "runs": [],
        "errors": [],
        "_json": a.out / f"{mode}-{stamp}.json",
    }
    ctx: Ctx | None = None
    status = 0
    phases: dict[str, float] = {}
    results["phases_s"] = phases
    mark = [time.monotonic()]

    def phase(name: str) -> None:
        now = time.monotonic()
        phases[name] = round(now - mark[0], 1)
        mark[0] = now

    try:
        installed = [] if a.no_install else ensure_debs(SMOKE_DEBS if a.smoke else FULL_DEBS)
        results["installed"] = installed
        python = a.python or ensure_venv(a.work)
        phase("setup")
        filterd_bin = Path(python).parent / "filterd"
        filterd_cmd = [str(filterd_bin)] if filterd_bin.exists() else [python, "-m", "filterd"]
        if a.servers:
            kinds = a.servers.split(",")
        else:  # the smoke run leaves unbound out: it only has to show that the harness works
            kinds = ["filterd", "dnsmasq"] + (["unbound"] if shutil.which("unbound") and not a.smoke else [])
            kinds += [] if a.smoke else ["floor"]
        if a.pin and ((os.cpu_count() or 1) < 2 or shutil.which("taskset") is None):
            raise BenchError("--pin needs two CPUs or more and taskset (util-linux)")
        for kind in kinds:
            if kind not in ("filterd", "dnsmasq", "unbound", "floor"):
                raise BenchError(f"unknown server {kind!r}")
            if kind not in ("filterd", "floor") and shutil.which(kind) is None:
                raise BenchError(f"{kind} is not installed")
        results["machine"] = machine()
        results["versions"] = tool_versions(python)
        results["load_start"] = loadavg()
        c_lines = C_MAX_QPS * a.seconds
        d_lines = int(D_MAX_QPS * a.seconds)
        lat_lines = int(a.lat_rate * a.lat_seconds * 1.2)
        manifest = gen.generate(
            a.work / "data",
            names=a.names,
            reps=a.reps,
            c_lines=c_lines,
            d_lines=d_lines,
            lat_lines=lat_lines,
            ab_lines=200_000 if not a.smoke else 50_000,
        )
        params = manifest["params"]
        assert isinstance(params, dict)
        ab_lines = params["ab_lines"]
        manifest["lines"] = {"a": ab_lines, "b": ab_lines, "c": c_lines, "d": d_lines}
        results["data"] = {k: v for k, v in manifest.items() if k != "lines"}
        phase("data")
        ctx = Ctx(a, a.work, a.work / "data", manifest, python, filterd_cmd, results=results)
        for old in a.work.glob("*.log"):
            old.unlink()
        start_upstream(ctx)
        running = measure_servers(ctx, kinds)
        save(ctx)
        phase("start_and_memory")
        measure_queries(ctx, running)
        phase("queries")
        for name, proc in running.items():
            results["servers"][name]["mem_after"] = memory(proc.pid)
        if "filterd" in running and ctx.metrics_port:
            results["servers"]["filterd"]["querylog_rows"] = querylog_rows(ctx.metrics_port)
        for name, proc in running.items():
            info = results["servers"][name]
            info["reload"] = measure_reload(ctx, proc, info["load_s"])
            rl = info["reload"]
            print(
                f"reload {name:8} "
                + (
                    f"peak RSS {rl['peak']['rss'] / 1e6:.1f} MB (steady {rl['steady']['rss'] / 1e6:.1f})"
                    if rl["status"] == "ok"
                    else f"{rl['status']}: {rl['why']}"
                ),
                flush=True,
            )
        phase("reload")
    except KeyboardInterrupt:
        results["errors"].append("interrupted (SIGINT/SIGTERM)")
        status = 1
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        results["errors"].append(str(exc))
        print(f"bench: {exc}", file=sys.stderr, flush=True)
        status = 1
    finally:
        if ctx is not None:
            for proc in reversed(list(ctx.running)):
                ctx.halt(proc)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    results["duration_s"] = round(time.monotonic() - t_start, 1)
    results["load_end"] = loadavg()
    json_path: Path = results.pop("_json")
    json_path.write_text(json.dumps(results, indent=1, default=str))
    table = report.render(results)
    md_path = json_path.with_suffix(".md")
    md_path.write_text(table)
    shutil.copyfile(md_path, a.out / f"latest-{mode}.md")
    shutil.copyfile(json_path, a.out / f"latest-{mode}.json")
    print()
    print(table)
    print(f"bench: {mode} run {'passed' if status == 0 else 'FAILED'} in {results['duration_s']:.0f} s; {md_path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
