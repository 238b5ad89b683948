"""The `blockpage` section: off unless present, every problem as FILE:LINE: key, texts checked when loaded."""

from __future__ import annotations

import textwrap

import pytest

from filterd.config.load import load_embedded, parse_config
from filterd.config.schema import DEFAULT_HELP, BlockpageTexts, Endpoint, HelpItem
from filterd.errors import ConfigError

DNS = "dns:\n  listen: [127.0.0.1]\n"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(DNS + textwrap.dedent(text), "f.yaml")
    return info.value.problems


def test_absent_or_empty_section_is_off() -> None:
    assert parse_config(DNS, "f").blockpage is None
    assert parse_config(DNS + "blockpage:\n", "f").blockpage is None


def test_https_is_off_by_default_and_local_ca_listens_on_443() -> None:
    assert parse_config(DNS + "blockpage:\n  listen: [127.0.0.1]\n  https: false\n", "f").blockpage.https is None  # type: ignore[union-attr]
    text = "blockpage:\n  listen: [192.168.1.2]\n  https: {mode: local-ca, listen: [192.168.1.2, '[fd00::2]:8443']}\n"
    page = parse_config(DNS + text, "f").blockpage
    assert page is not None and page.https is not None
    assert page.https.mode == "local-ca"
    assert page.https.listen == (Endpoint("192.168.1.2", 443), Endpoint("fd00::2", 8443))


def test_embedded_default_serves_it_on_loopback_8080() -> None:
    cfg = load_embedded()
    assert cfg.blockpage is not None and cfg.blockpage.listen == (Endpoint("127.0.0.1", 8080),)


def test_defaults_and_port_80() -> None:
    cfg = parse_config(DNS + "blockpage:\n  listen: [192.168.1.2, '[fd00::2]', 10.0.0.1:8080]\n", "f")
    page = cfg.blockpage
    assert page is not None
    assert page.listen == (Endpoint("192.168.1.2", 80), Endpoint("fd00::2", 80), Endpoint("10.0.0.1", 8080))
    assert page.contact is None and page.unblock_url is None and page.https is None
    assert page.texts == BlockpageTexts()


