"""A service's worker processes are supervised (docs/decisions/0003): a ledger node of two
workers, one of them killed with SIGKILL, gets a new worker in its slot, says so in its log,
exports the slot's restart count, and keeps serving; a service whose workers keep dying stops
after a bounded number of restarts and exits 1, for its own supervisor to act."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from infra.services import free_port
from runtime.serving import WORKER_RESTARTS_MAX
from tests.support import assert_eventually, ledger_process


def children(pid: int) -> set[int]:
    """The worker processes of a service (not multiprocessing's resource tracker)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"spawn_main" in command:
                found.add(int(child))
    return found


async def test_a_killed_worker_is_replaced_and_counted(tmp_path, fresh_dsn):
    metrics_port = free_port()
    ledger = ledger_process(tmp_path, fresh_dsn, extra={"workers": 2, "metrics_port": metrics_port})
    ledger.start()
    try:

        async def two_workers() -> bool:
            return len(children(ledger.process.pid)) == 2

        await assert_eventually(two_workers, timeout_s=30)
        before = children(ledger.process.pid)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)

        async def replaced() -> bool:
            now = children(ledger.process.pid)
            return len(now) == 2 and victim not in now

        await assert_eventually(replaced, timeout_s=30)
        log = (tmp_path / "ledger.log").read_text()
        assert f"(pid {victim}) exited with -9; starting another in its place" in log

        def restarts() -> float:
            total = 0.0
            for slot in (0, 1):
                url = f"http://127.0.0.1:{metrics_port + slot}/metrics"
                with urllib.request.urlopen(url, timeout=5) as response:
                    for line in response.read().decode().splitlines():
                        if line.startswith("regiongate_worker_restarts_total "):
                            total += float(line.split()[1])
            return total

        async def counted() -> bool:
            try:
                return restarts() == 1.0
            except OSError:
                return False  # the new worker's metrics port is not up yet

        await assert_eventually(counted, timeout_s=30)
        with urllib.request.urlopen(f"{ledger.url}/health/ready", timeout=5) as response:  # noqa: S310
            assert response.status == 200
        assert ledger.alive()
    finally:
        ledger.stop()


def die_at_once(reuse_port: bool, worker_index: int) -> None:
    """A worker that exits as soon as it starts (for the bound test)."""
    sys.exit(3)


def test_workers_that_keep_dying_stop_the_service():
    started = time.monotonic()
    answer = subprocess.run(
        [
            sys.executable,
            "-c",
            "import logging, sys; logging.basicConfig(stream=sys.stderr); "
            "from runtime.serving import run_workers; "
            "from tests.test_workers import die_at_once; run_workers(die_at_once, (), 2)",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert answer.returncode == 1, answer.stderr
    assert answer.stderr.count("starting another in its place") == WORKER_RESTARTS_MAX
    assert "stopping the service so that its supervisor restarts it" in answer.stderr
    assert time.monotonic() - started < 60
