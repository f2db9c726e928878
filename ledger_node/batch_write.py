"""The one statement that writes a batch's decisions, and the literals its arguments travel in.

A batch's write is a server-side prepared statement of data-modifying CTEs, one per kind of row
the batch writes, each checking its own row count (``regiongate_expect``), sent as ``EXECUTE``
with every argument quoted, then ``COMMIT`` and the next batch's ``BEGIN``, in one
simple-protocol message (``ledger_node.store`` says why). A batch's statement holds only the
parts it has rows for, so each shape is prepared once per session under a name of its own.

The bulk (transfers, accounts, keys) travels as one PostgreSQL array literal per column, the rare
row sets (holds, bets, sagas, saga steps) as JSON documents; each UPDATE names its rows twice
(joined, and ``id = ANY``) so the planner reaches them by index. Why, with the measurements,
and what the CHECK constraints cost: docs/decisions/0006.

Over 400 lines: the statement and the arguments it takes must agree column for column, so
they live in one module.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import datetime

import msgspec

from ledger_node.answers import answer
from ledger_node.invariants import ensure
from ledger_node.operations import BatchState
from ledger_node.store import TransactionControl

# The write's parts, each a data-modifying CTE: its name, its statement, the parameter that holds
# the number of rows it must touch, and what those rows are. A batch's statement holds only the
# parts it has rows for (write_parts): a CTE with nothing to do still cost its executor start,
# about a tenth of a plain transfer batch's instructions (callgrind).
_WRITE_PARTS: tuple[tuple[str, str, int, str], ...] = (
    (
        "new_transfers",
        """
    INSERT INTO transfers (
        id, kind, flow, status, pending_id, debit_account_id, credit_account_id, amount,
        currency, timeout_at, reference, round_id, metadata, created_at,
        debit_posted_after, debit_debits_pending_after, debit_credits_pending_after,
        debit_version_after, credit_posted_after, credit_debits_pending_after,
        credit_credits_pending_after, credit_version_after)
    SELECT id, kind, flow, status, pending_id, debit_account_id, credit_account_id, amount,
           currency, timeout_at, reference, round_id, metadata, $1::timestamptz,
           dpa, ddpa, dcpa, dva, cpa, cdpa, ccpa, cva
    FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                $8::text[], $9::bigint[], $10::text[], $11::timestamptz[], $12::text[],
                $13::text[], $14::jsonb[], $15::bigint[], $16::bigint[], $17::bigint[],
                $18::bigint[], $19::bigint[], $20::bigint[], $21::bigint[], $22::bigint[])
      AS r(id, kind, flow, status, pending_id, debit_account_id, credit_account_id, amount,
           currency, timeout_at, reference, round_id, metadata, dpa, ddpa, dcpa, dva, cpa, cdpa,
           ccpa, cva)
    RETURNING id, flow, debit_account_id, credit_account_id, pending_id, debit_version_after
""",
        41,
        "transfers",
    ),
    (
        "changed_accounts",
        """
    UPDATE accounts a
    SET debits_posted = u.dp, credits_posted = u.cp, debits_pending = u.dpe,
        credits_pending = u.cpe, version = u.v
    FROM unnest($23::text[], $24::bigint[], $25::bigint[], $26::bigint[], $27::bigint[],
                $28::bigint[]) AS u(id, dp, cp, dpe, cpe, v)
    WHERE a.id = u.id AND a.id = ANY ($23::text[])
    RETURNING a.id
""",
        42,
        "accounts",
    ),
    (
        "resolved_pendings",
        """
    UPDATE transfers t
    SET status = u.status, resolved_amount = u.resolved_amount
    FROM json_to_recordset($36::json) AS u(id text, status text, resolved_amount bigint)
    WHERE t.id = u.id AND t.status = 'pending'
      AND t.id = ANY (ARRAY(SELECT x.id FROM json_to_recordset($36::json) AS x(id text)))
    RETURNING t.id
