"""A migration while players are created through the gateways: a live creation never takes a
name the migration gives someone else, nor loses its own; the migration's users whose names
a live player took first get generated ones; the audit finds no name with two owners."""

from __future__ import annotations

import asyncio
import csv

import pytest

from identity.legacy.migrate import Target, migrate
from identity.legacy.report import build_report, verify
from identity.legacy.sample import write_sample
from identity.legacy.source import HomeRules, read_file
from identity.usernames import UsernameRefused, UsernameRules, check
from region_router.directory import build_snapshot
from region_router.yaml_directory import parse_directory_file
from tests.support import unique

RULES = UsernameRules()


@pytest.mark.gateway_limits(per_client_rate_per_s=100_000, per_client_burst=100_000)
async def test_live_creations_during_a_migration_keep_their_names(cluster, tmp_path):
    path = tmp_path / "legacy.csv"
    write_sample(path, 4_000, seed=3)
    with path.open(newline="") as handle:
        names = []
        for row in csv.DictReader(handle):
            try:
                check(row["username"], RULES)
            except UsernameRefused:
                continue
            names.append(row["username"])
    contested = list(dict.fromkeys(names))[:60]
    directory = cluster.regions["eu"].overrides["directory_file"]
    snapshot = build_snapshot(1, *parse_directory_file(open(directory).read()))
    dsns = {code: node.dsn for code, node in cluster.regions.items()}
    target = Target(
        dsns,
        snapshot.slot_owners,
        dsns["eu"],
        RULES,
        b"live-migration-test-secret-012345",
        HomeRules(frozenset(dsns), {}, "eu"),
        chunk_rows=500,
    )

    async def create(name: str, gateway: str) -> tuple[int, dict]:
        key = unique()
        for _ in range(100):
            status, _, body = await cluster.call(
                gateway,
                "POST",
                "/v1/players",
                token=cluster.admin,
                key=key,
                body={"username": name, "username_required": True, "region": gateway},
            )
            if status in (201, 409):
                return status, body
            await asyncio.sleep(0.05)
        raise AssertionError(f"{name}: {status} {body}")

    async def live() -> list:
        results = []
        for index, name in enumerate(contested):
            results.append((name, await create(name, ("eu", "us")[index % 2])))
            await asyncio.sleep(0.005)
        return results

    migration = asyncio.ensure_future(
        migrate(lambda skip: read_file(path, target.homes, skip), target, "live")
    )
    created = await live()
    await migration
    for name, (status, body) in created:
        if status == 201:
            _, _, player = await cluster.call(
                "us", "GET", f"/v1/players/{body['id']}", token=cluster.admin
            )
            assert player["username"] == check(name, RULES).canonical, (name, player)
    assert any(status == 201 for _, (status, _) in created)
    assert all(not violations for _, violations in await verify(target, "live"))
    report = await build_report(dsns["eu"], "live")
    assert report["finished"] and report["players"] > 0
    assert await cluster.audit() == {}
