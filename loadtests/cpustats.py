"""Where a benchmark run's CPU went: cores used by each part and by the whole machine.

A ratio against pgbench says how fast the ledger is next to PostgreSQL alone, but not why it
moves from one day to the next on the same code: pgbench can take both cores while the ledger's
batch chain (lock and read, decide, write and commit, one after another) leaves some idle, so a
slower or busier CPU moves the two differently. Each run therefore also reports the cores its
parts used (for example ``{"machine": 1.41, "node": 0.7, "postgres": 0.53, "client": 0.15}``):
a run near 2.0 on a 2-core machine is CPU-bound, one well under it waits on its own chain.

Read from Linux's /proc: a process tree's time is the sum over its live processes of their own
and their reaped children's CPU time (``utime + stime + cutime + cstime``), so a PostgreSQL
backend that exits within the run (pgbench's) is still counted, by its postmaster. Elsewhere
(no /proc) every figure is None.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

PROC = Path("/proc")
_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after its closing one.
    return text.rpartition(")")[2].split()


def _processes() -> tuple[dict[int, list[int]], dict[int, int]]:
    """Every process's children, and its CPU ticks with those of its reaped children."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:  # it ended meanwhile
            continue
        # After the name: state, ppid, ..., utime (12th), stime, cutime, cstime.
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        ticks[int(entry.name)] = sum(int(value) for value in fields[11:15])
    return children, ticks


def _tree_ticks(root: int, processes: tuple[dict[int, list[int]], dict[int, int]]) -> int | None:
    """CPU ticks of root and its live descendants, with every reaped child's included. The
    processes with children are read again after the rest, so a child reaped meanwhile is
    counted twice at worst (as itself, then in its parent's cutime), never lost."""
    children, ticks = processes
    if root not in ticks:
        return None
    members, stack = [], [root]
    while stack:
        pid = stack.pop()
        members.append(pid)
        stack.extend(children.get(pid, ()))
    total = 0
    for pid in reversed(members):  # parents after their children
        fields = _stat_fields(pid) if pid in children else None
        total += sum(int(value) for value in fields[11:15]) if fields else ticks[pid]
    return total


def tree_cpu_s(root: int | None) -> float | None:
    """CPU seconds so far of the process tree under root (None if there is no such process)."""
    ticks = None if root is None else _tree_ticks(root, _processes())
    return None if ticks is None else ticks / _TICKS_PER_S


def _machine_busy_ticks() -> int | None:
    try:
        values = [int(v) for v in (PROC / "stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    return sum(values) - values[3] - values[4]  # all but idle and iowait


def _own_ticks(children: bool) -> int:
    """This process's CPU ticks, or with children those of the children it has reaped (a
    pgbench run by subprocess.run, once it has ended)."""
    times = os.times()
    if children:
        return round((times.children_user + times.children_system) * _TICKS_PER_S)
    return round((times.user + times.system) * _TICKS_PER_S)


class CpuMeter:
    """Cores used between start() and stop(), by the machine, by the client (this process, or
    with client_is_child the children it reaped meanwhile), and by each named process tree. A
    tree is given by a function returning its root's pid (or None); a tree whose root is not the
    same process at both ends (it restarted) reads as None, as does one that is gone."""

    def __init__(
        self, trees: Mapping[str, Callable[[], int | None]], *, client_is_child: bool = False
    ) -> None:
        self._trees = dict(trees)
        self._client_is_child = client_is_child
        self._start: dict[str, tuple[int | None, int | None]] = {}
        self._started_at = 0.0
        self.elapsed_s = 0.0

    def _read(self) -> dict[str, tuple[int | None, int | None]]:
        """Per part, (the root's pid, or None for the machine and the client; its ticks)."""
        readings: dict[str, tuple[int | None, int | None]] = {
            "machine": (None, _machine_busy_ticks()),
            "client": (None, _own_ticks(self._client_is_child)),
        }
        processes = _processes() if self._trees else ({}, {})
        for name, root in self._trees.items():
            pid = root()
            readings[name] = (pid, None if pid is None else _tree_ticks(pid, processes))
        return readings

    def start(self) -> None:
        self._start = self._read()
        self._started_at = time.monotonic()

    def stop(self) -> dict[str, float | None]:
        elapsed_s = self.elapsed_s = time.monotonic() - self._started_at
        end = self._read()
        cores: dict[str, float | None] = {}
        for name, (pid, before) in self._start.items():
            end_pid, after = end.get(name, (None, None))
            if before is None or after is None or end_pid != pid or elapsed_s <= 0:
                cores[name] = None
            else:
                cores[name] = round(max(0, after - before) / _TICKS_PER_S / elapsed_s, 2)
        return cores


def us_per_operation(
    cores: Mapping[str, float | None], per_second: float
) -> dict[str, float | None]:
    """CPU microseconds each part spent per operation: its cores over the throughput. Unlike the
    throughput, this does not depend on how many of the machine's cores a run kept busy, so set
    beside pgbench's it says whether the ledger costs more per operation or only leaves cores
    idle (a figure is None where its cores are, or where nothing was done)."""
    return {
        name: None if used is None or per_second <= 0 else round(used * 1e6 / per_second, 1)
        for name, used in cores.items()
    }
