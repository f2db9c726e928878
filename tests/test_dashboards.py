"""The dashboards as code: the JSON committed under infra/grafana/ is what infra/dashboards.py
builds (so nobody edits one and forgets the other), and every query of every panel names a
metric the services export or a series the rules record."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from infra.dashboards import OUT_DIR, render_all

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("gateway", "ledger_node", "region_router", "runtime", "identity", "events", "wire")


def test_the_committed_dashboards_are_the_generated_ones():
    committed = {path.name: path.read_text() for path in OUT_DIR.glob("*.json")}
    assert committed == render_all(), "run: .venv/bin/python -m infra.dashboards"


def test_every_query_names_an_exported_metric_or_a_recorded_series():
    exported = set()
    for package in SOURCES:
        for path in (ROOT / package).rglob("*.py"):
            exported.update(re.findall(r'"(regiongate_[a-z_]+)"', path.read_text()))
    groups = yaml.safe_load((ROOT / "infra" / "prometheus" / "rules.yml").read_text())["groups"]
    recorded = {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}
    suffixes = ("_bucket", "_count", "_sum", "_total")
    queries = 0
    for path in OUT_DIR.glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                queries += 1
                names = re.findall(r"[a-z_:]*regiongate_[a-z0-9_:]+", target["expr"])
                assert names, (path.name, target["expr"])
                for name in names:
                    if ":" in name:
                        assert name in recorded, (path.name, name)
                        continue
                    base = next((name[: -len(s)] for s in suffixes if name.endswith(s)), name)
                    assert name in exported or base in exported, (path.name, name)
    assert queries >= 20
