"""The public routes of players and usernames: creation, reads, renames, lookups by username and
availability checks, each routed to the region that decides it (docs/api.md, "Players and
usernames"): a creation to the player's home; a read or a rename to the home, found through the
owner of the id's slot (and then remembered); a username to the owner of its skeleton's slot.

Who may do what:
- the back office (``admin``) creates, reads and renames any player;
- a game server (``game:server``) creates players for its own operator, and reads and renames
  them;
- a player reads its own full record and renames itself (its token's ``player`` claim);
- any authenticated caller reads a player's public profile (id, username, display name) and
  looks names up, within the lookup rate limit: that is an enumeration surface.
"""

from __future__ import annotations

import urllib.parse

import msgspec
from aiohttp import web

from gateway.auth import Principal, Scope
from gateway.context import GATEWAY, creation_region, ledger_key, pass_through, principal_of
from gateway.errors import Forbidden
from identity.usernames import Username, UsernameRefused, UsernameRule, check
from wire.ids import PLAYER_ID_PATTERN, identity_slot
from wire.problems import JSON_CONTENT_TYPE, ProblemError, encode
from wire.results import (
    IDENTITY_UNAVAILABLE,
    PLAYER_NOT_FOUND,
    USERNAME_INVALID,
    USERNAME_NOT_FOUND,
    USERNAME_RESERVED,
)
from wire.schemas import DECODERS, PlayerIn, UsernameIn, decode

PUBLIC_FIELDS = ("id", "username", "display_name")


