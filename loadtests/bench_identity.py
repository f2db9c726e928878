"""Identity benchmark: ``python -m loadtests.bench_identity [--seconds N] [--clients C]
[--rounds R] [--one-way-delay-ms D]``.

Two regions (eu, us) of the local cluster, each with its PostgreSQL, node and HTTPS gateway,
every link between them through the WAN proxy at a one-way delay of D ms (default 40). Closed-
loop clients create players through the eu gateway (POST /v1/players, each with a username and
one EUR wallet account, a bearer token and an idempotency key):

  local   the username's slot is owned by eu: reserved and bound without leaving the region;
  remote  the username's slot is owned by us: one WAN round trip to reserve it;
  insert  the physical floor: a plain INSERT into a table with a UNIQUE index on eu's
          PostgreSQL, by as many connections as there are clients, measured in the same run.

Each round runs the three in that order; the summary is the median of the rounds' own figures
(these machines are shared: one run's figures move by a third), with every round's under
``per_round``; p99s are over every round's requests. After the load the cross-region audit
(money and identity) runs. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import msgspec
import uvloop

from identity.usernames import UsernameRules, check
from infra.devkeys import ensure_dev_keys
from infra.local import LocalCluster, even_slot_owners
from ledger_node.global_audit import audit_regions
from loadtests.cpustats import CpuMeter
from loadtests.httpload import LoadResult, bearer_post, check_load_arguments, median, run_load
from runtime.tls import client_context
from wire.ids import identity_slot

REGIONS = ["eu", "us"]
UNLIMITED = {
    "per_client_rate_per_s": 1_000_000,
    "per_client_burst": 10_000_000,
    "per_account_rate_per_s": 1_000_000,
    "per_account_burst": 10_000_000,
    "lookup_rate_per_s": 1_000_000,
    "lookup_burst": 10_000_000,
}
RULES = UsernameRules()


def name_owned_by(region: str, stem: str, owners: tuple[str, ...]) -> str:
    """The first of stem, stem + 'a', stem + 'b', ... whose slot the region owns (about two
    tries: the slots are split evenly)."""
    for suffix in ("", *"abcdefghjkmnpqrstuvwxyz"):
        name = stem + suffix
        if owners[identity_slot(check(name, RULES).skeleton)] == region:
            return name
    raise RuntimeError(f"no name owned by {region} from {stem}")


async def insert_floor(dsn: str, clients: int, seconds: float, warmup_s: float) -> LoadResult:
    """Closed-loop INSERTs of unique names into a table with a UNIQUE index, one connection per
    client: what one durable write that can refuse a duplicate costs on this PostgreSQL."""
    run = uuid.uuid4().hex[:8]
    pool = await asyncpg.create_pool(dsn, min_size=clients, max_size=clients)
    try:
        async with pool.acquire() as connection:
            await connection.execute(
                "CREATE TABLE IF NOT EXISTS bench_floor (name text NOT NULL UNIQUE, "
                "player_id text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
            )
        result = LoadResult()
        start = time.perf_counter()
        measure_from, stop_at = start + warmup_s, start + warmup_s + seconds

        async def client(index: int) -> None:
            sequence = 0
            async with pool.acquire() as connection:
                while (sent := time.perf_counter()) < stop_at:
                    sequence += 1
                    await connection.execute(
                        "INSERT INTO bench_floor (name, player_id) VALUES ($1, $2)",
                        f"{run}-{index}-{sequence}",
                        uuid.uuid4().hex,
                    )
                    done = time.perf_counter()
                    if sent >= measure_from:
                        result.requests += 1
                        result.statuses[201] = result.statuses.get(201, 0) + 1
                        result.latencies_ms.append((done - sent) * 1000)

        await asyncio.gather(*(client(i) for i in range(clients)))
        result.elapsed_s = seconds
        return result
    finally:
        await pool.close()


async def measure(args, cluster: LocalCluster, token: str) -> list[dict]:
    port = int(cluster.gateway_urls["eu"].rsplit(":", 1)[1])
    owners = even_slot_owners(REGIONS)
    encode = msgspec.json.encode
    run = uuid.uuid4().hex[:6]

    def creations(region: str, label: str):
        def make(n: int):
            stem = f"b{label}{run}{n % 1_000_000_000:x}{n // 1_000_000_000:x}"
            body = encode({"username": name_owned_by(region, stem, owners), "currencies": ["EUR"]})
            return bearer_post("/v1/players", body, token, f"{run}-{label}-{n}")

        return make

    common = {
        "host": "127.0.0.1",
        "port": port,
        "clients": args.clients,
        "seconds": args.seconds,
        "warmup_s": min(3.0, max(1.0, args.seconds / 5)),
        "ssl_context": client_context(cluster.secrets_dir / "tls" / "dev-ca.pem"),
    }
    dsn = cluster.postgres["eu"].dsn("ledger_eu")
    meter = CpuMeter(_process_trees(cluster))
    rounds = []
    for index in range(1, args.rounds + 1):
        meter.start()
        local = await run_load(make_request=creations("eu", f"l{index}"), **common)
        local.cores = meter.stop()
        meter.start()
        remote = await run_load(make_request=creations("us", f"r{index}"), **common)
        remote.cores = meter.stop()
        floor = await insert_floor(dsn, args.clients, args.seconds, common["warmup_s"])
        rounds.append({"local": local, "remote": remote, "insert": floor})
        print(f"    round {index}: {_round_figures(rounds[-1])}", flush=True)
    return rounds


def _process_trees(cluster: LocalCluster) -> dict:
    """The processes whose CPU a run reports, by part (loadtests.cpustats)."""

    def pid_of(service):
        return lambda: service.process.pid if service.alive() else None

    trees = {}
    for region in REGIONS:
        trees[f"node_{region}"] = pid_of(cluster.ledgers[region])
        trees[f"gateway_{region}"] = pid_of(cluster.gateways[region])
        trees[f"postgres_{region}"] = lambda postgres=cluster.postgres[region]: postgres.pid
    return trees


def _round_figures(round_: dict) -> dict:
    figures = {}
    for name, result in round_.items():
        figures[f"{name}_tps"] = round(result.rps, 1)
        figures[f"{name}_p50_ms"] = round(result.percentile_ms(0.5), 2)
        for part, cores in result.cores.items():
            # CPU per creation, where the cores went: what a figure's ceiling is made of.
            if cores is not None and result.rps:
                figures[f"{name}_{part}_us_per_op"] = round(cores / result.rps * 1e6)
    floor = round_["insert"].rps
    figures["local_over_insert_tps"] = round(round_["local"].rps / floor, 3) if floor else None
    figures["remote_over_insert_tps"] = round(round_["remote"].rps / floor, 3) if floor else None
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--one-way-delay-ms", type=float, default=40.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of local, remote, insert")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args(argv)
    check_load_arguments(parser, args)
    if not 0 <= args.one_way_delay_ms <= 5_000:
        parser.error("--one-way-delay-ms must be in [0, 5000]")
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="regiongate-bench-identity-"))
    cluster = LocalCluster(
        root=root,
        regions=REGIONS,
        wan_one_way_delay_ms=args.one_way_delay_ms,
        fixed_ports=False,
        gateway_extra={"rate_limit": UNLIMITED},
    )
    try:
        cluster.start()
        token = ensure_dev_keys(cluster.secrets_dir).mint("bench", "admin")
        print(
            f"player creations through the eu gateway, {args.clients} clients, {args.seconds}s "
            f"each, WAN one-way delay {args.one_way_delay_ms} ms: local name, remote name, "
            f"then a plain INSERT ...",
            flush=True,
        )
        rounds = uvloop.run(measure(args, cluster, token))
        figures_by_round = [_round_figures(r) for r in rounds]
        pooled = {
            name: LoadResult.pooled([r[name] for r in rounds])
            for name in ("local", "remote", "insert")
        }
        audit = uvloop.run(
            audit_regions({r: c.dsn(f"ledger_{r}") for r, c in cluster.postgres.items()})
        )
        failures = [result.name for result in audit if not result.ok]
        print(f"    audit: {len(audit) - len(failures)} checks passed, failed: {failures}")
        figures = {
            "clients": args.clients,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "one_way_delay_ms": args.one_way_delay_ms,
            **{name: median([r[name] for r in figures_by_round]) for name in figures_by_round[0]},
            **{f"{name}_p99_ms": round(r.percentile_ms(0.99), 2) for name, r in pooled.items()},
            "non_2xx": {
                name: {s: n for s, n in r.statuses.items() if s >= 300}
                for name, r in pooled.items()
            },
            "errors": {
                name: {s: b.decode(errors="replace")[:300] for s, b in r.error_samples.items()}
                for name, r in pooled.items()
            },
            "audit_failures": len(failures),
            "per_round": figures_by_round,
        }
        print(json.dumps(figures))
    finally:
        cluster.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
