"""The alerting rules hold: promtool checks them and runs their unit tests (every alert shown
firing and staying quiet), every alert has a runbook that exists, and every metric a rule
reads is one the services export.

promtool comes from Debian's prometheus package, which ./dev test installs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "infra" / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "infra" / "prometheus" / "rules_test.yml"
SOURCES = ("gateway", "ledger_node", "region_router", "runtime", "identity", "events", "wire")


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed: ./dev test installs Debian's prometheus")
        pytest.skip("promtool is not installed (./dev test installs Debian's prometheus)")
    return found


def _alerts() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


@pytest.mark.parametrize(
    "command", [["check", "rules", str(RULES)], ["test", "rules", str(RULES_TEST)]]
)
def test_promtool_passes_the_rules_and_their_tests(command):
    result = subprocess.run(
        [_promtool(), *command], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_quiet_and_has_a_runbook():
    fired, quiet = set(), set()
    for case in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    for name, rule in _alerts().items():
        assert name in fired, f"{name} is never shown firing"
        assert name in quiet, f"{name} is never shown staying quiet"
        runbook = ROOT / rule["annotations"]["runbook_url"]
        assert runbook.is_file(), f"{name}: no runbook at {runbook}"
        assert rule["labels"]["severity"] in ("page", "ticket"), name


def test_every_metric_a_rule_reads_is_exported():
    exported = set()
    for package in SOURCES:
        for path in (ROOT / package).rglob("*.py"):
            exported.update(re.findall(r'"(regiongate_[a-z_]+)"', path.read_text()))
    groups = yaml.safe_load(RULES.read_text())["groups"]
    read = set()
    for group in groups:
        for rule in group["rules"]:
            read.update(re.findall(r"(?<![:\w])(regiongate_[a-z_]+)(?![:\w])", rule["expr"]))
    suffixes = ("_bucket", "_count", "_sum", "_total")
    for metric in read:
        base = next((metric[: -len(s)] for s in suffixes if metric.endswith(s)), metric)
        assert metric in exported or base in exported, f"{metric} is not exported"
