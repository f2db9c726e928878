"""``regiongate load run``: one profile, headless, against the running local cluster.

1. create and fund the profile's players through the gateways (admin token from the cluster's
   development keys), so every run starts from known balances;
2. run Locust headless (``loadtests/locustfile.py``) for the given time and users, writing its
   CSV and HTML reports into a fresh folder under ``results/``;
3. wait for the cross-region transfers still running to end, then run the audit across every
   region's ledger and say in the report whether money was conserved;
4. write ``summary.json`` (and plot the knee for a step-load profile); exit 1 when a request
   failed unexpectedly or the audit found a violation.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import html
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg

from infra.devkeys import DevKeys
from infra.errors import InfraError
from infra.local import read_state
from ledger_node.global_audit import audit_regions
from loadtests.profiles import Profile, load_profile
from runtime.tls import client_context

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
OPERATOR = "load-operator"
SETUP_CONCURRENCY = 16
SETUP_ATTEMPTS_MAX = 8
SETUP_RETRY_WAIT_S_MAX = 5.0
SAGA_SETTLE_S = 60.0
SETTLE_POLL_S = 0.5


class LoadSetupFailed(InfraError):
    """The profile's players could not be set up; says where and why, in one line."""


async def create_players(profile: Profile, state: dict) -> dict[str, list[str]]:
    """The profile's players, in their home regions, each funded with profile.funding.

    Every call carries a key derived from this setup's id, so a retry (on 429 or 503, after
    the Retry-After the gateway gives, a bounded number of times) never makes a second account
    or deposit. If setup still fails, the accounts it made and could not fund are closed, so
    nothing is left half made, and the failure is one line."""
    keys = DevKeys(Path(state["dev_private_key"]), Path(state["dev_jwks"]))
    setup_id = uuid.uuid4().hex[:12]
    token = keys.mint(f"load-setup-{setup_id}", "admin")
    ssl = client_context(Path(state["ca_cert"]))
    headers = {"Authorization": f"Bearer {token}"}
    limit = asyncio.Semaphore(SETUP_CONCURRENCY)
    players: dict[str, list[str]] = {region: [] for region in profile.regions}
    unfunded: dict[str, str] = {}  # account id -> its gateway

    async def post(session: aiohttp.ClientSession, url: str, body: dict, key: str) -> dict:
        for attempt in range(SETUP_ATTEMPTS_MAX):
            request_headers = {**headers, "Idempotency-Key": f"load-{setup_id}-{key}"}
            async with session.post(url, json=body, headers=request_headers, ssl=ssl) as answer:
                payload = await answer.json(content_type=None)
                if answer.status in (200, 201):
                    return payload
                retry_after = answer.headers.get("Retry-After", "")
                if answer.status in (429, 503) and attempt + 1 < SETUP_ATTEMPTS_MAX:
                    wait_s = float(retry_after) if retry_after.isdigit() else 1.0
                    await asyncio.sleep(min(wait_s, SETUP_RETRY_WAIT_S_MAX))
                    continue
                reason = payload.get("detail") or payload.get("title") or payload
                raise LoadSetupFailed(
                    f"setting up players failed: POST {url} answered {answer.status} "
                    f"{payload.get('type', '')} ({reason})"
                )
        raise AssertionError("unreachable")

    async def one(session: aiohttp.ClientSession, region: str, index: int) -> None:
        gateway = state["gateways"][region]
        async with limit:
            body = {"currency": profile.currency, "region": region, "operator": OPERATOR}
            account = await post(session, gateway + "/v1/accounts", body, f"{region}-{index}-a")
            unfunded[account["id"]] = gateway
            deposit = {
                "debit_account_id": f"{region}-clearing-{profile.currency}",
                "credit_account_id": account["id"],
                "amount": profile.funding,
                "currency": profile.currency,
            }
            await post(session, gateway + "/v1/transfers", deposit, f"{region}-{index}-f")
            del unfunded[account["id"]]
        players[region].append(account["id"])

    async with aiohttp.ClientSession() as session:
        outcomes = await asyncio.gather(
            *(one(session, region, index) for region in profile.regions
              for index in range(profile.players[region])),
            return_exceptions=True,
        )  # fmt: skip
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            for account_id, gateway in unfunded.items():
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    await session.post(
                        f"{gateway}/v1/accounts/{account_id}/status",
                        json={"status": "closed"},
                        headers=headers,
                        ssl=ssl,
                    )
            raise failures[0]
    return players


async def _sagas_running(dsns: dict[str, str]) -> int:
    running = 0
    for dsn in dsns.values():
        connection = await asyncpg.connect(dsn)
        try:
            running += await connection.fetchval("SELECT count(*) FROM sagas WHERE status = 'held'")
        finally:
            await connection.close()
    return running


async def settle_and_audit(dsns: dict[str, str]) -> dict:
    # Polls the databases (the sagas' state lives there, not in this process), bounded.
    for _ in range(int(SAGA_SETTLE_S / SETTLE_POLL_S)):
        if not await _sagas_running(dsns):
            break
        await asyncio.sleep(SETTLE_POLL_S)
    results = await audit_regions(dsns)
    failed = {r.name: r.violations[:5] for r in results if not r.ok}
    return {
        "clean": not failed,
        "checks": len(results),
        "failed": failed,
        "sagas_running": await _sagas_running(dsns),
    }


