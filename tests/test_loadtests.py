"""The capacity-planning tools: every profile loads and bad ones are refused with the field
named; the locustfile loads in Locust (in a process of its own: Locust patches the standard
library with gevent); the sizing arithmetic and the knee; and a smoke run of a profile against
a real local cluster that must end with no unexpected failure and a clean audit; and the
instruction benchmark's arithmetic, with a tiny run of it under callgrind where valgrind is
installed.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from infra.devkeys import ensure_dev_keys
from infra.services import PostgresCluster
from loadtests.bench_instructions import Pair, callgrind_totals
from loadtests.bench_ledger import cpu_ratio
from loadtests.cpustats import CpuMeter, us_per_operation
from loadtests.profiles import ProfileError, all_profiles, load_profile, profile_from_dict
from loadtests.promstats import means, means_ms, totals_of
from loadtests.sizing import Capacity, Step, knee, parse_peak, plot_step_load, size
from loadtests.walstats import WalSyncs, wal_syncs
from tests.support import assert_eventually, unique

LOCUSTFILE = Path(__file__).resolve().parent.parent / "loadtests" / "locustfile.py"


@pytest.mark.parametrize("path", all_profiles(), ids=lambda p: p.stem)
def test_every_profile_loads(path):
    profile = load_profile(str(path))
    assert profile.regions and sum(profile.players.values()) >= 2
    for home, shares in profile.entry.items():
        assert home in profile.players and set(shares) <= set(profile.players)


BASE = {"players": {"eu": 2}, "mix": {"game_client": 1}}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"players": {}}, "players"),
        ({"players": {"eu": 0}}, "players.eu"),
        ({"mix": {"bots": 1}}, "mix"),
        ({"think_time_s": [2, 1]}, "think_time_s"),
        ({"entry": {"us": {"eu": 1}}}, "entry"),
        ({"game_server": {"rollback_pct": 101}}, "rollback_pct"),
        ({"shape": {"step_users": 5, "step_seconds": 1, "steps": 3}}, "shape.step_seconds"),
        ({"surprise": 1}, "unknown keys"),
    ],
)
def test_a_bad_profile_is_refused_naming_the_field(change, field):
    with pytest.raises(ProfileError, match=field.replace(".", r"\.")):
        profile_from_dict({**BASE, **change}, "bad")


def test_the_locustfile_loads_in_locust(tmp_path):
    keys = ensure_dev_keys(tmp_path / "keys")
    config = {
        "profile": "smoke",
        "gateways": {"eu": "https://127.0.0.1:1", "us": "https://127.0.0.1:2"},
        "ca_cert": str(tmp_path / "ca.pem"),
        "dev_private_key": str(keys.private_key_file),
        "dev_jwks": str(keys.jwks_file),
        "players": {"eu": ["eu-a", "eu-b"], "us": ["us-a", "us-b"]},
        "operator": "load-operator",
        "results_dir": str(tmp_path),
    }
    (tmp_path / "load.json").write_text(json.dumps(config))
    listed = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--list"],
        env={**os.environ, "REGIONGATE_LOAD_CONFIG": str(tmp_path / "load.json")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    for user_class in ("GameClient", "GameServer", "Wallet", "PlayerToPlayer"):
        assert user_class in listed.stdout


def test_sizing_keeps_headroom_and_two_of_each_at_least():
    capacity = Capacity(1_000.0, "test", 2_000.0, "test")
    plan = size(
        [
            parse_peak("eu:bets=20000"),
            parse_peak("eu:cross_transfers=500"),
            parse_peak("us:wins=10"),
        ],
        capacity,
        p99_ms=50,
        headroom=0.3,
    )
    eu, us = plan["regions"]["eu"], plan["regions"]["us"]
    assert eu["ledger_ops_per_s"] == 21_000  # a cross-region transfer is two ops at the source
    assert eu["ledger_nodes"] == 30  # 21,000 / (1,000 x 0.7)
    assert eu["gateway_workers"] == 15  # 20,500 / (2,000 x 0.7), rounded up
    assert us["ledger_nodes"] == us["gateway_workers"] == 2  # never fewer than two
    with pytest.raises(ValueError, match="REGION:OPERATION=RATE"):
        parse_peak("eu:spins=5")


def test_the_knee_is_where_throughput_stops_following_load():
    rising = [Step(u, 100.0 * u, 50.0 * u, 5, 10 + u) for u in (1, 2, 3, 4, 5)]
    assert knee(rising) is None  # never saturated
    bending = [Step(1, 100, 50, 5, 10), Step(2, 200, 100, 6, 12), Step(3, 290, 140, 8, 15),
               Step(4, 300, 150, 20, 60), Step(5, 305, 150, 40, 150)]  # fmt: skip
    assert knee(bending).users == 3


def test_a_step_history_becomes_a_plot_with_its_knee(tmp_path):
    columns = ["Timestamp", "User Count", "Type", "Name", "Requests/s", "50%", "99%"]
    with (tmp_path / "locust_stats_history.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for users, rps, p50, p99 in ((4, 100, 5, 9), (8, 200, 6, 12), (12, 290, 9, 20),
                                     (16, 300, 25, 80), (20, 302, 50, 200)):  # fmt: skip
            for second in range(4):
                stamp = str(users * 100 + second)
                row = {"Timestamp": stamp, "User Count": users, "Type": "", "50%": p50}
                writer.writerow({**row, "Name": "Aggregated", "Requests/s": rps, "99%": p99})
                writer.writerow({**row, "Name": "bet", "Requests/s": rps / 2, "99%": p99})
    found = plot_step_load(tmp_path)
    assert found["reached"] and found["users"] == 12
    assert (tmp_path / "knee.png").stat().st_size > 10_000


@pytest.mark.timeout(150)
def test_smoke_profile_against_the_local_cluster(tmp_path, own_services_dir, capfd):
    """CI's load smoke: the smoke profile for 15 s against a real two-region local cluster.
    Every request succeeds or is an expected refusal, and the audit afterwards is clean; the
    totals it prints are the ones summary.json keeps; every metrics URL the cluster describes
    serves metrics; the gateways wrote access lines; and the report's verdict is visible in a
    real browser."""
    from infra.local import LocalCluster
    from loadtests.run import run_profile

    cluster = LocalCluster(
        root=own_services_dir / "cluster", regions=["eu", "us"], fixed_ports=False
    )
    cluster.start()
    try:
        code = run_profile(
            profile_name="smoke",
            users=8,
            spawn_rate=8,
            run_time="15s",
            data_dir=cluster.root,
            results_root=tmp_path / "results",
        )
        for region in cluster.describe()["regions"].values():
            for url in region["metrics"]:
                with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
                    assert b"regiongate_" in response.read(), url
    finally:
        cluster.stop()
    (results,) = (tmp_path / "results").iterdir()
    summary = json.loads((results / "summary.json").read_text())
    assert code == 0, summary
    assert summary["totals"]["requests"] > 100 and summary["totals"]["failures"] == 0
    assert summary["audit"]["clean"] and summary["audit"]["sagas_running"] == 0
    outcomes = summary["regiongate"]["outcomes"]
    for operation in ("bet", "balance", "deposit", "p2p cross-region"):
        assert outcomes.get(f"{operation}: ok", 0) > 0, outcomes
    captured = capfd.readouterr()
    printed = captured.out + captured.err  # Locust prints its summary through its logger
    (aggregated,) = re.findall(r"^\s+Aggregated\s+(\d+)\s+\d+\(", printed, re.MULTILINE)
    last_line = json.loads(captured.out.strip().splitlines()[-1])
    assert int(aggregated) == last_line["requests"] == summary["totals"]["requests"]
    access = [
        json.loads(line)
        for line in (cluster.root / "logs" / "gateway-eu.log").read_text().splitlines()
        if '"regiongate.access"' in line
    ]
    assert len(access) > 50 and {"route", "status", "latency_ms", "client_id"} <= set(access[0])
    assert "Audit after the run: clean" in rendered_text(results / "report.html")


def rendered_text(page: Path) -> str:
    """What Debian's headless Chromium renders of a page, its scripts run and removed (text
    inside a script is not shown to anyone)."""
    browser = shutil.which("chromium")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: ./dev test installs it")
        pytest.skip("chromium is not installed (./dev test installs it)")
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [
                browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri(),
            ],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
    return re.sub(r"<script.*?</script>", "", dom, flags=re.DOTALL)


def test_the_batch_benchmark_runs_and_prints_its_figures():
    """A tiny run of bench_batch end to end (its own PostgreSQL), so the benchmark cannot rot."""
    run = subprocess.run(
        [sys.executable, "-m", "loadtests.bench_batch", "--sizes", "1,3", "--rounds", "5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(figures["sizes"]) == {"1", "1-hot", "3", "3-hot"}
    for row in figures["sizes"].values():
        # Plausible, not fast: a batch of 1 to 3 transfers takes between 50 us and 2 s on
        # any machine that runs the suite, and no transfer costs a process 100 ms of CPU. CPU
        # time is read in clock ticks, so a tiny run may read zero; never less.
        assert 0.05 < row["batch_ms"] < 2_000, row
        assert 0 <= row["pg_us_per_op"] < 100_000 and 0 <= row["py_us_per_op"] < 100_000, row


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        ("bench_batch", ["--sizes", "0,4"], "each size must be in"),
        ("bench_saga", ["--writers", "0"], "--writers must be in"),
        ("bench_saga", ["--seconds", "0"], "--seconds must be in"),
        ("bench_instructions", ["--size", "0"], "--size in [1, 512]"),
    ],
)
def test_a_benchmark_refuses_bad_arguments(module, argv, message):
    run = subprocess.run(
        [sys.executable, "-m", f"loadtests.{module}", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and message in run.stderr


async def test_wal_flushes_are_counted_and_timed(postgres):
    """The clusters infra.services makes time their WAL flushes, which the benchmarks print."""
    dsn = postgres.dsn()
    before = await wal_syncs(dsn)
    connection = await asyncpg.connect(dsn)
    try:
        # A table of its own: its creation and insert commit, so the WAL is flushed.
        table = unique("wal").replace("-", "_")
        await connection.execute(f"CREATE TABLE {table} (n int); INSERT INTO {table} VALUES (1)")

        async def reported() -> bool:  # backends report WAL statistics about once a second
            await connection.execute(f"INSERT INTO {table} VALUES (2)")
            return (await wal_syncs(dsn)).count > before.count

        await assert_eventually(reported, timeout_s=10)
        await connection.execute(f"DROP TABLE {table}")
    finally:
        await connection.close()
    mean = (await wal_syncs(dsn)).mean_ms_since(before)
    assert mean is not None and mean > 0
    assert WalSyncs(5, 2.0).mean_ms_since(WalSyncs(5, 1.0)) is None


BURN = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
TREE = (
    "import subprocess, sys\n"
    f"subprocess.run([sys.executable, '-c', {BURN!r}])\n"
    "print('reaped', flush=True)\n"
    "input()"
)


def test_cpu_meter_counts_a_tree_with_its_ended_children(postgres):
    """bench_ledger's cores: a process tree's CPU includes the children it reaped within the run
    (pgbench's PostgreSQL backends end with it); a tree that is gone, or whose root is another
    process at the end (a restart), reads as None."""
    root = subprocess.Popen(
        [sys.executable, "-c", TREE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        roots = iter([root.pid, os.getpid()])
        meter = CpuMeter(
            {"root": lambda: root.pid, "gone": lambda: None, "restarted": lambda: next(roots)}
        )
        meter.start()
        assert root.stdout.readline().strip() == "reaped"  # the burner spent 0.3 s of CPU
        cores = meter.stop()
    finally:
        root.communicate("\n", timeout=30)
    assert cores["gone"] is None and cores["restarted"] is None
    assert cores["root"] is not None and cores["root"] * meter.elapsed_s >= 0.25
    assert cores["machine"] is not None and cores["machine"] * meter.elapsed_s >= 0.25
    assert postgres.pid is not None
    assert PostgresCluster(Path("/nonexistent"), 1).pid is None


def test_cpu_per_operation_is_cores_over_throughput_and_unknown_stays_unknown():
    """bench_ledger's cpu_us and cpu_ratio: 1.5 cores at 5,000 operations a second is 300 us an
    operation; a part not measured, or a run that did nothing, gives None, not a number."""
    per_op = us_per_operation({"machine": 1.5, "node": 0.7, "postgres": None}, 5_000)
    assert per_op == {"machine": 300.0, "node": 140.0, "postgres": None}
    assert us_per_operation({"machine": 1.5}, 0) == {"machine": None}
    # pgbench: 1.9 cores at 3,800 tps (500 us); the ledger 1.5 at 5,000 (300 us).
    assert cpu_ratio(us_per_operation({"machine": 1.9}, 3_800), per_op) == 1.667
    assert cpu_ratio({"machine": 500.0}, {"machine": None}) is None


def test_histogram_means_add_up_their_sources_and_pick_series_by_label():
    """The benchmarks' breakdowns (loadtests.promstats): a mean over a run is its change in
    _sum over its change in _count, added up over the wanted sources (a node's workers), only
    for the series whose labels match; a series observed nowhere in the run is None."""
    registries = {source: CollectorRegistry() for source in ("0", "1", "other")}
    histograms = {
        source: Histogram("phase_seconds", "a phase", ["phase"], registry=registry)
        for source, registry in registries.items()
    }

    def scrape() -> dict:
        return {source: totals_of(generate_latest(r).decode()) for source, r in registries.items()}

    histograms["0"].labels("write").observe(5.0)  # before the run: not part of its mean
    before = scrape()
    histograms["0"].labels("write").observe(0.001)
    histograms["1"].labels("write").observe(0.003)
    histograms["1"].labels("decide").observe(0.5)
    histograms["other"].labels("write").observe(9.0)
    wanted = {
        "write": (("0", "1"), "phase_seconds", {"phase": "write"}),
        "lock": (("0", "1"), "phase_seconds", {"phase": "lock_and_read"}),
    }
    assert means_ms(before, scrape(), wanted) == {"write": 2.0, "lock": None}
    # A histogram of counts (a batch's size) keeps its own unit.
    assert means(before, scrape(), wanted) == {"write": 0.002, "lock": None}


def test_instructions_per_operation_are_the_difference_over_the_extra_work():
    # What a connection costs once (here 1,000) cancels out between the two runs.
    assert Pair(10, 1_000 + 10 * 7, 30, 1_000 + 30 * 7).per_operation() == 7
    with pytest.raises(ValueError, match="more operations"):
        Pair(10, 100, 10, 100).per_operation()
    header = "version: 1\ncmd: postgres\nevents: Ir\nsummary: 12345\ntotals: 12345\n"
    assert callgrind_totals(header) == 12345
    with pytest.raises(ValueError, match="totals"):
        callgrind_totals("events: Ir\n")


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_the_instruction_benchmark_runs_and_prints_its_figures():
    """A tiny run of bench_instructions end to end (its own PostgreSQL, under callgrind), so the
    benchmark cannot rot."""
    tiny = ["--batches", "2", "--size", "4", "--pgbench-transactions", "5"]
    run = subprocess.run(
        [sys.executable, "-m", "loadtests.bench_instructions", *tiny],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    for name in (
        "ledger_instructions_per_transfer",
        "ledger_hot_instructions_per_transfer",
        "pgbench_instructions_per_transaction",
    ):
        # Instructions are repeatable: about 4e5 a transfer and 6e5 a pgbench transaction here
        # (docs/benchmarks.md); a figure off by two orders of magnitude is a broken harness.
        assert 1e4 < figures[name] < 5e7, figures
    assert 0.01 < figures["instructions_ratio"] < 100, figures
