"""What a run decided, counted (the report), and what the regions hold of it, checked after
the fact (verify)."""

from __future__ import annotations

import asyncpg

from identity.legacy.migrate import Target, claim_prefix

OUTCOMES = (
    "kept", "normalised", "lost-to-older", "lost-to-live", "invalid-repaired",
    "invalid-generated", "reserved", "missing",
)  # fmt: skip
SAMPLES_PER_OUTCOME = 3
VERIFY_CHUNK_ROWS = 5_000


async def build_report(work_dsn: str, run: str) -> dict:
    work = await asyncpg.connect(work_dsn)
    try:
        state = await work.fetchrow("SELECT * FROM migration.runs WHERE run = $1", run)
        if state is None:
            raise LookupError(f"no run {run!r} in the work database")
        by_outcome = dict.fromkeys(OUTCOMES, 0)
        for row in await work.fetch(
            "SELECT outcome, count(*) FROM migration.decisions WHERE run = $1 GROUP BY 1", run
        ):
            by_outcome[row["outcome"]] = row["count"]
        by_rule = {
            f"{row['outcome']}/{row['rule']}": row["count"]
            for row in await work.fetch(
                "SELECT outcome, rule, count(*) FROM migration.decisions"
                " WHERE run = $1 AND rule IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2",
                run,
            )
        }
        samples = {}
        for row in await work.fetch(
            "SELECT outcome, legacy_id, raw_username, username FROM ("
            " SELECT *, row_number() OVER (PARTITION BY outcome ORDER BY legacy_id) AS n"
            " FROM migration.decisions WHERE run = $1) AS d WHERE n <= $2"
            " ORDER BY outcome, legacy_id",
            run,
            SAMPLES_PER_OUTCOME,
        ):
            samples.setdefault(row["outcome"], []).append(
                {"legacy_id": row["legacy_id"], "from": row["raw_username"], "to": row["username"]}
            )
        malformed = [
            dict(row)
            for row in await work.fetch(
                "SELECT line, legacy_id, reason FROM migration.malformed WHERE run = $1"
                " ORDER BY line LIMIT 10",
                run,
            )
        ]
        decided = sum(by_outcome.values())
        from_changes = await work.fetchval(
            "SELECT count(*) FROM migration.decisions WHERE run = $1 AND line < 0", run
        )
        deleted = await work.fetchval(
            "SELECT count(*) FROM migration.decisions WHERE run = $1 AND deleted", run
        )
        broken_dates = await work.fetchval(
            "SELECT count(*) FROM migration.decisions WHERE run = $1 AND date_broken", run
        )
    finally:
        await work.close()
    duplicates = state["staged_rows"] - (decided - from_changes) if state["decided"] else None
    return {
        "run": run,
        "rows_read": state["staged_rows"] + state["malformed_rows"],
        "players": decided,
        "created_by_changes": from_changes,
        "deleted_by_changes": deleted,
        "duplicate_rows": duplicates,
        "malformed_rows": state["malformed_rows"],
        "by_outcome": by_outcome,
        "by_rule": by_rule,
        "broken_dates": broken_dates,
        "finished": state["finished"],
        "samples": samples,
        "malformed_samples": malformed,
    }


def summary(report: dict) -> str:
    lines = [
        f"run {report['run']}: {report['rows_read']} rows read, {report['players']} players, "
        f"{report['duplicate_rows']} duplicate rows, {report['malformed_rows']} malformed"
        + ("" if report["finished"] else " (not loaded)"),
    ]
    for outcome, count in report["by_outcome"].items():
        example = (report["samples"].get(outcome) or [{}])[0]
        shown = f"   e.g. {example.get('from')!r} -> {example.get('to')!r}" if example else ""
        lines.append(f"  {outcome:<18} {count:>10}{shown}")
    for rule, count in report["by_rule"].items():
        lines.append(f"    {rule:<34} {count:>10}")
    lines.append(f"  {'unreadable dates':<18} {report['broken_dates']:>10} (migrated; sort last)")
    for bad in report["malformed_samples"][:3]:
        lines.append(f"  malformed line {bad['line']} ({bad['legacy_id']}): {bad['reason']}")
    return "\n".join(lines)


