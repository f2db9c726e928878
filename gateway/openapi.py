"""The public API's contract, OpenAPI 3.1, served at /v1/openapi.json. Request bodies are the
msgspec structs that validate them (wire.schemas, which the ledger decodes with), rendered by
msgspec as JSON Schema, plus what the gateway adds to an account creation; so the contract and
the validation cannot drift. A test checks that its paths and methods are exactly the routes
the gateway serves, and every answer the gateway tests see is validated against it."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from wire.ids import REGION_PATTERN
from wire.schemas import (
    AccountIn,
    BetIn,
    PlayerIn,
    PostIn,
    ReplayIn,
    RollbackIn,
    StatusIn,
    TransferIn,
    UsernameIn,
    WebhookEndpointIn,
    WinIn,
)


class AccountCreateIn(AccountIn, forbid_unknown_fields=True):
    """An account creation as the gateway takes it: the ledger's body, plus where the account
    lives and which operator's game servers may play for it."""

    region: Annotated[str, Meta(pattern=REGION_PATTERN.pattern)] | None = None
    """The account's home region. Without it: the client's home_region claim, else the
    directory's default region; never the gateway the request entered by."""
    operator: Annotated[str, Meta(min_length=1, max_length=64)] | None = None


class ProfileOut(msgspec.Struct):
    """A player's public profile: what any caller may see."""

    id: str
    username: str
    display_name: str | None


class ClaimOut(msgspec.Struct):
    id: str
    status: Literal["reserving", "confirming", "registering", "holding", "completed"]
    username: str


class PlayerOut(msgspec.Struct):
    """A player's full record: for the back office, its operator's servers and itself."""

    id: str
    username: str | None
    """Null only while the player is ``creating`` (a 202)."""
    username_generated: bool
    """A fallback was drawn for the player: ask it to choose a name."""
    username_refusal: str | None
    """Why the preferred name was not used: its rule, or username-taken / username-held."""
    display_name: str | None
    status: Literal["creating", "active"]
    home_region: str
    operator: str | None
    accounts: dict[str, str]
    """Currency -> wallet account id."""
    version: int
    created_at: str
    claim: ClaimOut | None = None
    """On a rename's answer: the claim that made (or is making) the new name the player's."""


class HeldOut(ProfileOut):
    """A name held for the player who had it: where it is now, and until when (null for a
    moment after the rename, until the name's owner has recorded the hold)."""

    held_until: str | None


class WebhookEndpointOut(msgspec.Struct):
    id: str
    url: str
    event_types: list[str]
    status: Literal["enabled", "disabled"]
    failing_since: str | None
    """Since when every delivery failed (null once one succeeds)."""
    disabled_reason: str | None
    version: int
    created_at: str
    updated_at: str
    secret: str | None = None
    """On creation and on a rotation only: the whsec_ key deliveries are signed with (after a
    rotation, with the previous one too until the next)."""


class WebhookEndpointsOut(msgspec.Struct):
    endpoints: list[WebhookEndpointOut]


class ReplayOut(msgspec.Struct):
    endpoint_id: str
    replayed: int
    next_cursors: dict[str, str]
    """Per stream that had more: where to replay from next."""


class AvailabilityOut(msgspec.Struct):
    username: str
    status: Literal["available", "taken", "held", "reserved", "invalid"]
    canonical: str | None = None
    rule: str | None = None
    """For invalid and reserved: the rule the name breaks."""


IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:~-]{1,100}$"},
    "description": "Same key and body: the original answer, with Idempotent-Replayed: true. "
    "Same key, other body: 409 idempotency-conflict. A key's scope is the client that sends it "
    "and the region that owns what the request changes (the debited account's home region, or "
    "the region an account is created in), never the gateway it enters by: a retry through any "
    "region's gateway gets the original answer. Keys are not global: the same key on requests "
    "that change different regions applies once in each, so use a new key per operation.",
}
PROBLEM = {"$ref": "#/components/responses/Problem"}
PROBLEM_STATUSES = ("400", "401", "403", "404", "409", "413", "422", "429", "431", "503")
HISTORY_QUERY = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
    {"name": "order", "in": "query", "schema": {"enum": ["desc", "asc"]}},
]
AS_OF_QUERY = [
    {"name": "as_of", "in": "query", "schema": {"type": "string", "format": "date-time"}}
]
# RFC 9457 (3.2) lets a problem type carry extension members, and clients ignore the ones they
# do not know: the ones regiongate sends are listed, others may come.
PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "field": {"type": "string"},
        "code": {"type": "string", "description": "The ledger's result code"},
        "region": {"type": "string", "description": "The region that is unavailable"},
        "rule": {
            "type": "string",
            "description": "username-invalid, username-reserved: the rule the name breaks",
        },
        "transfer": {
            "type": "object",
            "description": "A cross-region transfer that was compensated: the saga as "
            "GET /v1/transfers/{id} shows",
        },
    },
    "additionalProperties": True,
}


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    summary: str
    scopes: str
    body: type | None = None
    query: tuple = ()
    idempotent: bool = False
    ok: str = "200"
    accepted: bool = False
    """Also 202: a cross-region transfer still running, with a Location to poll."""
    response: type | tuple[type, ...] | None = None
    """The answer's schema, where the contract fixes it (one of several, for a tuple)."""
    redirect: type | None = None
    """Also 307, with this body and a Location to follow."""


