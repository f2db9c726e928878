"""The ledger's invariants, checked against the database itself: what tests read back after
every scenario, and what ``regiongate ledger check`` shows an operator.

Each check is one query that returns the rows that break it; an empty result is a pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

CHECKS: dict[str, str] = {
    "per currency, posted credits equal posted debits": """
        SELECT currency, sum(credits_posted - debits_posted) AS net
        FROM accounts GROUP BY currency HAVING sum(credits_posted - debits_posted) <> 0
    """,
    "per currency, pending credits equal pending debits": """
        SELECT currency, sum(credits_pending - debits_pending) AS net
        FROM accounts GROUP BY currency HAVING sum(credits_pending - debits_pending) <> 0
    """,
    "no player account is overdrawn": """
        SELECT id, credits_posted - debits_posted - debits_pending AS available
        FROM accounts WHERE kind = 'player'
          AND credits_posted - debits_posted - debits_pending < 0
    """,
    "account totals agree with the transfers table": """
        WITH movements AS (
            SELECT debit_account_id AS id,
                   sum(amount) FILTER (WHERE flow IN ('single', 'post')) AS dp, 0::numeric AS cp,
                   sum(amount) FILTER (WHERE flow = 'pending' AND status = 'pending') AS dpe,
                   0::numeric AS cpe
            FROM transfers GROUP BY debit_account_id
            UNION ALL
            SELECT credit_account_id, 0, sum(amount) FILTER (WHERE flow IN ('single', 'post')),
                   0, sum(amount) FILTER (WHERE flow = 'pending' AND status = 'pending')
            FROM transfers GROUP BY credit_account_id
        ), totals AS (
            SELECT id, coalesce(sum(dp), 0) AS dp, coalesce(sum(cp), 0) AS cp,
                   coalesce(sum(dpe), 0) AS dpe, coalesce(sum(cpe), 0) AS cpe
            FROM movements GROUP BY id
        )
        SELECT a.id, a.debits_posted, t.dp, a.credits_posted, t.cp,
               a.debits_pending, t.dpe, a.credits_pending, t.cpe
        FROM accounts a LEFT JOIN totals t ON t.id = a.id
        WHERE a.debits_posted <> coalesce(t.dp, 0) OR a.credits_posted <> coalesce(t.cp, 0)
           OR a.debits_pending <> coalesce(t.dpe, 0) OR a.credits_pending <> coalesce(t.cpe, 0)
    """,
    # The batch's write checks this for the rows it inserts (migration 0005 dropped the foreign
    # keys that did it row by row); here it is checked over the whole history.
    "every transfer names accounts that exist, and every resolution a hold": """
        SELECT t.id, t.debit_account_id, t.credit_account_id, t.pending_id FROM transfers t
        WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = t.debit_account_id)
           OR NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = t.credit_account_id)
           OR (t.pending_id IS NOT NULL AND NOT EXISTS (
                   SELECT 1 FROM transfers p WHERE p.id = t.pending_id AND p.flow = 'pending'))
    """,
    # The outbox keeps published rows for a while (events.retain_s); the check covers every
    # transfer since its oldest kept row, or since it began (docs/events.md).
    "every transfer since the outbox's horizon has exactly one event": """
        WITH horizon AS (
            SELECT greatest(started_at, coalesce(cleaned_through, started_at)) AS t
            FROM outbox_relay WHERE name = 'relay'
        )
        SELECT t.id, count(o.seq) AS events FROM transfers t
        LEFT JOIN outbox o ON o.family = 'transfer' AND o.ref = t.id
        WHERE t.created_at > (SELECT t FROM horizon)
        GROUP BY t.id HAVING count(o.seq) <> 1
        UNION ALL
        SELECT o.ref, 0 FROM outbox o
        WHERE o.family = 'transfer' AND NOT EXISTS (SELECT 1 FROM transfers t WHERE t.id = o.ref)
    """,
    "every resolved hold has exactly one resolution, every open hold none": """
        SELECT p.id, p.status, count(r.id) AS resolutions
        FROM transfers p LEFT JOIN transfers r ON r.pending_id = p.id
        WHERE p.flow = 'pending'
        GROUP BY p.id, p.status
        HAVING (p.status = 'pending') <> (count(r.id) = 0) OR count(r.id) > 1
    """,
    "every acknowledged idempotency key names a stored transfer": """
        SELECT k.key, k.transfer_id FROM idempotency_keys k
        LEFT JOIN transfers t ON t.id = k.transfer_id
        WHERE k.transfer_id IS NOT NULL AND t.id IS NULL
    """,
    "no bet is rolled back twice, and every rollback names its transfer": """
        SELECT account_id, reference, status FROM bets
        WHERE (status = 'rolled_back') <> (rollback_transfer_id IS NOT NULL)
    """,
}


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    violations: list[dict]

    @property
    def ok(self) -> bool:
        return not self.violations


async def check_invariants(connection: asyncpg.Connection) -> list[CheckResult]:
    """Run every check in one repeatable-read snapshot, so they all see the same ledger."""
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        return await run_checks(connection)


async def run_checks(connection: asyncpg.Connection) -> list[CheckResult]:
    """Every check, in the caller's transaction (which should be one snapshot)."""
    results = []
    for name, sql in CHECKS.items():
        rows = await connection.fetch(sql)
        results.append(CheckResult(name, [dict(row) for row in rows]))
    return results
