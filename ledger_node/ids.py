"""Identifiers. Account ids carry their home region as a prefix (``eu-...``), so routing needs no
lookup in the common case. Generated ids are ULIDs: time-ordered, so newer ids sort later, and
with 80 random bits, so they cannot be guessed or collide."""

from __future__ import annotations

import base64
import os
import re
import time

REGION_PATTERN = re.compile(r"^[a-z]{2,8}$")
ACCOUNT_ID_PATTERN = re.compile(r"^[a-z]{2,8}-[A-Za-z0-9-]{1,80}$")
ACCOUNT_ID_LENGTH_MAX = 89
TRANSFER_ID_LENGTH_MAX = 96

# RFC 4648 base32 letters mapped onto Crockford's lower-case alphabet (no i, l, o, u).
_TO_CROCKFORD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789abcdefghjkmnpqrstvwxyz"
)


def ulid() -> str:
    """26 characters of lower-case Crockford base32 over 48 bits of ms time then 80 random
    bits. The bits are grouped from the most significant end, so ids sort by time."""
    value = (time.time_ns() // 1_000_000 << 80) | int.from_bytes(os.urandom(10), "big")
    return base64.b32encode(value.to_bytes(16, "big"))[:26].translate(_TO_CROCKFORD).decode()


def region_of(account_id: str) -> str | None:
    """The region an account id was created in, or None if the id is not well formed."""
    if len(account_id) > ACCOUNT_ID_LENGTH_MAX or not ACCOUNT_ID_PATTERN.match(account_id):
        return None
    return account_id.split("-", 1)[0]


def new_account_id(region: str) -> str:
    return f"{region}-{ulid()}"


SAGA_ID_PATTERN = re.compile(r"^([a-z]{2,8})-s-([0-9a-z]{26})$")


def new_saga_id(region: str) -> str:
    return f"{region}-s-{ulid()}"


def saga_credit_transfer_id(saga_id: str, credit_region: str) -> str:
    """The destination's transfer id for a saga's step 2, derived from the saga id so that a
    retried step can never make a second transfer (the primary key refuses it, too)."""
    match = SAGA_ID_PATTERN.match(saga_id)
    if match is None:
        raise ValueError(f"not a saga id: {saga_id!r}")
    return f"{credit_region}-t-{match[2]}-{match[1]}"


def new_transfer_id(region: str) -> str:
    return f"{region}-t-{ulid()}"


def house_account_id(region: str, currency: str) -> str:
    return f"{region}-house-{currency}"


def clearing_account_id(region: str, currency: str) -> str:
    return f"{region}-clearing-{currency}"


def transit_account_id(region: str, peer_region: str, currency: str) -> str:
    return f"{region}-transit-{peer_region}-{currency}"
