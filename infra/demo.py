"""``regiongate local demo``: a short scripted scenario through different regions' gateways of
the running local cluster: accounts in two regions, deposits, a bet and a win for an eu player
placed through the us and ap gateways, a rollback, a rollback that arrives before its bet, a
transfer between players of two regions (a saga), the same balance read from every gateway,
players and usernames (a creation, a lookup from a third region, a look-alike name, a rename and
its held name), and the audit across regions. It prints each step and what happened."""

from __future__ import annotations

import uuid
from pathlib import Path

import aiohttp

from infra.devkeys import DevKeys
from infra.local import read_state
from runtime.tls import client_context


class Demo:
    def __init__(self, root: Path) -> None:
        state = read_state(root)
        self.gateways: dict[str, str] = state["gateways"]
        self.dsns: dict[str, str] = state.get("ledger_dsns", {})
        self.ssl = client_context(Path(state["ca_cert"]))
        keys = DevKeys(Path(state["dev_private_key"]), Path(state["dev_jwks"]))
        self.admin = keys.mint("demo-backoffice", "admin")
        self.game = keys.mint("demo-game-server", "game:server", operator="demo-operator")
        self.run_id = uuid.uuid4().hex[:8]
        self.step = 0

    async def call(self, session, region, method, path, token, body=None, note=""):
        self.step += 1
        headers = {
            "Authorization": f"Bearer {token}",
            "Idempotency-Key": f"demo-{self.run_id}-{self.step}",
        }
        async with session.request(
            method, self.gateways[region] + path, json=body, headers=headers, ssl=self.ssl
        ) as response:
            payload = await response.json(content_type=None)
        summary = (
            payload.get("type", "").rsplit(":", 1)[-1]
            if response.status >= 400
            else (payload.get("id") or payload.get("outcome") or payload.get("posted", ""))
        )
        print(
            f"{self.step:>2}. via {region} gateway  {method:4} {path:42} -> {response.status} "
            f"{summary}  {note}"
        )
        return payload

    async def run(self) -> None:
        # Long: a script of numbered steps, read top to bottom as it prints them.
        regions = list(self.gateways)
        home, other = regions[0], regions[1 % len(regions)]
        third = regions[2 % len(regions)]
        async with aiohttp.ClientSession() as session:
            alice = (
                await self.call(
                    session,
                    home,
                    "POST",
                    "/v1/accounts",
                    self.admin,
                    {"currency": "EUR", "region": home, "operator": "demo-operator"},
                    f"player alice, home {home}",
                )
            )["id"]
            bob = (
                await self.call(
                    session,
                    other,
                    "POST",
                    "/v1/accounts",
                    self.admin,
                    {"currency": "EUR", "region": other, "operator": "demo-operator"},
                    f"player bob, home {other}",
                )
            )["id"]
            for account, region in ((alice, home), (bob, other)):
                await self.call(
                    session,
                    region,
                    "POST",
                    "/v1/transfers",
                    self.admin,
                    {
                        "debit_account_id": f"{region}-clearing-EUR",
                        "credit_account_id": account,
                        "amount": 10_000,
                        "currency": "EUR",
                    },
                    "deposit 100.00 EUR",
                )
            round_id = f"round-{self.run_id}"
            await self.call(
                session,
                other,
                "POST",
                "/v1/bets",
                self.game,
                {
                    "account_id": alice,
                    "amount": 1_500,
                    "currency": "EUR",
                    "reference": f"bet-1-{self.run_id}",
                    "round_id": round_id,
                },
                f"bet 15.00 for alice through the {other} gateway",
            )
            await self.call(
                session,
                third,
                "POST",
                "/v1/wins",
                self.game,
                {
                    "account_id": alice,
                    "amount": 4_000,
                    "currency": "EUR",
                    "reference": f"win-1-{self.run_id}",
                    "round_id": round_id,
                },
                f"win 40.00 for alice through the {third} gateway",
            )
            await self.call(
                session,
                home,
                "POST",
                "/v1/bets",
                self.game,
                {
                    "account_id": bob,
                    "amount": 700,
                    "currency": "EUR",
                    "reference": f"bet-2-{self.run_id}",
                },
                "bet 7.00 for bob",
            )
            await self.call(
                session,
                third,
                "POST",
                "/v1/rollbacks",
                self.game,
                {"account_id": bob, "reference": f"bet-2-{self.run_id}"},
                "bob's bet rolled back",
            )
            await self.call(
                session,
                home,
                "POST",
                "/v1/rollbacks",
                self.game,
                {"account_id": alice, "reference": f"bet-3-{self.run_id}"},
                "a rollback before its bet: tombstone",
            )
            await self.call(
                session,
                home,
                "POST",
                "/v1/bets",
                self.game,
                {
                    "account_id": alice,
                    "amount": 100,
                    "currency": "EUR",
                    "reference": f"bet-3-{self.run_id}",
                },
                "the late bet is refused",
            )
            await self.call(
                session,
                home,
                "POST",
                "/v1/transfers",
                self.admin,
                {
                    "debit_account_id": alice,
                    "credit_account_id": bob,
                    "amount": 2_500,
                    "currency": "EUR",
                    "reference": "p2p",
                },
                f"alice pays bob 25.00 across regions: a saga {home} -> {other}",
            )
            for region in regions:
                await self.call(
                    session,
                    region,
                    "GET",
                    f"/v1/accounts/{alice}/balance",
                    self.admin,
                    note="alice: 100.00 - 15.00 + 40.00 - 25.00 = 100.00",
                )
            await self.call(
                session,
                other,
                "GET",
                f"/v1/accounts/{bob}/balance",
                self.admin,
                note="bob: 100.00, the bet rolled back, + 25.00 from alice = 125.00",
            )
            await self.players(session, home, other, third)
        await self.audit()

    async def players(self, session, home: str, other: str, third: str) -> None:
        """Players and usernames: one created through another region's gateway, found from a
        third, a look-alike name that gets a generated one, a rename and the held name."""
        name = f"Carol{self.run_id[:6]}"
        carol = await self.call(
            session,
            other,
            "POST",
            "/v1/players",
            self.admin,
            {"username": name, "currencies": ["EUR"], "region": home},
            f"a player homed in {home}, with a username and an EUR wallet",
        )
        await self.call(
            session, third, "GET", f"/v1/usernames/{name.upper()}", self.admin,
            note="found by its name (any case) from a third region",
        )  # fmt: skip
        look_alike = await self.call(
            session,
            home,
            "POST",
            "/v1/players",
            self.admin,
            {"username": name.replace("o", "0"), "region": other},
            "a look-alike name (0 for o): taken, so a generated one",
        )
        print(
            f"      -> {look_alike.get('username')!r}, username_refusal "
            f"{look_alike.get('username_refusal')!r}"
        )
        await self.call(
            session,
            third,
            "PUT",
            f"/v1/players/{carol['id']}/username",
            self.admin,
            {"username": f"carolyn{self.run_id[:6]}"},
            "a rename: the old name is held for carol",
        )
        async with session.get(
            self.gateways[home] + f"/v1/usernames/{name}",
            headers={"Authorization": f"Bearer {self.admin}"},
            ssl=self.ssl,
            allow_redirects=False,
        ) as response:
            self.step += 1
            print(
                f"{self.step:>2}. via {home} gateway  GET  /v1/usernames/{name:33} -> "
                f"{response.status} {response.headers.get('Location')}  the old name redirects"
            )

    async def audit(self) -> None:
        from ledger_node.global_audit import audit_regions

        results = await audit_regions(self.dsns)
        failed = [result.name for result in results if not result.ok]
        print(
            f"audit across {', '.join(sorted(self.dsns))}: {len(results) - len(failed)} checks "
            f"passed" + (f", FAILED: {failed}" if failed else "")
        )
