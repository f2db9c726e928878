"""Small, fast checks of the pieces around the ledger: config bounds are refused with a message
naming the value, every result has a stable problem type, signatures bind what they sign, and
migrations are safe when two nodes start at once."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import os
import socket

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra import services
from ledger_node.audit import check_invariants
from ledger_node.batch_write import sql_literal
from ledger_node.config import ledger_config_from_dict
from ledger_node.errors import ConfigError, InvariantViolation
from ledger_node.migrations import apply_migrations, load_migrations
from tests.support import property_settings
from wire import ids
from wire.ids import region_of, ulid, ulid_text
from wire.results import PROBLEMS, Result, every_problem
from wire.service_auth import ServiceKey, ServiceKeyring, sign, verify

BASE = {
    "region": "eu",
    "database": {"dsn": "postgresql://u@h/db"},
    "currencies": [{"code": "EUR", "exponent": 2}],
}


def with_changes(**changes) -> dict:
    raw = {**BASE, **changes}
    return raw


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (with_changes(region="EU"), "region"),
        (with_changes(peers=["eu"]), "peers"),
        (with_changes(currencies=[]), "currencies"),
        (with_changes(currencies=[{"code": "EUR", "exponent": 2}] * 2), "repeat"),
        (with_changes(currencies=[{"code": "EUR", "exponent": 19}]), "exponent"),
        (with_changes(batch={"size_max": 0}), "batch.size_max"),
        (with_changes(batch={"size_max": 10**6}), "batch.size_max"),
        (with_changes(batch={"wait_max_us": -1}), "batch.wait_max_us"),
        (with_changes(batch={"idle_hold_ms": -1}), "batch.idle_hold_ms"),
        (with_changes(batch={"idle_hold_ms": 60_001}), "batch.idle_hold_ms"),
        (with_changes(batch={"queue_depth_max": 0}), "batch.queue_depth_max"),
        (with_changes(batch={"bogus": 1}), "unknown keys"),
        (with_changes(amount_max=10**16), "amount_max"),
        (with_changes(request_timeout_ms=0), "request_timeout_ms"),
        (with_changes(database={"dsn": "mysql://x"}), "database.dsn"),
        (with_changes(database={"dsn": "postgresql://u:secret@h/db"}), "password"),
        (with_changes(workers=True), "workers"),
    ],
)
def test_bad_config_is_refused_naming_the_field(raw, message):
    with pytest.raises(ConfigError, match=message):
        ledger_config_from_dict(raw)


def test_every_result_has_a_stable_problem_type():
    for result in Result:
        if result is Result.OK:
            continue
        problem = PROBLEMS[result]
        assert 400 <= problem.status < 500
        assert problem.type.startswith("urn:regiongate:problem:")


def test_one_status_and_one_title_per_problem_type():
    """RFC 9457: a type's title does not change between occurrences; both services take their
    problems from one registry, so a slug cannot mean two things."""
    seen: dict[str, tuple[int, str]] = {}
    for problem in every_problem():
        assert seen.setdefault(problem.slug, (problem.status, problem.title)) == (
            problem.status,
            problem.title,
        ), problem.slug
    assert len(seen) >= 40


def test_signature_binds_method_path_body_and_key():
    key = ServiceKey("k1", b"s" * 32)
    ring = ServiceKeyring([key])
    headers = sign(key, "POST", "/v1/transfers", b'{"amount":1}', "idem-1")
    headers["Idempotency-Key"] = "idem-1"
    assert verify(ring, headers, "POST", "/v1/transfers", b'{"amount":1}', 60) == "k1"
    assert verify(ring, headers, "POST", "/v1/transfers", b'{"amount":2}', 60) is None
    assert verify(ring, headers, "GET", "/v1/transfers", b'{"amount":1}', 60) is None
    assert verify(ring, headers, "POST", "/v1/bets", b'{"amount":1}', 60) is None
    assert (
        verify(
            ring,
            dict(headers, **{"Idempotency-Key": "idem-2"}),
            "POST",
            "/v1/transfers",
            b'{"amount":1}',
            60,
        )
        is None
    )


def test_short_or_malformed_service_keys_are_refused():
    with pytest.raises(ConfigError, match="at least 32"):
        ServiceKeyring.parse("k: short")
    with pytest.raises(ConfigError, match="key_id: secret"):
        ServiceKeyring.parse("no-separator")
    assert "secret" not in repr(ServiceKeyring.parse("k: " + "x" * 40).signing_key).replace(
        "secret=<", ""
    )


def test_ids_carry_their_region_and_sort_by_time():
    first, second = ulid(), ulid()
    assert len(first) == 26 and first[:9] <= second[:9]
    assert region_of("eu-abc") == "eu"
    assert region_of("EU-abc") is None
    assert region_of("eu") is None


def test_ids_never_repeat_their_random_bits_across_blocks_or_a_fork():
    """The random bits are drawn a block at a time: every id takes bits of its own, in any
    thread, and a forked child draws afresh rather than reusing its parent's block."""
    made = [ulid() for _ in range(3 * ids.RANDOM_BLOCK_IDS + 7)]
    assert len({made_id[10:] for made_id in made}) == len(made)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as threads:
        batches = list(threads.map(lambda _: [ulid() for _ in range(2000)], range(8)))
    in_threads = [made_id[10:] for batch in batches for made_id in batch]
    assert len(set(in_threads)) == len(in_threads)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child writes its next ids and exits at once
        os.write(write_end, " ".join(ulid() for _ in range(8)).encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    with os.fdopen(read_end) as pipe:
        in_child = pipe.read().split()
    in_parent = [ulid() for _ in range(8)]
    assert len(in_child) == 8
    assert not {i[10:] for i in in_child} & {i[10:] for i in in_parent}


@property_settings(100)  # Hypothesis's own default count, scaled in a deep run
@given(value=st.integers(min_value=0, max_value=2**128 - 1))
def test_ulid_letters_are_rfc_4648_base32_in_crockfords_alphabet(value):
    """The table encoding gives exactly what the standard library's base32 gives, so ids made
    before and after it sort together."""
    rfc_4648 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    crockford = b"0123456789abcdefghjkmnpqrstvwxyz"
    reference = base64.b32encode(value.to_bytes(16, "big"))[:26].translate(
        bytes.maketrans(rfc_4648, crockford)
    )
    assert ulid_text(value) == reference.decode()


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("plain", "'plain'"),
        ("o'neil", "'o''neil'"),
        ("a\\b", "'a\\b'"),
        ("''", "'" + "''" * 2 + "'"),
    ],
)
def test_sql_literals_double_quotes_and_keep_backslashes(value, literal):
    assert sql_literal(value) == literal


