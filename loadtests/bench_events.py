"""Events benchmark: ``python -m loadtests.bench_events [--seconds N] [--clients C] [--rounds R]``.

One PostgreSQL cluster and one durable Redis of its own (appendfsync always, as the events'
Redis runs). Two ledger nodes on two databases of the cluster, as in ``bench_ledger``: one
with its outbox and relay publishing to Redis, one with the outbox off. Each round runs the
ledger benchmark's uniform load (C clients, closed loop, signed transfers) against each node in
turn, while a consumer group in this process reads the first node's transfer stream.

It prints, per round and as medians: the ledger's transfers a second with the outbox and relay
on and with the outbox off (their ratio is what the whole pipeline costs the ledger on this
machine, where relay, consumer, Redis and PostgreSQL share 2 cores), the events a second the
consumer applied, and the lag from an event's commit (its batch's time) to the consumer's
handler, p50 and p99. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import redis.asyncio as aioredis
import uvloop

from events.consumer import Consumer, ConsumerConfig
from events.streams import Event, stream_name
from infra.processes import LedgerProcess, ensure_service_keys, write_ledger_config
from infra.services import PostgresCluster, RedisServer, free_port
from loadtests.bench_ledger import CURRENCY, PLAYERS, REGION, make_players
from loadtests.httpload import check_load_arguments, median, run_load, signed_post
from wire.service_auth import ServiceKeyring


class Lag:
    """What the consumer saw during one run: events applied and their commit-to-handler lags."""

    def __init__(self) -> None:
        self.lags_ms: list[float] = []
        self.counting = False

    async def handle(self, event: Event) -> None:
        if self.counting:
            committed = datetime.fromisoformat(event.time.replace("Z", "+00:00"))
            self.lags_ms.append((datetime.now(UTC) - committed).total_seconds() * 1000)

    def percentile(self, fraction: float) -> float | None:
        if not self.lags_ms:
            return None
        ordered = sorted(self.lags_ms)
        return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 1)


async def _run(node: LedgerProcess, keyring, players, clients: int, seconds: int, seed: int):
    rng = random.Random(seed)
    run_id = os.urandom(4).hex()

    def uniform(n: int) -> bytes:
        debit, credit = rng.sample(players, 2)
        body = msgspec.json.encode(
            {"debit_account_id": debit, "credit_account_id": credit,
             "amount": rng.randint(1, 1000), "currency": CURRENCY}
        )  # fmt: skip
        return signed_post("/v1/transfers", body, keyring.signing_key, f"ev-{run_id}-{n}")

    return await run_load(
        host="127.0.0.1",
        port=node.port,
        clients=clients,
        seconds=seconds,
        warmup_s=min(2.0, max(0.5, seconds / 5)),
        make_request=uniform,
    )


async def _round(args, nodes, keyring, players, redis_url: str, index: int) -> dict:
    lag = Lag()
    client = aioredis.from_url(redis_url)
    consumer = Consumer(
        client,
        [stream_name(REGION, "transfer")],
        f"bench-{index}",
        "bench",
        lag.handle,
        ConsumerConfig(count=1_000, block_ms=50),
        start_id="$",
    )
    await consumer.ensure_groups()
    consumer.start()
    try:
        lag.counting = True
        started = time.perf_counter()
        on = await _run(nodes["on"], keyring, players["on"], args.clients, args.seconds, index)
        # The consumer catches up on what the run committed (the relay and it trail the load).
        await asyncio.sleep(1.0)
        lag.counting = False
        consumed_s = time.perf_counter() - started
        off = await _run(nodes["off"], keyring, players["off"], args.clients, args.seconds, index)
    finally:
        await consumer.stop()
        await client.aclose()
    return {
        "ledger_tps": round(on.rps, 1),
        "ledger_tps_no_outbox": round(off.rps, 1),
        "pipeline_cost": round(1 - on.rps / off.rps, 3) if off.rps else None,
        "events_consumed": len(lag.lags_ms),
        "events_per_s": round(len(lag.lags_ms) / consumed_s, 1),
        "lag_p50_ms": lag.percentile(0.50),
        "lag_p99_ms": lag.percentile(0.99),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    check_load_arguments(parser, args)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="regiongate-bench-events-"))
    cluster = PostgresCluster(root / "pg", free_port())
    redis_server = RedisServer(root / "redis", free_port(), durable=True)
    nodes: dict[str, LedgerProcess] = {}
    try:
        cluster.start()
        redis_server.start()
        keys_file = root / "service_keys"
        ensure_service_keys(keys_file)
        keyring = ServiceKeyring.load(str(keys_file))
        players = {}
        for name, events in (
            ("on", {"redis_url": redis_server.url, "webhooks": {"enabled": False}}),
            ("off", {"outbox": False}),
        ):
            dsn = cluster.create_database(f"ledger_events_{name}")
            port = free_port()
            config = write_ledger_config(
                root / f"ledger-{name}.yaml",
                region=REGION,
                dsn=dsn,
                port=port,
                service_keys_file=keys_file,
                extra={"database": {"dsn": dsn, "pool_size_max": 4}, "events": events},
            )
            nodes[name] = LedgerProcess(config, port, root / f"ledger-{name}.log")
            nodes[name].start()
            players[name] = asyncio.run(make_players(dsn, PLAYERS))
        print(
            f"{args.rounds} rounds of the uniform load ({args.clients} clients, {args.seconds}s)"
            " against the node with its outbox and relay, then the node without, while a"
            " consumer reads the first's transfer stream ...",
            flush=True,
        )
        rounds = []
        for index in range(1, args.rounds + 1):
            rounds.append(
                uvloop.run(_round(args, nodes, keyring, players, redis_server.url, index))
            )
            print(f"    round {index}: {rounds[-1]}", flush=True)
        figures = {
            name: median([r[name] for r in rounds if r[name] is not None])
            for name in (
                "ledger_tps", "ledger_tps_no_outbox", "pipeline_cost", "events_per_s",
                "lag_p50_ms", "lag_p99_ms",
            )
        }  # fmt: skip
        figures.update({"clients": args.clients, "seconds": args.seconds, "per_round": rounds})
        print(
            f"    median: ledger {figures['ledger_tps']} tps with the pipeline,"
            f" {figures['ledger_tps_no_outbox']} without (cost {figures['pipeline_cost']});"
            f" consumer {figures['events_per_s']} events/s, commit-to-consumer lag p50"
            f" {figures['lag_p50_ms']} ms, p99 {figures['lag_p99_ms']} ms",
            flush=True,
        )
        print(json.dumps(figures))
    finally:
        for node in nodes.values():
            node.stop()
        redis_server.stop()
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
