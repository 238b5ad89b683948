"""The block page as a pure function: escaping in one place, the Host read as a hostname or not at all, and
the page's words chosen from filterd's own decision."""

from __future__ import annotations

import dataclasses
import html
import re
from string import Template

import pytest
from hypothesis import given
from hypothesis import strategies as st

from filterd.blocklists.matcher import Match
from filterd.config.load import parse_config
from filterd.config.schema import BlockpageConfig, BlockpageTexts, Endpoint, HelpItem
from filterd.web.blockpage import BlockPage, link_text, load_template, site_from_host, style_hash
from filterd.web.markup import Safe, escape, fill, join, render

HOSTILE = "<script>alert('x')</script> & \"quoted\""


def match(category: str, entry: str = "omegle.com", list_name: str = "chat-roulette") -> Match:
    return Match(list_name, entry, 42, category, True)


def page(**config: object) -> BlockPage:
    cfg = BlockpageConfig(listen=(Endpoint("127.0.0.1", 80),), **config)  # type: ignore[arg-type]
    return BlockPage(cfg, load_template())


# --- markup: the one place values are escaped ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<b>", "&lt;b&gt;"),
        ("a & b", "a &amp; b"),
        ('say "hi"', "say &quot;hi&quot;"),
        ("it's", "it&#x27;s"),
        ("&amp;", "&amp;amp;"),  # already-escaped text is text: escaped again, shown as typed
        (42, "42"),
    ],
)
def test_escape(value: object, expected: str) -> None:
    assert escape(value) == expected


def test_render_escapes_every_value_but_safe_ones() -> None:
    out = render('<p title="$t">$body $safe</p>', t='"><x>', body=HOSTILE, safe=Safe("<em>ok</em>"))
    assert out == (
        '<p title="&quot;&gt;&lt;x&gt;">&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; '
        "&quot;quoted&quot; <em>ok</em></p>"
    )
    assert isinstance(out, Safe)


def test_render_refuses_a_missing_value() -> None:
    with pytest.raises(KeyError):
        render("<p>$missing</p>")


def test_str_operations_on_safe_text_lose_safety() -> None:
    combined = Safe("<em>") + "x"
    assert type(combined) is str
    assert render("$v", v=combined) == "&lt;em&gt;x"


def test_fill_escapes_the_text_and_its_values() -> None:
    assert fill("<b>$site</b> costs $$5", site="<i>") == "&lt;b&gt;&lt;i&gt;&lt;/b&gt; costs $5"


def test_join_escapes_unsafe_parts() -> None:
    assert join([Safe("<li>a</li>"), "<li>b</li>"], "\n") == "<li>a</li>\n&lt;li&gt;b&lt;/li&gt;"


@given(st.text())
def test_no_value_can_add_markup(value: str) -> None:
    out = render('<p data-x="$v">$v</p>', v=value)
    inner = out.removeprefix('<p data-x="').removesuffix("</p>")
    assert not set("<>\"'") & set(inner.replace('">', "", 1))
    assert html.unescape(str(escape(value))) == value


# --- the Host header -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("omegle.com", "omegle.com"),
        ("OMEGLE.com:80", "omegle.com"),
        ("www.omegle.com.", "www.omegle.com"),
        ("xn--megle-iua.com", "xn--megle-iua.com"),
        ("ömegle.com", "xn--megle-iua.com"),  # a raw IDN becomes its A-label, as the lists hold it
        ("[::1]:80", None),
        ("::1", None),
        ("127.0.0.1", None),
        ("192.168.1.2:80", None),
        ("<script>alert(1)</script>", None),
        ("omegle.com/<x>", None),
        ('omegle.com"', None),
        ("omegle.com:http", None),
        ("omegle.com:123456", None),
        ("omegle.com:\uff18\uff10", None),  # non-ASCII digits (fullwidth 80) are not a port
        ("a:b:c", None),
        (":80", None),
        ("", None),
        (None, None),
        ("a" * 64 + ".com", None),  # a label over 63
        (".".join(["abcdefghi"] * 30), None),  # a name over 253
        ("x" * 5000, None),
    ],
)
def test_site_from_host(host: str | None, expected: str | None) -> None:
    assert site_from_host(host) == expected


@given(st.text(max_size=300))
def test_site_from_host_returns_only_hostname_characters(host: str) -> None:
    site = site_from_host(host)
    assert site is None or re.fullmatch(r"[a-z0-9_.-]{1,253}", site)


# --- the page ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "description"),
    [
        ("chat-roulette-video", "random video chat with strangers"),
        ("adult-cam-roulette", "adult video chat with strangers"),
        ("anonymous-text-chat", "anonymous chat with strangers"),
        ("video-chat-rooms", "video chat rooms open to strangers"),
    ],
)
def test_each_shipped_category_is_described_for_a_child(category: str, description: str) -> None:
    body, label = page().render("omegle.com", match(category))
    assert f"It is a site for {description}, and it is blocked on this network." in body
    assert "pair you with strangers on camera or in chat" in body  # the shipped `why`
    assert f"Details: omegle.com is on the list chat-roulette (category {category})." in body
    assert '<p class="name">omegle.com</p>' in body and "<title>Blocked: omegle.com</title>" in body
    assert label == category


def test_a_category_without_a_description_gets_the_generic_words() -> None:
    body, label = page().render("games.example", match("gaming", "games.example", "school"))
    assert "It is on this network&#x27;s list of blocked sites." in body
    assert "decided that this site should not be used here" in body  # why_other, not the strangers text
    assert "strangers" not in body.split("<h2", 2)[1]
    assert label == "other"