""",
        43,
        "holds",
    ),
    (
        "changed_bets",
        """
    INSERT INTO bets (account_id, reference, status, bet_transfer_id, rollback_transfer_id,
                      created_at)
    SELECT account_id, reference, status, bet_transfer_id, rollback_transfer_id,
           $1::timestamptz
    FROM json_to_recordset($37::json) AS b(account_id text, reference text, status text,
                                              bet_transfer_id text, rollback_transfer_id text)
    ON CONFLICT (account_id, reference) DO UPDATE
    SET status = EXCLUDED.status, bet_transfer_id = EXCLUDED.bet_transfer_id,
        rollback_transfer_id = EXCLUDED.rollback_transfer_id
    RETURNING 1
""",
        44,
        "bets",
    ),
    (
        "new_keys",
        """
    INSERT INTO idempotency_keys (key, request_hash, operation, result, transfer_id,
                                  status_code, body, created_at)
    -- body is the response's JSON text, kept byte for byte.
    SELECT key, decode(request_hash, 'hex'), operation, result, transfer_id, status_code,
           convert_to(body, 'UTF8'), $1::timestamptz
    FROM unnest($29::text[], $30::text[], $31::text[], $32::text[], $33::text[],
                $34::smallint[], $35::text[])
      AS k(key, request_hash, operation, result, transfer_id, status_code, body)
    RETURNING 1
""",
        45,
        "keys",
    ),
    (
        "new_sagas",
        """
    INSERT INTO sagas (id, status, debit_account_id, credit_account_id, credit_region, amount,
                       currency, hold_transfer_id, reference, metadata, deadline_at,
                       next_attempt_at, lease_owner, lease_until, created_at)
    SELECT id, status, debit_account_id, credit_account_id, credit_region, amount, currency,
           hold_transfer_id, reference, metadata, deadline_at, next_attempt_at, lease_owner,
           lease_until, $1::timestamptz
    FROM json_to_recordset($38::json) AS s(
        id text, status text, debit_account_id text, credit_account_id text,
        credit_region text, amount bigint, currency text, hold_transfer_id text,
        reference text, metadata jsonb, deadline_at timestamptz, next_attempt_at timestamptz,
        lease_owner text, lease_until timestamptz)
    RETURNING 1
""",
        46,
        "sagas",
    ),
    (
        "finished_sagas",
        """
    UPDATE sagas s
    SET status = f.status, finish_transfer_id = f.finish_transfer_id,
        credit_transfer_id = f.credit_transfer_id, reason = f.reason,
        finished_at = $1::timestamptz, lease_owner = NULL, lease_until = NULL
    FROM json_to_recordset($39::json) AS f(id text, status text, finish_transfer_id text,
                                              credit_transfer_id text, reason text)
    WHERE s.id = f.id AND s.status = 'held'
      AND s.id = ANY (ARRAY(SELECT x.id FROM json_to_recordset($39::json) AS x(id text)))
    RETURNING s.id, s.status
""",
        47,
        "finished sagas",
    ),
    (
        "new_steps",
        """
    INSERT INTO saga_steps (step_id, saga_id, origin_region, status, transfer_id, amount,
                            reason, created_at)
    SELECT step_id, saga_id, origin_region, status, transfer_id, amount, reason,
           $1::timestamptz
    FROM json_to_recordset($40::json) AS g(step_id text, saga_id text, origin_region text,
                                              status text, transfer_id text, amount bigint,
                                              reason text)
    RETURNING 1
""",
        48,
        "saga steps",
    ),
)
# The bits of the first three parts, which the reference check below relies on.
_NEW_TRANSFERS, _CHANGED_ACCOUNTS, _RESOLVED_PENDINGS = 1, 2, 4
_FINISHED_SAGAS = 1 << 6
ensure(
    [name for name, _, _, _ in _WRITE_PARTS[:3]]
    == ["new_transfers", "changed_accounts", "resolved_pendings"],
    "the write's first parts are its transfers, accounts and holds",
)
ALL_WRITE_PARTS = (1 << len(_WRITE_PARTS)) - 1
OUTBOX = 1 << len(_WRITE_PARTS)
"""Not a table of its own among the parts: the bit that adds the outbox's rows for the batch's
new transfers and finished sagas (docs/events.md), one row each, from those parts' RETURNING."""

