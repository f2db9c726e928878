"""The batch write's plan on a real PostgreSQL: it reaches the accounts it changes by their ids,
never by walking the accounts table. A plan that joins the batch's rows against a scan of every
account is correct but costs a batch time in proportion to the number of accounts (it did, at
0.2 ms per 2,000 accounts); this pins the shape, not a timing."""

from __future__ import annotations

import json

import asyncpg
import pytest

from ledger_node import store
from tests.support import migrated_database, unique

ACCOUNTS = 5000


def _nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


@pytest.fixture
def plans_dsn(postgres) -> str:
    return migrated_database(postgres, unique("plans").replace("-", "_")[:40])


async def test_the_write_reaches_accounts_by_id_only(plans_dsn):
    connection = await asyncpg.connect(plans_dsn)
    try:
        # Enough accounts, with statistics, that the planner weighs a scan against lookups.
        await connection.execute("INSERT INTO currencies VALUES ('EUR', 2)")
        await connection.execute(
            "INSERT INTO accounts (id, region, currency, kind) "
            "SELECT 'eu-p' || n, 'eu', 'EUR', 'player' FROM generate_series(1, $1) AS n",
            ACCOUNTS,
        )
        await connection.execute("ANALYZE accounts")
        await connection.execute(store.PREPARE_WRITE)
        # The plan a long-lived batch connection settles on: generic, whatever the arguments.
        await connection.execute("SET plan_cache_mode = force_generic_plan")
        arguments = ["'2026-01-01T00:00:00Z'"] + ["'[]'"] * 8 + ["0"] * 8
        text = await connection.fetchval(
            f"EXPLAIN (FORMAT JSON) EXECUTE {store.WRITE_STATEMENT_NAME}({', '.join(arguments)})"
        )
    finally:
        await connection.close()
    nodes = list(_nodes(json.loads(text)[0]["Plan"]))
    # A Bitmap Heap Scan names the relation and its Bitmap Index Scan child the index: each must
    # carry the batch's ids as its condition.
    on_accounts = [
        node
        for node in nodes
        if node["Node Type"] != "ModifyTable"
        and (node.get("Relation Name") == "accounts" or node.get("Index Name") == "accounts_pkey")
    ]
    assert on_accounts, "the write no longer reads accounts: update this test"
    for node in on_accounts:
        condition = node.get("Index Cond") or node.get("Recheck Cond") or ""
        assert "ANY" in condition, node
