"""``regiongate identity sync``: the legacy system's changes after the export (new users,
renames, deletions), applied to a migrated run in order and idempotently until cutover.

A change file is JSON lines, each with ``seq`` (ascending), ``op`` (``create``, ``rename`` or
``delete``), ``legacy_id``, and for a create the export's columns, for a rename ``username``.
Each change is applied by steps that are each idempotent (keyed by the run, the legacy id and
the change's seq), then recorded; a rerun skips what is recorded and repeats safely what was
half done.

What wins: a live player's name is never taken away. A legacy rename to a name claimed in
regiongate since the export (by a live player, or by another migrated user) is not applied:
the user keeps its current name (``rename-lost``); one of a user who has since renamed itself
in regiongate is not applied either (``rename-superseded``: the player's own choice is newer).
A new user takes its name as a migrated one would, or the next free number, or its generated
name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from identity.config import IdentityConfig
from identity.legacy.migrate import (
    Connections,
    MigrationError,
    Target,
    claim_name,
    claim_prefix,
    load_rows,
    numbered,
)
from identity.legacy.names import staged
from identity.legacy.source import LegacyRow, Malformed, parse
from identity.usernames import UsernameRefused, check

HELD_FOR_S = IdentityConfig().held_for_s
"""A legacy rename holds the old name as long as a live rename does (by default)."""
NUMBERS_MAX = 50


@dataclass(frozen=True, slots=True)
class Change:
    seq: int
    op: str
    legacy_id: str
    username: str | None
    row: LegacyRow | None
    """For a create: the user as an export row."""


def read_changes(path: Path, target: Target) -> Iterator[Change | Malformed]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line, text in enumerate(handle, start=1):
            try:
                fields = json.loads(text)
                seq = int(fields["seq"])
                op = str(fields["op"])
                legacy_id = str(fields["legacy_id"]).strip()
            except (ValueError, KeyError, TypeError):
                yield Malformed(line, None, "not a change (seq, op, legacy_id)")
                continue
            if op not in ("create", "rename", "delete") or not legacy_id:
                yield Malformed(line, legacy_id or None, f"unknown op {op!r}")
                continue
            row = None
            if op == "create":
                row = parse(-seq, fields, target.homes)
                if isinstance(row, Malformed):
                    yield Malformed(line, legacy_id, row.reason)
                    continue
            username = fields.get("username")
            yield Change(seq, op, legacy_id, str(username) if username else None, row)


async def sync(path: Path, target: Target, run: str) -> dict[str, int]:
    """Apply the file's changes after the last one recorded; the outcomes counted."""
    work = await asyncpg.connect(target.work_dsn)
    regions = Connections(target)
    try:
        finished = await work.fetchval("SELECT finished FROM migration.runs WHERE run = $1", run)
        if not finished:
            raise MigrationError(f"run {run!r} has not finished loading: sync follows it")
        last = await work.fetchval(
            "SELECT coalesce(max(seq), 0) FROM migration.changes WHERE run = $1", run
        )
        outcomes: dict[str, int] = {}
        previous = 0
        for change in read_changes(path, target):
            if isinstance(change, Malformed):
                outcomes["malformed"] = outcomes.get("malformed", 0) + 1
                continue
            if change.seq <= previous:
                raise MigrationError(f"change seq {change.seq} after {previous}: not ascending")
            previous = change.seq
            if change.seq <= last:
                continue
            applier = {"create": _create, "rename": _rename, "delete": _delete}[change.op]
            outcome = await applier(work, regions, target, run, change)
            await work.execute(
                "INSERT INTO migration.changes (run, seq, op, legacy_id, outcome)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                run,
                change.seq,
                change.op,
                change.legacy_id,
                outcome,
            )
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        return outcomes
    finally:
        await regions.close()
        await work.close()


async def _decision(work, run: str, legacy_id: str):
    return await work.fetchrow(
        "SELECT * FROM migration.decisions WHERE run = $1 AND legacy_id = $2", run, legacy_id
    )


async def _create(work, regions: Connections, target: Target, run: str, change: Change) -> str:
    if await _decision(work, run, change.legacy_id) is not None:
        return "create-known"
    values = staged(run, change.row, target.rules, target.secret)
    (_, _, legacy_id, raw, canonical, skeleton, rule, repaired, repaired_skeleton, generated,
     generated_skeleton, player_id, created_at, date_broken, home, _, id_slot) = values  # fmt: skip
    limit = target.rules.length_max
    choices: list[tuple[str, str, str]] = []
    if canonical is not None:
        first = "kept" if canonical == raw else "normalised"
        for index, (name, skel) in enumerate(numbered(canonical, skeleton, limit, NUMBERS_MAX)):
            choices.append((name, skel, first if index == 0 else "lost-to-live"))
    elif repaired is not None:
        names = numbered(repaired, repaired_skeleton, limit, NUMBERS_MAX)
        choices += [(name, skel, "invalid-repaired") for name, skel in names]
    when_generated = (
        "missing" if rule == "empty" else "reserved" if rule == "reserved" else
        "invalid-generated" if rule else "lost-to-live"
    )  # fmt: skip
    names = numbered(generated, generated_skeleton, limit, NUMBERS_MAX)
    choices += [(name, skel, when_generated) for name, skel in names]
    claim_id = claim_prefix(run) + legacy_id
    for name, skel, outcome in choices:
        taken = await claim_name(regions, target, skel, name, claim_id, player_id, home)
        if taken is None:
            continue
        owner, slot = taken
        id_owner = target.slot_owners[id_slot]
        replaced = outcome not in ("kept", "normalised")
        await work.execute(
            "INSERT INTO migration.decisions (run, legacy_id, line, player_id, home_region,"
            " username, skeleton, slot, owner_region, id_owner_region, outcome, rule, generated,"
            " raw_username, created_at, date_broken, spare, spare_skeleton, claim_id)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,"
            " $17, $18, $19) ON CONFLICT DO NOTHING",
            run, legacy_id, -change.seq, player_id, home, name, skel, slot, owner, id_owner,
            outcome, rule, replaced, raw, created_at, date_broken, generated, generated_skeleton,
            claim_id,
        )  # fmt: skip
        # The same loads as the migration's chunks, one row each.
        await load_rows(
            await regions(id_owner), "ids", [(legacy_id, player_id, home)], run, id_owner
        )
        player = (legacy_id, player_id, name, skel, owner, replaced, outcome)
        await load_rows(await regions(home), "players", [player], run, home)
        return f"created-{outcome}"
    raise MigrationError(f"no free name for new legacy user {legacy_id}")