# A transfer's event type, by its flow.
_TRANSFER_EVENT = (
    "'transfer.' || CASE flow WHEN 'single' THEN 'posted' WHEN 'pending' THEN 'pending'"
    " WHEN 'post' THEN 'posted_from_pending' WHEN 'void' THEN 'voided' ELSE 'expired' END"
)


def _outbox_cte(parts: int) -> str:
    sources = []
    if parts & _NEW_TRANSFERS:
        sources.append(
            f"SELECT 'transfer', {_TRANSFER_EVENT}, id, debit_account_id, debit_version_after"
            " FROM new_transfers"
        )
    if parts & _FINISHED_SAGAS:
        sources.append("SELECT 'saga', 'saga.' || status, id, id, 1 FROM finished_sagas")
    ensure(bool(sources), "the outbox bit with neither transfers nor finished sagas")
    union = "\n    UNION ALL ".join(sources)
    return (
        "new_events AS (\n    INSERT INTO outbox (family, type, ref, aggregate_id, version,"
        f" created_at)\n    SELECT e.*, $1::timestamptz FROM (\n    {union}) AS e\n"
        "    RETURNING 1\n)"
    )


_WRITE_TYPES = (
    ["timestamptz"]
    + ["text[]"] * 7
    + ["bigint[]", "text[]", "timestamptz[]", "text[]", "text[]", "jsonb[]"]
    + ["bigint[]"] * 8
    + ["text[]"]
    + ["bigint[]"] * 5
    + ["text[]"] * 5
    + ["smallint[]", "text[]"]
    + ["json"] * 5
    + ["bigint"] * 8
)
# The column arrays among the parameters ($2 to $35, the bulk), and which of them hold integers.
_ARRAY_TYPES = [kind for kind in _WRITE_TYPES if kind.endswith("[]")]
_INTEGER_ARRAYS = frozenset({"bigint[]", "smallint[]"})


@functools.cache
def write_sql(parts: int) -> str:
    """The write of a batch with these parts (a bit per _WRITE_PARTS entry): their CTEs, each
    one's row count checked, and the references that stand in for foreign keys (migration
    0005): each new transfer names two accounts this statement updates, and a resolution the
    hold it resolves. write_parts includes the accounts with any transfer and the holds with any
    resolution, so that check always has what it compares against."""
    ensure(
        0 < parts & ALL_WRITE_PARTS and parts <= ALL_WRITE_PARTS | OUTBOX,
        f"no such set of write parts: {parts}",
    )
    chosen = [part for bit, part in enumerate(_WRITE_PARTS) if parts & (1 << bit)]
    ctes = ",\n".join(f"{name} AS (\n{body.strip(chr(10))}\n)" for name, body, _, _ in chosen)
    if parts & OUTBOX:
        # Its rows are those of the parts it reads, inserted without a conflict clause: no
        # count of its own to check.
        ctes += ",\n" + _outbox_cte(parts)
    checks = [
        f"regiongate_expect((SELECT count(*) FROM {name}), ${param}::bigint, '{label}')"
        for name, _, param, label in chosen
    ]
    if parts & _NEW_TRANSFERS:
        ensure(parts & _CHANGED_ACCOUNTS, "a write of transfers updates their accounts")
        unresolved = (
            "(n.pending_id IS NOT NULL AND NOT EXISTS"
            " (SELECT 1 FROM resolved_pendings p WHERE p.id = n.pending_id))"
            if parts & _RESOLVED_PENDINGS
            else "n.pending_id IS NOT NULL"
        )
        checks.append(
            "regiongate_expect((SELECT count(*) FROM new_transfers n WHERE"
            " NOT EXISTS (SELECT 1 FROM changed_accounts c WHERE c.id = n.debit_account_id)"
            " OR NOT EXISTS (SELECT 1 FROM changed_accounts c WHERE c.id = n.credit_account_id)"
            f" OR {unresolved}), 0, 'transfers naming an account or a hold it did not update')"
        )
    return f"WITH {ctes}\nSELECT " + ",\n       ".join(checks)


