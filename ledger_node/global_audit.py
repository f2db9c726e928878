"""The audit across regions (``regiongate audit``): the money invariants that no single region
can check on its own, read from every region's database, and identity's (identity.audit).

Checks, each with the rows that break it:

- every region's own invariants (ledger_node.audit), region by region;
- per currency, the sum of all balances over every region is zero, posted and pending alike;
- every completed saga was credited at its destination exactly once, with its amount; no
  compensated saga was credited there; every credit at a destination belongs to a saga that
  its source knows (completed, or still running);
- transit accounts net out: for each pair of regions and currency, what one region's transit
  account received for completed sagas is what the other's paid out, allowing only for sagas
  still running;
- no saga is still running past its deadline (plus a grace for the cancel to land);
- no saga is credited twice and no hold resolved twice.

Every region is read in one repeatable-read snapshot of its own. Snapshots of different
databases are not one instant: under load, a saga can complete between the reads of its two
regions, and the saga checks then see a credit without its saga's end, or the reverse. So when
a saga check fails the whole audit is read again, up to ``attempts`` times, and only what fails
every time is reported. Each region's own checks, and the sum over all regions (every region
balances to zero on its own, in its own snapshot), are exact in one pass.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from identity.audit import PREFIX as IDENTITY_CHECK_PREFIX
from identity.audit import IdentitySnapshot, check_identity, read_identity
from ledger_node.audit import CheckResult, run_checks
from ledger_node.observability import AUDIT_CHECKS, AUDIT_FAILED_CHECKS, AUDIT_LAST_RUN

log = logging.getLogger("regiongate.audit")

SAGAS = """
SELECT id, status, credit_region, credit_account_id, amount, currency, deadline_at,
       credit_transfer_id
FROM sagas
"""
STEPS = "SELECT step_id, saga_id, origin_region, status, transfer_id, amount FROM saga_steps"
TOTALS = """
SELECT currency, sum(credits_posted - debits_posted) AS posted,
       sum(credits_pending - debits_pending) AS pending
FROM accounts GROUP BY currency
"""
TRANSITS = """
SELECT peer_region, currency, credits_posted - debits_posted AS posted
FROM accounts WHERE kind = 'transit'
"""
DOUBLE_CREDITS = """
SELECT reference, count(*) AS credits FROM transfers
WHERE kind = 'saga' AND flow = 'single' GROUP BY reference HAVING count(*) > 1
"""


@dataclass
class RegionSnapshot:
    sagas: list[dict]
    steps: list[dict]
    totals: list[dict]
    transits: list[dict]
    double_credits: list[dict]
    checks: list[CheckResult]
    identity: IdentitySnapshot


async def read_region(dsn: str) -> RegionSnapshot:
    connection = await asyncpg.connect(dsn)
    try:
        # One snapshot per region: its own checks and its saga records see the same ledger.
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            checks = await run_checks(connection)
            parts = [
                [dict(row) for row in await connection.fetch(sql)]
                for sql in (SAGAS, STEPS, TOTALS, TRANSITS, DOUBLE_CREDITS)
            ]
            identity = await read_identity(connection)
    finally:
        await connection.close()
    return RegionSnapshot(*parts, checks, identity)


SAGA_CHECK_PREFIX = "sagas: "


async def audit_regions(
    dsns: dict[str, str],
    *,
    grace_s: float = 10.0,
    attempts: int = 3,
    retry_interval_s: float = 1.0,
) -> list[CheckResult]:
    """Run every check over the regions' databases (region code -> DSN)."""
    if not 1 <= attempts <= 20:
        raise ValueError(f"attempts must be in [1, 20], got {attempts}")
    for attempt in range(attempts):
        results = await _audit_once(dsns, grace_s)
        skewed = any(
            not r.ok and r.name.startswith((SAGA_CHECK_PREFIX, IDENTITY_CHECK_PREFIX))
            for r in results
        )
        if not skewed or attempt == attempts - 1:
            return results
        await asyncio.sleep(retry_interval_s)
    raise AssertionError("unreachable")


async def _audit_once(dsns: dict[str, str], grace_s: float) -> list[CheckResult]:
    now = datetime.now(UTC)
    snapshots = {region: await read_region(dsn) for region, dsn in dsns.items()}
    results: list[CheckResult] = []
    for region, snapshot in snapshots.items():
        for check in snapshot.checks:
            results.append(CheckResult(f"{region}: {check.name}", check.violations))
    results.append(_conservation(snapshots))
    results.extend(_sagas(snapshots, now - timedelta(seconds=grace_s)))
    identities = {region: snapshot.identity for region, snapshot in snapshots.items()}
    for name, violations in check_identity(identities, now - timedelta(seconds=grace_s)):
        results.append(CheckResult(name, violations))
    return results