def _json(body: dict, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(
        status=status, body=encode(body), content_type=JSON_CONTENT_TYPE, headers=headers
    )


def _refusal(exc: UsernameRefused) -> ProblemError:
    problem = USERNAME_RESERVED if exc.rule is UsernameRule.RESERVED else USERNAME_INVALID
    return ProblemError(problem, exc.detail, rule=exc.rule.value)


def _check(request: web.Request, raw: str) -> Username:
    try:
        return check(raw, request.app[GATEWAY].config.usernames)
    except UsernameRefused as exc:
        raise _refusal(exc) from exc


def _player_id(request: web.Request) -> str:
    player_id = request.match_info["player_id"]
    if not PLAYER_ID_PATTERN.match(player_id):
        raise ProblemError(PLAYER_NOT_FOUND)
    return player_id


def _owner(request: web.Request, key: str) -> str:
    owner = request.app[GATEWAY].directory.snapshot().slot_owner(identity_slot(key))
    if owner is None:
        raise ProblemError(IDENTITY_UNAVAILABLE, "the directory assigns no identity slots")
    return owner


def _sees_everything(principal: Principal, player: dict) -> bool:
    return (
        Scope.ADMIN in principal.scopes
        or (principal.player is not None and principal.player == player["id"])
        or (
            Scope.GAME_SERVER in principal.scopes
            and principal.operator is not None
            and principal.operator == player.get("operator")
        )
    )


def _shown(principal: Principal, player: dict) -> dict:
    """The full record for those who may see it; the public profile for everyone else."""
    if _sees_everything(principal, player):
        return player
    return {name: player[name] for name in PUBLIC_FIELDS}


async def _fetch_player(request: web.Request, player_id: str, home: str | None = None) -> dict:
    gateway = request.app[GATEWAY]
    home = home or await gateway.home_of_player(player_id)
    response = await gateway.router.call_in_region(home, "GET", f"/v1/identity/players/{player_id}")
    if response.status != 200:
        raise ProblemError(PLAYER_NOT_FOUND)
    return response.json()


async def create_player(request: web.Request) -> web.Response:
    """The home region comes from the request (``region``), else the client's ``home_region``,
    else the directory's ``default_region``, as for accounts (docs/decisions/0001)."""
    gateway = request.app[GATEWAY]
    principal = principal_of(request)
    if not {Scope.ADMIN, Scope.GAME_SERVER} & principal.scopes:
        raise Forbidden("creating players needs the admin or game:server scope")
    await gateway.limiter.check(principal.client_id)
    key = ledger_key(request, principal)
    body: PlayerIn = decode(DECODERS[PlayerIn], await request.read())
    operator = body.operator
    if Scope.ADMIN not in principal.scopes:
        if operator is not None and operator != principal.operator:
            raise Forbidden("a game server creates players for its own operator only")
        operator = principal.operator
    if body.username_required:
        _check(request, body.username or "")  # refused here, before any hop
    region = creation_region(gateway, principal, body.region, "player")
    forwarded = msgspec.structs.replace(body, operator=operator, region=None)
    response = await gateway.router.call_in_region(
        region,
        "POST",
        "/v1/identity/players",
        msgspec.to_builtins(forwarded),
        idempotency_key=key,
    )
    if response.status in (201, 202):
        # The entry gateway knows the new player's home at once; other gateways ask the owner
        # of its id's slot, which records it right after the name is confirmed.
        gateway.remember_home(response.json()["id"], region)
    return pass_through(response)


async def read_player(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    principal = principal_of(request)
    await gateway.limiter.check(principal.client_id)
    player = await _fetch_player(request, _player_id(request))
    return _json(_shown(principal, player))


async def rename(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    principal = principal_of(request)
    await gateway.limiter.check(principal.client_id)
    player_id = _player_id(request)
    key = ledger_key(request, principal)
    body: UsernameIn = decode(DECODERS[UsernameIn], await request.read())
    _check(request, body.username)
    home = await gateway.home_of_player(player_id)
    if not (Scope.ADMIN in principal.scopes or principal.player == player_id):
        player = await _fetch_player(request, player_id, home)
        if not _sees_everything(principal, player):
            raise Forbidden("only the player, its operator's servers or the back office")
    response = await gateway.router.call_in_region(
        home,
        "POST",
        f"/v1/identity/players/{player_id}/username",
        {"username": body.username},
        idempotency_key=key,
    )
    return pass_through(response)


async def _claim(request: web.Request, name: Username, raw: str) -> dict | None:
    gateway = request.app[GATEWAY]
    query = urllib.parse.urlencode({"username": raw})
    response = await gateway.router.call_in_region(
        _owner(request, name.skeleton), "GET", f"/v1/identity/claims?{query}"
    )
    if response.status == 404:
        return None
    if response.status != 200:
        raise ProblemError(
            IDENTITY_UNAVAILABLE, f"the name's owner answered {response.status}", retry_after_s=1
        )
    return response.json()


async def _from_view(request: web.Request, raw: str) -> dict | None:
    """The public profile this region's view has for the name, or None (then ask its owner)."""
    gateway = request.app[GATEWAY]
    query = urllib.parse.urlencode({"username": raw})
    response = await gateway.router.call_in_region(
        gateway.config.region, "GET", f"/v1/identity/views?{query}"
    )
    if response.status != 200:
        return None
    found = response.json()
    return {"id": found["player_id"], "username": found["username"],
            "display_name": found["display_name"]}  # fmt: skip


async def lookup(request: web.Request) -> web.Response:
    """A player by username: its profile for its current name; for a name it had until lately
    (held for it), a 307 to the player, whose profile says its current name."""
    gateway = request.app[GATEWAY]
    principal = principal_of(request)
    await gateway.lookup_limiter.check(principal.client_id)
    raw = request.match_info["username"]
    name = _check(request, raw)
    public = not ({Scope.ADMIN, Scope.GAME_SERVER} & principal.scopes or principal.player)
    if gateway.config.lookups_from_view and public:
        seen = await _from_view(request, raw)
        if seen is not None:
            return _json(seen)
    claim = await _claim(request, name, raw)
    if claim is None or claim["state"] == "reserved":
        raise ProblemError(USERNAME_NOT_FOUND)
    found = await _fetch_player(request, claim["player_id"], claim["home_region"])
    player = _shown(principal, found)
    # A name its player has just left is held from the moment of the rename, though its
    # owner learns it a moment later (the claim's last step): redirect already.
    if claim["state"] == "held" or found["username"] != claim["username"]:
        return _json(
            {**player, "held_until": claim["held_until"]},
            307,
            {"Location": f"/v1/players/{claim['player_id']}"},
        )
    return _json(player)


async def availability(request: web.Request) -> web.Response:
    """Whether a name could be claimed now: available, taken (a player has it, or is claiming
    it), held (a player had it until lately), reserved (a reserved word) or invalid (with the
    rule it breaks)."""
    gateway = request.app[GATEWAY]
    principal = principal_of(request)
    await gateway.lookup_limiter.check(principal.client_id)
    raw = request.match_info["username"]
    try:
        name = check(raw, gateway.config.usernames)
    except UsernameRefused as exc:
        status = "reserved" if exc.rule is UsernameRule.RESERVED else "invalid"
        return _json({"username": raw, "status": status, "rule": exc.rule.value})
    claim = await _claim(request, name, raw)
    status = "available" if claim is None else ("held" if claim["state"] == "held" else "taken")
    return _json({"username": raw, "canonical": name.canonical, "status": status})


ROUTES = [
    ("POST", "/v1/players", create_player),
    ("GET", "/v1/players/{player_id}", read_player),
    ("PUT", "/v1/players/{player_id}/username", rename),
    ("GET", "/v1/usernames/{username}", lookup),
    ("GET", "/v1/usernames/{username}/availability", availability),
]
