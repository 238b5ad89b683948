"""deploy/prometheus/ and deploy/grafana/: the alert rules (deploy/prometheus/filterd.rules.yml) pass promtool's
check and their unit tests (deploy/prometheus/filterd.rules.test.yml), and every metric the rules and the dashboard
deploy/grafana/filterd.json name is one a running filterd exports (scraped from its /metrics, not the source)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.netlab import ROOT, require
from tests.support import Dnsmasq, RunningFilterd, free_port

RULES = ROOT / "deploy" / "prometheus" / "filterd.rules.yml"
RULES_TESTS = ROOT / "deploy" / "prometheus" / "filterd.rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "filterd.json"

#: PromQL words that are not metric names (functions are recognised by their parenthesis).
KEYWORDS = {"and", "or", "unless", "bool", "offset"}
#: Metrics that come from Prometheus itself, not from filterd.
PROMETHEUS_OWN = {"up"}
#: A family's type -> the sample names Prometheus stores for it.
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    tokens = re.findall(r"(?<![\w$.:])([a-zA-Z_:][\w:]*)\b(?!\s*\()", expr)
    return {token for token in tokens if token not in KEYWORDS}


def rule_exprs() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # label_values(METRIC, label): the metric is the first argument
            exprs.append(re.sub(r"^label_values\((\w+),.*\)$", r"\1", variable["query"]["query"]))
    return exprs


def test_metric_names_are_read_from_promql() -> None:
    expr = 'sum by (le, upstream) (rate(x_bucket{a="b{c}", i=~"$i"}[$__rate_interval])) / on (i) y and z offset 5m'
    assert metric_names(expr) == {"x_bucket", "y", "z"}
    assert metric_names("(time() - a) > on (instance, list) (2 * b)") == {"a", "b"}


def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    require("promtool")
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in check.stdout
    tests = subprocess.run(["promtool", "test", "rules", str(RULES_TESTS)], capture_output=True, text=True, timeout=60)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULES_TESTS.read_text()))
    assert tested == set(rule_exprs()), "every alert has a unit test"


def test_the_rules_cover_what_the_issue_asks_for() -> None:
    exprs = rule_exprs()
    needed = {
        "FilterdDown": "up{",
        "FilterdAllUpstreamsFailing": "filterd_upstream_up",
        "FilterdListStale": "filterd_list_refresh_interval_seconds",
        "FilterdListUpdateFailed": "failed|rejected",
        "FilterdQueryLogDroppingRows": "filterd_querylog_rows_total",
        "FilterdServfailShareRising": 'decision="error"',
        "FilterdReloadFailed": "filterd_config_last_reload_successful",
    }
    for alert, part in needed.items():
        assert part in exprs[alert], alert


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    text = "\n".join(f"{p['title']}: {' '.join(t['expr'] for t in p['targets'])}" for p in panels)
    for part in (
        "by (decision)",
        "by (group)",
        'decision="blocked"',
        "filterd_cache_hits_total",
        "histogram_quantile(0.99",
        "by (le, upstream)",
        "filterd_upstream_up",
        "filterd_blocklist_entries",
        "time() - max by (list) (filterd_list_last_success_timestamp_seconds",
        "filterd_blockpage_views_total",
        "filterd_safeguarding_alerts_total",
    ):
        assert part in text, part
    for panel in panels:  # every panel asks the dashboard's data source, for the chosen instances
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert 'instance=~"$instance"' in target["expr"], panel["title"]


def test_the_alert_expressions_the_readme_quotes_are_the_rules() -> None:
    """The README quotes alert conditions as "ready to load" in the rules file: each is one of its rules (the same
    metrics, and its numbers)."""
    prose = re.sub(r"^```.*?^```", "", (ROOT / "README.md").read_text(), flags=re.M | re.S)  # no code blocks
    readme = " ".join(prose.split())  # an expression may be wrapped over lines
    quoted = [span for span in re.findall(r"`([^`]+)`", readme) if "time() -" in span]
    assert quoted, "the README's list staleness alert"
    for expr in quoted:
        numbers = set(re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", expr))
        assert any(
            metric_names(expr) <= metric_names(rule) and numbers <= set(re.findall(r"\d+(?:\.\d+)?", rule))
            for rule in rule_exprs().values()
        ), f"the README quotes `{expr}`, which is no rule in {RULES.name}"


def test_a_percent_panel_shows_only_ratios() -> None:
    """A panel in percent shows shares (an expression with a `/`), or names the series it shows otherwise: a
    rate drawn as a percentage (0.5 stale answers a second as 50%) misleads."""
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in (p for p in dashboard["panels"] if p["type"] != "row"):
        config = panel.get("fieldConfig", {})
        if config.get("defaults", {}).get("unit") != "percentunit":
            continue
        overridden = {
            o["matcher"]["options"]
            for o in config.get("overrides", [])
            if o["matcher"]["id"] == "byName" and any(prop["id"] == "unit" for prop in o["properties"])
        }
        for target in panel["targets"]:
            if target.get("legendFormat") not in overridden:
                assert "/" in target["expr"], f"{panel['title']}: {target['expr']} shown as a percentage"


@pytest.fixture
def scraped(start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path) -> RunningFilterd:
    """A filterd with everything the dashboard shows switched on: a url list (its server is down), the query log,
    a group, safeguarding, the block page; after one query."""
    server = start_filterd(f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{dnsmasq.address}"]
        metrics:
          listen: 127.0.0.1:0
        blockpage:
          listen: ["127.0.0.1:0"]
        state_dir: {tmp_path / "state"}
        lists:
          - builtin: chat-roulette
          - name: remote
            url: http://127.0.0.1:{free_port()}/list.txt
            refresh: 1h
        groups:
          - name: kids
            clients: [127.0.0.50]
        safeguarding:
          alerts:
            - name: roulette
              categories: [chat-roulette]
    """)
    server.query("example.org")
    return server