def _conservation(snapshots: dict[str, RegionSnapshot]) -> CheckResult:
    posted: dict[str, int] = collections.Counter()
    pending: dict[str, int] = collections.Counter()
    for snapshot in snapshots.values():
        for row in snapshot.totals:
            posted[row["currency"]] += int(row["posted"])
            pending[row["currency"]] += int(row["pending"])
    violations = [
        {"currency": currency, "posted": posted[currency], "pending": pending[currency]}
        for currency in sorted(set(posted) | set(pending))
        if posted[currency] or pending[currency]
    ]
    return CheckResult("all regions: per currency, the sum of all balances is zero", violations)


def _sagas(snapshots: dict[str, RegionSnapshot], overdue_before: datetime) -> list[CheckResult]:
    steps = {
        (region, step["step_id"]): step
        for region, snapshot in snapshots.items()
        for step in snapshot.steps
    }
    known_sagas = {}
    credited_wrongly, overdue = [], []
    # (origin, destination, currency) -> amounts applied at the destination for running sagas
    in_flight: dict[tuple[str, str, str], int] = collections.Counter()
    for origin, snapshot in snapshots.items():
        for saga in snapshot.sagas:
            known_sagas[saga["id"]] = saga
            destination = saga["credit_region"]
            step = steps.get((destination, saga["id"]))
            applied = step is not None and step["status"] == "applied"
            if destination not in snapshots:
                continue
            if saga["status"] == "completed" and (not applied or step["amount"] != saga["amount"]):
                credited_wrongly.append({"saga": saga["id"], "status": "completed", "step": step})
            if saga["status"] == "compensated" and applied:
                credited_wrongly.append({"saga": saga["id"], "status": "compensated", "step": step})
            if saga["status"] == "held":
                if applied:
                    in_flight[(origin, destination, saga["currency"])] += saga["amount"]
                if saga["deadline_at"] < overdue_before:
                    overdue.append({"saga": saga["id"], "deadline_at": str(saga["deadline_at"])})
    orphans = [
        {"region": region, "step": step_id}
        for (region, step_id), step in steps.items()
        if step["status"] == "applied"
        and step["origin_region"] in snapshots
        and step["saga_id"] not in known_sagas
    ]
    transit_violations = _transits(snapshots, in_flight)
    doubles = [
        {"region": region, **row}
        for region, snapshot in snapshots.items()
        for row in snapshot.double_credits
    ]
    return [
        CheckResult(
            "sagas: completed ones credited once at their destination, compensated ones never",
            credited_wrongly,
        ),
        CheckResult("sagas: every destination credit belongs to a known saga", orphans),
        CheckResult(
            "sagas: transit accounts net out between each pair of regions", transit_violations
        ),
        CheckResult("sagas: none is unfinished past its deadline", overdue),
        CheckResult("sagas: no saga is credited twice", doubles),
    ]


def _transits(
    snapshots: dict[str, RegionSnapshot], in_flight: dict[tuple[str, str, str], int]
) -> list[dict]:
    """X's transit(Y) is credited when X posts a completed saga's hold; Y's transit(X) is
    debited when Y applies step 2. Over both directions the two accounts sum to zero, less
    what Y applied for sagas that X has not posted yet."""
    posted = {
        (region, row["peer_region"], row["currency"]): int(row["posted"])
        for region, snapshot in snapshots.items()
        for row in snapshot.transits
    }
    violations = []
    for (region, peer, currency), balance in posted.items():
        if region > peer or peer not in snapshots:
            continue  # each unordered pair once
        other = posted.get((peer, region, currency), 0)
        running = in_flight[(region, peer, currency)] + in_flight[(peer, region, currency)]
        if balance + other + running != 0:
            violations.append(
                {
                    "pair": f"{region}/{peer}",
                    "currency": currency,
                    "net": balance + other,
                    "applied_for_running_sagas": running,
                }
            )
    return violations


async def audit_forever(
    dsns: dict[str, str], *, interval_s: float, grace_s: float, report: Callable[[list], None]
) -> None:
    """Audit every interval_s until cancelled, exporting each run's result as metrics
    (``regiongate_audit_failed_checks``, ``regiongate_audit_last_run_timestamp_seconds``) for
    the MoneyAuditFailing and MoneyAuditStale alerts. A run that cannot reach a database
    leaves the last figures, whose timestamp then ages: the stale alert says so."""
    if not 1 <= interval_s <= 86_400:
        raise ValueError(f"interval_s must be in [1, 86400], got {interval_s}")
    while True:
        try:
            results = await audit_regions(dsns, grace_s=grace_s)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("audit run failed, figures unchanged: %s", exc)
        else:
            AUDIT_CHECKS.set(len(results))
            AUDIT_FAILED_CHECKS.set(sum(not r.ok for r in results))
            AUDIT_LAST_RUN.set_to_current_time()
            report(results)
        await asyncio.sleep(interval_s)
