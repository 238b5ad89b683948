"""The block page: the sinkhole's web server, explaining a block to a child and to a parent.

Every request, whatever its Host, path or method, gets the page with status 403 (`GET HEALTH_PATH` gets 200).
The name shown is the Host header only if it is a hostname, in canonical form; the kind of site and the list
come from filterd's own decision for that name (`decide`, the lookup the DNS side uses), never from the
client. The page is one self-contained document (inline CSS, no script, no external resource), built by
`BlockPage.render`, a pure function of the config, the name and the decision; `markup.render` escapes every
value it fills in.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from filterd.blocklists.matcher import Match
from filterd.blocklists.parse import normalize_name
from filterd.config.schema import DEFAULT_CATEGORIES, BlockpageConfig, HelpItem
from filterd.metrics import Metrics
from filterd.web.markup import Safe, fill, join, render
from filterd.web.runner import HANDLER_ARGS

HEALTH_PATH = "/.well-known/filterd/health"

#: Categories whose `why` text fits (the shipped list's: all stranger chat); others get `why_other`.
STRANGER_CATEGORIES = frozenset(category for category, _ in DEFAULT_CATEGORIES)

#: Metric labels besides the described category ids: a category without a description, and no block at all.
LABEL_OTHER = "other"
LABEL_NONE = "none"

#: Fetch destinations that show the page to someone (Sec-Fetch-Dest); others (image, script, ...) are not views.
_VIEW_DESTINATIONS = frozenset({"document", "iframe", "frame", "embed", "object"})

_STYLE_RE = re.compile(r"<style>(.*?)</style>", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what a client can make the block page hold: bytes and seconds."""

    #: Longest request body aiohttp will read (the handler never reads one; this caps any accidental read).
    body: int = 8 * 1024
    #: The request line and each header line (aiohttp's own default; browsers' cookie headers fit).
    line: int = 8190
    #: Headers in one request.
    headers: int = 64
    #: Seconds a connection may sit idle, before its first request or between requests; then it is closed.
    idle: float = 10.0
    #: Seconds spent discarding an unread request body after answering, before closing.
    linger: float = 1.0

    def handler_args(self) -> dict[str, Any]:
        """These bounds as aiohttp's connection settings (`HANDLER_ARGS`, read by HttpRunner)."""
        return {
            "keepalive_timeout": self.idle,
            "max_line_size": self.line,
            "max_field_size": self.line,
            "max_headers": self.headers,
            "lingering_time": self.linger,
        }


def site_from_host(host: str | None) -> str | None:
    """The hostname in a Host header as lower-case A-labels, without port or trailing dot; None for an IP
    literal, an empty or overlong value, or anything that is not a hostname."""
    if not host or len(host) > 300 or host.startswith("["):
        return None
    name, colon, port = host.rpartition(":")
    if not colon:
        name = host
    elif not (port.isascii() and port.isdigit() and len(port) <= 5):
        return None
    return normalize_name(name)


def load_template() -> str:
    return resources.files("filterd.web").joinpath("templates/blockpage.html").read_text(encoding="utf-8")