def exported(server: RunningFilterd) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(server.metrics_text()):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def test_every_metric_in_the_rules_and_the_dashboard_is_exported(scraped: RunningFilterd) -> None:
    names = exported(scraped)
    assert "filterd_queries_total" in names and "filterd_upstream_request_duration_seconds_bucket" in names
    used: dict[str, set[str]] = {}
    for where, exprs in (("rules", list(rule_exprs().values())), ("dashboard", dashboard_exprs())):
        for expr in exprs:
            for name in metric_names(expr):
                used.setdefault(name, set()).add(where)
    assert {"rules", "dashboard"} <= set().union(*used.values())
    unknown = {name: sorted(where) for name, where in used.items() if name not in names | PROMETHEUS_OWN}
    assert unknown == {}, f"named in deploy/ but not exported by filterd: {unknown}"


def test_the_list_and_reload_metrics_the_alerts_need(scraped: RunningFilterd, tmp_path: Path) -> None:
    assert scraped.metric("filterd_list_refresh_interval_seconds", list="remote") == 3600
    assert scraped.metric("filterd_list_refresh_interval_seconds", list="chat-roulette") == 0  # not a url list
    assert scraped.metric("filterd_config_last_reload_successful") == 1
    assert scraped.app is not None
    config = scraped.config_path
    good = config.read_text()

    def reload() -> Any:
        assert scraped.app is not None
        return asyncio.run_coroutine_threadsafe(scraped.app.reload(), scraped.loop).result(30)

    config.write_text(good.replace("refresh: 1h", "refresh: soon"))
    assert reload()["ok"] is False
    assert scraped.metric("filterd_config_last_reload_successful") == 0
    assert scraped.metric("filterd_reloads_total", result="failed") == 1
    config.write_text(good.replace("refresh: 1h", "refresh: 2h"))
    assert reload()["ok"] is True
    assert scraped.metric("filterd_config_last_reload_successful") == 1
    assert scraped.metric("filterd_reloads_total", result="done") == 1
    assert scraped.metric("filterd_list_refresh_interval_seconds", list="remote") == 7200
