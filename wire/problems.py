"""The one renderer of RFC 9457 problem documents, and the one exception that carries a problem
to the API edge, for both services: a client sees one vocabulary whichever layer answered."""

from __future__ import annotations

from typing import Any

import msgspec

from wire.results import PROBLEMS, Problem, Result

PROBLEM_CONTENT_TYPE = "application/problem+json"
JSON_CONTENT_TYPE = "application/json"
REPLAYED_HEADER = "Idempotent-Replayed"
"""On an answer that an idempotency key replayed: the original answer, not a new effect."""

encode = msgspec.json.Encoder().encode


def problem_body(problem: Problem, detail: str | None = None, **extra: Any) -> bytes:
    """The document: type, title and status, then detail and field when there are any, then
    extension members (RFC 9457, 3.2)."""
    body: dict[str, Any] = {"type": problem.type, "title": problem.title, "status": problem.status}
    if detail:
        body["detail"] = detail
    field_name = extra.pop("field", None) or problem.field
    if field_name:
        body["field"] = field_name
    body.update(extra)
    return encode(body)


def result_problem(result: Result, detail: str | None = None, **extra: Any) -> tuple[int, bytes]:
    """A ledger outcome's status and document; ``code`` is the result's own name."""
    problem = PROBLEMS[result]
    return problem.status, problem_body(problem, detail, code=result.value, **extra)


class ProblemError(Exception):
    """Raised anywhere on a request's path to answer with a problem; carries its context:
    the detail, extension members, a Retry-After and any other headers."""

    def __init__(
        self,
        problem: Problem,
        detail: str | None = None,
        *,
        retry_after_s: int | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or problem.title)
        self.problem = problem
        self.detail = detail
        self.retry_after_s = retry_after_s
        self.headers = headers or {}
        self.extra = extra