ROUTES = (
    Route("post", "/v1/accounts", "Create a player account in a region", "admin",
          AccountCreateIn, idempotent=True, ok="201"),
    Route("get", "/v1/accounts/{account_id}", "An account and its balance",
          "wallet (own), game:server (its operator's players), admin"),
    Route("post", "/v1/accounts/{account_id}/status",
          "Freeze, unfreeze or close an account. Closing needs a zero balance and no holds;"
          " closed is final. Setting the status an account has is a success.", "admin",
          StatusIn),
    Route("get", "/v1/accounts/{account_id}/balance", "Balance, now or as_of a past time",
          "wallet, game:server, admin", query=tuple(AS_OF_QUERY)),
    Route("get", "/v1/accounts/{account_id}/transfers",
          "History, newest first, cursor-paginated", "wallet, game:server, admin",
          query=tuple(HISTORY_QUERY)),
    Route("post", "/v1/transfers",
          "Move money, at once or as a hold. Between accounts of different regions the"
          " transfer is a saga: 201 when it completed within the wait, 202 with a Location to"
          " poll while it runs, a problem when it was compensated (the problem's transfer"
          " member shows it). Holds stay within a region.",
          "wallet (from own accounts), admin", TransferIn, idempotent=True, ok="201",
          accepted=True),
    Route("get", "/v1/transfers/{transfer_id}", "One transfer", "wallet (either side), admin"),
    Route("post", "/v1/transfers/{transfer_id}/post", "Post a hold, in full or in part",
          "wallet (debit side), admin", PostIn, idempotent=True, ok="201"),
    Route("post", "/v1/transfers/{transfer_id}/void", "Release a hold",
          "wallet (debit side), admin", idempotent=True, ok="201"),
    Route("post", "/v1/bets", "Bet: player to house", "game:server, admin", BetIn,
          idempotent=True, ok="201"),
    Route("post", "/v1/wins", "Win: house to player", "game:server, admin", WinIn,
          idempotent=True, ok="201"),
    Route("post", "/v1/rollbacks",
          "Roll a bet back by its reference (before the bet: a tombstone)",
          "game:server, admin", RollbackIn, idempotent=True),
    Route("post", "/v1/players",
          "Create a player: its public id, its username and its wallet accounts, in one"
          " idempotent call. A username that is missing, invalid, reserved, taken or held gets"
          " a generated one (username_generated, username_refusal says why), unless"
          " username_required. 202 while the username's claim runs on: poll Location.",
          "admin, game:server (its own operator)", PlayerIn, idempotent=True, ok="201",
          accepted=True, response=PlayerOut),
    Route("get", "/v1/players/{player_id}",
          "A player: the full record for the back office, its operator's servers and itself;"
          " the public profile (id, username, display_name) for anyone else",
          "any", response=(PlayerOut, ProfileOut)),
    Route("put", "/v1/players/{player_id}/username",
          "Rename: the previous name is held for the player for a while (lookups of it"
          " redirect here), then released. Rate-limited per player (rename-rate-limited).",
          "admin, game:server (its operator's players), wallet (the token's own player)",
          UsernameIn, idempotent=True, accepted=True, response=PlayerOut),
    Route("get", "/v1/usernames/{username}",
          "The player who has this username; for a name held after a rename, 307 to the"
          " player. Rate-limited per client (lookup).", "any",
          response=(PlayerOut, ProfileOut), redirect=HeldOut),
    Route("get", "/v1/usernames/{username}/availability",
          "Whether a username could be claimed now. Rate-limited per client (lookup).", "any",
          response=AvailabilityOut),
)  # fmt: skip
REGION_QUERY = (
    {
        "name": "region",
        "in": "query",
        "required": False,
        "description": "the endpoint's region (default: the gateway's)",
        "schema": {"type": "string", "pattern": REGION_PATTERN.pattern},
    },
)
WEBHOOK_ROUTES = (
    Route("post", "/v1/webhook-endpoints",
          "Register an endpoint for a region's events, signed per Standard Webhooks; the"
          " answer holds its secret, shown once", "admin", WebhookEndpointIn, ok="201",
          response=WebhookEndpointOut, query=REGION_QUERY),
    Route("get", "/v1/webhook-endpoints", "A region's endpoints", "admin",
          response=WebhookEndpointsOut, query=REGION_QUERY),
    Route("get", "/v1/webhook-endpoints/{endpoint_id}", "One endpoint", "admin",
          response=WebhookEndpointOut, query=REGION_QUERY),
    Route("post", "/v1/webhook-endpoints/{endpoint_id}/rotate-secret",
          "A new secret; deliveries are signed with it and the previous one until the next"
          " rotation", "admin", response=WebhookEndpointOut, query=REGION_QUERY),
    Route("post", "/v1/webhook-endpoints/{endpoint_id}/enable",
          "Enable an endpoint disabled after failing; its waiting deliveries go out",
          "admin", response=WebhookEndpointOut, query=REGION_QUERY),
    Route("post", "/v1/webhook-endpoints/{endpoint_id}/replay",
          "Deliver again the endpoint's events from a stream cursor on", "admin", ReplayIn,
          response=ReplayOut, query=REGION_QUERY),
)  # fmt: skip
ROUTES = ROUTES + WEBHOOK_ROUTES
PLAIN_ROUTES = {
    "/health/live": ("Liveness", {"200": {"description": "live"}}),
    "/health/ready": (
        "Readiness",
        {"200": {"description": "ready"}, "503": {"description": "not ready"}},
    ),
    "/v1/openapi.json": ("This document", {"200": {"description": "OpenAPI 3.1"}}),
}


