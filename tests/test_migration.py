"""The legacy user migration against three regions' real databases: a realistic sample with
every kind of mess, decided before anything is written, loaded, verified, rerun (nothing
changes), killed with kill -9 in each phase and resumed (the same result as one run), and a
decision that is a pure function of the input set."""

from __future__ import annotations

import asyncio
import collections
import csv
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from identity.legacy.migrate import CRASH_AT_ENV, Target, discard, migrate
from identity.legacy.report import build_report, verify
from identity.legacy.sample import write_sample
from identity.legacy.source import HomeRules, read_file
from identity.migrations import IDENTITY_MIGRATIONS
from identity.usernames import UsernameRefused, UsernameRules, check
from infra.identity_commands import DEFAULT_COUNTRIES
from infra.local import even_slot_owners, even_slot_ranges
from ledger_node.migrations import apply_migrations
from region_router.directory import LedgerEndpoint, Region, RegionStatus
from region_router.yaml_directory import write_directory_file
from tests.support import unique
from wire.ids import PLAYER_ID_PATTERN

REGIONS = ("eu", "us", "ap")
SECRET = b"test-migration-secret-0123456789"
ROWS = int(os.environ.get("REGIONGATE_MIGRATION_ROWS", "200000"))
RULES = UsernameRules()


class World:
    """Three regions' databases (each migrated as a node migrates it) and a directory."""

    def __init__(self, postgres, root: Path) -> None:
        self.dsns = {
            r: postgres.create_database(unique(f"mig_{r}").replace("-", "_")[:40]) for r in REGIONS
        }
        asyncio.run(self._migrate())
        slots = even_slot_ranges(list(REGIONS))
        self.directory = root / "directory.yaml"
        write_directory_file(
            self.directory,
            [Region(r, RegionStatus.ACTIVE, ()) for r in REGIONS],
            [LedgerEndpoint(r, f"{r}-1", f"http://127.0.0.1:1/{r}") for r in REGIONS],
            {},
            default_region="eu",
            slot_ranges=slots,
        )
        self.slot_owners = even_slot_owners(list(REGIONS))
        countries = {c: r for r, codes in DEFAULT_COUNTRIES.items() for c in codes}
        self.homes = HomeRules(frozenset(REGIONS), countries, "eu")

    async def _migrate(self) -> None:
        for dsn in self.dsns.values():
            connection = await asyncpg.connect(dsn)
            try:
                await apply_migrations(connection)
                await IDENTITY_MIGRATIONS.apply(connection)
            finally:
                await connection.close()

    def target(self, chunk_rows: int = 10_000) -> Target:
        return Target(
            self.dsns, self.slot_owners, self.dsns["eu"], RULES, SECRET, self.homes, chunk_rows
        )

    async def players(self, run: str) -> set[tuple]:
        found = set()
        for region, dsn in self.dsns.items():
            connection = await asyncpg.connect(dsn)
            try:
                rows = await connection.fetch(
                    "SELECT legacy_id, id, username FROM identity.players WHERE legacy_run = $1",
                    run,
                )
            finally:
                await connection.close()
            found.update((region, *row) for row in rows)
        return found

    def cli(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "regiongate_cli", "identity", *args]
        for region, dsn in self.dsns.items():
            command += ["--dsn", f"{region}={dsn}"]
        command += ["--directory", str(self.directory), "--work-dsn", self.dsns["eu"]]
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "REGIONGATE_MIGRATION_SECRET": SECRET.decode(), **(env or {})},
            check=False,
        )


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("legacy") / "users.csv"
    write_sample(path, ROWS, seed=7)
    return path


@pytest.fixture(scope="module")
def world(postgres, tmp_path_factory) -> World:
    return World(postgres, tmp_path_factory.mktemp("migration-world"))


def run_migration(world: World, path: Path, run: str, **options) -> None:
    target = world.target()
    asyncio.run(migrate(lambda skip: read_file(path, target.homes, skip), target, run, **options))


@pytest.fixture(scope="module")
def migrated(world, sample) -> dict:
    run_migration(world, sample, "main")
    return asyncio.run(build_report(world.dsns["eu"], "main"))


def test_the_report_adds_up_and_every_kind_of_mess_is_decided(migrated):
    report = migrated
    assert report["rows_read"] == ROWS
    assert report["rows_read"] == (
        report["players"] + report["duplicate_rows"] + report["malformed_rows"]
    )
    assert sum(report["by_outcome"].values()) == report["players"]
    for outcome in ("kept", "normalised", "lost-to-older", "invalid-repaired",
                    "invalid-generated", "reserved", "missing"):  # fmt: skip
        assert report["by_outcome"][outcome] > 0, (outcome, report["by_outcome"])
    assert report["duplicate_rows"] > 0 and report["broken_dates"] > 0
    assert report["finished"] is True