def style_hash(template: str) -> str:
    """The CSP source for the template's one inline <style> element, so no other style (or script) runs."""
    match = _STYLE_RE.search(template)
    if match is None:
        raise ValueError("the block page template has no <style> element")
    digest = hashlib.sha256(match.group(1).encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def link_text(url: str) -> str:
    """How a URL reads on the page: `https://www.childline.org.uk/` -> `www.childline.org.uk`."""
    for prefix in ("https://", "http://", "mailto:", "tel:"):
        if url.lower().startswith(prefix):
            return url[len(prefix) :].rstrip("/")
    return url


class BlockPage:
    """The page for one config: `render(site, match)` -> (HTML, metric label). Pure: no I/O, no clock."""

    def __init__(self, config: BlockpageConfig, template: str) -> None:
        self.config = config
        self.texts = config.texts
        self.template = Template(template)
        self.categories: Mapping[str, str] = dict(config.texts.categories)
        self.headers = {
            "Cache-Control": "no-store",
            "Content-Security-Policy": (
                f"default-src 'none'; style-src {style_hash(template)}; img-src data:; base-uri 'none'; "
                "form-action 'none'; frame-ancestors 'none'"
            ),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
            "Server": "filterd",
        }

    def label(self, match: Match | None) -> str:
        """The `category` label of filterd_blockpage_views_total: bounded by the config, never the name."""
        if match is None:
            return LABEL_NONE
        return match.category if match.category in self.categories else LABEL_OTHER

    def render(self, site: str | None, match: Match | None) -> tuple[Safe, str]:
        t = self.texts
        cfg = self.config
        description = self.categories.get(match.category, "") if match is not None else ""
        if match is None:
            site = None  # not blocked here (the sinkhole's address typed in, an alias): the neutral page
        values = {
            "site": site if site is not None else t.this_site,
            "category": description,
            "category_id": match.category if match else "",
            "list": match.list if match else "",
            "entry": match.entry if match else "",
            "contact": cfg.contact or "",
        }
        if match is None:
            what, why = t.what_none, t.why_other
        else:
            what = t.what if description else t.what_other
            why = t.why if match.category in STRANGER_CATEGORIES else t.why_other
        unblock_link = Safe("")
        if cfg.unblock_url is not None:
            unblock_link = render(
                '<p><a href="$url">$text</a></p>',
                url=cfg.unblock_url,
                text=fill(t.unblock_link, **values),
            )
        html = render(
            self.template,
            lang=t.lang,
            title=fill(t.title, **values),
            heading=fill(t.heading, **values),
            name=render('<p class="name">$site</p>', site=site) if site is not None else Safe(""),
            what=fill(what, **values),
            reassure=fill(t.reassure, **values),
            why_heading=fill(t.why_heading, **values),
            why=fill(why, **values),
            help_heading=fill(t.help_heading, **values),
            help_intro=fill(t.help_intro, **values),
            help=join((self._help_item(item, values) for item in t.help), "\n"),
            parents_heading=fill(t.parents_heading, **values),
            contact=fill(t.parents_contact if cfg.contact else t.parents_no_contact, **values),
            unblock=fill(t.unblock, **values),
            unblock_link=unblock_link,
            details=render('<p class="details">$text</p>', text=fill(t.details, **values)) if match else Safe(""),
        )
        return html, self.label(match)

    @staticmethod
    def _help_item(item: HelpItem, values: Mapping[str, str]) -> Safe:
        text = fill(item.text, **values)
        if item.url is None:
            return render("<li>$text</li>", text=text)
        return render(
            '<li>$text <a href="$url">$link</a></li>', text=text, url=item.url, link=item.link or link_text(item.url)
        )


def blockpage_app(
    config: BlockpageConfig,
    decide: Callable[[str, str | None], Match | None],
    metrics: Metrics,
    limits: Limits | None = None,
    allowed: Callable[[str], bool] | None = None,
) -> web.Application:
    """The block page as an aiohttp app; `decide(name, client_ip)` is the policy's block decision for a name, as
    the DNS side made it for that client (its group).

    A client that `allowed(ip)` refuses (outside `dns.allow_clients`) gets the neutral page: like the DNS side,
    it learns nothing of the lists.
    """
    limits = limits or Limits()
    page = BlockPage(config, load_template())
    views = metrics.blockpage_views

    # One middleware answers everything, so no method, path or request-target can reach aiohttp's 404 or 405.
    @web.middleware
    async def answer(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == HEALTH_PATH and request.method in ("GET", "HEAD"):
            return web.Response(text="ok\n", headers={"Cache-Control": "no-store", "Server": "filterd"})
        site = site_from_host(request.headers.get(hdrs.HOST))  # the header itself: never a fallback name
        served = allowed is None or (request.remote is not None and allowed(request.remote))
        match = decide(site, request.remote) if site is not None and served else None
        body, label = page.render(site, match)
        response = web.Response(status=403, text=body, content_type="text/html", charset="utf-8", headers=page.headers)
        if request.body_exists:
            response.force_close()  # the body is never read: close rather than drain it
        if request.method != "HEAD" and request.headers.get("Sec-Fetch-Dest", "document") in _VIEW_DESTINATIONS:
            views.labels(category=label, scheme="https" if request.secure else "http").inc()
        return response

    app = web.Application(middlewares=[answer], client_max_size=limits.body)
    app[HANDLER_ARGS] = limits.handler_args()  # served by HttpRunner, which also answers what aiohttp cannot parse
    return app