def _operation(route: Route, schemas: dict[type, dict]) -> dict:
    path_params = [
        {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
        for part in route.path.split("/")
        if part.startswith("{")
    ]
    if isinstance(route.response, tuple):
        answer = {"anyOf": [schemas[kind] for kind in route.response]}
    else:
        answer = schemas[route.response] if route.response is not None else {}
    responses: dict = {
        route.ok: {"description": "OK", "content": {"application/json": {"schema": answer}}}
    }
    if route.accepted:
        responses["202"] = {
            "description": "Accepted: still running (a cross-region transfer, a username's"
            " claim); poll Location",
            "headers": {"Location": {"schema": {"type": "string"}}},
            "content": {"application/json": {"schema": answer}},
        }
    if route.redirect is not None:
        responses["307"] = {
            "description": "Temporary redirect: follow Location",
            "headers": {"Location": {"schema": {"type": "string"}}},
            "content": {"application/json": {"schema": schemas[route.redirect]}},
        }
    responses.update(dict.fromkeys(PROBLEM_STATUSES, PROBLEM))
    responses["default"] = PROBLEM
    operation = {
        "summary": route.summary,
        "description": f"Scopes: {route.scopes}.",
        "security": [{"bearer": []}],
        "parameters": [
            *path_params,
            *route.query,
            *([IDEMPOTENCY_KEY] if route.idempotent else []),
        ],
        "responses": responses,
    }
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schemas[route.body]}},
        }
    return operation


@functools.cache
def openapi_document() -> dict:
    bodies = list(
        dict.fromkeys(
            kind
            for r in ROUTES
            for kind in (
                r.body,
                *(r.response if isinstance(r.response, tuple) else (r.response,)),
                r.redirect,
            )
            if kind is not None
        )
    )
    refs, components = msgspec.json.schema_components(
        bodies, ref_template="#/components/schemas/{name}"
    )
    schemas = dict(zip(bodies, refs, strict=True))
    paths: dict[str, dict] = {
        path: {"get": {"summary": summary, "responses": responses}}
        for path, (summary, responses) in PLAIN_ROUTES.items()
    }
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method] = _operation(route, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "regiongate",
            "version": "1",
            "description": "Any region's gateway serves any account; errors are RFC 9457 "
            "problem documents with a stable type (docs/api.md).",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": components,
            "responses": {
                "Problem": {
                    "description": "RFC 9457 problem; 429 and 503 carry Retry-After",
                    "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}},
                }
            },
        },
        "paths": paths,
    }
