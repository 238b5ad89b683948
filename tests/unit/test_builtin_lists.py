"""The shipped lists load as built-in lists by name, and block what their curation promises."""

from __future__ import annotations

from pathlib import Path

from filterd.blocklists.builtin import builtin_names
from filterd.blocklists.load import load_lists
from filterd.config.schema import ListConfig


def test_every_shipped_list_is_a_builtin_list_but_never_block() -> None:
    assert {"chat-roulette", "doh-bypass"} <= set(builtin_names())
    assert "never-block" not in builtin_names()


def test_doh_bypass_blocks_resolvers_with_their_subdomains(tmp_path: Path) -> None:
    lists = load_lists([ListConfig(name="doh-bypass", builtin="doh-bypass", subdomains=True)], None, tmp_path / "s")
    matcher = lists.matcher
    assert lists.entries["doh-bypass"] > 1000
    hit = matcher.match("dns.google")
    assert hit is not None and (hit.list, hit.category) == ("doh-bypass", "doh-major-providers")
    hit = matcher.match("mozilla.cloudflare-dns.com")
    assert hit is not None and hit.entry == "cloudflare-dns.com"
    hit = matcher.match("mask.icloud.com")
    assert hit is not None and hit.category == "icloud-private-relay"
    for name in ("quad9.net", "my.nextdns.io", "www.google.com", "use-application-dns.net", "icloud.com"):
        assert matcher.match(name) is None, name
