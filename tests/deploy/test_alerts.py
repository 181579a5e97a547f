"""The alert rules and the dashboard in deploy/: promtool accepts the rules, their unit tests
pass, every alert has one, and the dashboard is a Grafana dashboard over a chosen data source."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "mtagent-alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "mtagent-alerts.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "mtagent-dashboard.json"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: scripts/test.sh installs it (Debian package prometheus)"
        )
    return subprocess.run(
        [path, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, check=False
    )


def test_promtool_accepts_the_alert_rules() -> None:
    result = promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 16 rules found" in result.stdout


def test_the_alert_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", ALERT_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_that_sees_it_fire() -> None:
    alerts = set(re.findall(r"^\s+- alert: (\w+)$", ALERTS.read_text(), re.MULTILINE))
    tests = ALERT_TESTS.read_text()
    firing = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels", tests))
    assert len(alerts) == 16
    assert alerts == firing


def test_the_example_scrape_config_is_valid() -> None:
    result = promtool("check", "config", "scrape-mtagent.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_queries_a_chosen_prometheus_per_panel() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in panels}
    for needed in (
        "Worst RPO",
        "RPO per disk",
        "Applied bytes/s",
        "Retention drive",
        "Retention window per group",
        "Resync progress",
        "TLS handshake failures",
    ):
        assert needed in titles
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
