"""Tell systemd what the server is doing (the sd_notify protocol), without depending on libsystemd.

A unit with `Type=notify` starts its dependents only once `READY=1` arrives, so filterd sends it when DNS
answers. Each message is one datagram of `KEY=VALUE` lines to the AF_UNIX socket named in `$NOTIFY_SOCKET`
(a path, or `@name` for the abstract namespace). Outside systemd the variable is unset and every call is a
no-op, so the server runs the same in a terminal, in tests and under the service manager.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

#: The environment variable systemd sets for `Type=notify` services (and `NotifyAccess=`).
NOTIFY_SOCKET = "NOTIFY_SOCKET"


def notify(*fields: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send `fields` ("READY=1", "STATUS=...") as one message; True if systemd was told.

    Never raises: a failed notification is logged, and the server keeps serving (under `Type=notify`
    systemd then times the start out and says so, which is the right place for that error to show).
    """
    address = environ.get(NOTIFY_SOCKET, "")
    if not address or not fields:
        return False
    if address.startswith("@"):
        target = "\0" + address[1:]  # the abstract namespace: a leading NUL byte instead of "@"
    elif address.startswith("/"):
        target = address
    else:
        log.debug("systemd: %s=%r is not an AF_UNIX socket; not notifying", NOTIFY_SOCKET, address)
        return False
    message = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(message)
    except OSError as exc:
        log.warning("systemd: could not notify %s (%s): %s", address, fields[0], exc.strerror or exc)
        return False
    return True


def ready(status: str | None = None, *, environ: Mapping[str, str] = os.environ) -> bool:
    """Startup or a reload is complete: the service answers. systemd starts dependents now."""
    return notify("READY=1", *_status(status), environ=environ)


def reloading(status: str | None = None, *, environ: Mapping[str, str] = os.environ) -> bool:
    """A reload has begun; follow it with `ready()` when it is done (or failed and the old config serves).

    Carries MONOTONIC_USEC, which `Type=notify-reload` (systemd 253+) requires and older versions ignore.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status), environ=environ)


def stopping(status: str | None = None, *, environ: Mapping[str, str] = os.environ) -> bool:
    """Shutdown has begun: systemd shows the unit as deactivating."""
    return notify("STOPPING=1", *_status(status), environ=environ)


def status(text: str, *, environ: Mapping[str, str] = os.environ) -> bool:
    """A one-line status shown by `systemctl status filterd`."""
    return notify(*_status(text), environ=environ)


def _status(text: str | None) -> tuple[str, ...]:
    return () if text is None else ("STATUS=" + " ".join(text.split()),)  # one line: no newline may split it
