"""Identifiers. Account ids carry their home region as a prefix (``eu-...``), so routing needs no
lookup in the common case. Generated ids are ULIDs: time-ordered, so newer ids sort later, and
with 80 random bits, so they cannot be guessed or collide."""

from __future__ import annotations

import base64
import collections
import hashlib
import os
import re
import time

REGION_PATTERN = re.compile(r"^[a-z]{2,8}$")
ACCOUNT_ID_PATTERN = re.compile(r"^[a-z]{2,8}-[A-Za-z0-9-]{1,80}$")
CURRENCY_PATTERN = re.compile(r"^[A-Z][A-Z0-9]{2,7}$")
"""ISO 4217 codes and configured units such as GCOIN."""
ACCOUNT_ID_LENGTH_MAX = 89
TRANSFER_ID_LENGTH_MAX = 96

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
# Every pair of Crockford letters, indexed by the 10 bits they encode: one lookup per two letters
# (base64.b32encode, pure Python, was a tenth of a batch's decision time).
_PAIRS = tuple(first + second for first in _CROCKFORD for second in _CROCKFORD)
_PAIR_SHIFTS = tuple(range(120, -1, -10))


# The random bits come from the operating system's CSPRNG, RANDOM_BLOCK_IDS ids' worth at a
# time: one getrandom call per id was 3 % of a ledger node's CPU under load (a system call per
# transfer). The block is cut into 80-bit pieces kept in a deque, whose popleft hands each piece
# out once even to threads (it is atomic in CPython); a refill race only adds pieces.
RANDOM_BLOCK_IDS = 256
_random_pieces: collections.deque[bytes] = collections.deque()


def _random_80_bits() -> int:
    try:
        piece = _random_pieces.popleft()
    except IndexError:
        block = os.urandom(10 * RANDOM_BLOCK_IDS)
        _random_pieces.extend(block[start : start + 10] for start in range(10, len(block), 10))
        piece = block[:10]
    return int.from_bytes(piece, "big")


def _forget_random_pieces() -> None:
    """A forked child must not reuse its parent's unused bits: two processes would then make
    the same ids."""
    _random_pieces.clear()


os.register_at_fork(after_in_child=_forget_random_pieces)


def ulid() -> str:
    """26 characters of lower-case Crockford base32 over 48 bits of ms time then 80 random
    bits. The bits are grouped from the most significant end, so ids sort by time; the 128
    bits are followed by two zero bits to fill the last letter (as RFC 4648 base32 pads)."""
    return ulid_text((time.time_ns() // 1_000_000 << 80) | _random_80_bits())


def ulid_text(value: int) -> str:
    """The 26 letters of a 128-bit value."""
    padded = value << 2
    pairs = _PAIRS
    return "".join([pairs[(padded >> shift) & 1023] for shift in _PAIR_SHIFTS])


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


SYSTEM_ACCOUNT_KINDS = ("house", "clearing", "transit")


def is_system_account_id(account_id: str) -> bool:
    """A region's house, clearing or transit account (``eu-house-EUR``, ``eu-transit-us-EUR``):
    their ids are the only ones whose second part is a word; a player's is a ULID."""
    parts = account_id.split("-", 2)
    return len(parts) == 3 and parts[1] in SYSTEM_ACCOUNT_KINDS


def house_account_id(region: str, currency: str) -> str:
    return f"{region}-house-{currency}"


def clearing_account_id(region: str, currency: str) -> str:
    return f"{region}-clearing-{currency}"


def transit_account_id(region: str, peer_region: str, currency: str) -> str:
    return f"{region}-transit-{peer_region}-{currency}"


PLAYER_ID_PREFIX = "pl_"
PLAYER_ID_PATTERN = re.compile(r"^pl_[0-9a-hjkmnp-tv-z]{26}$")


_B32 = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD)


def new_player_id() -> str:
    """A player's public id: ``pl_`` and 26 Crockford letters of 130 random bits from the
    operating system's CSPRNG. Unlike an account id it carries no time, no region and no
    count (nothing about the player can be read from it or guessed), and every letter is
    uniform over the alphabet. A collision is a 2**-65 event across 2**32 players; the
    claim's UNIQUE constraint refuses one all the same."""
    return player_id_of(os.urandom(17))


def player_id_of(random_bytes: bytes) -> str:
    """The public id of 17 unpredictable bytes (the first 130 bits): from the CSPRNG for a new
    player, from a keyed hash of its legacy id for a migrated one (identity.legacy)."""
    if len(random_bytes) < 17:
        raise ValueError("a public id needs 17 bytes")
    # Base32's first 26 letters are the first 130 bits, five at a time (RFC 4648), spelled in
    # Crockford's alphabet.
    return PLAYER_ID_PREFIX + base64.b32encode(random_bytes[:17])[:26].decode().translate(_B32)


IDENTITY_SLOTS = 1024
"""The username and public-id namespaces are split into this many hash slots, each owned by one
region through the directory (docs/architecture.md, "Identity"). Fixed: changing it would move
every name to another slot."""


def identity_slot(key: str) -> int:
    """The slot of a username's skeleton or of a public id: the same in every region."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % IDENTITY_SLOTS
