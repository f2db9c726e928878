"""Locust scenarios for capacity planners: game clients, game servers, wallets and
player-to-player transfers against regiongate's gateways, shaped by a profile
(``loadtests/profiles/*.yaml``).

Run it with ``regiongate load run --profile NAME`` (which creates and funds the players, runs
Locust headless, writes the reports and audits the ledgers afterwards), or by hand with
``REGIONGATE_LOAD_CONFIG`` pointing at the JSON that command writes (distributed mode: README).

Measured beyond Locust's own statistics (``regiongate_stats.json`` in the results folder):
latency per home region and per entry region, the completion time of cross-region transfers
(until the saga ends, not only until the first answer), and counts of every business outcome.
Expected refusals (insufficient funds, a bet reference already used) are outcomes, not
failures; anything else that is not a success is a failure.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import gevent
from locust import HttpUser, LoadTestShape, between, events, task
from locust.runners import WorkerRunner

from infra.devkeys import DevKeys
from loadtests.profiles import load_profile

CONFIG = json.loads(Path(os.environ["REGIONGATE_LOAD_CONFIG"]).read_text())
PROFILE = load_profile(CONFIG["profile"])
GATEWAYS: dict[str, str] = CONFIG["gateways"]
PLAYERS: dict[str, list[str]] = CONFIG["players"]
OPERATOR = CONFIG["operator"]
KEYS = DevKeys(Path(CONFIG["dev_private_key"]), Path(CONFIG["dev_jwks"]))
TOKEN_LIFETIME_S = 6 * 3600
PROBLEM_PREFIX = "urn:regiongate:problem:"
# Refusals a healthy wallet gives every day: counted as outcomes, never as failures.
BUSINESS_REFUSALS = frozenset(
    {"insufficient-funds", "bet-reference-exists", "bet-rolled-back", "account-frozen"}
)
HOMES = PROFILE.regions
HOME_WEIGHTS = [PROFILE.players[region] for region in HOMES]


class Measurements:
    """Latency histograms per home and entry region, saga completion times and outcome counts,
    kept as mergeable counters so workers can report them to the master."""

    def __init__(self) -> None:
        self.latency: dict[str, Counter] = defaultdict(Counter)
        self.outcomes: Counter = Counter()

    def observe(self, key: str, milliseconds: float) -> None:
        self.latency[key][_bucket(milliseconds)] += 1

    def snapshot_and_reset(self) -> dict:
        data = {
            "latency": {key: dict(counts) for key, counts in self.latency.items()},
            "outcomes": dict(self.outcomes),
        }
        self.latency = defaultdict(Counter)
        self.outcomes = Counter()
        return data

    def merge(self, data: dict) -> None:
        for key, counts in data.get("latency", {}).items():
            for bucket, count in counts.items():
                self.latency[key][int(bucket)] += count
        self.outcomes.update(data.get("outcomes", {}))

    def summary(self) -> dict:
        return {
            "latency_ms": {
                key: _percentiles(counts) for key, counts in sorted(self.latency.items())
            },
            "outcomes": dict(sorted(self.outcomes.items())),
        }


def _bucket(milliseconds: float) -> int:
    """Two significant digits, as Locust rounds its own response times."""
    value = round(milliseconds)
    if value < 100:
        return value
    magnitude = 10 ** (len(str(value)) - 2)
    return int(round(value / magnitude) * magnitude)


def _percentiles(counts: Counter) -> dict:
    total = sum(counts.values())
    ordered = sorted(counts.items())
    result = {"count": total}
    for name, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)):
        running = 0
        for bucket, count in ordered:
            running += count
            if running >= fraction * total:
                result[name] = bucket
                break
    return result


MEASURED = Measurements()


@events.report_to_master.add_listener
def _report(client_id, data, **_kwargs):
    data["regiongate"] = MEASURED.snapshot_and_reset()


@events.worker_report.add_listener
def _collect(client_id, data, **_kwargs):
    MEASURED.merge(data.get("regiongate", {}))


@events.test_stop.add_listener
def _write(environment, **_kwargs):
    if isinstance(environment.runner, WorkerRunner):
        return
    path = Path(CONFIG["results_dir"]) / "regiongate_stats.json"
    path.write_text(json.dumps(MEASURED.summary(), indent=2))


TOTALS_FILE = "locust_totals.json"


@events.quit.add_listener
def _write_totals(**_kwargs):
    """Locust's totals as it prints them at exit. Its stats CSV is written on a timer and not
    again at exit, so it misses what ends during the stop timeout (it said 1,625 requests where
    the printed summary said 1,695): the summary reads this file instead."""
    runner = events_environment.runner if events_environment is not None else None
    if runner is None or isinstance(runner, WorkerRunner):
        return
    total = runner.stats.total
    totals = {
        "requests": total.num_requests,
        "failures": total.num_failures,
        "rps": total.total_rps,
        "p50_ms": total.get_response_time_percentile(0.5),
        "p95_ms": total.get_response_time_percentile(0.95),
        "p99_ms": total.get_response_time_percentile(0.99),
    }
    failures = [
        {"name": error.name, "error": str(error.error), "count": error.occurrences}
        for error in runner.stats.errors.values()
    ]
    path = Path(CONFIG["results_dir"]) / TOTALS_FILE
    path.write_text(json.dumps({"totals": totals, "failures": failures}, indent=2))


events_environment = None


@events.init.add_listener
def _remember_environment(environment, **_kwargs):
    global events_environment
    events_environment = environment


class RegiongateUser(HttpUser):
    abstract = True
    wait_time = between(*PROFILE.think_time_s)
    # Any gateway: every request names its entry gateway's full URL.
    host = next(iter(GATEWAYS.values()))

    def on_start(self) -> None:
        self.client.verify = CONFIG["ca_cert"]
        self.home = random.choices(HOMES, HOME_WEIGHTS)[0]
        self.player = random.choice(PLAYERS[self.home])
        self.token = KEYS.mint(
            f"load-{uuid.uuid4().hex[:12]}", "wallet", lifetime_s=TOKEN_LIFETIME_S,
            accounts=[self.player],
        )  # fmt: skip

    def entry_for(self, home: str) -> str:
        shares = PROFILE.entry[home]
        return random.choices(list(shares), list(shares.values()))[0]

    def call(self, operation, method, path, *, home, token, body=None, keyed=True):
        """One request through the entry gateway chosen for home; its status and JSON body."""
        entry = self.entry_for(home)
        headers = {"Authorization": f"Bearer {token}"}
        if keyed:
            headers["Idempotency-Key"] = uuid.uuid4().hex
        started = time.perf_counter()
        with self.client.request(
            method,
            GATEWAYS[entry] + path,
            json=body,
            headers=headers,
            name=operation,
            catch_response=True,
        ) as response:
            elapsed_ms = (time.perf_counter() - started) * 1000
            try:
                payload = response.json()
            except ValueError:
                payload = None
            slug = ""
            if isinstance(payload, dict) and str(payload.get("type", "")).startswith(
                PROBLEM_PREFIX
            ):
                slug = payload["type"][len(PROBLEM_PREFIX) :]
            if response.status_code < 300:
                response.success()
                MEASURED.outcomes[f"{operation}: ok"] += 1
            elif slug in BUSINESS_REFUSALS:
                response.success()
                MEASURED.outcomes[f"{operation}: {slug}"] += 1
            else:
                response.failure(f"{response.status_code} {slug or 'unexpected'}")
                MEASURED.outcomes[f"{operation}: failed {response.status_code} {slug}"] += 1
            MEASURED.observe(f"home {home}", elapsed_ms)
            MEASURED.observe(f"entry {entry}", elapsed_ms)
            MEASURED.observe(f"home {home} via {entry}", elapsed_ms)
            return response.status_code, payload


def _kind(name: str) -> tuple[int, bool]:
    """A user kind's weight from the profile, and whether it is unused (abstract)."""
    weight = PROFILE.mix.get(name, 0)
    return max(1, round(weight)), weight <= 0


