"""The regiongate command: run a ledger node or a gateway, look at accounts and transfers,
check the ledger's invariants, audit every region, and run the local cluster (the project's
main job) with its demo, tokens and load runs.

Over 400 lines: every subcommand's handler beside the one argument tree that names them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
OBSERVE_INTERVAL_S = 5.0


def _config(path: str):
    from ledger_node.config import load_ledger_config

    return load_ledger_config(path)


async def _with_connection(config, work):
    import asyncpg

    connection = await asyncpg.connect(config.database.dsn, password=config.database.password())
    try:
        return await work(connection)
    finally:
        await connection.close()


def _print(value) -> None:
    print(json.dumps(value, indent=2, default=str))


def cmd_ledger_serve(args) -> int:
    from ledger_node.serve import serve
    from runtime.serving import configure_logging

    configure_logging()
    serve(_config(args.config))
    return EXIT_OK


def cmd_gateway_serve(args) -> int:
    from gateway.config import load_gateway_config
    from gateway.serve import serve
    from runtime.serving import configure_logging

    configure_logging()
    serve(load_gateway_config(args.config))
    return EXIT_OK


def cmd_ledger_migrate(args) -> int:
    """The node's schema: the ledger's migrations, then identity's (each with its record)."""
    from identity.migrations import IDENTITY_MIGRATIONS
    from ledger_node.migrations import apply_migrations

    async def migrate(connection) -> tuple[list[int], list[int]]:
        return await apply_migrations(connection), await IDENTITY_MIGRATIONS.apply(connection)

    ledger, identity = asyncio.run(_with_connection(_config(args.config), migrate))
    print(f"applied migrations: {ledger or 'none (schema current)'}")
    print(f"applied identity migrations: {identity or 'none (schema current)'}")
    return EXIT_OK


def cmd_ledger_account(args) -> int:
    from ledger_node import reads

    config = _config(args.config)

    async def work(connection):
        return await reads.account(connection, args.account_id)

    account = asyncio.run(_with_connection(config, work))
    if account is None:
        print(f"account {args.account_id} not found", file=sys.stderr)
        return EXIT_FAILED
    _print(account)
    return EXIT_OK


def cmd_ledger_history(args) -> int:
    from ledger_node import reads

    async def work(connection):
        return await reads.history(
            connection, args.account_id, limit=args.limit, cursor=args.cursor, order=args.order
        )

    _print(asyncio.run(_with_connection(_config(args.config), work)))
    return EXIT_OK


def cmd_ledger_transfer(args) -> int:
    from ledger_node import reads
    from wire.ids import SAGA_ID_PATTERN

    async def work(connection):
        if SAGA_ID_PATTERN.match(args.transfer_id):
            return await reads.saga(connection, args.transfer_id)
        return await reads.transfer(connection, args.transfer_id)

    transfer = asyncio.run(_with_connection(_config(args.config), work))
    if transfer is None:
        print(f"transfer {args.transfer_id} not found", file=sys.stderr)
        return EXIT_FAILED
    _print(transfer)
    return EXIT_OK


def cmd_ledger_sagas(args) -> int:
    """Cross-region transfers this region orchestrates: unfinished ones first, oldest first,
    with their attempts and last error (what an operator looks at when one is stuck)."""
    from ledger_node import reads

    status = None if args.status == "all" else args.status

    async def work(connection):
        return await reads.sagas(connection, status=status, limit=args.limit)

    sagas = asyncio.run(_with_connection(_config(args.config), work))
    _print({"sagas": sagas, "count": len(sagas)})
    return EXIT_OK


def cmd_ledger_check(args) -> int:
    from ledger_node.audit import check_invariants

    results = asyncio.run(_with_connection(_config(args.config), check_invariants))
    return _print_checks(results, "")


def _print_checks(results, what: str) -> int:
    """Each check, ok or FAIL with its first violations; the exit status."""
    failed = 0
    for result in results:
        print(f"[{'ok' if result.ok else 'FAIL'}] {result.name}")
        for violation in result.violations[:20]:
            print(f"    {json.dumps(violation, default=str)}")
        failed += not result.ok
    print(f"{what}{len(results) - failed} passed, {failed} failed")
    return EXIT_OK if failed == 0 else EXIT_FAILED


