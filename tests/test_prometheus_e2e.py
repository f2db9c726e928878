"""The alerts end to end: a real Prometheus (Debian's package) scrapes a real two-region local
cluster every second with the project's rules. Reads of a us account keep flowing through the eu
gateway; stopping the us ledger node fires ServiceDown for it within its stated minute (plus a
scrape and an evaluation) and the eu gateway's availability burn alert as its answers turn 503;
starting the node again resolves ServiceDown and the reads succeed again. (The burn alert
clears once the outage leaves its 5- and 30-minute windows, longer than a test should wait:
rules_test.yml shows it firing through a 10-minute outage and resolved 40 minutes later.)
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from infra.devkeys import DevKeys
from infra.local import LocalCluster, read_state
from infra.prometheus_server import prometheus_binary
from runtime.tls import client_context

SERVICE_DOWN_FOR_S = 60
INTERVAL_S = 1.0


def _firing(cluster: LocalCluster, name: str, **labels: str) -> bool:
    return any(
        alert["labels"].get("alertname") == name
        and alert["state"] == "firing"
        and all(alert["labels"].get(k) == v for k, v in labels.items())
        for alert in cluster.prometheus.alerts()
    )


def _wait(condition, timeout_s: float) -> float:
    """Seconds until condition() held; fails past timeout_s."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(0.5)
    pytest.fail(f"not within {timeout_s} s")


@pytest.mark.timeout(300)
def test_a_stopped_ledger_fires_its_alerts_which_resolve_when_it_is_back(own_services_dir):
    if prometheus_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed: ./dev test installs it")
        pytest.skip("prometheus is not installed (./dev test installs it)")
    cluster = LocalCluster(
        root=own_services_dir / "cluster",
        regions=["eu", "us"],
        fixed_ports=False,
        observe_interval_s=INTERVAL_S,
    )
    cluster.start()
    stop = threading.Event()
    statuses: list[int] = []
    try:
        state = read_state(cluster.root)
        keys = DevKeys(Path(state["dev_private_key"]), Path(state["dev_jwks"]))
        token = keys.mint("e2e-backoffice", "admin")
        context = client_context(Path(state["ca_cert"]))
        eu = state["gateways"]["eu"]

        def call(method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
            request = urllib.request.Request(  # noqa: S310 (the cluster's own https URL)
                eu + path,
                data=json.dumps(body).encode() if body is not None else None,
                method=method,
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/json",
                    "Idempotency-Key": f"e2e-{time.monotonic_ns()}",
                },
            )
            try:
                with urllib.request.urlopen(request, context=context, timeout=5) as response:  # noqa: S310
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                return exc.code, {}

        status, account = call("POST", "/v1/accounts", {"currency": "EUR", "region": "us"})
        assert status == 201, account

        def reads() -> None:
            while not stop.wait(0.05):
                statuses.append(call("GET", f"/v1/accounts/{account['id']}/balance")[0])

        reader = threading.Thread(target=reads, daemon=True)
        reader.start()
        _wait(lambda: statuses.count(200) >= 20, 30)

        cluster.ledgers["us"].stop()
        down = {"service_region": "us", "job": "regiongate-ledger"}
        elapsed_s = _wait(lambda: _firing(cluster, "ServiceDown", **down), 120)
        assert elapsed_s <= SERVICE_DOWN_FOR_S + 6 * INTERVAL_S + 10, elapsed_s
        _wait(
            lambda: _firing(cluster, "GatewayAvailabilityBudgetBurnFast", service_region="eu"), 30
        )
        assert 503 in statuses

        cluster.ledgers["us"].start()
        _wait(lambda: not _firing(cluster, "ServiceDown", **down), 30)
        served_again = len(statuses)
        _wait(lambda: statuses[served_again:].count(200) >= 5, 30)
    finally:
        stop.set()
        cluster.stop()