def write_statement_name(parts: int) -> str:
    return f"regiongate_write_{parts:03x}"


def prepare_write(parts: int) -> str:
    """PREPARE of the write with these parts. Every shape takes the same parameters, so one
    set of arguments serves them all; a shape leaves the others unread."""
    return (
        f"PREPARE {write_statement_name(parts)} ({', '.join(_WRITE_TYPES)}) AS {write_sql(parts)}"
    )


def write_is_prepared(parts: int) -> str:
    return (
        "SELECT count(*) FROM pg_prepared_statements WHERE name = '"
        + write_statement_name(parts)
        + "'"
    )


_json_encoder = msgspec.json.Encoder()


def sql_literal(value: str) -> str:
    """A standard SQL string literal (the batch connections force standard_conforming_strings
    on, so a backslash is an ordinary character and only the quote needs doubling). PostgreSQL
    text cannot hold NUL, and the request schemas refuse it, so meeting one here is a bug."""
    ensure("\x00" not in value, "NUL in a value bound for a SQL literal")
    return "'" + value.replace("'", "''") + "'"


def text_array(values: Sequence[str | None]) -> str:
    """A PostgreSQL array literal of text: each element in double quotes with its backslashes
    and double quotes escaped (array syntax, whatever the element holds), None as NULL. The
    escaping runs once over the joined elements, in C, rather than once per element."""
    if not values:
        return "{}"
    if None in values:
        return "{" + ",".join("NULL" if v is None else text_array([v])[1:-1] for v in values) + "}"
    joined = "\x00".join(values)
    # NUL joins the elements here, so none may hold one (PostgreSQL text cannot either).
    ensure(joined.count("\x00") == len(values) - 1, "NUL in a value bound for an array literal")
    escaped = joined.replace("\\", "\\\\").replace('"', '\\"')
    return '{"' + escaped.replace("\x00", '","') + '"}'


def int_array(values: Iterable[int]) -> str:
    """A PostgreSQL array literal of integers."""
    return "{" + ",".join(map(str, values)) + "}"


def write_arguments(state: BatchState) -> list[str | int | datetime]:
    """The parameters of every shape of the write, in _WRITE_TYPES' order: the transfers, the
    accounts and the keys as one array literal per column, the rare row sets as JSON documents
    (msgspec encodes them in C), then each part's row count."""
    # Long: one argument per column of one statement, in the statement's order.
    rows = state.rows
    accounts = [state.accounts[account_id] for account_id in sorted(state.touched)]
    keys = [
        (key, request_hash, outcome, name)
        for key, (request_hash, outcome, name) in state.new_keys.items()
    ]
    pendings = [
        {"id": p.id, "status": p.status, "resolved_amount": p.resolved_amount}
        for p in state.pendings.values()
        if p.dirty
    ]
    bets = [
        {
            "account_id": b.account_id,
            "reference": b.reference,
            "status": b.status,
            "bet_transfer_id": b.bet_transfer_id,
            "rollback_transfer_id": b.rollback_transfer_id,
        }
        for b in state.bets.values()
        if b.dirty
    ]
    new_sagas = [
        {**saga.new, "metadata": msgspec.Raw(saga.new["metadata"].encode())}
        if saga.new["metadata"]
        else saga.new
        for saga in state.sagas.values()
        if saga.new is not None
    ]
    finished_sagas = [saga.finished for saga in state.sagas.values() if saga.finished]
    steps = [step.new for step in state.steps.values() if step.new is not None]

    # One pass over each row set, then a transposition in C: a column per array, in the
    # parameters' order ($2 to $35), each encoded as its declared type says.
    columns = [
        *_transpose(
            (
                (
                    r.id,
                    r.kind,
                    r.flow,
                    r.status,
                    r.pending_id,
                    r.debit_account_id,
                    r.credit_account_id,
                    r.amount,
                    r.currency,
                    None if r.timeout_at is None else r.timeout_at.isoformat(),
                    r.reference,
                    r.round_id,
                    r.metadata,
                    *r.debit_after,
                    *r.credit_after,
                )
                for r in rows
            ),
            21,
        ),
        *_transpose(
            (
                (
                    a.id,
                    a.debits_posted,
                    a.credits_posted,
                    a.debits_pending,
                    a.credits_pending,
                    a.version,
                )
                for a in accounts
            ),
            6,
        ),
        *_transpose(
            (
                (
                    key,
                    request_hash.hex(),
                    name,
                    outcome.result.value,
                    outcome.transfer_id,
                    *_answer_text(outcome),
                )
                for key, request_hash, outcome, name in keys
            ),
            7,
        ),
    ]
    encode = _json_encoder.encode
    return [
        state.now,
        *(
            int_array(column) if kind in _INTEGER_ARRAYS else text_array(column)
            for kind, column in zip(_ARRAY_TYPES, columns, strict=True)
        ),
        encode(pendings).decode(),
        encode(bets).decode(),
        encode(new_sagas).decode(),
        encode(finished_sagas).decode(),
        encode(steps).decode(),
        len(rows),
        len(accounts),
        len(pendings),
        len(bets),
        len(keys),
        len(new_sagas),
        len(finished_sagas),
        len(steps),
    ]


