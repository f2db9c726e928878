"""The one place that turns ledger outcomes into wire bytes: transfers as JSON, and every error
as an RFC 9457 problem+json document with a stable type."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from ledger_node.results import PROBLEMS, Problem, Result

PROBLEM_CONTENT_TYPE = "application/problem+json"
JSON_CONTENT_TYPE = "application/json"

_encoder = msgspec.json.Encoder()
encode = _encoder.encode


def rfc3339(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def problem_body(problem: Problem, detail: str | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"type": problem.type, "title": problem.title, "status": problem.status}
    if detail:
        body["detail"] = detail
    field_name = extra.pop("field", None) or problem.field
    if field_name:
        body["field"] = field_name
    body.update(extra)
    return encode(body)


def result_problem(result: Result, detail: str | None = None, **extra: Any) -> tuple[int, bytes]:
    problem = PROBLEMS[result]
    return problem.status, problem_body(problem, detail, code=result.value, **extra)


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