def test_sql_literal_refuses_nul():
    with pytest.raises(InvariantViolation):
        sql_literal("a\x00b")


def test_migrations_are_numbered_without_gaps():
    assert [m.version for m in load_migrations()] == list(range(1, len(load_migrations()) + 1))


async def test_two_nodes_migrating_at_once_apply_each_migration_once(fresh_dsn):
    connections = [await asyncpg.connect(fresh_dsn) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(apply_migrations(c) for c in connections))
        flat = sorted(v for versions in applied for v in versions)
        assert flat == [m.version for m in load_migrations()]
        assert await apply_migrations(connections[0]) == []
    finally:
        for connection in connections:
            await connection.close()


def test_a_service_names_exactly_one_directory_and_no_consul_token(tmp_path, monkeypatch):
    from region_router.backends import build_directory
    from region_router.consul_directory import ConsulDirectory
    from region_router.errors import DirectoryError
    from region_router.yaml_directory import YamlDirectory

    assert isinstance(build_directory(str(tmp_path / "directory.yaml"), None), YamlDirectory)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-the-environment")
    consul = build_directory(None, {"address": "https://consul.eu:8501", "datacenters": ["eu"]})
    assert isinstance(consul, ConsulDirectory)
    assert consul._config.token == "from-the-environment"
    assert consul._config.datacenters == ("eu",)
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    assert build_directory(None, {"token_file": str(token_file)})._config.token == "from-a-file"
    for directory_file, consul_raw, message in (
        (None, None, "exactly one"),
        ("directory.yaml", {}, "exactly one"),
        (None, {"token": "secret"}, "token_file"),
        (None, {"adress": "http://x"}, "unknown keys"),
    ):
        with pytest.raises(DirectoryError, match=message):
            build_directory(directory_file, consul_raw)


async def test_a_node_whose_directory_cannot_be_read_stops_what_it_started(
    ledger_dsn, keyring, tmp_path
):
    from ledger_node.node import LedgerNode, NodeState
    from region_router.errors import DirectoryError
    from tests.support import ledger_config

    node = LedgerNode(
        ledger_config(ledger_dsn, directory_file=str(tmp_path / "missing.yaml")), keyring
    )
    with pytest.raises(DirectoryError):
        await node.start()
    assert node.state is NodeState.STOPPED
    assert node.pool is not None and node.pool.is_closing()