def _transpose(records: Iterable[tuple], width: int) -> list[tuple]:
    """Rows of width values as width columns (empty columns for no rows)."""
    return list(zip(*records, strict=True)) or [()] * width


# Every batch ends by opening the next one's transaction, so that batch starts with its locks
# and reads. Opening it only when work was queued did worse: with two writers the other had
# often taken that work, so most batches paid a round trip for their BEGIN.
COMMIT_AND_BEGIN = TransactionControl.COMMIT_AND_BEGIN.value


WRITE_ARGUMENTS = len(_WRITE_TYPES)
COUNT_ARGUMENTS = 8


def write_parts(state: BatchState, arguments: list, outbox: bool = True) -> int:
    """The parts a batch's write needs: those with rows, the accounts with any transfer, the
    holds with any transfer that names one, and (outbox) the events of its transfers and
    finished sagas."""
    counts = arguments[-COUNT_ARGUMENTS:]
    parts = sum(1 << bit for bit, count in enumerate(counts) if count)
    if parts & _NEW_TRANSFERS:
        parts |= _CHANGED_ACCOUNTS
        if any(row.pending_id is not None for row in state.rows):
            parts |= _RESOLVED_PENDINGS
    if outbox and parts & (_NEW_TRANSFERS | _FINISHED_SAGAS):
        parts |= OUTBOX
    return parts


def write_statement(
    state: BatchState, parts: int | None = None, outbox: bool = True
) -> tuple[int, str]:
    """The parts of this batch's write (or those given), and the EXECUTE of the statement
    prepared for them, every argument quoted."""
    arguments = write_arguments(state)
    ensure(len(arguments) == WRITE_ARGUMENTS, f"the write takes {WRITE_ARGUMENTS} arguments")
    if parts is None:
        parts = write_parts(state, arguments, outbox)
    literals = [sql_literal(arguments[0].isoformat())]
    literals.extend(sql_literal(value) for value in arguments[1:-COUNT_ARGUMENTS])
    literals.extend(str(int(count)) for count in arguments[-COUNT_ARGUMENTS:])
    return parts, f"EXECUTE {write_statement_name(parts)}({', '.join(literals)})"


def write_and_commit_message(
    state: BatchState, parts: int | None = None, outbox: bool = True
) -> tuple[int, str]:
    """The write, COMMIT, and the next batch's BEGIN: one message, with the write's parts."""
    parts, statement = write_statement(state, parts, outbox)
    return parts, f"{statement}; {COMMIT_AND_BEGIN}"


def has_writes(state: BatchState) -> bool:
    return bool(
        state.rows
        or state.new_keys
        or any(b.dirty for b in state.bets.values())
        or any(s.new is not None or s.finished for s in state.sagas.values())
        or any(step.new is not None for step in state.steps.values())
    )


def _answer_text(outcome) -> tuple[int, str]:
    """The answer stored with a key: what the edge answers the first request, so a replay
    answers the same bytes."""
    status, body = answer(outcome)
    return status, body.decode()
