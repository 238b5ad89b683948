"""An alert as words and JSON (pure), and its delivery by webhook and email (retried, off the query path).

The message is short and factual, for the adult who reads it: which device (name, group, IP, MAC), what it tried
(the names and what kind of site they are), when, and what filterd did. Never the device's other browsing.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from collections.abc import Callable, Sequence
from datetime import datetime
from email.message import EmailMessage
from typing import Any

import aiohttp

from filterd.config.schema import DEFAULT_CATEGORIES, HelpItem, NotifyConfig
from filterd.querylog.store import Identity
from filterd.safeguarding.engine import Alert
from filterd.tasks import cancel

log = logging.getLogger(__name__)

#: Seconds to wait before each retry of a failed delivery.
BACKOFF = (5.0, 30.0, 120.0)


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M %Z")


def describe(category: str, categories: dict[str, str]) -> str:
    return categories.get(category, category)


def compose(
    alert: Alert,
    identity: Identity,
    *,
    categories: dict[str, str] | None = None,
    help_items: Sequence[HelpItem] = (),
    instance: str = "filterd",
) -> tuple[str, str, dict[str, Any]]:
    """(subject, text, JSON payload) for one alert."""
    categories = categories or dict(DEFAULT_CATEGORIES)
    device = identity.device or alert.client
    kinds = sorted({describe(a.category, categories) for a in alert.attempts})
    first, last = alert.attempts[0].time, alert.attempts[-1].time
    subject = f"{instance}: {device} tried to open blocked sites ({alert.rule.name})"
    who = [f"Device: {device}"]
    if alert.group:
        who[0] += f" (group {alert.group})"
    who.append(f"IP address: {alert.client}" + (f", MAC address: {identity.mac}" if identity.mac else ""))
    lines = [
        f"{instance} blocked repeated attempts from one device ({alert.rule.name}).",
        "",
        *who,
        f"What: {len(alert.attempts)} attempt{'s' if len(alert.attempts) != 1 else ''} to open "
        f"{' and '.join(kinds)}: {', '.join(alert.names)}",
        f"When: {_when(first)}" + (f" to {_when(last)}" if last - first >= 60 else ""),
        "What filterd did: blocked each one. A browser on the device was shown the block page, which says why "
        "the site is blocked and where to get help.",
    ]
    if alert.suppressed:
        lines.append(f"Since the last alert for this device, {alert.suppressed} more attempts were blocked.")
    lines += [
        "",
        "This is an automatic message from the network's filter. It reports only these attempts, not the "
        "device's other use of the internet.",
    ]
    links = [f"- {item.text} {item.url}" for item in help_items if item.url and item.url.startswith("http")]
    if links:
        lines += ["", "Help for the child, and for you:", *links]
    payload = {
        "rule": alert.rule.name,
        "device": {"name": identity.device, "ip": alert.client, "mac": identity.mac, "group": alert.group},
        "attempts": [{"time": a.time, "name": a.name, "category": a.category, "list": a.list} for a in alert.attempts],
        "first": first,
        "last": last,
        "action": "blocked",
        "suppressed": alert.suppressed,
        "subject": subject,
        "text": "\n".join(lines),
    }
    return subject, "\n".join(lines), payload


class Notifier:
    """Sends alerts by every configured channel, each retried with backoff; counts the results."""

    def __init__(
        self,
        config: NotifyConfig,
        count: Callable[[str, str], None],
        *,
        backoff: Sequence[float] = BACKOFF,
        timeout: float = 10.0,
    ) -> None:
        self.config = config
        self.count = count  # (rule, result)
        self.backoff = tuple(backoff)
        self.timeout = timeout
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def configured(self) -> bool:
        return self.config.webhook is not None or self.config.email is not None

    def send(self, rule: str, subject: str, text: str, payload: dict[str, Any]) -> None:
        """Deliver in the background (never awaited by a query)."""
        if not self.configured:
            self.count(rule, "no-channel")
            return
        task = asyncio.ensure_future(self._deliver(rule, subject, text, payload))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _deliver(self, rule: str, subject: str, text: str, payload: dict[str, Any]) -> None:
        channels: list[tuple[str, Callable[[], Any]]] = []
        if self.config.webhook is not None:
            channels.append(("webhook", lambda: self._webhook(payload)))
        if self.config.email is not None:
            channels.append(("email", lambda: asyncio.to_thread(self._email, subject, text)))
        for channel, attempt in channels:
            for delay in (0.0, *self.backoff):
                if delay:
                    await asyncio.sleep(delay)
                try:
                    await attempt()
                except Exception as exc:  # any failure of the channel: try again, then give up and say so
                    log.warning("safeguarding: %s delivery of an alert (%s) failed: %s", channel, rule, exc)
                    continue
                self.count(rule, "sent")
                break
            else:
                log.error("safeguarding: could not deliver an alert (%s) by %s; giving up", rule, channel)
                self.count(rule, "failed")

    async def _webhook(self, payload: dict[str, Any]) -> None:
        assert self.config.webhook is not None
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(self.config.webhook, json=payload) as response,
        ):
            if response.status >= 300:
                raise OSError(f"HTTP {response.status}")

    def _email(self, subject: str, text: str) -> None:
        email = self.config.email
        assert email is not None
        message = EmailMessage()
        message["Subject"] = subject
        message["From"] = email.sender
        message["To"] = ", ".join(email.to)
        message.set_content(text)
        host, _, port = email.smtp.rpartition(":")
        with smtplib.SMTP(host.strip("[]"), int(port), timeout=self.timeout) as smtp:
            if email.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if email.username:
                password = ""
                if email.password_file is not None:
                    password = email.password_file.read_text(encoding="utf-8").strip()
                smtp.login(email.username, password)
            smtp.send_message(message)

    async def close(self) -> None:
        await cancel(list(self.tasks))