def test_not_blocked_shows_the_neutral_page() -> None:
    body, label = page().render("example.org", None)
    assert label == "none"
    assert "example.org" not in body  # a name filterd does not block is not shown (the sinkhole IP typed in)
    assert "<title>Blocked: this site</title>" in body
    assert "the one you tried to open is one of them" in body
    assert 'class="name"' not in body and 'class="details"' not in body


def test_contact_and_unblock_link_are_escaped() -> None:
    body, _ = page(contact=HOSTILE, unblock_url="https://school.example/unblock?a=1&b='2'").render(
        "omegle.com", match("chat-roulette-video")
    )
    assert "This filter is run by &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;." in body
    assert (
        '<a href="https://school.example/unblock?a=1&amp;b=&#x27;2&#x27;">Ask for this site to be unblocked</a>' in body
    )
    assert "<script" not in body


def test_without_contact_or_unblock_url() -> None:
    body, _ = page().render("omegle.com", match("chat-roulette-video"))
    assert "whoever looks after this network" in body
    assert "Ask for this site to be unblocked" not in body


def test_custom_texts_placeholders_and_categories() -> None:
    texts = BlockpageTexts(
        lang="cy",
        heading="Mae $site wedi'i rwystro",
        what="Mae'n $category <really>.",
        help=(HelpItem("Siaradwch â'ch athro."), HelpItem("Meic: 080880 23456", "tel:08088023456")),
        categories=(("chat-roulette-video", "sgwrs fideo ar hap"),),
    )
    body, _ = page(texts=texts, contact="Mrs Jones").render("omegle.com", match("chat-roulette-video"))
    assert '<html lang="cy">' in body
    assert "<h1>Mae omegle.com wedi&#x27;i rwystro</h1>" in body
    assert "Mae&#x27;n sgwrs fideo ar hap &lt;really&gt;." in body
    assert "<li>Siaradwch â&#x27;ch athro.</li>" in body
    assert '<li>Meic: 080880 23456 <a href="tel:08088023456">08088023456</a></li>' in body
    assert "Childline" not in body  # the help list is replaced, not appended to


def test_shipped_help_names_the_uk_services() -> None:
    body, _ = page().render("omegle.com", match("chat-roulette-video"))
    for text in ["0800 1111", "Childline", "CEOP", "Report Remove", "IWF"]:
        assert text in body
    for href in [
        "https://www.childline.org.uk/",
        "https://www.ceop.police.uk/Safety-Centre/",
        "https://www.childline.org.uk/remove",
        "tel:999",
    ]:
        assert f'href="{href}"' in body


def test_the_page_is_self_contained_and_accessible() -> None:
    body, _ = page().render("omegle.com", match("chat-roulette-video"))
    assert body.startswith('<!DOCTYPE html>\n<html lang="en">')
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in body
    assert '<meta charset="utf-8">' in body
    assert body.count("<h1>") == 1 and body.count("<h2") == 3 and "<main>" in body
    assert "<script" not in body and "src=" not in body and "@import" not in body and "url(" not in body
    assert not re.search(r"<link[^>]+href=\"http", body)  # no external stylesheet or font
    assert "$" not in body  # every placeholder filled
    assert len(body.encode()) < 12_000


def test_csp_allows_exactly_the_template_style() -> None:
    template = load_template()
    csp = page().headers["Content-Security-Policy"]
    assert f"style-src {style_hash(template)};" in csp
    assert "default-src 'none'" in csp and "script-src" not in csp
    with pytest.raises(ValueError):
        style_hash("<html></html>")


def test_every_text_is_shown_somewhere() -> None:
    """Change each text to a marker: the marker shows on the blocked or the neutral page (no dead keys)."""
    for name in (f.name for f in dataclasses.fields(BlockpageTexts)):
        if name in ("help", "categories", "lang"):
            continue
        marker = f"MARKER-{name}"
        texts = dataclasses.replace(BlockpageTexts(), **{name: marker})
        pages = [
            page(texts=texts, contact=c, unblock_url="https://u.example/").render("omegle.com", m)[0]
            for m in (match("chat-roulette-video"), match("gaming"), None)
            for c in ("Ms Patel", None)
        ]
        assert any(marker in p for p in pages), name


def test_link_text() -> None:
    assert link_text("https://www.childline.org.uk/") == "www.childline.org.uk"
    assert link_text("mailto:dsl@school.example") == "dsl@school.example"
    assert link_text("tel:999") == "999"


def test_texts_accepted_by_the_loader_render() -> None:
    cfg = parse_config(
        """
dns: {listen: [127.0.0.1]}
blockpage:
  listen: [127.0.0.1:8080]
  texts:
    title: "$site: $$0 <blocked>"
    help: [plain words]
""",
        "f.yaml",
    )
    assert cfg.blockpage is not None
    body, _ = BlockPage(cfg.blockpage, load_template()).render("omegle.com", match("chat-roulette-video"))
    assert "<title>omegle.com: $0 &lt;blocked&gt;</title>" in body
    assert "<li>plain words</li>" in body


def test_template_placeholders_are_all_filled() -> None:
    identifiers = set(Template(load_template()).get_identifiers())
    assert identifiers == {
        "lang",
        "title",
        "heading",
        "name",
        "what",
        "reassure",
        "why_heading",
        "why",
        "help_heading",
        "help_intro",
        "help",
        "parents_heading",
        "contact",
        "unblock",
        "unblock_link",
        "details",
    }