async def verify(target: Target, run: str) -> list[tuple[str, list]]:
    """Every decided legacy user is one player at its home, with its decided name and id; its
    name's claim is at the owner; its id is recorded at the id's owner; and the counts add up
    to the report's."""
    report = await build_report(target.work_dsn, run)
    prefix = claim_prefix(run)
    problems: dict[str, list] = {"players": [], "claims": [], "ids": [], "counts": []}
    work = await asyncpg.connect(target.work_dsn)
    try:
        for region in sorted(target.dsns):
            connection = await asyncpg.connect(target.dsns[region])
            try:
                await _verify_region(work, connection, run, region, prefix, problems)
                held = await connection.fetchval(
                    "SELECT count(*) FROM identity.players WHERE legacy_run = $1"
                    " AND status = 'active'",
                    run,
                )
                expected = await work.fetchval(
                    "SELECT count(*) FROM migration.decisions WHERE run = $1"
                    " AND home_region = $2 AND NOT deleted",
                    run,
                    region,
                )
                if held != expected:
                    problems["counts"].append(
                        {"region": region, "players": held, "decided": expected}
                    )
            finally:
                await connection.close()
        if (
            report["rows_read"]
            != report["players"]
            - report["created_by_changes"]
            + (report["duplicate_rows"] or 0)
            + report["malformed_rows"]
        ):
            problems["counts"].append({"report": "outcomes do not add up to the rows read"})
    finally:
        await work.close()
    return [
        ("every legacy user is one player, at its home, with its decided name and id",
         problems["players"]),
        ("every migrated name is claimed by its player at its owner", problems["claims"]),
        ("every migrated public id is recorded at its owner", problems["ids"]),
        ("the regions' counts are the report's", problems["counts"]),
    ]  # fmt: skip


async def _verify_region(work, connection, run, region, prefix, problems) -> None:
    checks = (
        (
            "players",
            "home_region",
            "SELECT legacy_id, id AS player_id, username FROM identity.players"
            " WHERE legacy_run = $1 AND legacy_id = ANY($2::text[])",
        ),
        (
            "claims",
            "owner_region",
            "SELECT d.legacy_id, c.player_id, c.username FROM identity.claims c"
            " JOIN unnest($2::text[], $3::text[]) AS d (legacy_id, claim_id)"
            " ON c.claim_id = d.claim_id WHERE $1::text IS NOT NULL",
        ),
        (
            "ids",
            "id_owner_region",
            "SELECT player_id FROM identity.public_ids WHERE player_id = ANY($2::text[])"
            " AND $1::text IS NOT NULL",
        ),
    )
    for name, column, query in checks:
        last = ""
        while True:
            chunk = await work.fetch(
                f"SELECT legacy_id, player_id, username, claim_id FROM migration.decisions"
                f" WHERE run = $1 AND {column} = $2 AND legacy_id > $3 AND NOT deleted"
                f" ORDER BY legacy_id LIMIT $4",
                run,
                region,
                last,
                VERIFY_CHUNK_ROWS,
            )
            if not chunk:
                break
            last = chunk[-1]["legacy_id"]
            keys = [r["player_id"] if name == "ids" else r["legacy_id"] for r in chunk]
            first = run if name == "players" else prefix
            if name == "claims":
                found = await connection.fetch(query, first, keys, [r["claim_id"] for r in chunk])
            else:
                found = await connection.fetch(query, first, keys)
            if name == "ids":
                present = {r["player_id"] for r in found}
                missing = [r["player_id"] for r in chunk if r["player_id"] not in present]
                problems[name].extend({"region": region, "player_id": p} for p in missing[:5])
                continue
            held = {r["legacy_id"]: (r["player_id"], r["username"]) for r in found}
            for row in chunk:
                if held.get(row["legacy_id"]) != (row["player_id"], row["username"]):
                    if len(problems[name]) < 20:
                        problems[name].append(
                            {"region": region, "legacy_id": row["legacy_id"],
                             "found": held.get(row["legacy_id"])}
                        )  # fmt: skip
