"""Ledger records as the API shows them: transfers, sagas, times in RFC 3339 (problem documents
are wire.problems')."""

from __future__ import annotations

from typing import Any

import msgspec

from wire.times import rfc3339

__all__ = ["rfc3339", "saga_dict", "transfer_dict"]


def transfer_dict(row: Any) -> dict[str, Any]:
    """A transfer as the API shows it; row is a TransferRow, a PendingState or a database row."""
    get = row.get if isinstance(row, dict) or hasattr(row, "keys") else row.__getattribute__
    metadata = get("metadata")
    return {
        "id": get("id"),
        "kind": get("kind"),
        "flow": get("flow"),
        "status": get("status"),
        "pending_id": get("pending_id"),
        "debit_account_id": get("debit_account_id"),
        "credit_account_id": get("credit_account_id"),
        "amount": get("amount"),
        "currency": get("currency"),
        "resolved_amount": get("resolved_amount"),
        "timeout_at": rfc3339(get("timeout_at")),
        "reference": get("reference"),
        "round_id": get("round_id"),
        "metadata": msgspec.json.decode(metadata) if metadata else None,
        "created_at": rfc3339(get("created_at")),
    }


SAGA_PUBLIC_STATUS = {"held": "pending", "completed": "completed", "compensated": "compensated"}


def saga_dict(saga: Any) -> dict[str, Any]:
    """A cross-region transfer as the API shows it: its status and the saga's progress. saga is
    a sagas row, or the dict a batch inserts."""
    get = saga.get
    metadata = get("metadata")
    return {
        "id": get("id"),
        "type": "cross_region",
        "status": SAGA_PUBLIC_STATUS[get("status")],
        "debit_account_id": get("debit_account_id"),
        "credit_account_id": get("credit_account_id"),
        "amount": get("amount"),
        "currency": get("currency"),
        "reference": get("reference"),
        "metadata": msgspec.json.decode(metadata) if metadata else None,
        "reason": get("reason"),
        "created_at": rfc3339(get("created_at")),
        "deadline_at": rfc3339(get("deadline_at")),
        "finished_at": rfc3339(get("finished_at")),
        "progress": {
            "hold_transfer_id": get("hold_transfer_id"),
            "credit_transfer_id": get("credit_transfer_id"),
            "finish_transfer_id": get("finish_transfer_id"),
            "attempts": get("attempts") or 0,
            "last_error": get("last_error"),
        },
    }