class GameClient(RegiongateUser):
    """A player's client: the balance often, the history now and then."""

    weight, abstract = _kind("game_client")

    @task(4)
    def balance(self) -> None:
        self.call(
            "balance", "GET", f"/v1/accounts/{self.player}/balance", home=self.home,
            token=self.token, keyed=False,
        )  # fmt: skip

    @task(1)
    def history(self) -> None:
        self.call(
            "history", "GET", f"/v1/accounts/{self.player}/transfers?limit=20", home=self.home,
            token=self.token, keyed=False,
        )  # fmt: skip


class GameServer(RegiongateUser):
    """A game server of one operator: bets on its players' rounds, fewer wins, a few rollbacks."""

    weight, abstract = _kind("game_server")

    def on_start(self) -> None:
        super().on_start()
        self.server_token = KEYS.mint(
            f"game-server-{uuid.uuid4().hex[:12]}", "game:server", lifetime_s=TOKEN_LIFETIME_S,
            operator=OPERATOR,
        )  # fmt: skip

    @task
    def round(self) -> None:
        home = random.choices(HOMES, HOME_WEIGHTS)[0]
        player = random.choice(PLAYERS[home])
        round_id = f"round-{uuid.uuid4().hex[:16]}"
        reference = f"bet-{uuid.uuid4().hex[:16]}"
        amount = random.randint(*PROFILE.bet_amount)
        common = {"account_id": player, "currency": PROFILE.currency, "round_id": round_id}
        status, _ = self.call(
            "bet", "POST", "/v1/bets", home=home, token=self.server_token,
            body={**common, "amount": amount, "reference": reference},
        )  # fmt: skip
        if status != 201:
            return
        if random.random() * 100 < PROFILE.rollback_pct:
            self.call(
                "rollback", "POST", "/v1/rollbacks", home=home, token=self.server_token,
                body={"account_id": player, "reference": reference, "round_id": round_id},
            )  # fmt: skip
        elif random.random() < 1 / PROFILE.bets_per_win:
            self.call(
                "win", "POST", "/v1/wins", home=home, token=self.server_token,
                body={**common, "amount": amount * 2, "reference": f"win-{reference}"},
            )  # fmt: skip


