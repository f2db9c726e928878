"""Identity's configuration: the ``identity:`` section of a region node's config. Every bound is
explicit in the annotations, as everywhere else (runtime.config)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct, field

from identity.usernames import UsernameRules
from runtime.sagas import SagaConfig

CLAIM_SAGA_DEFAULTS = SagaConfig(deadline_ms=86_400_000, wait_ms=3_000)
"""A claim is retried until it is decided (no deadline short of a day): a player waits for its
name rather than getting a half-made identity."""


class IdentityConfig(Struct, frozen=True, forbid_unknown_fields=True):
    rules: UsernameRules = field(default_factory=UsernameRules)
    claim: SagaConfig = CLAIM_SAGA_DEFAULTS
    """Bounds of the claim saga (reserve, bind, confirm, hold). wait_ms: how long a creation or
    a rename waits for its claim before answering 202."""
    reservation_lease_ms: Annotated[int, Meta(ge=1_000, le=3_600_000)] = 60_000
    """How long an owner keeps an unconfirmed reservation before asking the player's home
    whether it was bound (then it confirms it) or not (then it releases it). Keep it well above
    claim.step_timeout_ms: a lease that runs out mid-claim costs that claim a retry."""
    reaper_interval_ms: Annotated[int, Meta(ge=10, le=600_000)] = 1_000
    """How often an owner looks for expired reservations and for held names past their period."""
    reaper_batch_max: Annotated[int, Meta(ge=1, le=10_000)] = 200
    held_for_s: Annotated[int, Meta(ge=0, le=10 * 365 * 86_400)] = 30 * 86_400
    """How long a renamed player's previous name stays held for it (lookups of it redirect to
    the player; nobody else may take it)."""
    renames_max: Annotated[int, Meta(ge=0, le=1_000)] = 3
    """Renames a player may make per rename_window_s."""
    rename_window_s: Annotated[int, Meta(ge=1, le=365 * 86_400)] = 30 * 86_400
    display_name_length_max: Annotated[int, Meta(ge=1, le=256)] = 64
    currencies_max: Annotated[int, Meta(ge=0, le=32)] = 8
    """Wallet accounts a creation may open at once."""