def cmd_ledger_call(args) -> int:
    """A signed request to a ledger node, with the config's service key: for operators and
    developers, since the ledger refuses anonymous calls."""
    from wire.problems import REPLAYED_HEADER
    from wire.service_auth import ServiceKeyring, sign

    config = _config(args.config)
    keyring = ServiceKeyring.load(config.service_keys_file)
    body = (args.data or "").encode()
    headers = {"Content-Type": "application/json"}
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    headers.update(
        sign(keyring.signing_key, args.method, args.path, body, args.idempotency_key or "")
    )
    url = f"http://{config.host}:{config.port}{args.path}"
    request = urllib.request.Request(
        url, data=body or None, method=args.method.upper(), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            status, payload, answer_headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        status, payload, answer_headers = exc.code, exc.read(), exc.headers
    replayed = answer_headers.get(REPLAYED_HEADER) == "true"
    print(f"HTTP {status}{' (replayed: the original answer)' if replayed else ''}", file=sys.stderr)
    try:
        _print(json.loads(payload))
    except ValueError:
        print(payload.decode(errors="replace"))
    return EXIT_OK if status < 400 else EXIT_FAILED


def cmd_local_up(args) -> int:
    from infra.local import LocalCluster, run_forever

    regions = [region.strip() for region in args.regions.split(",") if region.strip()]
    topology = None
    if args.topology is not None:
        from infra.terraform import EXAMPLE_VARS, topology_directory

        topology = topology_directory(Path(args.topology) if args.topology else EXAMPLE_VARS)
        regions = [record["code"] for record in topology["regions"]]
    observe = None
    if args.observe:
        from infra.prometheus_server import prometheus_binary

        if prometheus_binary() is None:
            print(
                "regiongate: --observe needs Prometheus: apt-get install -y prometheus",
                file=sys.stderr,
            )
            return EXIT_USAGE
        observe = OBSERVE_INTERVAL_S
    cluster = LocalCluster(
        root=Path(args.data_dir).resolve(),
        regions=regions,
        wan_one_way_delay_ms=args.wan_delay_ms,
        topology=topology,
        observe_interval_s=observe,
        images=args.images,
    )
    run_forever(cluster)
    return EXIT_OK


def cmd_load_run(args) -> int:
    from loadtests.run import run_profile

    return run_profile(
        profile_name=args.profile,
        users=args.users,
        spawn_rate=args.spawn_rate,
        run_time=args.time,
        data_dir=Path(args.data_dir).resolve(),
        results_root=Path(args.results),
    )


def cmd_load_size(args) -> int:
    from loadtests.sizing import measure_capacity, parse_peak, render, size

    try:
        peaks = [parse_peak(text) for text in args.peak]
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILED
    capacity = measure_capacity(
        [Path(p) for p in args.results or []], [Path(p) for p in args.bench or []], args.p99_ms
    )
    plan = size(peaks, capacity, args.p99_ms, args.headroom)
    print(render(plan))
    print(json.dumps(plan))
    return EXIT_OK


def cmd_load_plot(args) -> int:
    from loadtests.sizing import plot_step_load

    knee = plot_step_load(Path(args.results))
    if knee is None:
        print("no step-load history in that folder (run a profile with a shape)")
        return EXIT_FAILED
    print(f"{Path(args.results) / 'knee.png'}: knee at {json.dumps(knee)}")
    return EXIT_OK


def cmd_audit(args) -> int:
    """The cross-region audit (ledger_node.global_audit) over every region's database."""
    from ledger_node.global_audit import audit_regions

    dsns = {}
    if args.dsn:
        for item in args.dsn:
            region, _, dsn = item.partition("=")
            dsns[region] = dsn
    else:
        from infra.local import read_state

        dsns = read_state(Path(args.data_dir))["ledger_dsns"]
    what = f"audited regions {', '.join(sorted(dsns))}: "
    if args.watch_s is not None:
        return _audit_forever(dsns, args, what)
    results = asyncio.run(audit_regions(dsns, grace_s=args.grace_s))
    return _print_checks(results, what)


def _audit_forever(dsns: dict[str, str], args, what: str) -> int:
    """The periodic audit: its result as metrics on --metrics-port, until Ctrl-C or SIGTERM."""
    from ledger_node.global_audit import audit_forever
    from runtime.serving import configure_logging, wait_for_stop_signal
    from runtime.telemetry import start_metrics_site

    configure_logging()

    async def run() -> None:
        metrics = await start_metrics_site(args.metrics_host, args.metrics_port)
        task = asyncio.create_task(
            audit_forever(
                dsns,
                interval_s=args.watch_s,
                grace_s=args.grace_s,
                report=lambda results: _print_checks(results, what),
            )
        )
        try:
            await wait_for_stop_signal()
        finally:
            task.cancel()
            await metrics.cleanup()

    asyncio.run(run())
    return EXIT_OK


def cmd_local_token(args) -> int:
    """A development token for the running local cluster, signed with its development key:
    for building a client against it without the admin scope. Prints the token alone, so that
    TOKEN=$(regiongate local token ...) works."""
    from infra.devkeys import DevKeys
    from infra.local import read_state

    state = read_state(Path(args.data_dir))
    claims: dict = {}
    if args.accounts:
        claims["accounts"] = [a.strip() for a in args.accounts.split(",") if a.strip()]
    if args.operator:
        claims["operator"] = args.operator
    if args.home_region:
        claims["home_region"] = args.home_region
    if args.player:
        claims["player"] = args.player
    if args.scope == "wallet" and not claims.get("accounts") and not args.player:
        print(
            "regiongate: a wallet token needs --accounts or --player (the player's own)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.scope == "game:server" and not args.operator:
        print("regiongate: a game:server token needs --operator", file=sys.stderr)
        return EXIT_USAGE
    keys = DevKeys(Path(state["dev_private_key"]), Path(state["dev_jwks"]))
    print(keys.mint(args.subject, args.scope, lifetime_s=args.lifetime_s, **claims))
    return EXIT_OK


def cmd_local_demo(args) -> int:
    from infra.demo import Demo

    asyncio.run(Demo(Path(args.data_dir).resolve()).run())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    # Long: the one argument tree, in the order --help prints it.
    parser = argparse.ArgumentParser(prog="regiongate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    ledger = commands.add_parser("ledger", help="a regional ledger node").add_subparsers(
        dest="ledger_command", required=True
    )

    def ledger_command(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        sub = ledger.add_parser(name, help=help_text)
        sub.add_argument("--config", required=True, help="ledger node YAML config")
        sub.set_defaults(handler=handler)
        return sub

    ledger_command("serve", cmd_ledger_serve, "run a ledger node")
    ledger_command("migrate", cmd_ledger_migrate, "apply schema migrations and exit")
    ledger_command("check", cmd_ledger_check, "check the ledger's invariants; exit 1 on any")
    ledger_command("account", cmd_ledger_account, "show an account and its balance").add_argument(
        "account_id"
    )
    history = ledger_command("history", cmd_ledger_history, "an account's transfers")
    history.add_argument("account_id")
    history.add_argument("--limit", type=int, default=20)
    history.add_argument("--cursor")
    history.add_argument("--order", choices=["asc", "desc"], default="desc")
    ledger_command(
        "transfer", cmd_ledger_transfer, "show one transfer, or a cross-region transfer (saga)"
    ).add_argument("transfer_id")
    sagas = ledger_command(
        "sagas", cmd_ledger_sagas, "the sagas this region orchestrates, unfinished first"
    )
    sagas.add_argument(
        "--status", choices=["all", "pending", "completed", "compensated"], default="all"
    )
    sagas.add_argument("--limit", type=int, default=50)
    call = ledger_command("call", cmd_ledger_call, "send a signed request to the ledger node")
    call.add_argument("method")
    call.add_argument("path")
    call.add_argument("--data", help="JSON body")
    call.add_argument("--idempotency-key")

    gateway = commands.add_parser("gateway", help="a region's public gateway").add_subparsers(
        dest="gateway_command", required=True
    )
    gateway_serve = gateway.add_parser("serve", help="run a gateway")
    gateway_serve.add_argument("--config", required=True, help="gateway YAML config")
    gateway_serve.set_defaults(handler=cmd_gateway_serve)

    local = commands.add_parser("local", help="the local cluster").add_subparsers(
        dest="local_command", required=True
    )
    up = local.add_parser("up", help="start the local cluster and wait for Ctrl-C")
    up.add_argument("--data-dir", default=".local", help="where data is kept between runs")
    up.add_argument("--regions", default="eu,us,ap", help="comma-separated region codes")
    up.add_argument(
        "--wan-delay-ms",
        type=float,
        default=None,
        help="route traffic between regions through WAN proxies with this one-way delay",
    )
    up.add_argument(
        "--topology",
        nargs="?",
        const="",
        default=None,
        metavar="TFVARS",
        help="take the regions from Terraform's region map (the topology module applied to "
        "TFVARS, default terraform/environments/example/terraform.tfvars)",
    )
    up.add_argument(
        "--images",
        action="store_true",
        help="run the ledger nodes and gateways from the container image (./dev image)",
    )
    up.add_argument(
        "--observe",
        action="store_true",
        help="also run Prometheus (Debian's prometheus) scraping every service, with the "
        "project's alerting rules",
    )
    up.set_defaults(handler=cmd_local_up)
    token = local.add_parser(
        "token", help="a development token for the running cluster (wallet, game server, admin)"
    )
    token.add_argument("--scope", required=True, choices=["wallet", "game:server", "admin"])
    token.add_argument("--accounts", help="comma-separated account ids (wallet: the player's)")
    token.add_argument("--operator", help="the operator a game server plays for")
    token.add_argument("--home-region", help="where this client's creations go by default")
    token.add_argument("--player", help="a player's own public id (may rename itself)")
    token.add_argument("--subject", default="dev-client", help="the token's sub and client id")
    token.add_argument("--lifetime-s", type=int, default=3600)
    token.add_argument("--data-dir", default=".local", help="the running local cluster")
    token.set_defaults(handler=cmd_local_token)
    demo = local.add_parser("demo", help="a scripted scenario through the running cluster")
    demo.add_argument("--data-dir", default=".local")
    demo.set_defaults(handler=cmd_local_demo)

    load = commands.add_parser("load", help="Locust load runs and capacity sizing").add_subparsers(
        dest="load_command", required=True
    )
    run = load.add_parser("run", help="run a profile headless against the local cluster")
    run.add_argument("--profile", default="smoke", help="a name in loadtests/profiles, or a path")
    run.add_argument("--users", type=int, default=20)
    run.add_argument("--spawn-rate", type=float, default=10.0)
    run.add_argument("--time", default="60s", help="Locust run time (30s, 5m, 1h)")
    run.add_argument("--data-dir", default=".local", help="the running local cluster")
    run.add_argument("--results", default="results", help="reports go in a new folder here")
    run.set_defaults(handler=cmd_load_run)
    sizing = load.add_parser("size", help="ledger nodes and gateway workers for a peak")
    sizing.add_argument("--results", action="append", help="a results folder of load run")
    sizing.add_argument("--bench", action="append", help="a file with a benchmark's output")
    sizing.add_argument(
        "--peak", action="append", required=True, help="REGION:OPERATION=RATE, e.g. eu:bets=20000"
    )
    sizing.add_argument("--p99-ms", type=float, default=50.0)
    sizing.add_argument("--headroom", type=float, default=0.3, help="fraction kept free")
    sizing.set_defaults(handler=cmd_load_size)
    plot = load.add_parser("plot", help="knee.png of a step-load results folder")
    plot.add_argument("results")
    plot.set_defaults(handler=cmd_load_plot)

    audit = commands.add_parser(
        "audit", help="check money invariants across every region; exit 1 on any violation"
    )
    audit.add_argument("--data-dir", default=".local", help="the local cluster to audit")
    audit.add_argument(
        "--dsn", action="append", help="REGION=postgresql://... (repeat); overrides --data-dir"
    )
    audit.add_argument(
        "--grace-s", type=float, default=10.0, help="how far past its deadline a saga may run"
    )
    audit.add_argument(
        "--watch-s",
        type=float,
        help="audit again every this many seconds, exporting the result as metrics",
    )
    audit.add_argument("--metrics-port", type=int, default=9400, help="with --watch-s")
    audit.add_argument("--metrics-host", default="127.0.0.1", help="with --watch-s")
    audit.set_defaults(handler=cmd_audit)

    from infra.events_commands import add_commands as add_events_commands
    from infra.identity_commands import add_commands as add_identity_commands

    add_identity_commands(commands)
    add_events_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gateway.errors import GatewayError
    from identity.legacy.migrate import MigrationError
    from infra.errors import InfraError
    from ledger_node.errors import LedgerError
    from region_router.errors import RouterError
    from wire.errors import WireError

    try:
        return args.handler(args)
    except (LedgerError, InfraError, GatewayError, RouterError, WireError, MigrationError) as exc:
        print(f"regiongate: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # a service the command needs is down or unreachable: one line
        print(f"regiongate: cannot reach a service: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