def read_aggregate(results_dir: Path) -> dict:
    """Locust's totals and failures as it printed them at exit (the locustfile writes them),
    else the Aggregated row of its stats CSV, which can miss the run's last seconds."""
    totals_file = results_dir / "locust_totals.json"
    if totals_file.exists():
        return json.loads(totals_file.read_text())
    stats_file = results_dir / "locust_stats.csv"
    totals: dict = {}
    if stats_file.exists():
        with stats_file.open() as handle:
            for row in csv.DictReader(handle):
                if row["Name"] == "Aggregated":
                    totals = {
                        "requests": int(row["Request Count"]),
                        "failures": int(row["Failure Count"]),
                        "rps": float(row["Requests/s"]),
                        "p50_ms": float(row["50%"]),
                        "p95_ms": float(row["95%"]),
                        "p99_ms": float(row["99%"]),
                    }
    failures = []
    failures_file = results_dir / "locust_failures.csv"
    if failures_file.exists():
        with failures_file.open() as handle:
            failures = [
                {"name": r["Name"], "error": r["Error"], "count": int(r["Occurrences"])}
                for r in csv.DictReader(handle)
            ]
    return {"totals": totals, "failures": failures}


def _annotate_report(report: Path, summary: dict) -> None:
    """Say in Locust's HTML report whether money was conserved, and the business outcomes."""
    if not report.exists():
        return
    audit = summary["audit"]
    verdict = (
        "Audit after the run: clean. Money was conserved in every region and across regions."
        if audit["clean"]
        else f"Audit after the run FAILED: {html.escape(json.dumps(audit['failed']))}"
    )
    outcomes = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{count}</td></tr>"
        for name, count in summary.get("regiongate", {}).get("outcomes", {}).items()
    )
    banner = (
        f'<div id="regiongate-verdict" style="padding:12px;margin:12px;border:2px solid '
        f'{"#2a2" if audit["clean"] else "#c22"}"><h2>regiongate</h2><p>{verdict}</p>'
        f"<table><tr><th>outcome</th><th>count</th></tr>{outcomes}</table></div>"
    )
    text = report.read_text()
    # At the top of the document's own body: the report bundles its chart library, whose
    # JavaScript holds "<body>" and "</body>" in strings earlier in the file, so the body is
    # the last one opened before the last "</body>".
    end = text.rfind("</body>")
    start = text.rfind("<body", 0, end if end >= 0 else len(text))
    at = text.index(">", start) + 1 if start >= 0 else 0
    report.write_text(text[:at] + banner + text[at:])


def run_profile(
    *,
    profile_name: str,
    users: int,
    spawn_rate: float,
    run_time: str,
    data_dir: Path,
    results_root: Path,
) -> int:
    # Long: the steps of a load run (set up, run, audit, report), in order.
    profile = load_profile(profile_name)
    state = read_state(data_dir)
    missing = set(profile.regions) - set(state["gateways"])
    if missing:
        raise SystemExit(f"profile {profile.name} needs regions {sorted(missing)}; not running")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results_dir = (results_root / f"{stamp}-{profile.name}").resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    print(f"creating and funding {sum(profile.players.values())} players ...", flush=True)
    players = asyncio.run(create_players(profile, state))
    config = {
        "profile": profile_name,
        "gateways": {region: state["gateways"][region] for region in profile.regions},
        "ca_cert": state["ca_cert"],
        "dev_private_key": state["dev_private_key"],
        "dev_jwks": state["dev_jwks"],
        "players": players,
        "operator": OPERATOR,
        "results_dir": str(results_dir),
    }
    config_file = results_dir / "load.json"
    config_file.write_text(json.dumps(config, indent=2))
    argv = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--csv", str(results_dir / "locust"), "--csv-full-history",
        "--html", str(results_dir / "report.html"), "--only-summary", "--stop-timeout", "10",
        "--loglevel", "WARNING",
    ]  # fmt: skip
    if profile.shape is None:
        argv += ["--users", str(users), "--spawn-rate", str(spawn_rate), "--run-time", run_time]
    print(f"locust: profile {profile.name}, results in {results_dir}", flush=True)
    started = time.monotonic()
    completed = subprocess.run(
        argv, env={**os.environ, "REGIONGATE_LOAD_CONFIG": str(config_file)}, check=False
    )
    elapsed_s = time.monotonic() - started
    print("waiting for cross-region transfers to end, then auditing every region ...", flush=True)
    audit = asyncio.run(settle_and_audit(state["ledger_dsns"]))
    stats_file = results_dir / "regiongate_stats.json"
    summary = {
        "profile": profile.name,
        "users": users if profile.shape is None else "step shape",
        "run_time": run_time if profile.shape is None else None,
        "elapsed_s": round(elapsed_s, 1),
        "locust_exit_code": completed.returncode,
        **read_aggregate(results_dir),
        "regiongate": json.loads(stats_file.read_text()) if stats_file.exists() else {},
        "audit": audit,
    }
    if profile.shape is not None:
        from loadtests.sizing import plot_step_load

        summary["knee"] = plot_step_load(results_dir)
    (results_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    _annotate_report(results_dir / "report.html", summary)
    unexpected = sum(f["count"] for f in summary["failures"])
    print(
        json.dumps(
            {
                "results": str(results_dir),
                "requests": summary["totals"].get("requests"),
                "rps": summary["totals"].get("rps"),
                "p99_ms": summary["totals"].get("p99_ms"),
                "unexpected_failures": unexpected,
                "audit_clean": audit["clean"],
            }
        ),
        flush=True,
    )
    return 0 if unexpected == 0 and audit["clean"] and summary["totals"] else 1
