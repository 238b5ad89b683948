"""The admin page in a real browser: headless Chromium driven by Selenium (Debian's chromium-driver) logs in with
the keyboard, watches a blocked attempt from a test client arrive in the live query log, allows the name with one
tap, and the client's next query is forwarded. Screenshots of the overview at phone and desktop sizes are taken
(FILTERD_SCREENSHOTS=DIR keeps them: docs/console-*.png come from this test)."""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest

from tests.support import Dnsmasq, RunningFilterd, addresses

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars"]  # fmt: skip
KIDS, PHONE, LAPTOP = "127.0.0.2", "127.0.0.3", "127.0.0.4"

webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the [test] extra)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def ask(server: RunningFilterd, name: str, source: str) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=server.port, source=source, timeout=3)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    if CHROMIUM is None or DRIVER is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium and chromium-driver are not installed (the README's test command installs them)")
        pytest.skip("needs Chromium and its driver (Debian: chromium, chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900"]:
        options.add_argument(flag)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager never downloads anything
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_a_parent_allows_a_blocked_name_from_the_browser(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path, browser: webdriver.Chrome
) -> None:
    server = start_filterd(
        textwrap.dedent(f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{dnsmasq.address}"]
          records: {{kids-tablet.lan: {KIDS}, mums-phone.lan: {PHONE}, study-laptop.lan: {LAPTOP}}}
        state_dir: {tmp_path / "state"}
        admin:
          listen: 127.0.0.1:0
        querylog: {{retention: 14d}}
        groups:
          - {{name: children, clients: [kids-tablet.lan, study-laptop.lan]}}
          - {{name: parents, clients: [mums-phone.lan]}}
        safeguarding:
          alerts:
            - {{name: roulette-tries, categories: [chat-roulette-video], attempts: 2, within: 10m}}
        """)
    )
    assert server.app is not None and server.app.listening.admin is not None
    base = f"http://127.0.0.1:{server.app.listening.admin.port}"
    token = (tmp_path / "state" / "admin.token").read_text().strip()
    wait = WebDriverWait(browser, 20)

    browser.get(base + "/")
    assert browser.current_url == base + "/login"
    field = browser.find_element(By.NAME, "token")
    assert browser.switch_to.active_element == field  # autofocus: type at once
    field.send_keys(token + Keys.ENTER)  # the keyboard alone logs in
    wait.until(expected_conditions.url_to_be(base + "/"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Today"
    cookie = browser.get_cookie("filterd_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert browser.execute_script("return document.cookie") == ""  # scripts never see the session

    browser.get(base + "/log")
    wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "live-status"), "Following"))
    assert addresses(ask(server, "video.omegle.com", KIDS)) == ["127.0.0.1"]  # blocked: the sinkhole
    allow = wait.until(  # the row arrives by server-sent events, without a reload
        expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, 'button[aria-label="Allow video.omegle.com"]'))
    )
    row = allow.find_element(By.XPATH, "./ancestor::tr")
    assert "kids-tablet.lan" in row.text and "children" in row.text and "blocked by chat-roulette" in row.text
    allow.click()
    wait.until(expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, ".flash"), "video.omegle.com"))
    assert "allowed" in browser.find_element(By.CSS_SELECTOR, ".flash").text
    assert addresses(ask(server, "video.omegle.com", KIDS)) == ["192.0.2.66"]  # forwarded to the upstream now

    # some traffic for the overview, then its screenshots: a phone and a desktop window
    traffic = [("ome.tv", KIDS), ("chatroulette.com", KIDS), ("chatroulette.com", LAPTOP),
               ("use-application-dns.net", LAPTOP), ("example.org", PHONE), ("www.example.org", KIDS)]  # fmt: skip
    for name, source in traffic:
        ask(server, name, source)
    keep = Path(os.environ.get("FILTERD_SCREENSHOTS", tmp_path))
    for label, (width, height) in {"phone": (390, 1400), "desktop": (1280, 1000)}.items():
        browser.set_window_size(width, height)
        browser.get(base + "/")
        assert browser.find_element(By.TAG_NAME, "h1").text == "Today"
        assert "kids-tablet.lan" in browser.find_element(By.ID, "content").text
        viewport = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert viewport[0] <= viewport[1], f"{label}: the page scrolls sideways ({viewport})"
        shot = keep / f"console-{label}.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    # keyboard: the first Tab lands on "Skip to the content", the next ones walk the navigation
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert browser.switch_to.active_element.text == "Skip to the content"
