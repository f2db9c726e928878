"""Identity's routes on a region node's internal API (signed service requests only, as every
route of that API: the node's authentication middleware runs first).

- ``/v1/identity/players...``: this region as the home of players (create, read, rename);
- ``/v1/identity/claims``, ``/v1/identity/locate/{player_id}``: this region as the owner of
  identity slots (who has a name; where a public id lives);
- ``/v1/identity-steps/{action}``: the claim saga's steps, from peer regions' nodes only.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from aiohttp import web

from identity.service import Answer, IdentityService, request_hash
from identity.usernames import display_name
from runtime.telemetry import CLIENT_ID
from wire.ids import PLAYER_ID_PATTERN
from wire.problems import JSON_CONTENT_TYPE, REPLAYED_HEADER, ProblemError, encode
from wire.results import (
    FORBIDDEN,
    IDEMPOTENCY_KEY_MISSING,
    IDENTITY_UNAVAILABLE,
    PLAYER_NOT_FOUND,
    USERNAME_NOT_FOUND,
    VALIDATION_FAILED,
)
from wire.schemas import DECODERS, PlayerIn, UsernameIn, decode

SERVICE = web.AppKey("identity", Callable)
_decode_dict = msgspec.json.Decoder(dict)


def _service(request: web.Request) -> IdentityService:
    service = request.app[SERVICE]()
    if service is None:
        raise ProblemError(IDENTITY_UNAVAILABLE, "this node has no directory of identity slots")
    return service


def _key(request: web.Request) -> str:
    key = request.headers.get("Idempotency-Key")
    if not key:
        raise ProblemError(IDEMPOTENCY_KEY_MISSING)
    return key


def _player_id(request: web.Request) -> str:
    player_id = request.match_info["player_id"]
    if not PLAYER_ID_PATTERN.match(player_id):
        raise ProblemError(PLAYER_NOT_FOUND)
    return player_id


def _answer(answer: Answer) -> web.Response:
    headers = {REPLAYED_HEADER: "true"} if answer.replayed else {}
    if answer.status == 202:
        headers["Location"] = f"/v1/players/{answer.body['id']}"
    return web.Response(
        status=answer.status,
        body=encode(answer.body),
        content_type=JSON_CONTENT_TYPE,
        headers=headers,
    )


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=encode(body), content_type=JSON_CONTENT_TYPE)


async def create_player(request: web.Request) -> web.Response:
    service = _service(request)
    key = _key(request)
    body: PlayerIn = decode(DECODERS[PlayerIn], await request.read())
    currencies = list(dict.fromkeys(body.currencies))
    if len(currencies) != len(body.currencies):
        raise ProblemError(VALIDATION_FAILED, "a currency is listed twice", field="currencies")
    name = None
    if body.display_name is not None:
        try:
            name = display_name(body.display_name, service.config.display_name_length_max)
        except ValueError as exc:
            raise ProblemError(VALIDATION_FAILED, str(exc), field="display_name") from exc
    answer = await service.create_player(
        username=body.username,
        username_required=body.username_required,
        display_name=name,
        operator=body.operator,
        currencies=currencies,
        creation_key=key,
        body_hash=request_hash("player", body),
    )
    return _answer(answer)


async def read_player(request: web.Request) -> web.Response:
    return _json(await _service(request).player(_player_id(request)))


async def rename(request: web.Request) -> web.Response:
    service = _service(request)
    key = _key(request)
    player_id = _player_id(request)
    body: UsernameIn = decode(DECODERS[UsernameIn], await request.read())
    answer = await service.rename(
        player_id,
        body.username,
        request_key=key,
        body_hash=request_hash(f"rename {player_id}", body),
    )
    return _answer(answer)


def _username(request: web.Request) -> str:
    username = request.query.get("username")
    if username is None or len(username) > 256:
        raise ProblemError(VALIDATION_FAILED, "username is required", field="username")
    return username


async def lookup(request: web.Request) -> web.Response:
    claim = await _service(request).lookup(_username(request))
    if claim is None:
        raise ProblemError(USERNAME_NOT_FOUND)
    return _json(claim)


async def view(request: web.Request) -> web.Response:
    found = await _service(request).view(_username(request))
    if found is None:
        raise ProblemError(USERNAME_NOT_FOUND)
    return _json(found)


async def locate(request: web.Request) -> web.Response:
    home = await _service(request).locate(_player_id(request))
    if home is None:
        raise ProblemError(PLAYER_NOT_FOUND)
    return _json({"player_id": request.match_info["player_id"], "home_region": home})


async def step(request: web.Request) -> web.Response:
    service = _service(request)
    if service.peer_key_ids and request.get(CLIENT_ID) not in service.peer_key_ids:
        # A claim step gives a name away or takes it back: only other regions' nodes may
        # ask, never a gateway, whose key faces the internet's traffic.
        raise ProblemError(FORBIDDEN, "claim steps take only peer nodes' keys")
    body = decode(_decode_dict, await request.read())
    return _json(await service.step(request.match_info["action"], body))


def add_routes(app: web.Application, service: Callable[[], IdentityService | None]) -> None:
    app[SERVICE] = service
    app.router.add_post("/v1/identity/players", create_player)
    app.router.add_get("/v1/identity/players/{player_id}", read_player)
    app.router.add_post("/v1/identity/players/{player_id}/username", rename)
    app.router.add_get("/v1/identity/claims", lookup)
    app.router.add_get("/v1/identity/views", view)
    app.router.add_get("/v1/identity/locate/{player_id}", locate)
    app.router.add_post("/v1/identity-steps/{action:reserve|register|confirm|hold|cancel}", step)
