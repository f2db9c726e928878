"""A batch's SQL on a real PostgreSQL. The write reaches the accounts it changes by their ids,
never by walking the accounts table: a plan that joins the batch's rows against a scan of every
account is correct but costs a batch time in proportion to the number of accounts (it did, at
0.2 ms per 2,000 accounts), so the test pins the plan's shape, not a timing. The one call that
locks and reads sees, after its locks, every commit they waited for. And the array literals the
write's columns travel in read back, through PostgreSQL's own parser, exactly as written,
whatever text they hold (a property over arbitrary strings)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import asyncpg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from ledger_node import batch_write, store
from ledger_node.errors import InvariantViolation
from ledger_node.operations import BatchState, TransferRow
from tests.support import migrated_database, property_settings, unique

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
        await connection.execute(batch_write.prepare_write(batch_write.ALL_WRITE_PARTS))
        # The plan a long-lived batch connection settles on: generic, whatever the arguments.
        await connection.execute("SET plan_cache_mode = force_generic_plan")
        empty = BatchState(now=datetime(2026, 1, 1, tzinfo=UTC), region="eu", accounts={})
        _, statement = batch_write.write_statement(empty, batch_write.ALL_WRITE_PARTS)
        text = await connection.fetchval(f"EXPLAIN (FORMAT JSON) {statement}")
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


async def test_the_read_after_the_locks_sees_what_the_lock_waited_for(plans_dsn):
    """The batch's one round trip to lock and read is safe only if the read takes its snapshot
    after the locks: a batch that waited for another's commit must see that commit's balances
    and idempotency keys, or it would decide on stale ones. Proved here on PostgreSQL itself."""
    holder = await asyncpg.connect(plans_dsn)
    waiter = await asyncpg.connect(plans_dsn)
    try:
        await holder.execute(
            "INSERT INTO currencies VALUES ('EUR', 2) ON CONFLICT DO NOTHING;"
            "INSERT INTO accounts (id, region, currency, kind) VALUES ('eu-lr1', 'eu', 'EUR', "
            "'player')"
        )
        await holder.execute("BEGIN")
        await holder.execute("SELECT 1 FROM accounts WHERE id = 'eu-lr1' FOR UPDATE")
        await waiter.execute("BEGIN")
        arguments = (["eu-lr1"], ["key-lr1"], [], [], [], [], [])
        read = asyncio.create_task(waiter.fetch(store.LOCK_AND_READ, *arguments))
        await asyncio.sleep(0.3)
        assert not read.done(), "the lock did not wait for the holder's transaction"
        await holder.execute(
            "UPDATE accounts SET credits_posted = 7, version = 1 WHERE id = 'eu-lr1';"
            "INSERT INTO idempotency_keys (key, request_hash, operation, result, status_code,"
            " body) VALUES ('key-lr1', '\\x00', 'transfer', 'ok', 201, '\\x7b7d');"
            "COMMIT"
        )
        rows = await asyncio.wait_for(read, timeout=10)
        await waiter.execute("ROLLBACK")
    finally:
        await holder.close()
        await waiter.close()
    items = {tag: json.loads(item) for tag, item in rows}
    assert items["a"][5] == 7 and items["a"][8] == 1, items  # credits_posted, version
    assert items["k"][0] == "key-lr1", items


async def test_the_lock_and_read_refuses_to_run_outside_a_transaction(plans_dsn):
    connection = await asyncpg.connect(plans_dsn)
    try:
        state = BatchState(now=datetime.now(UTC), region="eu", accounts={})
        with pytest.raises(InvariantViolation):
            await store.lock_and_read(connection, state, ["eu-x"], [], [], [], [], [])
    finally:
        await connection.close()


def _row(transfer_id: str, debit: str, credit: str, *, flow: str = "single", pending_id=None):
    return TransferRow(
        id=transfer_id,
        kind="transfer",
        flow=flow,
        status="posted",
        pending_id=pending_id,
        debit_account_id=debit,
        credit_account_id=credit,
        amount=5,
        currency="EUR",
        timeout_at=None,
        reference=None,
        round_id=None,
        metadata=None,
        created_at=datetime.now(UTC),
        debit_after=(0, 0, 0, 1),
        credit_after=(5, 0, 0, 1),
    )


@pytest.mark.parametrize(
    "case", ["account that does not exist", "account the batch did not update", "unknown hold"]
)
async def test_the_write_refuses_a_transfer_naming_what_it_did_not_update(plans_dsn, case):
    """The write stands in for foreign keys (migration 0005): a transfer row whose accounts are
    not among those the same statement updates, or whose hold it does not resolve, aborts the
    whole batch before its COMMIT. A bug in the engine could only produce such a row; the
    database must refuse it all the same, and keep nothing of the batch."""
    tag = unique("ref").replace("-", "")
    payer, payee, bystander = f"eu-{tag}-a", f"eu-{tag}-b", f"eu-{tag}-c"
    connection = await asyncpg.connect(plans_dsn)
    try:
        await connection.execute("INSERT INTO currencies VALUES ('EUR', 2) ON CONFLICT DO NOTHING")
        for account_id in (payer, payee, bystander):
            await connection.execute(
                "INSERT INTO accounts (id, region, currency, kind, credits_posted) "
                "VALUES ($1, 'eu', 'EUR', 'house', 100)",
                account_id,
            )
        state = BatchState(now=datetime.now(UTC), region="eu", accounts={})
        await connection.execute("BEGIN")
        await store.lock_and_read(connection, state, [payer, payee], [], [], [], [], [])
        state.touched.update((payer, payee))
        good = _row(f"{tag}-ok", payer, payee)
        bad = {
            "account that does not exist": _row(f"{tag}-bad", payer, f"eu-{tag}-ghost"),
            "account the batch did not update": _row(f"{tag}-bad", bystander, payee),
            "unknown hold": _row(f"{tag}-bad", payer, payee, flow="post", pending_id="nohold"),
        }[case]
        state.rows = [good, bad]
        parts, message = batch_write.write_and_commit_message(state)
        await connection.execute(batch_write.prepare_write(parts))
        with pytest.raises(asyncpg.PostgresError, match="naming an account or a hold"):
            await connection.execute(message)
        await connection.execute("ROLLBACK")
        written = await connection.fetchval(
            "SELECT count(*) FROM transfers WHERE id LIKE $1", f"{tag}%"
        )
        versions = await connection.fetch(
            "SELECT version FROM accounts WHERE id = ANY($1::text[])", [payer, payee, bystander]
        )
    finally:
        await connection.close()
    assert written == 0
    assert [row["version"] for row in versions] == [0, 0, 0]


async def test_accounts_and_transfers_are_never_deleted(plans_dsn):
    connection = await asyncpg.connect(plans_dsn)
    try:
        for statement in (
            "DELETE FROM accounts WHERE id = 'none'",
            "DELETE FROM transfers WHERE id = 'none'",
            "TRUNCATE transfers CASCADE",
            "TRUNCATE accounts CASCADE",
        ):
            with pytest.raises(asyncpg.RestrictViolationError, match="never deleted"):
                await connection.execute(statement)
    finally:
        await connection.close()


# Any text PostgreSQL can hold: every code point but NUL and the surrogates (not UTF-8).
texts = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=40)
text_lists = st.lists(st.one_of(st.none(), texts), max_size=8)


@pytest.fixture(scope="module")
def literals_dsn(postgres) -> str:
    return migrated_database(postgres, "batch_literals")


@property_settings(60, suppress_health_check=list(HealthCheck))
@given(values=text_lists, numbers=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8))
def test_array_literals_read_back_exactly(values, numbers, literals_dsn):
    async def run() -> tuple[list, list]:
        connection = await asyncpg.connect(
            literals_dsn, server_settings={"standard_conforming_strings": "on"}
        )
        try:
            # The literals go in as the write sends them: quoted into the message's text.
            text_literal = batch_write.sql_literal(batch_write.text_array(values))
            number_literal = batch_write.sql_literal(batch_write.int_array(numbers))
            return (
                await connection.fetchval(f"SELECT {text_literal}::text[]"),
                await connection.fetchval(f"SELECT {number_literal}::bigint[]"),
            )
        finally:
            await connection.close()

    text_back, numbers_back = asyncio.run(run())
    assert text_back == values
    assert numbers_back == numbers


def test_an_array_literal_refuses_nul():
    with pytest.raises(InvariantViolation):
        batch_write.text_array(["a", "b\x00c"])


async def test_every_shape_of_the_write_prepares(plans_dsn):
    """A batch's write holds only the parts it has rows for: every set of parts write_parts can
    choose must be a statement PostgreSQL accepts, not only the shapes the other tests reach."""
    shapes = 0
    connection = await asyncpg.connect(plans_dsn)
    try:
        for parts in range(1, batch_write.ALL_WRITE_PARTS + 1):
            if parts & 1 and not parts & 2:  # transfers always come with their accounts
                with pytest.raises(InvariantViolation):
                    batch_write.write_sql(parts)
                continue
            await connection.execute(batch_write.prepare_write(parts))
            shapes += 1
            if parts & (1 | 1 << 6):  # transfers or finished sagas: with their events too
                await connection.execute(batch_write.prepare_write(parts | batch_write.OUTBOX))
                shapes += 1
        prepared = await connection.fetchval(
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'regiongate_write_%'"
        )
    finally:
        await connection.close()
    assert prepared == shapes == 2 * (2**8 - 1 - 2**6) - 2**6 + 1