def test_verify_passes_and_every_name_is_valid_and_unique(world, migrated):
    assert all(not violations for _, violations in asyncio.run(verify(world.target(), "main")))
    players = asyncio.run(world.players("main"))
    assert len(players) == migrated["players"]
    skeletons = collections.Counter()
    for _, _, player_id, username in players:
        assert PLAYER_ID_PATTERN.match(player_id)
        try:
            name = check(username, RULES)
        except UsernameRefused as exc:  # pragma: no cover - the failure's message
            pytest.fail(f"{username!r}: {exc.rule}")
        assert name.canonical == username
        skeletons[name.skeleton] += 1
    assert max(skeletons.values()) == 1


def test_the_cross_region_audit_is_clean(world, migrated):
    from ledger_node.global_audit import audit_regions

    results = asyncio.run(audit_regions(world.dsns))
    assert {r.name: r.violations[:3] for r in results if not r.ok} == {}


def test_a_second_run_changes_nothing(world, sample, migrated):
    before = asyncio.run(world.players("main"))
    run_migration(world, sample, "main")
    assert asyncio.run(world.players("main")) == before


def test_kill_9_in_every_phase_then_resume_ends_as_one_run(world, postgres, sample, migrated,
                                                           tmp_path):  # fmt: skip
    """The same export into fresh databases, by the command, killed with kill -9 once in each
    phase (after the first staged chunk, inside the decision's transaction, after the first
    chunk of claims and of players) and rerun each time: the same players, names and public
    ids as the uninterrupted run."""
    other = World(postgres, tmp_path)
    arguments = ["migrate", "--input", str(sample), "--run", "main", "--chunk-rows", "2000"]
    for point in ("stage", "decide", "claims", "players"):
        killed = other.cli(*arguments, env={CRASH_AT_ENV: point})
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-2000:])
    finished = other.cli(*arguments)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert asyncio.run(other.players("main")) == asyncio.run(world.players("main"))
    verified = other.cli("verify", "--run", "main")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_dry_run_decides_and_writes_nothing(postgres, sample, tmp_path):
    fresh = World(postgres, tmp_path)
    result = fresh.cli("migrate", "--input", str(sample), "--run", "trial", "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "players" in result.stdout and "kept" in result.stdout
    assert asyncio.run(fresh.players("trial")) == set()
    assert asyncio.run(fresh.players("trial.dry")) == set()


def test_the_decision_is_a_function_of_the_input_set(world, tmp_path):
    """Shuffled, the same export decides the same names and ids (checked on its first rows,
    with every kind of mess, so that it runs in seconds)."""
    head = tmp_path / "head.csv"
    write_sample(head, 3_000, seed=11)
    lines = head.read_text().splitlines()
    shuffled = tmp_path / "shuffled.csv"
    body = lines[1:]
    random.Random(5).shuffle(body)
    shuffled.write_text("\n".join([lines[0], *body]) + "\n")
    decisions = []
    target = world.target()
    for path in (head, shuffled):
        asyncio.run(
            migrate(lambda skip, p=path: read_file(p, target.homes, skip), target, "pure",
                    dry_run=True)
        )  # fmt: skip
        decisions.append(asyncio.run(_decisions(world.dsns["eu"], "pure")))
        asyncio.run(discard(world.dsns["eu"], "pure"))
    first, second = decisions
    assert first == second


async def _decisions(work_dsn: str, run: str) -> set[tuple]:
    connection = await asyncpg.connect(work_dsn)
    try:
        rows = await connection.fetch(
            "SELECT legacy_id, username, outcome, home_region FROM migration.decisions"
            " WHERE run = $1",
            run,
        )
    finally:
        await connection.close()
    return {tuple(row) for row in rows}


def test_later_changes_apply_in_order_once_and_live_names_win(postgres, tmp_path):
    small = World(postgres, tmp_path)
    path = tmp_path / "small.csv"
    write_sample(path, 3_000, seed=13)
    run_migration(small, path, "s")

    async def decided() -> list:
        connection = await asyncpg.connect(small.dsns["eu"])
        try:
            return await connection.fetch(
                "SELECT * FROM migration.decisions WHERE run = 's' AND outcome = 'kept'"
                " ORDER BY legacy_id LIMIT 5"
            )
        finally:
            await connection.close()

    a, b, c, d, e = asyncio.run(decided())
    changes = [
        {"seq": 1, "op": "create", "legacy_id": "n1", "username": "zzfresh1", "country": "US"},
        {"seq": 2, "op": "create", "legacy_id": "n2", "username": a["username"], "country": "JP"},
        {"seq": 3, "op": "rename", "legacy_id": c["legacy_id"], "username": "zzrenamed9"},
        {"seq": 4, "op": "rename", "legacy_id": d["legacy_id"], "username": b["username"]},
        {"seq": 5, "op": "delete", "legacy_id": e["legacy_id"]},
        {"seq": 6, "op": "create", "legacy_id": "n1", "username": "other1", "country": "US"},
    ]
    change_file = tmp_path / "changes.jsonl"
    change_file.write_text("".join(json.dumps(change) + "\n" for change in changes))
    first = small.cli("sync", "--run", "s", "--changes", str(change_file))
    assert first.returncode == 0, first.stderr[-2000:]
    applied = json.loads(first.stdout)["applied"]
    assert applied == {
        "created-kept": 1,
        "created-lost-to-live": 1,
        "renamed": 1,
        "rename-lost": 1,
        "deleted": 1,
        "create-known": 1,
    }, applied
    again = small.cli("sync", "--run", "s", "--changes", str(change_file))
    assert json.loads(again.stdout)["applied"] == {}
    players = {row[1]: row for row in asyncio.run(small.players("s"))}
    assert players["n1"][3] == "zzfresh1"
    taken_name = players["n2"][3]  # the next free number: another user may have the first
    assert taken_name.startswith(a["username"]) and taken_name[len(a["username"]) :].isdigit()
    assert players[c["legacy_id"]][3] == "zzrenamed9"
    assert players[d["legacy_id"]][3] == d["username"]
    verified = small.cli("verify", "--run", "s")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    from ledger_node.global_audit import audit_regions

    results = asyncio.run(audit_regions(small.dsns))
    assert {r.name: r.violations[:3] for r in results if not r.ok} == {}


def test_the_benchmark_runs_small():
    """bench_migration end to end on 2,000 rows: its last line is the JSON the docs describe
    (figures are read there, never asserted)."""
    result = subprocess.run(
        [sys.executable, "-m", "loadtests.bench_migration", "--rows", "2000"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"migration_rows_per_s", "copy_rows_per_s", "ratio", "phases_rows_per_s",
            "hours_for_300m_rows", "peak_rss_mib"} <= set(figures)  # fmt: skip
    assert figures["players"] > 1900


def test_an_export_can_be_a_query_on_the_legacy_database(postgres, tmp_path):
    fresh = World(postgres, tmp_path)
    path = tmp_path / "legacy.csv"
    write_sample(path, 1_000, seed=17)
    legacy_dsn = postgres.create_database(unique("legacy_src").replace("-", "_")[:40])

    async def load() -> None:
        connection = await asyncpg.connect(legacy_dsn)
        try:
            await connection.execute(
                "CREATE TABLE users (legacy_id text, username text, created_at text,"
                " country text, region text, email text)"
            )
            await connection.copy_to_table("users", source=path, format="csv", header=True)
        finally:
            await connection.close()

    asyncio.run(load())
    result = fresh.cli(
        "migrate", "--source-dsn", legacy_dsn, "--run", "q", "--dry-run",
        "--query", "SELECT * FROM users ORDER BY legacy_id, email",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("run q.dry: 1000 rows read"), result.stdout


def test_a_name_whose_numbers_are_all_taken_falls_back_to_generated_names(world, tmp_path):
    """A twin whose next forty numbered forms are other users' names: the numbers run out
    of rounds and it takes its generated name (found at 10 million rows, where popular names
    have thousands of numbered neighbours)."""
    path = tmp_path / "dense.csv"
    rows = [("legacy_id", "username", "created_at", "country")]
    rows += [(f"a{k:06d}", f"dense{k}", "2010-01-01", "DE") for k in range(2, 42)]
    rows += [("b1", "dense", "2009-01-01", "DE"), ("b2", "Dense", "2012-01-01", "DE")]
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    target = world.target()
    asyncio.run(
        migrate(lambda skip: read_file(path, target.homes, skip), target, "dense", dry_run=True)
    )
    decided = {row[0]: row for row in asyncio.run(_decisions(world.dsns["eu"], "dense"))}
    asyncio.run(discard(world.dsns["eu"], "dense"))
    assert len(decided) == 42 and len({row[1] for row in decided.values()}) == 42
    assert decided["b1"][1] == "dense"
    assert decided["b2"][1].startswith("player") and decided["b2"][2] == "lost-to-older"


def test_an_over_long_json_line_is_one_malformed_row(tmp_path):
    """A JSON-lines export's line is read at most JSONL_LINE_SIZE_MAX at a time: an absurd one
    is reported with its line number, and the rows around it are read as usual."""
    from identity.legacy.source import JSONL_LINE_SIZE_MAX, Malformed

    path = tmp_path / "export.jsonl"
    rows = [
        {"legacy_id": "a1", "username": "alpha", "region": "eu"},
        {"legacy_id": "b2", "username": "x" * (3 * JSONL_LINE_SIZE_MAX), "region": "eu"},
        {"legacy_id": "c3", "username": "gamma", "region": "us"},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    homes = HomeRules(frozenset({"eu", "us"}), {}, "eu")
    read = list(read_file(path, homes))
    assert [type(r).__name__ for r in read] == ["LegacyRow", "Malformed", "LegacyRow"]
    assert read[1] == Malformed(2, None, f"line longer than {JSONL_LINE_SIZE_MAX} characters")
    assert [r.legacy_id for r in read if not isinstance(r, Malformed)] == ["a1", "c3"]
    assert [r.line for r in read] == [1, 2, 3]