def test_everything_set() -> None:
    cfg = parse_config(
        DNS
        + textwrap.dedent("""\
        blockpage:
          listen: [192.168.1.2:80]
          contact: Ms Patel, safeguarding lead
          unblock_url: mailto:dsl@school.example
          https: false
          texts:
            lang: en-GB
            heading: Not here, $site
            help:
              - Talk to your form tutor.
              - {text: "Kooth:", url: "https://www.kooth.com/", link: kooth.com}
            categories:
              gaming: online games
              chat-roulette-video: video chat with people you do not know
        """),
        "f",
    )
    page = cfg.blockpage
    assert page is not None
    assert page.contact == "Ms Patel, safeguarding lead" and page.unblock_url == "mailto:dsl@school.example"
    assert page.texts.lang == "en-GB" and page.texts.heading == "Not here, $site"
    assert page.texts.help == (
        HelpItem("Talk to your form tutor."),
        HelpItem("Kooth:", "https://www.kooth.com/", "kooth.com"),
    )
    categories = dict(page.texts.categories)
    assert categories["gaming"] == "online games"
    assert categories["chat-roulette-video"] == "video chat with people you do not know"
    assert categories["adult-cam-roulette"] == "adult video chat with strangers"  # the shipped ones stay
    assert page.texts.why == BlockpageTexts().why  # untouched keys keep their defaults
    assert BlockpageTexts().help == DEFAULT_HELP


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("blockpage: {contact: x}\n", "f.yaml:3: blockpage.listen: is required"),
        ("blockpage:\n  listen: []\n", "f.yaml:4: blockpage.listen: must list at least one address"),
        ("blockpage:\n  listen: 127.0.0.1:80\n", "f.yaml:4: blockpage.listen: must be a list"),
        ("blockpage:\n  listen: [school.example]\n", "f.yaml:4: blockpage.listen[0]: 'school.example' is not an IP"),
        ("blockpage:\n  listen: [127.0.0.1]\n  lisen: x\n", "f.yaml:5: blockpage.lisen: unknown key"),
        ("blockpage:\n  listen: [127.0.0.1]\n  contact: ''\n", "f.yaml:5: blockpage.contact: must be a non-empty"),
        (
            "blockpage:\n  listen: [127.0.0.1]\n  https: true\n",
            "f.yaml:5: blockpage.https: must be false or a mapping like {mode: local-ca, listen: [192.168.1.2:443]}",
        ),
        ("blockpage:\n  listen: [127.0.0.1]\n  https: maybe\n", "f.yaml:5: blockpage.https: must be false or a"),
        (
            "blockpage:\n  listen: [127.0.0.1]\n  https:\n    listen: [127.0.0.1]\n",
            "f.yaml:6: blockpage.https.mode: is required (e.g. local-ca)",
        ),
        (
            "blockpage:\n  listen: [127.0.0.1]\n  https: {mode: local-ca}\n",
            "f.yaml:5: blockpage.https.listen: is required (e.g. [192.168.1.2:443])",
        ),
        (
            "blockpage:\n  listen: [127.0.0.1]\n  https:\n    mode: self-signed\n    listen: [127.0.0.1]\n",
            "f.yaml:6: blockpage.https.mode: 'self-signed' is not one of: local-ca",
        ),
        (
            "blockpage:\n  listen: [127.0.0.1]\n  https:\n    mode: local-ca\n    listen: []\n",
            "f.yaml:7: blockpage.https.listen: must list at least one address",
        ),
        (
            "blockpage:\n  listen: [127.0.0.1]\n  https:\n    mode: local-ca\n    listen: [school.example:443]\n",
            "f.yaml:7: blockpage.https.listen[0]: 'school.example' is not an IP",
        ),
        (
            "blockpage:\n  listen: [127.0.0.1]\n  https:\n    mode: local-ca\n    listen: [127.0.0.1]\n    ca: x\n",
            "f.yaml:8: blockpage.https.ca: unknown key (expected one of: listen, mode)",
        ),
        (
            "blockpage:\n  listen: [127.0.0.1]\n  unblock_url: javascript:alert(1)\n",
            "f.yaml:5: blockpage.unblock_url: 'javascript:alert(1)' is not an http(s), mailto: or tel: URL",
        ),
        (
            "blockpage:\n  listen: [127.0.0.1]\n  unblock_url: 'https://x.example/a b'\n",
            "blockpage.unblock_url: 'https://x.example/a b' is not an http(s)",
        ),
        ("blockpage:\n  listen: [127.0.0.1]\n  unblock_url: https://\n", "blockpage.unblock_url: 'https://' is not"),
        (
            "blockpage:\n  listen: [127.0.0.1]\n  texts:\n    headline: x\n",
            "f.yaml:6: blockpage.texts.headline: unknown key (expected one of: categories, details,",
        ),
        (
            "blockpage:\n  listen: [127.0.0.1]\n  texts:\n    title: 'Blocked: $name'\n",
            "f.yaml:6: blockpage.texts.title: unknown placeholder $name (available: $site, $category,",
        ),
        (
            "blockpage:\n  listen: [127.0.0.1]\n  texts:\n    why: 'costs $5'\n",
            "f.yaml:6: blockpage.texts.why: a '$' starts no placeholder (write $$ for a dollar sign",
        ),
        (
            "blockpage:\n  listen: [127.0.0.1]\n  texts:\n    why: 42\n",
            "f.yaml:6: blockpage.texts.why: must be a non-empty",
        ),
        (
            "blockpage:\n  listen: [127.0.0.1]\n  texts:\n    lang: english\n",
            "f.yaml:6: blockpage.texts.lang: 'english' is not a language tag",
        ),
        (
            "blockpage:\n  listen: [127.0.0.1]\n  texts:\n    lang: 'en\" onload=\"x'\n",
            "blockpage.texts.lang: 'en\" onload=\"x' is not a language tag",
        ),
        (
            "blockpage:\n  listen: [127.0.0.1]\n  texts:\n    help: [{url: 'https://a.example/'}]\n",
            "f.yaml:6: blockpage.texts.help[0].text: is required",
        ),
        (
            "blockpage:\n  listen: [127.0.0.1]\n  texts:\n    help:\n      - {text: a, link: b}\n",
            "f.yaml:7: blockpage.texts.help[0].link: needs a url",
        ),
        (
            "blockpage:\n  listen: [127.0.0.1]\n  texts:\n    help:\n      - {text: a, url: 'data:text/html,x'}\n",
            "f.yaml:7: blockpage.texts.help[0].url: 'data:text/html,x' is not an http(s)",
        ),
        (
            "blockpage:\n  listen: [127.0.0.1]\n  texts:\n    help: [{text: a, colour: red}]\n",
            "f.yaml:6: blockpage.texts.help[0].colour: unknown key",
        ),
        (
            "blockpage:\n  listen: [127.0.0.1]\n  texts:\n    categories: [a, b]\n",
            "f.yaml:6: blockpage.texts.categories: must map category ids to descriptions",
        ),
        (
            "blockpage:\n  listen: [127.0.0.1]\n  texts:\n    categories:\n      gaming: ''\n",
            "f.yaml:7: blockpage.texts.categories.gaming: must be a non-empty string",
        ),
    ],
)
def test_errors_name_file_line_and_key(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in p for p in found), found


def test_every_blockpage_error_is_reported_at_once() -> None:
    found = problems("""\
        blockpage:
          listen: [nope]
          https: true
          texts:
            title: $x
            colour: red
        """)
    assert sorted(p.split(":")[1] for p in found) == ["4", "5", "7", "8"], found


@pytest.mark.parametrize(
    ("doh", "page", "clash"),
    [
        ("192.168.1.2", "192.168.1.2", True),  # both on 192.168.1.2:443
        ("0.0.0.0", "192.168.1.2", True),  # a wildcard holds every address's 443
        ("192.168.1.2", "0.0.0.0:443", True),
        ("192.168.1.3", "192.168.1.2", False),  # the filter's own address and the sinkhole's
        ("192.168.1.2:8443", "192.168.1.2", False),
        ("'[::]'", "192.168.1.2", False),  # another family
    ],
)
def test_the_https_page_and_doh_cannot_share_an_address_and_port(doh: str, page: str, clash: bool) -> None:
    """Both default to port 443: on one address, the second listener would fail to bind at start (and name
    filterd itself as the port's holder); the loader says which keys clash, at the block page's line."""
    text = f"""\
        dns:
          listen: [127.0.0.1]
          https_listen: [{doh}]
        tls: {{cert: c.pem, key: c.key}}
        blockpage:
          listen: [192.168.1.2]
          https: {{mode: local-ca, listen: [{page}]}}
        """
    if not clash:
        assert parse_config(textwrap.dedent(text), "f.yaml", check_files=False).blockpage is not None
        return
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), "f.yaml", check_files=False)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("f.yaml:7: blockpage.https.listen: ")
    assert "overlaps dns.https_listen" in info.value.problems[0]
