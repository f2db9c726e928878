"""Load profiles: the traffic mix, player counts and their spread over regions, as YAML files
in ``loadtests/profiles/``, loaded into frozen dataclasses and validated once, every bound
explicit. A capacity planner edits YAML, never the locustfile."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
USER_KINDS = ("game_client", "game_server", "wallet", "p2p")


class ProfileError(ValueError):
    """A profile that cannot be used, with the field and value that are wrong."""


def _range(name: str, value: Any, low: float, high: float) -> tuple[int, int] | tuple:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        or not low <= value[0] <= value[1] <= high
    ):
        raise ProfileError(f"{name} must be [min, max] within [{low}, {high}], got {value!r}")
    return tuple(value)


def _number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ProfileError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class StepShape:
    """Step load: users rise by step_users every step_seconds, steps times (the knee search)."""

    step_users: int
    step_seconds: int
    steps: int


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str
    players: dict[str, int]
    """Players per home region."""
    entry: dict[str, dict[str, float]]
    """For players of each home region, the share of their requests entering through each
    region's gateway (game clients are routed to the nearest gateway, not always the home)."""
    mix: dict[str, float]
    """Relative weights of the user kinds."""
    think_time_s: tuple[float, float]
    funding: int
    """Each player's opening deposit, in minor units."""
    currency: str = "EUR"
    bets_per_win: float = 3.0
    rollback_pct: float = 2.0
    bet_amount: tuple[int, int] = (100, 2_000)
    deposit_amount: tuple[int, int] = (1_000, 50_000)
    withdraw_pct: float = 40.0
    p2p_amount: tuple[int, int] = (100, 5_000)
    cross_region_pct: float = 80.0
    saga_wait_s: float = 30.0
    """How long a p2p user follows a 202 before it counts the transfer as unfinished."""
    shape: StepShape | None = None
    extra: dict = field(default_factory=dict)

    @property
    def regions(self) -> list[str]:
        return sorted(self.players)


def load_profile(name_or_path: str) -> Profile:
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"cannot read profile {path}: {exc}") from exc
    return profile_from_dict(raw, path.stem)


def profile_from_dict(raw: Any, default_name: str) -> Profile:
    if not isinstance(raw, dict):
        raise ProfileError("a profile is a mapping")
    known = {
        "name", "description", "players", "entry", "mix", "think_time_s", "funding", "currency",
        "game_server", "wallet", "p2p", "shape",
    }  # fmt: skip
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ProfileError(f"unknown keys {unknown}")
    players = raw.get("players")
    if not isinstance(players, dict) or not players:
        raise ProfileError("players must map region codes to player counts")
    for region, count in players.items():
        _number(f"players.{region}", count, 1, 1_000_000)
    entry = _entry(raw.get("entry", "home"), sorted(players))
    mix = raw.get("mix", {})
    if not isinstance(mix, dict) or not mix or set(mix) - set(USER_KINDS):
        raise ProfileError(f"mix must weigh some of {USER_KINDS}, got {mix!r}")
    for kind, weight in mix.items():
        _number(f"mix.{kind}", weight, 0, 1_000_000)
    game = raw.get("game_server", {})
    wallet = raw.get("wallet", {})
    p2p = raw.get("p2p", {})
    shape = raw.get("shape")
    if shape is not None:
        shape = StepShape(
            int(_number("shape.step_users", shape.get("step_users"), 1, 100_000)),
            int(_number("shape.step_seconds", shape.get("step_seconds"), 5, 3_600)),
            int(_number("shape.steps", shape.get("steps"), 2, 100)),
        )
    return Profile(
        name=str(raw.get("name", default_name)),
        description=str(raw.get("description", "")),
        players={region: int(count) for region, count in players.items()},
        entry=entry,
        mix={kind: float(weight) for kind, weight in mix.items()},
        think_time_s=_range("think_time_s", raw.get("think_time_s", [0.5, 2.0]), 0, 600),
        funding=int(_number("funding", raw.get("funding", 100_000), 1, 10**12)),
        currency=str(raw.get("currency", "EUR")),
        bets_per_win=_number("game_server.bets_per_win", game.get("bets_per_win", 3), 0.1, 1000),
        rollback_pct=_number("game_server.rollback_pct", game.get("rollback_pct", 2), 0, 100),
        bet_amount=_range("game_server.bet_amount", game.get("bet_amount", [100, 2000]), 1, 1e12),
        deposit_amount=_range(
            "wallet.deposit_amount", wallet.get("deposit_amount", [1000, 50000]), 1, 1e12
        ),
        withdraw_pct=_number("wallet.withdraw_pct", wallet.get("withdraw_pct", 40), 0, 100),
        p2p_amount=_range("p2p.amount", p2p.get("amount", [100, 5000]), 1, 1e12),
        cross_region_pct=_number("p2p.cross_region_pct", p2p.get("cross_region_pct", 80), 0, 100),
        saga_wait_s=_number("p2p.saga_wait_s", p2p.get("saga_wait_s", 30), 1, 600),
        shape=shape,
    )


def _entry(raw: Any, regions: list[str]) -> dict[str, dict[str, float]]:
    if raw == "home":
        return {region: {region: 1.0} for region in regions}
    if raw == "uniform":
        return {region: dict.fromkeys(regions, 1.0) for region in regions}
    if not isinstance(raw, dict) or set(raw) != set(regions):
        raise ProfileError("entry is home, uniform, or a share per entry region for every home")
    entry = {}
    for home, shares in raw.items():
        if not isinstance(shares, dict) or not shares or set(shares) - set(regions):
            raise ProfileError(f"entry.{home} must weigh entry regions among {regions}")
        for region, share in shares.items():
            _number(f"entry.{home}.{region}", share, 0, 1)
        entry[home] = {region: float(share) for region, share in shares.items()}
    return entry


def all_profiles() -> list[Path]:
    return sorted(PROFILES_DIR.glob("*.yaml"))
