"""Every outcome of a ledger operation, as one exhaustive enum (after TigerBeetle's result codes),
and the one registry of problem types both services answer with.

Expected business outcomes are values, never exceptions: a batch decides each operation to one
member of ``Result`` and the API edge maps it to a problem type through ``PROBLEMS``. A problem
type has one status and one title wherever it is used (RFC 9457: the title does not change from
occurrence to occurrence); what differs between occurrences is the ``field`` and the
``detail``. Tests check that every member has a mapping and that no slug has two titles, so
adding an outcome without deciding how it looks on the wire fails CI.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

PROBLEM_TYPE_PREFIX = "urn:regiongate:problem:"


class Result(enum.Enum):
    OK = "ok"
    # The same idempotency key with a different request body.
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    ACCOUNTS_MUST_BE_DIFFERENT = "accounts_must_be_different"
    DEBIT_ACCOUNT_NOT_FOUND = "debit_account_not_found"
    CREDIT_ACCOUNT_NOT_FOUND = "credit_account_not_found"
    ACCOUNT_NOT_FOUND = "account_not_found"
    ACCOUNT_NOT_IN_REGION = "account_not_in_region"
    CURRENCY_MISMATCH = "currency_mismatch"
    UNKNOWN_CURRENCY = "unknown_currency"
    DEBIT_ACCOUNT_FROZEN = "debit_account_frozen"
    CREDIT_ACCOUNT_FROZEN = "credit_account_frozen"
    DEBIT_ACCOUNT_CLOSED = "debit_account_closed"
    CREDIT_ACCOUNT_CLOSED = "credit_account_closed"
    EXCEEDS_AVAILABLE = "exceeds_available"
    OVERFLOWS_BALANCE = "overflows_balance"
    PENDING_TRANSFER_NOT_FOUND = "pending_transfer_not_found"
    TRANSFER_NOT_PENDING_FLOW = "transfer_not_pending_flow"
    PENDING_TRANSFER_ALREADY_POSTED = "pending_transfer_already_posted"
    PENDING_TRANSFER_ALREADY_VOIDED = "pending_transfer_already_voided"
    PENDING_TRANSFER_EXPIRED = "pending_transfer_expired"
    POST_AMOUNT_EXCEEDS_PENDING = "post_amount_exceeds_pending"
    BET_REFERENCE_EXISTS = "bet_reference_exists"
    # A rollback for this bet reference arrived first: the late bet is refused for ever.
    BET_ROLLED_BACK = "bet_rolled_back"
    # A system account moved by an operation that may not move it (house: bets, wins and
    # rollbacks; clearing: deposits and withdrawals; transit: sagas only).
    DEBIT_ACCOUNT_RESTRICTED = "debit_account_restricted"
    CREDIT_ACCOUNT_RESTRICTED = "credit_account_restricted"
    ACCOUNT_HAS_BALANCE = "account_has_balance"
    ACCOUNT_STATUS_INVALID_TRANSITION = "account_status_invalid_transition"
    # A cross-region transfer's hold belongs to its saga: only the saga posts or voids it.
    TRANSFER_OWNED_BY_SAGA = "transfer_owned_by_saga"
    # The destination of a cross-region transfer is not a peer of this region.
    REGION_NOT_PEER = "region_not_peer"
    SAGA_NOT_FOUND = "saga_not_found"
    # The orchestrator cancelled this step before it arrived: refused for ever.
    SAGA_STEP_CANCELLED = "saga_step_cancelled"
    # The same step id with a different amount, account or currency: a bug, never applied.
    SAGA_STEP_CONFLICT = "saga_step_conflict"
    # The destination did not confirm before the saga's deadline; it was cancelled there and
    # the hold voided here: nothing moved.
    DEADLINE_EXCEEDED = "deadline_exceeded"


@dataclass(frozen=True, slots=True)
class Problem:
    """A problem type: its status, slug and title, and the field it names by default."""

    status: int
    slug: str
    title: str
    field: str | None = None

    @property
    def type(self) -> str:
        return PROBLEM_TYPE_PREFIX + self.slug

    def at(self, field: str | None) -> Problem:
        """The same type, naming another field."""
        return Problem(self.status, self.slug, self.title, field)


# Problems that do not come from a ledger decision: input, auth, limits, availability.
VALIDATION_FAILED = Problem(400, "validation-failed", "Request failed validation")
MALFORMED_JSON = Problem(400, "malformed-json", "Request body is not valid JSON")
MALFORMED_REQUEST = Problem(400, "malformed-request", "The HTTP request could not be parsed")
IDEMPOTENCY_KEY_MISSING = Problem(
    400, "idempotency-key-missing", "Idempotency-Key header is required", "Idempotency-Key"
)
IDEMPOTENCY_KEY_INVALID = Problem(
    400, "idempotency-key-invalid", "Idempotency-Key header is malformed", "Idempotency-Key"
)
UNAUTHENTICATED = Problem(401, "unauthenticated", "Missing or invalid credentials")
FORBIDDEN = Problem(403, "forbidden", "Not allowed for this caller")
NOT_FOUND = Problem(404, "not-found", "No such resource")
ACCOUNT_NOT_FOUND = Problem(404, "account-not-found", "Account not found", "account_id")
TRANSFER_NOT_FOUND = Problem(404, "transfer-not-found", "Transfer not found", "transfer_id")
METHOD_NOT_ALLOWED = Problem(405, "method-not-allowed", "Method not allowed")
BODY_TOO_LARGE = Problem(413, "body-too-large", "Request body exceeds the size limit")
UNSUPPORTED_MEDIA_TYPE = Problem(415, "unsupported-media-type", "Body must be application/json")
RATE_LIMITED = Problem(429, "rate-limited", "Too many requests")
HEADERS_TOO_LARGE = Problem(431, "headers-too-large", "A request header or line is too long")
INTERNAL = Problem(500, "internal", "Internal error")
REGION_UNAVAILABLE = Problem(
    503, "region-unavailable", "A region this request needs cannot be reached; retry later"
)
CROSS_REGION_UNAVAILABLE = Problem(
    503, "cross-region-unavailable", "Cross-region transfers are not available on this node"
)
OVERLOADED = Problem(503, "overloaded", "The ledger node is at its queue limit")
DATABASE_UNAVAILABLE = Problem(
    503, "ledger-unavailable", "Ledger database unavailable; retry with the same idempotency key"
)

# Identity: players and usernames (docs/api.md, "Players and usernames").
PLAYER_NOT_FOUND = Problem(404, "player-not-found", "Player not found", "player_id")
USERNAME_NOT_FOUND = Problem(404, "username-not-found", "No player has this username", "username")
USERNAME_TAKEN = Problem(
    409, "username-taken", "This username, or one that looks like it, is taken", "username"
)
USERNAME_HELD = Problem(
    409, "username-held", "This username is held for the player who had it until lately", "username"
)
USERNAME_INVALID = Problem(422, "username-invalid", "This username breaks a rule", "username")
USERNAME_RESERVED = Problem(422, "username-reserved", "This username is reserved", "username")
CLAIM_IN_PROGRESS = Problem(
    409, "claim-in-progress", "Another username change of this player is still in progress"
)
RENAME_RATE_LIMITED = Problem(429, "rename-rate-limited", "Too many renames for this player")
SLOT_NOT_OWNED = Problem(
    421, "identity-slot-not-owned", "This region does not own the name's or id's identity slot"
)
WEBHOOK_ENDPOINT_NOT_FOUND = Problem(
    404, "webhook-endpoint-not-found", "Webhook endpoint not found", "endpoint_id"
)
WEBHOOKS_UNAVAILABLE = Problem(
    503, "webhooks-unavailable", "Webhooks are not available on this node; retry later"
)
IDENTITY_UNAVAILABLE = Problem(
    503, "identity-unavailable", "Identity is not available on this node; retry later"
)

_ACCOUNT_FROZEN = Problem(422, "account-frozen", "Account is frozen")
_ACCOUNT_CLOSED = Problem(422, "account-closed", "Account is closed")
_RESTRICTED = Problem(
    422, "system-account-restricted", "This operation may not move a system account"
)
_SAGA_STEP_REFUSED = Problem(
    409, "saga-step-cancelled", "The cross-region transfer was cancelled before this step"
)

PROBLEMS: dict[Result, Problem] = {
    Result.IDEMPOTENCY_CONFLICT: Problem(
        409, "idempotency-conflict", "Idempotency key reused with a different request"
    ),
    Result.ACCOUNTS_MUST_BE_DIFFERENT: Problem(
        422,
        "accounts-must-be-different",
        "Debit and credit account are the same",
        "credit_account_id",
    ),
    Result.DEBIT_ACCOUNT_NOT_FOUND: ACCOUNT_NOT_FOUND.at("debit_account_id"),
    Result.CREDIT_ACCOUNT_NOT_FOUND: ACCOUNT_NOT_FOUND.at("credit_account_id"),
    Result.ACCOUNT_NOT_FOUND: ACCOUNT_NOT_FOUND,
    Result.ACCOUNT_NOT_IN_REGION: Problem(
        421, "account-not-in-region", "Account is not homed in this region", "account_id"
    ),
    Result.CURRENCY_MISMATCH: Problem(
        422, "currency-mismatch", "Currency does not match the account's currency", "currency"
    ),
    Result.UNKNOWN_CURRENCY: Problem(422, "unknown-currency", "Unknown currency", "currency"),
    Result.DEBIT_ACCOUNT_FROZEN: _ACCOUNT_FROZEN.at("debit_account_id"),
    Result.CREDIT_ACCOUNT_FROZEN: _ACCOUNT_FROZEN.at("credit_account_id"),
    Result.DEBIT_ACCOUNT_CLOSED: _ACCOUNT_CLOSED.at("debit_account_id"),
    Result.CREDIT_ACCOUNT_CLOSED: _ACCOUNT_CLOSED.at("credit_account_id"),
    Result.EXCEEDS_AVAILABLE: Problem(
        422, "insufficient-funds", "Amount exceeds the available balance", "amount"
    ),
    Result.OVERFLOWS_BALANCE: Problem(
        422, "balance-overflow", "The transfer would overflow an account's totals", "amount"
    ),
    Result.PENDING_TRANSFER_NOT_FOUND: TRANSFER_NOT_FOUND,
    Result.TRANSFER_NOT_PENDING_FLOW: Problem(
        409, "transfer-not-pending", "Transfer was not created as pending", "transfer_id"
    ),
    Result.PENDING_TRANSFER_ALREADY_POSTED: Problem(
        409,
        "pending-transfer-already-posted",
        "Pending transfer was already posted",
        "transfer_id",
    ),
    Result.PENDING_TRANSFER_ALREADY_VOIDED: Problem(
        409,
        "pending-transfer-already-voided",
        "Pending transfer was already voided",
        "transfer_id",
    ),
    Result.PENDING_TRANSFER_EXPIRED: Problem(
        409, "pending-transfer-expired", "Pending transfer has expired", "transfer_id"
    ),
    Result.POST_AMOUNT_EXCEEDS_PENDING: Problem(
        422, "post-amount-exceeds-pending", "Amount exceeds the pending amount", "amount"
    ),
    Result.BET_REFERENCE_EXISTS: Problem(
        409, "bet-reference-exists", "A bet with this reference already exists", "reference"
    ),
    Result.BET_ROLLED_BACK: Problem(
        409, "bet-rolled-back", "This bet was rolled back before it arrived", "reference"
    ),
    Result.DEBIT_ACCOUNT_RESTRICTED: _RESTRICTED.at("debit_account_id"),
    Result.CREDIT_ACCOUNT_RESTRICTED: _RESTRICTED.at("credit_account_id"),
    Result.ACCOUNT_HAS_BALANCE: Problem(
        409, "account-has-balance", "Account still has a balance or pending transfers"
    ),
    Result.ACCOUNT_STATUS_INVALID_TRANSITION: Problem(
        409,
        "account-status-invalid-transition",
        "Account status cannot change that way",
        "status",
    ),
    Result.TRANSFER_OWNED_BY_SAGA: Problem(
        409,
        "transfer-owned-by-saga",
        "This hold belongs to a cross-region transfer; only its saga resolves it",
        "transfer_id",
    ),
    Result.REGION_NOT_PEER: Problem(
        422,
        "region-not-peer",
        "The credit account's region is not a peer of the debit account's region",
        "credit_account_id",
    ),
    Result.SAGA_NOT_FOUND: TRANSFER_NOT_FOUND,
    Result.SAGA_STEP_CANCELLED: _SAGA_STEP_REFUSED,
    Result.SAGA_STEP_CONFLICT: Problem(
        409, "saga-step-conflict", "This saga step id was used with a different request"
    ),
    Result.DEADLINE_EXCEEDED: Problem(
        422,
        "cross-region-timeout",
        "The destination region did not confirm in time; the transfer was compensated",
    ),
}


def every_problem() -> list[Problem]:
    """Every problem type this module defines, for the registry's own tests."""
    found = [value for value in globals().values() if isinstance(value, Problem)]
    return found + list(PROBLEMS.values())
