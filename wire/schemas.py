"""Request bodies of the API as msgspec structs, the contract both services share: the ledger
decodes with them and the gateway's OpenAPI is rendered from them. Strict types (a float or a
string is never taken for an amount, a bool is never an int), unknown fields refused, every
string and map bounded. Decoding fails with a problem that names the offending field."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from wire.ids import (
    ACCOUNT_ID_LENGTH_MAX,
    ACCOUNT_ID_PATTERN,
    CURRENCY_PATTERN,
    REGION_PATTERN,
    TRANSFER_ID_LENGTH_MAX,
)
from wire.limits import AMOUNT_MAX_LIMIT
from wire.problems import ProblemError
from wire.results import MALFORMED_JSON, VALIDATION_FAILED

Amount = Annotated[int, Meta(ge=1, le=AMOUNT_MAX_LIMIT)]
CurrencyCode = Annotated[str, Meta(pattern=CURRENCY_PATTERN.pattern)]
AccountId = Annotated[
    str, Meta(max_length=ACCOUNT_ID_LENGTH_MAX, pattern=ACCOUNT_ID_PATTERN.pattern)
]
Reference = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
TimeoutSeconds = Annotated[int, Meta(ge=1, le=365 * 24 * 3600)]
# PostgreSQL text cannot hold NUL, so metadata refuses it here, at the edge, with a 400.
_NO_NUL = r"^[^\x00]*$"
Metadata = Annotated[
    dict[
        Annotated[str, Meta(min_length=1, max_length=64, pattern=_NO_NUL)],
        Annotated[str, Meta(max_length=256, pattern=_NO_NUL)],
    ],
    Meta(max_length=16),
]
TransferId = Annotated[str, Meta(min_length=1, max_length=TRANSFER_ID_LENGTH_MAX)]


class TransferIn(Struct, forbid_unknown_fields=True):
    debit_account_id: AccountId
    credit_account_id: AccountId
    amount: Amount
    currency: CurrencyCode
    pending: bool = False
    timeout_s: TimeoutSeconds | None = None
    reference: Reference | None = None
    metadata: Metadata | None = None


class PostIn(Struct, forbid_unknown_fields=True):
    amount: Amount | None = None


class VoidIn(Struct, forbid_unknown_fields=True):
    pass


class AccountIn(Struct, forbid_unknown_fields=True):
    currency: CurrencyCode
    metadata: Metadata | None = None


class StatusIn(Struct, forbid_unknown_fields=True):
    status: Literal["active", "frozen", "closed"]


class BetIn(Struct, forbid_unknown_fields=True):
    account_id: AccountId
    amount: Amount
    currency: CurrencyCode
    reference: Reference
    round_id: Reference | None = None
    metadata: Metadata | None = None


class WinIn(BetIn, forbid_unknown_fields=True):
    pass


class RollbackIn(Struct, forbid_unknown_fields=True):
    account_id: AccountId
    reference: Reference
    round_id: Reference | None = None


class SagaStepIn(Struct, forbid_unknown_fields=True):
    """Step 2 of a cross-region transfer, or its cancel, as the source's orchestrator sends it;
    the step id is the saga id in the path."""

    origin_region: Annotated[str, Meta(pattern=REGION_PATTERN.pattern)]
    credit_account_id: AccountId
    amount: Amount
    currency: CurrencyCode


RawUsername = Annotated[str, Meta(max_length=256)]
"""A username as a client typed it: bounded here, judged by identity.usernames (whose refusals
name their rule), never by a pattern that would hide which rule it broke."""
Operator = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]


class PlayerIn(Struct, forbid_unknown_fields=True):
    """A player creation: its username (a generated one if missing or refused, unless
    username_required), display name, operator and wallet accounts (one per currency)."""

    username: RawUsername | None = None
    username_required: bool = False
    """Refuse the creation (nothing is written) rather than fall back to a generated name
    when the username is invalid, reserved, taken or held."""
    display_name: Annotated[str, Meta(max_length=256)] | None = None
    """Shown to other players; free text (RFC 8266 Nickname), not unique."""
    operator: Operator | None = None
    currencies: Annotated[list[CurrencyCode], Meta(max_length=8)] = []
    region: Annotated[str, Meta(pattern=REGION_PATTERN.pattern)] | None = None
    """The player's home region (its wallet accounts live there). Without it: the client's
    home_region claim, else the directory's default region; never the gateway it entered by."""


class UsernameIn(Struct, forbid_unknown_fields=True):
    """A rename: the player's new username (its previous one is held for it for a while)."""

    username: RawUsername


_FIELD_IN_MESSAGE = re.compile(r"at `\$\.?([A-Za-z0-9_.\[\]]*)`")


def field_of(message: str) -> str | None:
    """The field a msgspec validation message names ('... - at `$.amount`' -> 'amount')."""
    match = _FIELD_IN_MESSAGE.search(message)
    return match[1] if match and match[1] else None


class WebhookEndpointIn(Struct, forbid_unknown_fields=True):
    url: Annotated[str, Meta(min_length=9, max_length=2048, pattern="^https://")]
    """https only; a delivery never follows a redirect."""
    event_types: Annotated[list[str], Meta(min_length=1, max_length=64)]
    """Event types (docs/events.md), ``family.*`` or ``*``."""


class ReplayIn(Struct, forbid_unknown_fields=True):
    from_: Annotated[str, Meta(pattern="^[0-9]{1,20}(-[0-9]{1,20})?$")] = msgspec.field(name="from")
    """A stream cursor, as ``regiongate events tail`` prints it."""
    limit: Annotated[int, Meta(ge=1, le=10_000)] = 1_000


def decode(decoder: msgspec.json.Decoder, body: bytes):
    """A request body as its struct, or the problem that says what is wrong and where: the
    one place both services turn a body into a value."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        message = str(exc)
        raise ProblemError(VALIDATION_FAILED, message, field=field_of(message)) from exc
    except msgspec.DecodeError as exc:
        raise ProblemError(MALFORMED_JSON, str(exc)) from exc


DECODERS = {
    cls: msgspec.json.Decoder(cls)
    for cls in (
        TransferIn,
        PostIn,
        VoidIn,
        AccountIn,
        StatusIn,
        BetIn,
        WinIn,
        RollbackIn,
        SagaStepIn,
        PlayerIn,
        UsernameIn,
        WebhookEndpointIn,
        ReplayIn,
    )
}