async def test_migration_5_keeps_a_populated_ledger_whole(fresh_dsn):
    """Migration 0005 rewrites the id columns of tables that already hold a ledger: every row
    stays, the ids then compare byte for byte, the foreign keys of transfers give way to the
    write's own checks, and those of the other tables still hold."""
    connection = await asyncpg.connect(fresh_dsn)
    try:
        await connection.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for migration in load_migrations()[:4]:
            await connection.execute(migration.sql)
            await connection.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
        after = "0, 0, 0, 1, 0, 0, 0, 1"
        await connection.execute(
            f"""
            INSERT INTO currencies VALUES ('EUR', 2);
            INSERT INTO accounts (id, region, currency, kind) VALUES
                ('eu-house-EUR', 'eu', 'EUR', 'house'), ('eu-p1', 'eu', 'EUR', 'player');
            INSERT INTO transfers (id, kind, flow, status, debit_account_id, credit_account_id,
                amount, currency, created_at, debit_posted_after, debit_debits_pending_after,
                debit_credits_pending_after, debit_version_after, credit_posted_after,
                credit_debits_pending_after, credit_credits_pending_after, credit_version_after)
            VALUES ('eu-t-1', 'bet', 'single', 'posted', 'eu-p1', 'eu-house-EUR', 5, 'EUR',
                    now(), {after});
            INSERT INTO bets (account_id, reference, status, bet_transfer_id, created_at)
            VALUES ('eu-p1', 'round-1', 'placed', 'eu-t-1', now());
            INSERT INTO idempotency_keys (key, request_hash, operation, result, transfer_id,
                status_code, body) VALUES ('k-1', '\\x00', 'bet', 'ok', 'eu-t-1', 201, '\\x7b7d');
            """
        )
        assert await apply_migrations(connection) == [m.version for m in load_migrations()[4:]]
        counts = await connection.fetchrow(
            "SELECT (SELECT count(*) FROM accounts) AS accounts,"
            " (SELECT count(*) FROM transfers) AS transfers, (SELECT count(*) FROM bets) AS bets,"
            " (SELECT count(*) FROM idempotency_keys) AS keys"
        )
        collations = await connection.fetch(
            "SELECT a.attrelid::regclass::text AS relation, a.attname, c.collname"
            " FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation"
            " WHERE a.attrelid IN ('accounts'::regclass, 'transfers'::regclass,"
            " 'idempotency_keys'::regclass) AND a.attname IN ('id', 'debit_account_id', 'key')"
        )
        foreign_keys = {
            row["conname"]
            for row in await connection.fetch(
                "SELECT conname FROM pg_constraint WHERE contype = 'f'"
                " AND conrelid IN ('transfers'::regclass, 'bets'::regclass)"
            )
        }
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await connection.execute(
                "INSERT INTO bets (account_id, reference, status, created_at)"
                " VALUES ('eu-nobody', 'round-2', 'tombstone', now())"
            )
        results = await check_invariants(connection)
    finally:
        await connection.close()
    assert dict(counts) == {"accounts": 2, "transfers": 1, "bets": 1, "keys": 1}
    assert {row["collname"] for row in collations} == {"C"} and len(collations) == 4
    assert not any(name.startswith("transfers_") for name in foreign_keys)
    assert "bets_account_id_fkey" in foreign_keys
    references = next(r for r in results if r.name.startswith("every transfer names"))
    assert references.ok, references.violations


def test_free_ports_lie_below_the_ephemeral_range_and_are_never_handed_out_twice():
    """A port from a bind to 0 lies in the kernel's ephemeral range, where an outgoing
    connection can take it as its source port before the server that was given it binds it."""
    ceiling = services._ephemeral_floor()
    ports = [services.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(services.PORTS_FLOOR <= port < ceiling for port in ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))  # free a moment ago, and still


def test_a_renamed_config_key_is_read_under_its_old_name_for_a_release(caplog):
    """batch.wait_max_us became batch.wait_us_max (one unit placement everywhere): an old file
    still loads, with a warning; a file that sets both is refused."""
    config = ledger_config_from_dict(
        with_changes(batch={"wait_max_us": 7}, body_size_max_bytes=4096)
    )
    assert config.batch.wait_us_max == 7 and config.body_size_bytes_max == 4096
    assert "batch.wait_max_us is now batch.wait_us_max" in caplog.text
    with pytest.raises(ConfigError, match="both"):
        ledger_config_from_dict(with_changes(batch={"wait_max_us": 1, "wait_us_max": 2}))
