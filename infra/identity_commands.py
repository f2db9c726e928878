"""``regiongate identity migrate | sync | verify | legacy-sample``: the legacy user migration's
commands. Where a run writes comes from the local cluster's state (``--data-dir``) or, for real
regions, from ``--dsn REGION=DSN`` (repeated), ``--directory`` (the YAML directory with the
slot map) and ``--work-dsn`` (where the run's staging and decisions live)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

import yaml

from identity.legacy.migrate import MigrationError, Target, discard, migrate
from identity.legacy.progress import Progress
from identity.legacy.report import build_report, summary, verify
from identity.legacy.sample import write_sample
from identity.legacy.source import HomeRules, read_file, read_query
from identity.usernames import UsernameRules
from region_router.directory import build_snapshot
from region_router.yaml_directory import parse_directory_file

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
SECRET_ENV = "REGIONGATE_MIGRATION_SECRET"  # noqa: S105 (the variable's name, not a secret)
DEFAULT_COUNTRIES = {
    "eu": ("DE", "FR", "GB", "ES", "IT", "NL", "SE", "PL", "PT", "IE", "AT", "BE"),
    "us": ("US", "CA", "BR", "MX", "AR", "CL", "CO"),
    "ap": ("JP", "SG", "AU", "IN", "KR", "NZ", "ID"),
}
"""A country's region when --countries names none, for the regions that exist."""


def add_commands(commands) -> None:
    identity = commands.add_parser(
        "identity", help="players' identities: the legacy user migration"
    ).add_subparsers(dest="identity_command", required=True)
    run = identity.add_parser("migrate", help="migrate a legacy user export (resumable)")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="a CSV (with a header) or JSON-lines (.jsonl) export")
    source.add_argument("--source-dsn", help="the legacy PostgreSQL database (with --query)")
    run.add_argument("--query", help="with --source-dsn: SELECT legacy_id, username, ... ORDER BY")
    run.add_argument("--countries", help="YAML: country code -> region (else a default map)")
    run.add_argument("--dry-run", action="store_true", help="decide and report; write nothing")
    run.add_argument("--report", help="also write the report as JSON here")
    run.add_argument("--chunk-rows", type=int, default=10_000)
    _target_arguments(run)
    run.set_defaults(handler=cmd_migrate)
    changes = identity.add_parser(
        "sync", help="apply the legacy system's later changes to a finished run, in order"
    )
    changes.add_argument("--changes", required=True, help="JSON lines: seq, op, legacy_id, ...")
    _target_arguments(changes)
    changes.set_defaults(handler=cmd_sync)
    check = identity.add_parser("verify", help="check a finished run against the regions")
    _target_arguments(check)
    check.set_defaults(handler=cmd_verify)
    sample = identity.add_parser("legacy-sample", help="write a realistic legacy export")
    sample.add_argument("--rows", type=int, required=True)
    sample.add_argument("--seed", type=int, default=1)
    sample.add_argument("--output", required=True, help="a .csv or .jsonl path")
    sample.set_defaults(handler=cmd_sample)


def _target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", default="legacy", help="the run's name (a rerun resumes it)")
    parser.add_argument("--data-dir", default=".local", help="the local cluster to migrate into")
    parser.add_argument("--dsn", action="append", help="REGION=postgresql://... (repeat)")
    parser.add_argument("--directory", help="with --dsn: the YAML directory (its slot map)")
    parser.add_argument("--work-dsn", help="with --dsn: the run's work database")
    parser.add_argument(
        "--secret-file",
        help=f"the migration's secret (else ${SECRET_ENV}; the local cluster keeps its own)",
    )


def _target(args, homes_from: str | None = None, chunk_rows: int = 10_000) -> Target:
    if args.dsn:
        dsns = dict(item.partition("=")[::2] for item in args.dsn)
        if not args.directory or not args.work_dsn:
            raise MigrationError("--dsn needs --directory and --work-dsn")
        directory_text = Path(args.directory).read_text()
        work_dsn = args.work_dsn
        secret_default = None
    else:
        from infra.local import read_state

        state = read_state(Path(args.data_dir))
        dsns = state["ledger_dsns"]
        directory_text = Path(state["directory_files"][0]).read_text()
        work_dsn = dsns[sorted(dsns)[0]]
        secret_default = Path(args.data_dir) / "secrets" / "migration.key"
    snapshot = build_snapshot(1, *parse_directory_file(directory_text))
    secret = _secret(args.secret_file, secret_default)
    countries = {c: r for r, codes in DEFAULT_COUNTRIES.items() if r in dsns for c in codes}
    if homes_from:
        countries = {
            str(k).upper(): str(v) for k, v in yaml.safe_load(Path(homes_from).read_text()).items()
        }
    homes = HomeRules(frozenset(dsns), countries, snapshot.default_region)
    return Target(dsns, snapshot.slot_owners, work_dsn, UsernameRules(), secret, homes, chunk_rows)


def _secret(path: str | None, local_default: Path | None) -> bytes:
    if path:
        return Path(path).read_bytes().strip()
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV].encode()
    if local_default is None:
        raise MigrationError(f"name the migration's secret: --secret-file or ${SECRET_ENV}")
    if not local_default.exists():
        local_default.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(local_default, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(os.urandom(32).hex())
    return local_default.read_bytes().strip()


def cmd_migrate(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.source_dsn and not args.query:
        print("regiongate: --source-dsn needs --query", file=sys.stderr)
        return EXIT_USAGE
    target = _target(args, args.countries, args.chunk_rows)
    run = f"{args.run}.dry" if args.dry_run else args.run
    if args.input:
        path = Path(args.input)

        def source(skip):
            return read_file(path, target.homes, skip)
    else:

        def source(skip):
            return read_query(args.source_dsn, args.query, target.homes, skip)

    async def go() -> dict:
        phases = await migrate(source, target, run, dry_run=args.dry_run, progress=Progress())
        report = await build_report(target.work_dsn, run)
        report["rows_per_s"] = {name: round(rate) for name, rate in phases.rates.items()}
        if args.dry_run:
            await discard(target.work_dsn, run)
        return report

    report = asyncio.run(go())
    print(summary(report))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2, default=str))
    return EXIT_OK


def cmd_sync(args) -> int:
    from identity.legacy.sync import sync

    target = _target(args)
    outcomes = asyncio.run(sync(Path(args.changes), target, args.run))
    print(json.dumps({"run": args.run, "applied": outcomes}))
    return EXIT_OK


def cmd_verify(args) -> int:
    target = _target(args)
    failures = 0
    for name, violations in asyncio.run(verify(target, args.run)):
        failures += bool(violations)
        print(f"[{'FAIL' if violations else 'ok'}] {name}")
        for violation in violations[:5]:
            print(f"       {violation}")
    return EXIT_FAILED if failures else EXIT_OK


def cmd_sample(args) -> int:
    if not 1 <= args.rows <= 1_000_000_000:
        print("regiongate: --rows must be in [1, 1000000000]", file=sys.stderr)
        return EXIT_USAGE
    tally = write_sample(Path(args.output), args.rows, args.seed)
    print(json.dumps({"rows": args.rows, "seed": args.seed, "kinds": tally}))
    return EXIT_OK