async def _rename(work, regions: Connections, target: Target, run: str, change: Change) -> str:
    decision = await _decision(work, run, change.legacy_id)
    if decision is None or decision["deleted"]:
        return "rename-unknown"
    try:
        name = check(change.username or "", target.rules)
    except UsernameRefused as exc:
        return f"rename-invalid-{exc.rule.value}"
    if name.skeleton == decision["skeleton"]:
        return "rename-same"
    claim_id = f"{claim_prefix(run)}{change.legacy_id}#{change.seq}"
    player_id, home, old = decision["player_id"], decision["home_region"], decision["claim_id"]
    taken = await claim_name(
        regions, target, name.skeleton, name.canonical, claim_id, player_id, home
    )
    if taken is None:
        return "rename-lost"  # regiongate's claim of that name wins
    owner, slot = taken
    connection = await regions(home)
    async with connection.transaction():
        renamed = await connection.fetchval(
            "UPDATE identity.players SET username = $3, skeleton = $4, claim_id = $5,"
            " owner_region = $6, username_generated = false, username_refusal = NULL,"
            " version = version + 1, updated_at = now()"
            " WHERE id = $1 AND claim_id = $2 AND status = 'active' RETURNING version",
            player_id, old, name.canonical, name.skeleton, claim_id, owner,
        )  # fmt: skip
        current = await connection.fetchval(
            "SELECT claim_id FROM identity.players WHERE id = $1", player_id
        )
        if renamed is not None:
            await connection.execute(
                "UPDATE identity.username_history SET until = now(),"
                " held_until = now() + $2 * interval '1 second' WHERE claim_id = $1",
                old,
                HELD_FOR_S,
            )
            await connection.execute(
                "INSERT INTO identity.username_history"
                " (player_id, claim_id, username, skeleton, owner_region)"
                " VALUES ($1, $2, $3, $4, $5)",
                player_id, claim_id, name.canonical, name.skeleton, owner,
            )  # fmt: skip
            await connection.execute(
                "INSERT INTO identity.events (id, type, aggregate_id, version, body)"
                " VALUES ($1, 'player.username_changed', $2, $3, jsonb_build_object("
                "'player_id', $2::text, 'region', $4::text, 'username', $5::text,"
                " 'previous_username', $6::text, 'migrated', true))",
                f"evm_{player_id[3:]}_{change.seq}", player_id, renamed, home,
                name.canonical, decision["username"],
            )  # fmt: skip
    if renamed is None and current != claim_id:
        # The player renamed itself in regiongate since: its own choice is newer. Release ours.
        release = "DELETE FROM identity.claims WHERE claim_id = $1"
        await (await regions(owner)).execute(release, claim_id)
        return "rename-superseded"
    await (await regions(decision["owner_region"])).execute(
        "UPDATE identity.claims SET state = 'held', held_until = now() + $2 * interval '1 second'"
        " WHERE claim_id = $1 AND state = 'live'",
        old,
        HELD_FOR_S,
    )
    await work.execute(
        "UPDATE migration.decisions SET username = $3, skeleton = $4, slot = $5,"
        " owner_region = $6, claim_id = $7 WHERE run = $1 AND legacy_id = $2",
        run, change.legacy_id, name.canonical, name.skeleton, slot, owner, claim_id,
    )  # fmt: skip
    return "renamed"


async def _delete(work, regions: Connections, target: Target, run: str, change: Change) -> str:
    decision = await _decision(work, run, change.legacy_id)
    if decision is None:
        return "delete-unknown"
    await (await regions(decision["home_region"])).execute(
        """
        WITH closed AS (
            UPDATE identity.players SET status = 'closed', version = version + 1,
                   updated_at = now()
            WHERE id = $1 AND status = 'active'
            RETURNING id, version
        )
        INSERT INTO identity.events (id, type, aggregate_id, version, body)
        SELECT 'evm_' || substr(id, 4) || '_' || $2::text, 'player.closed', id, version,
               jsonb_build_object('player_id', id, 'region', $3::text, 'migrated', true)
        FROM closed
        """,
        decision["player_id"],
        str(change.seq),
        decision["home_region"],
    )
    await (await regions(decision["owner_region"])).execute(
        "DELETE FROM identity.claims WHERE claim_id = $1 AND player_id = $2",
        decision["claim_id"],
        decision["player_id"],
    )
    await work.execute(
        "UPDATE migration.decisions SET deleted = true WHERE run = $1 AND legacy_id = $2",
        run,
        change.legacy_id,
    )
    return "deleted"