class Wallet(RegiongateUser):
    """Deposits (the payment provider's callback, through the back office) and withdrawals."""

    weight, abstract = _kind("wallet")

    def on_start(self) -> None:
        super().on_start()
        self.backoffice = KEYS.mint(
            f"backoffice-{uuid.uuid4().hex[:12]}", "admin", lifetime_s=TOKEN_LIFETIME_S
        )

    @task
    def move(self) -> None:
        clearing = f"{self.home}-clearing-{PROFILE.currency}"
        amount = random.randint(*PROFILE.deposit_amount)
        if random.random() * 100 < PROFILE.withdraw_pct:
            operation, token, debit, credit = "withdraw", self.token, self.player, clearing
        else:
            operation, token, debit, credit = "deposit", self.backoffice, clearing, self.player
        self.call(
            operation, "POST", "/v1/transfers", home=self.home, token=token,
            body={"debit_account_id": debit, "credit_account_id": credit, "amount": amount,
                  "currency": PROFILE.currency},
        )  # fmt: skip


class PlayerToPlayer(RegiongateUser):
    """Transfers to other players, most across regions; a 202 is followed until the saga ends."""

    weight, abstract = _kind("p2p")

    @task
    def transfer(self) -> None:
        others = [r for r in HOMES if r != self.home]
        cross = bool(others) and random.random() * 100 < PROFILE.cross_region_pct
        payee_home = random.choice(others) if cross else self.home
        payee = random.choice([p for p in PLAYERS[payee_home] if p != self.player])
        operation = "p2p cross-region" if cross else "p2p same region"
        started = time.perf_counter()
        status, payload = self.call(
            operation, "POST", "/v1/transfers", home=self.home, token=self.token,
            body={"debit_account_id": self.player, "credit_account_id": payee,
                  "amount": random.randint(*PROFILE.p2p_amount), "currency": PROFILE.currency},
        )  # fmt: skip
        if not cross or status not in (201, 202, 422):
            return
        final = (payload or {}).get("status") or (payload or {}).get("transfer", {}).get("status")
        deadline = started + PROFILE.saga_wait_s
        while status == 202 and final == "pending" and time.perf_counter() < deadline:
            gevent.sleep(0.2)
            status, shown = self.call(
                "p2p status", "GET", f"/v1/transfers/{payload['id']}", home=self.home,
                token=self.token, keyed=False,
            )  # fmt: skip
            final = (shown or {}).get("status", final)
        if final in ("completed", "compensated"):
            MEASURED.observe("saga completion", (time.perf_counter() - started) * 1000)
            MEASURED.outcomes[f"saga: {final}"] += 1
        elif final == "pending":
            MEASURED.outcomes["saga: still running at saga_wait_s"] += 1


if PROFILE.shape is not None:

    class StepLoad(LoadTestShape):
        """Users rise by step_users every step_seconds; the run ends after the last step."""

        step = PROFILE.shape

        def tick(self):
            run_time = self.get_run_time()
            index = int(run_time // self.step.step_seconds)
            if index >= self.step.steps:
                return None
            users = (index + 1) * self.step.step_users
            return users, max(1, self.step.step_users)
