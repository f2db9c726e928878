"""What the migration decides for one row before anything is written, in Python: the same
username check the live path makes, a repair of an invalid name where one exists, and the
row's generated name and public id, both keyed hashes of its legacy id under the migration's
secret (so a rerun, or a run on another copy of the databases, decides the same; and neither
can be traced back to the legacy id without the secret)."""

from __future__ import annotations

import hmac
import re
import unicodedata

from identity.usernames import (
    FALLBACK_ALPHABET,
    FALLBACK_PREFIX,
    FALLBACK_SUFFIX_LENGTH,
    Username,
    UsernameRefused,
    UsernameRule,
    UsernameRules,
    check,
    skeleton,
)
from wire.ids import identity_slot, player_id_of


def repair(raw: str | None, rules: UsernameRules) -> Username | None:
    """An invalid name made valid where that keeps it recognisable: width and compatibility
    forms folded (NFKC), every character that is not a letter, a digit or allowed
    punctuation dropped (spaces, zero-width and bidirectional controls, emoji), punctuation
    runs collapsed and trimmed, and cut to the longest length. None when the result still
    breaks a rule (mixed scripts, all digits, too short, reserved)."""
    if not raw:
        return None
    text = unicodedata.normalize("NFKC", raw)
    allowed = rules.punctuation
    text = "".join(c for c in text if unicodedata.category(c)[0] in "LN" or c in allowed)
    if allowed:
        text = re.sub(f"[{re.escape(allowed)}]+", lambda m: m.group(0)[0], text)
    text = text.strip(allowed)[: rules.length_max].strip(allowed)
    try:
        return check(text, rules)
    except UsernameRefused:
        return None


def _digest(secret: bytes, purpose: str, run: str, legacy_id: str) -> bytes:
    return hmac.digest(secret, f"{purpose}:{run}:{legacy_id}".encode(), "sha256")


_LETTER_OF_BYTE = bytes(ord(FALLBACK_ALPHABET[b % len(FALLBACK_ALPHABET)]) for b in range(256))


def generated_name(secret: bytes, run: str, legacy_id: str) -> Username:
    """``player`` and ten letters, as the live path's fallback, drawn by a keyed hash."""
    digest = _digest(secret, "name", run, legacy_id)
    name = FALLBACK_PREFIX + digest[:FALLBACK_SUFFIX_LENGTH].translate(_LETTER_OF_BYTE).decode()
    return Username(name, skeleton(name))


def public_id(secret: bytes, run: str, legacy_id: str) -> str:
    return player_id_of(_digest(secret, "id", run, legacy_id))


def staged(run: str, row, rules: UsernameRules, secret: bytes) -> tuple:
    """The row as migration.staged holds it (sql.WORK_SCHEMA's column order)."""
    canonical = skeleton_ = rule = None
    repaired = None
    try:
        name = check(row.username or "", rules)
        canonical, skeleton_ = name.canonical, name.skeleton
    except UsernameRefused as exc:
        rule = exc.rule.value
        if exc.rule is not UsernameRule.RESERVED:
            repaired = repair(row.username, rules)
    generated = generated_name(secret, run, row.legacy_id)
    player_id = public_id(secret, run, row.legacy_id)
    return (
        run,
        row.line,
        row.legacy_id,
        row.username,
        canonical,
        skeleton_,
        rule,
        repaired.canonical if repaired else None,
        repaired.skeleton if repaired else None,
        generated.canonical,
        generated.skeleton,
        player_id,
        row.created_at,
        row.date_broken,
        row.home_region,
        identity_slot(skeleton_) if skeleton_ is not None else None,
        identity_slot(player_id),
    )


def digit_skeletons() -> str:
    """The skeleton of each digit 0-9, one character each: what a number appended to a name
    adds to its skeleton (for SQL's translate())."""
    mapped = "".join(skeleton(str(d)) for d in range(10))
    if len(mapped) != 10:
        raise ValueError(f"a digit's skeleton is not one character: {mapped!r}")
    return mapped
