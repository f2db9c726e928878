"""``regiongate load size``: from measured capacity to how many ledger nodes and gateway
workers a region needs for a peak, at a p99 target, with headroom.

Capacity comes from what was measured, never assumed:

- a step-load Locust run (``profiles/step_knee.yaml``): for each step, throughput and p99 from
  ``locust_stats_history.csv``; the capacity at the target is the highest throughput of a step
  whose p99 met it. The local cluster runs one ledger node and one gateway worker per region,
  all on one machine, so per-node figures from it are a floor for a dedicated node;
- the benchmarks' last JSON lines: ``bench_ledger`` (transfers per second of one ledger node,
  with its p99), ``bench_gateway`` (requests per second of one gateway worker) and
  ``bench_saga`` (cross-region transfers per second).

Demand per operation: a bet, win, rollback, deposit, withdrawal or same-region transfer is one
ledger operation in its home region and one gateway request; a cross-region transfer is two
ledger operations at the source (hold, post), one at the destination, and one gateway request.

The step-load plot (``knee.png``) shows p50 and p99 latency and throughput against offered load
(users), with the knee marked: where throughput stops following the offered load (``knee``),
past which more load buys latency, not throughput.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

LEDGER_OPS_PER = {
    "bets": 1, "wins": 1, "rollbacks": 1, "deposits": 1, "withdrawals": 1, "transfers": 1,
    "cross_transfers": 2, "reads": 0,
}  # fmt: skip
GATEWAY_REQUESTS_PER = dict.fromkeys(LEDGER_OPS_PER, 1)
WRITE_OPERATIONS = frozenset(
    {"bet", "win", "rollback", "deposit", "withdraw", "p2p same region", "p2p cross-region"}
)
HA_MINIMUM = 2  # one per zone, at least two zones


@dataclass(frozen=True, slots=True)
class Step:
    users: int
    rps: float
    write_rps: float
    p50_ms: float
    p99_ms: float


def read_steps(results_dir: Path) -> list[Step]:
    """Throughput and latency per user count from Locust's full stats history."""
    history = results_dir / "locust_stats_history.csv"
    if not history.exists():
        return []
    aggregate: dict[int, list[dict]] = defaultdict(list)
    writes: dict[tuple[int, str], list[float]] = defaultdict(list)
    with history.open() as handle:
        for row in csv.DictReader(handle):
            users = int(row["User Count"] or 0)
            if users == 0:
                continue
            if row["Name"] == "Aggregated":
                aggregate[users].append(row)
            elif row["Name"] in WRITE_OPERATIONS:
                writes[(users, row["Timestamp"])].append(float(row["Requests/s"] or 0))
    steps = []
    for users, rows in sorted(aggregate.items()):
        # The first rows of a step still carry the previous step's window: use the later half.
        settled = rows[len(rows) // 2 :] or rows
        rps = sum(float(r["Requests/s"] or 0) for r in settled) / len(settled)
        write_samples = [sum(writes[(users, r["Timestamp"])]) for r in settled]
        p50 = _median([_number(r["50%"]) for r in settled])
        p99 = _median([_number(r["99%"]) for r in settled])
        steps.append(Step(users, rps, sum(write_samples) / len(write_samples), p50, p99))
    return steps


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return 0.0


def _median(values: list[float]) -> float:
    ordered = sorted(v for v in values if v > 0)
    return ordered[len(ordered) // 2] if ordered else 0.0


KNEE_MIN_BEND = 0.05


def knee(steps: list[Step]) -> Step | None:
    """Where throughput stops following offered load (Kneedle, Satopaa et al. 2011): with
    users and throughput both scaled to [0, 1], the step farthest above the straight line from
    the first step to the last. A curve that bends less than KNEE_MIN_BEND never saturated:
    None, the knee lies beyond the last step."""
    usable = [s for s in steps if s.rps > 0]
    if len(usable) < 3:
        return None
    first, last = usable[0], usable[-1]
    span_users = last.users - first.users
    span_rps = max(s.rps for s in usable) - min(s.rps for s in usable)
    if span_users <= 0 or span_rps <= 0:
        return None
    bends = [
        ((s.rps - first.rps) / span_rps - (s.users - first.users) / span_users, s) for s in usable
    ]
    bend, step = max(bends, key=lambda pair: pair[0])
    return step if bend >= KNEE_MIN_BEND else None


def plot_step_load(results_dir: Path) -> dict | None:
    """knee.png in results_dir; the knee's figures, or None without a step history."""
    steps = read_steps(results_dir)
    if len(steps) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = knee(steps)
    users = [s.users for s in steps]
    figure, latency_axis = plt.subplots(figsize=(9, 5))
    latency_axis.plot(users, [s.p50_ms for s in steps], "o-", label="p50 latency (ms)")
    latency_axis.plot(users, [s.p99_ms for s in steps], "s-", label="p99 latency (ms)")
    latency_axis.set_xlabel("offered load (concurrent users)")
    latency_axis.set_ylabel("latency (ms)")
    throughput_axis = latency_axis.twinx()
    throughput_axis.plot(users, [s.rps for s in steps], "^--", color="tab:green", label="req/s")
    throughput_axis.set_ylabel("throughput (requests/s)")
    if best is not None:
        latency_axis.axvline(best.users, color="tab:red", linestyle=":", label="knee")
        latency_axis.annotate(
            f"knee: {best.users} users\n{best.rps:.0f} req/s, p99 {best.p99_ms:.0f} ms",
            xy=(best.users, best.p99_ms),
            xytext=(10, 20),
            textcoords="offset points",
            color="tab:red",
        )
    lines = latency_axis.get_lines() + throughput_axis.get_lines()
    latency_axis.legend(lines, [line.get_label() for line in lines], loc="upper left")
    title = "regiongate: latency and throughput against offered load"
    if best is None:
        title += "\n(no knee yet: throughput still follows load at the last step)"
    latency_axis.set_title(title)
    figure.tight_layout()
    figure.savefig(results_dir / "knee.png", dpi=110)
    plt.close(figure)
    if best is None:
        return {"reached": False, "last_users": steps[-1].users, "last_rps": steps[-1].rps}
    return {"reached": True, "users": best.users, "rps": best.rps, "p99_ms": best.p99_ms}


def last_json_line(path: Path) -> dict:
    for line in reversed(path.read_text().splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            return json.loads(line)
    raise ValueError(f"{path} has no JSON line (a benchmark's output ends with one)")


@dataclass
class Capacity:
    ledger_ops_per_node: float | None = None
    ledger_source: str = ""
    gateway_requests_per_worker: float | None = None
    gateway_source: str = ""


def measure_capacity(results: list[Path], benches: list[Path], p99_ms: float) -> Capacity:
    capacity = Capacity()
    for results_dir in results:
        steps = read_steps(results_dir)
        state = _cluster_size(results_dir)
        meeting = [s for s in steps if 0 < s.p99_ms <= p99_ms]
        if meeting:
            best = max(meeting, key=lambda s: s.rps)
            per_node = best.write_rps / state["ledger_nodes"]
            per_worker = best.rps / state["gateway_workers"]
            capacity.ledger_ops_per_node = per_node
            capacity.ledger_source = (
                f"step load {results_dir.name}: {best.write_rps:.0f} writes/s over "
                f"{state['ledger_nodes']} ledger nodes at p99 {best.p99_ms:.0f} ms"
            )
            capacity.gateway_requests_per_worker = per_worker
            capacity.gateway_source = (
                f"step load {results_dir.name}: {best.rps:.0f} req/s over "
                f"{state['gateway_workers']} gateway workers at p99 {best.p99_ms:.0f} ms"
            )
    for path in benches:
        figures = last_json_line(path)
        if "ledger_tps" in figures and figures.get("p99_ms", math.inf) <= p99_ms:
            if (capacity.ledger_ops_per_node or 0) < figures["ledger_tps"]:
                capacity.ledger_ops_per_node = figures["ledger_tps"]
                capacity.ledger_source = (
                    f"bench_ledger: {figures['ledger_tps']:.0f} transfers/s, p99 "
                    f"{figures['p99_ms']} ms ({path.name})"
                )
        if "gateway_rps" in figures:
            gateway_p99 = figures.get("direct_p99_ms", 0) + figures.get("added_p99_ms", 0)
            if (
                gateway_p99 <= p99_ms
                and (capacity.gateway_requests_per_worker or 0) < figures["gateway_rps"]
            ):
                capacity.gateway_requests_per_worker = figures["gateway_rps"]
                capacity.gateway_source = (
                    f"bench_gateway: {figures['gateway_rps']:.0f} req/s ({path.name})"
                )
    return capacity


def _cluster_size(results_dir: Path) -> dict:
    config_file = results_dir / "load.json"
    regions = 1
    if config_file.exists():
        regions = max(1, len(json.loads(config_file.read_text()).get("gateways", {})))
    return {"ledger_nodes": regions, "gateway_workers": regions}


def parse_peak(text: str) -> tuple[str, str, float]:
    """'eu:bets=20000' -> ('eu', 'bets', 20000.0)."""
    region, _, rest = text.partition(":")
    operation, _, rate = rest.partition("=")
    if not region or operation not in LEDGER_OPS_PER or not rate:
        raise ValueError(
            f"a peak is REGION:OPERATION=RATE with OPERATION one of {sorted(LEDGER_OPS_PER)}, "
            f"got {text!r}"
        )
    return region, operation, float(rate)


def size(
    peaks: list[tuple[str, str, float]], capacity: Capacity, p99_ms: float, headroom: float
) -> dict:
    """Ledger nodes and gateway workers per region for the peaks, keeping headroom free."""
    if not 0 <= headroom < 1:
        raise ValueError(f"headroom is a fraction in [0, 1), got {headroom}")
    demand: dict[str, dict[str, float]] = defaultdict(lambda: {"ledger": 0.0, "gateway": 0.0})
    for region, operation, rate in peaks:
        demand[region]["ledger"] += rate * LEDGER_OPS_PER[operation]
        demand[region]["gateway"] += rate * GATEWAY_REQUESTS_PER[operation]
    plan = {}
    for region, need in sorted(demand.items()):
        row = {"ledger_ops_per_s": need["ledger"], "gateway_requests_per_s": need["gateway"]}
        if capacity.ledger_ops_per_node:
            usable = capacity.ledger_ops_per_node * (1 - headroom)
            row["ledger_nodes"] = max(HA_MINIMUM, math.ceil(need["ledger"] / usable))
        if capacity.gateway_requests_per_worker:
            usable = capacity.gateway_requests_per_worker * (1 - headroom)
            row["gateway_workers"] = max(HA_MINIMUM, math.ceil(need["gateway"] / usable))
        plan[region] = row
    return {
        "p99_target_ms": p99_ms,
        "headroom": headroom,
        "capacity": {
            "ledger_ops_per_node": capacity.ledger_ops_per_node,
            "ledger_source": capacity.ledger_source,
            "gateway_requests_per_worker": capacity.gateway_requests_per_worker,
            "gateway_source": capacity.gateway_source,
        },
        "regions": plan,
    }


def render(plan: dict) -> str:
    capacity = plan["capacity"]
    lines = [
        f"target p99 <= {plan['p99_target_ms']} ms, headroom {plan['headroom']:.0%}",
        f"  one ledger node:    {_figure(capacity['ledger_ops_per_node'])} ledger ops/s"
        f"  ({capacity['ledger_source'] or 'no measurement meets the target'})",
        f"  one gateway worker: {_figure(capacity['gateway_requests_per_worker'])} requests/s"
        f"  ({capacity['gateway_source'] or 'no measurement meets the target'})",
    ]
    for region, row in plan["regions"].items():
        lines.append(
            f"  {region}: peak {row['ledger_ops_per_s']:,.0f} ledger ops/s and "
            f"{row['gateway_requests_per_s']:,.0f} requests/s -> "
            f"{row.get('ledger_nodes', '?')} ledger nodes, "
            f"{row.get('gateway_workers', '?')} gateway workers"
        )
    return "\n".join(lines)


def _figure(value: float | None) -> str:
    return "unknown" if value is None else f"{value:,.0f}"
