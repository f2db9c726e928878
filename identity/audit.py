"""Identity's checks across regions, for ``regiongate audit``: what no region can check alone,
read from every region's database (each in a snapshot of its own).

- every active player has one current username, and the owner of its slot has that claim live
  (or still reserved while the player's claim is being confirmed);
- every claim at an owner names a player who has it: a live claim its player's current one (or
  the previous one of a rename still holding it), a held one within its period, a reserved one
  a claim still running at the home;
- no skeleton is claimed twice anywhere, and no two active players share one;
- no reservation is older than its lease (plus a grace for the home's answer to land);
- every player's public id is recorded exactly once, at one owner, naming the player's home.

Snapshots of different databases are not one instant: a claim moving on between two reads
looks like a violation for a moment, so the caller reads again before reporting one
(ledger_node.global_audit runs these with its saga checks).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from datetime import datetime

import asyncpg

PLAYERS = """
SELECT id, status, username, skeleton, claim_id, owner_region FROM identity.players
WHERE status = 'active'
"""
OPEN_SAGAS = """
SELECT id, player_id, status, previous_claim_id FROM identity.claim_sagas
WHERE status IN ('reserving', 'confirming', 'registering', 'holding')
"""
CLAIMS = """
SELECT skeleton, claim_id, player_id, home_region, state, lease_until, held_until
FROM identity.claims
"""
PUBLIC_IDS = "SELECT player_id, home_region FROM identity.public_ids"
ALL_PLAYER_IDS = "SELECT id FROM identity.players"

PREFIX = "identity: "


@dataclass
class IdentitySnapshot:
    players: list[dict]
    open_sagas: list[dict]
    claims: list[dict]
    public_ids: list[dict]
    player_ids: set[str]


async def read_identity(connection: asyncpg.Connection) -> IdentitySnapshot:
    """Identity's rows, in the caller's transaction (its snapshot)."""
    parts = [
        [dict(row) for row in await connection.fetch(sql)]
        for sql in (PLAYERS, OPEN_SAGAS, CLAIMS, PUBLIC_IDS)
    ]
    ids = {row["id"] for row in await connection.fetch(ALL_PLAYER_IDS)}
    return IdentitySnapshot(*parts, ids)


def check_identity(
    snapshots: dict[str, IdentitySnapshot], overdue_before: datetime
) -> list[tuple[str, list[dict]]]:
    """(check name, violations) for every identity check over the regions read."""
    claims_by_id = {
        claim["claim_id"]: (region, claim)
        for region, snapshot in snapshots.items()
        for claim in snapshot.claims
    }
    open_by_id = {
        saga["id"]: (region, saga)
        for region, snapshot in snapshots.items()
        for saga in snapshot.open_sagas
    }
    holding = {
        saga["previous_claim_id"]
        for _, saga in open_by_id.values()
        if saga["status"] == "holding" and saga["previous_claim_id"]
    }
    players = {
        player["id"]: (region, player)
        for region, snapshot in snapshots.items()
        for player in snapshot.players
    }
    unclaimed = []
    for home, player in players.values():
        if player["owner_region"] not in snapshots:
            continue
        found = claims_by_id.get(player["claim_id"])
        confirming = player["claim_id"] in open_by_id
        if found is None or found[1]["skeleton"] != player["skeleton"]:
            unclaimed.append({"player": player["id"], "home": home, "claim": player["claim_id"]})
        elif found[1]["state"] != "live" and not (found[1]["state"] == "reserved" and confirming):
            unclaimed.append({"player": player["id"], "state": found[1]["state"]})
    orphans, stale = [], []
    for owner, snapshot in snapshots.items():
        for claim in snapshot.claims:
            if claim["home_region"] not in snapshots:
                continue
            state, claim_id = claim["state"], claim["claim_id"]
            player = players.get(claim["player_id"])
            current = player is not None and player[1]["claim_id"] == claim_id
            if state == "live" and not (current or claim_id in holding):
                orphans.append({"owner": owner, "claim": claim_id, "state": state})
            elif state == "held" and claim["held_until"] < overdue_before:
                orphans.append(
                    {"owner": owner, "claim": claim_id, "held_until": str(claim["held_until"])}
                )
            elif state == "reserved" and claim_id not in open_by_id and not current:
                if claim["lease_until"] < overdue_before:
                    orphans.append({"owner": owner, "claim": claim_id, "state": state})
            if state == "reserved" and claim["lease_until"] < overdue_before:
                stale.append(
                    {"owner": owner, "claim": claim_id, "lease_until": str(claim["lease_until"])}
                )
    skeleton_owners = collections.defaultdict(list)
    for owner, snapshot in snapshots.items():
        for claim in snapshot.claims:
            skeleton_owners[claim["skeleton"]].append(f"{owner}:{claim['player_id']}")
    for _, player in players.values():
        skeleton_owners[("player", player["skeleton"])].append(player["id"])
    doubles = [
        {"skeleton": key if isinstance(key, str) else key[1], "owners": holders}
        for key, holders in skeleton_owners.items()
        if len(holders) > 1
    ]
    return [
        (PREFIX + "every active player's username is live at its owner", unclaimed),
        (PREFIX + "every claim names the player who has it", orphans),
        (PREFIX + "no username (by skeleton) has two owners", doubles),
        (PREFIX + "no reservation is older than its lease", stale),
        (PREFIX + "every player has one public id, recorded at one owner", _public_ids(snapshots)),
    ]


def _public_ids(snapshots: dict[str, IdentitySnapshot]) -> list[dict]:
    recorded = collections.defaultdict(list)
    for owner, snapshot in snapshots.items():
        for row in snapshot.public_ids:
            recorded[row["player_id"]].append((owner, row["home_region"]))
    violations = []
    registering = {
        saga["player_id"]
        for snapshot in snapshots.values()
        for saga in snapshot.open_sagas
        if saga["status"] in ("reserving", "confirming", "registering")
    }
    for home, snapshot in snapshots.items():
        for player in snapshot.players:
            entries = recorded.get(player["id"], [])
            if not entries and player["id"] in registering:
                continue  # its creation's claim records it next
            if len(entries) != 1 or entries[0][1] != home:
                violations.append({"player": player["id"], "home": home, "recorded": entries})
    for player_id, entries in recorded.items():
        for owner, home in entries:
            if home in snapshots and player_id not in snapshots[home].player_ids:
                violations.append({"public_id": player_id, "owner": owner, "home": home})
    return violations
