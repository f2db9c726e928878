"""Grafana dashboards as code (``grafana-foundation-sdk``), written as JSON into
``infra/grafana/`` for provisioning: a region overview, the ledger, the sagas, and the
gateway's limits and pool. Every panel reads metrics the services export, by the labels the
alerting rules use (``service_region`` on each target; infra/prometheus/rules.yml).

``python -m infra.dashboards`` writes the files; tests/test_dashboards.py checks that the
committed JSON is what this module builds and that every query names an exported metric.
"""

from __future__ import annotations

import json
from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import Dashboard, QueryVariable
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.timeseries import Panel
from grafana_foundation_sdk.cog.encoder import JSONEncoder

OUT_DIR = Path(__file__).resolve().parent / "grafana"
REGION = 'service_region=~"$region"'


def _query(expr: str, legend: str) -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend)


def _panel(title: str, unit: str, *queries: Dataquery, description: str = "") -> Panel:
    panel = Panel().title(title).unit(unit).description(description).height(8).span(12)
    for ref_id, query in zip("ABCDEFGH", queries, strict=False):
        panel = panel.with_target(query.ref_id(ref_id))
    return panel


def _quantiles(metric: str, by: str, labels: str = REGION) -> list[Dataquery]:
    return [
        _query(
            f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{labels}}}"
            "[$__rate_interval])))",
            f"p{round(q * 100)} {{{{{by}}}}}",
        )
        for q in (0.5, 0.99)
    ]


def _dashboard(uid: str, title: str, panels: list[Panel]) -> dict:
    builder = (
        Dashboard(title)
        .uid(uid)
        .tags(["regiongate", "generated"])
        .refresh("30s")
        .time("now-1h", "now")
        .with_variable(
            QueryVariable("region")
            .label("Region")
            .query('label_values(up{job=~"regiongate-.*"}, service_region)')
            .multi(True)
            .include_all(True)
        )
    )
    for panel in panels:
        builder = builder.with_panel(panel)
    return json.loads(json.dumps(builder.build(), cls=JSONEncoder, sort_keys=True))


def region_overview() -> dict:
    requests = "regiongate_gateway_request_seconds"
    return _dashboard(
        "regiongate-region-overview",
        "regiongate / Region overview",
        [
            _panel(
                "Requests per second by route",
                "reqps",
                _query(
                    f"sum by (service_region, route) (rate({requests}_count{{{REGION}}}"
                    "[$__rate_interval]))",
                    "{{service_region}} {{route}}",
                ),
            ),
            _panel(
                "Errors (5xx) per second by home region",
                "reqps",
                _query(
                    f"sum by (service_region, home_region) (rate({requests}_count{{{REGION}, "
                    'status=~"5.."}[$__rate_interval]))',
                    "{{service_region}} -> {{home_region}}",
                ),
            ),
            _panel("Latency by route", "s", *_quantiles(requests, "route")),
            _panel("Latency by home region", "s", *_quantiles(requests, "home_region")),
            _panel(
                "Availability SLO: 5xx ratio over 1 h",
                "percentunit",
                _query(
                    f"service_region:regiongate_gateway_errors:ratio_rate1h{{{REGION}}}",
                    "{{service_region}}",
                ),
                description="Budget: 0.1 % of requests (infra/prometheus/rules.yml).",
            ),
        ],
    )


def ledger() -> dict:
    return _dashboard(
        "regiongate-ledger",
        "regiongate / Ledger",
        [
            _panel("Batch size", "short", *_quantiles("regiongate_ledger_batch_size", "instance")),
            _panel("Batch time", "s", *_quantiles("regiongate_ledger_batch_seconds", "instance")),
            _panel(
                "Batch phases (write includes COMMIT and its WAL flush)",
                "s",
                *_quantiles("regiongate_ledger_batch_phase_seconds", "phase"),
            ),
            _panel(
                "Queue depth",
                "short",
                _query(f"regiongate_ledger_queue_depth{{{REGION}}}", "{{instance}}"),
            ),
            _panel(
                "Batch retries per second",
                "ops",
                _query(
                    f"sum by (instance) (rate(regiongate_ledger_batch_retries_total{{{REGION}}}"
                    "[$__rate_interval]))",
                    "{{instance}}",
                ),
            ),
            _panel(
                "Ledger request latency by route",
                "s",
                *_quantiles("regiongate_ledger_request_seconds", "route"),
            ),
        ],
    )


def sagas() -> dict:
    return _dashboard(
        "regiongate-sagas",
        "regiongate / Cross-region transfers",
        [
            _panel(
                "Outcomes per second by destination",
                "ops",
                _query(
                    f"sum by (outcome, region) (rate(regiongate_saga_outcomes_total{{{REGION}}}"
                    "[$__rate_interval]))",
                    "{{outcome}} -> {{region}}",
                ),
            ),
            _panel("Hold to end", "s", *_quantiles("regiongate_saga_seconds", "outcome")),
            _panel(
                "Step calls by destination and answer",
                "s",
                *_quantiles("regiongate_saga_step_call_seconds", "region"),
            ),
            _panel(
                "Running and overdue",
                "short",
                _query(
                    f"sum by (service_region) (regiongate_sagas_running{{{REGION}}})", "running"
                ),
                _query(
                    f"max by (service_region) (regiongate_sagas_overdue{{{REGION}}})", "overdue"
                ),
            ),
            _panel(
                "Step errors per second by destination",
                "ops",
                _query(
                    f"sum by (region) (rate(regiongate_saga_step_errors_total{{{REGION}}}"
                    "[$__rate_interval]))",
                    "{{region}}",
                ),
            ),
        ],
    )


def gateway() -> dict:
    return _dashboard(
        "regiongate-gateway",
        "regiongate / Gateway limits and pool",
        [
            _panel(
                "Rate limited (429) per second",
                "reqps",
                _query(
                    "sum by (service_region, route) (rate(regiongate_gateway_request_seconds_count"
                    f'{{{REGION}, status="429"}}[$__rate_interval]))',
                    "{{service_region}} {{route}}",
                ),
            ),
            _panel(
                "Rate limiter failing open per second",
                "ops",
                _query(
                    "sum by (instance) (rate(regiongate_rate_limiter_fail_open_total"
                    f"{{{REGION}}}[$__rate_interval]))",
                    "{{instance}}",
                ),
            ),
            _panel(
                "Wait for a pooled ledger connection",
                "s",
                *_quantiles("regiongate_gateway_pool_wait_seconds", "instance"),
            ),
            _panel(
                "Upstream errors per second by region",
                "ops",
                _query(
                    "sum by (region, kind) (rate(regiongate_router_upstream_errors_total"
                    f"{{{REGION}}}[$__rate_interval]))",
                    "{{region}} {{kind}}",
                ),
            ),
        ],
    )


DASHBOARDS = {
    "region-overview": region_overview,
    "ledger": ledger,
    "sagas": sagas,
    "gateway": gateway,
}


def render_all() -> dict[str, str]:
    """File name -> JSON text, as committed."""
    return {
        f"{name}.json": json.dumps(build(), indent=2, sort_keys=True) + "\n"
        for name, build in DASHBOARDS.items()
    }


def main() -> None:
    OUT_DIR.mkdir(exist_ok=True)
    for name, text in render_all().items():
        (OUT_DIR / name).write_text(text)
        print(OUT_DIR / name)


if __name__ == "__main__":
    main()
