"""Reading a legacy export, streamed (never held whole): CSV with a header or JSON lines from a
file, or the rows of a PostgreSQL query through a DSN. Each row becomes a LegacyRow, or a
Malformed with its line and legacy id and why; unknown columns are ignored.

Columns: ``legacy_id`` (required), ``username`` (may be missing or empty), ``created_at`` (RFC
3339 or ``YYYY-MM-DD[ HH:MM:SS]``; an unreadable one is kept as unknown, and sorts last when
names are contested), and ``region`` or ``country`` (mapped to a region by the configuration).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

LEGACY_ID_LENGTH_MAX = 128
RAW_USERNAME_LENGTH_MAX = 1024
"""Longer raw names are cut here (the rules refuse them anyway): a row's size is bounded."""
CSV_FIELD_SIZE_MAX = 1 << 16
JSONL_LINE_SIZE_MAX = 1 << 16
"""A JSON line longer than this (characters) is a malformed row, read past without being held."""


@dataclass(frozen=True, slots=True)
class LegacyRow:
    line: int
    legacy_id: str
    username: str | None
    created_at: datetime | None
    date_broken: bool
    home_region: str


@dataclass(frozen=True, slots=True)
class Malformed:
    line: int
    legacy_id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class HomeRules:
    """How a row's home region is decided: its ``region`` if known, else its ``country``
    through ``countries``, else ``default_region`` (None: such a row is malformed)."""

    regions: frozenset[str]
    countries: Mapping[str, str]
    default_region: str | None = None


def _text(value) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text.replace("\x00", "\ufffd")  # PostgreSQL text holds no NUL; the rules refuse it


def parse_date(raw) -> datetime | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, datetime):
        return raw if raw.tzinfo else raw.replace(tzinfo=UTC)
    try:
        moment = datetime.fromisoformat(str(raw).strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if not 1970 <= moment.year <= 2100:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse(line: int, fields: Mapping, homes: HomeRules) -> LegacyRow | Malformed:
    legacy_id = _text(fields.get("legacy_id"))
    if legacy_id is not None:
        legacy_id = legacy_id.strip()
    if not legacy_id:
        return Malformed(line, None, "no legacy_id")
    if len(legacy_id) > LEGACY_ID_LENGTH_MAX:
        return Malformed(line, legacy_id[:LEGACY_ID_LENGTH_MAX], "legacy_id too long")
    region = _text(fields.get("region"))
    home = region.strip().lower() if region else None
    if home not in homes.regions:
        country = _text(fields.get("country"))
        home = homes.countries.get(country.strip().upper()) if country else None
        home = home or homes.default_region
    if home is None:
        return Malformed(line, legacy_id, "no known region or country")
    username = _text(fields.get("username"))
    if username is not None:
        username = username[:RAW_USERNAME_LENGTH_MAX]
    raw_date = fields.get("created_at")
    created_at = parse_date(raw_date)
    broken = created_at is None and raw_date not in (None, "")
    return LegacyRow(line, legacy_id, username or None, created_at, broken, home)


def read_file(path: Path, homes: HomeRules, skip_lines: int = 0) -> Iterator[LegacyRow | Malformed]:
    """Rows of a CSV (with a header) or JSON-lines file, after the first skip_lines data lines
    (a resumed run's staged ones). Lines count from 1, the header excluded."""
    if path.suffix in (".jsonl", ".ndjson", ".json"):
        yield from _read_jsonl(path, homes, skip_lines)
    else:
        yield from _read_csv(path, homes, skip_lines)


def _read_csv(path: Path, homes: HomeRules, skip_lines: int) -> Iterator[LegacyRow | Malformed]:
    csv.field_size_limit(CSV_FIELD_SIZE_MAX)
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle)
        header = [name.strip().lower() for name in next(reader, [])]
        for line, values in enumerate(reader, start=1):
            if line <= skip_lines:
                continue
            if len(values) != len(header):
                legacy_id = (
                    values[header.index("legacy_id")]
                    if "legacy_id" in header and len(values) > header.index("legacy_id")
                    else None
                )
                yield Malformed(line, legacy_id, f"{len(values)} fields, header has {len(header)}")
                continue
            yield parse(line, dict(zip(header, values, strict=True)), homes)


def _bounded_lines(handle, limit: int) -> Iterator[str | None]:
    """The file's lines, each read at most limit characters at a time; None for a longer one
    (the rest of it skipped in pieces of limit: memory stays bounded whatever the file holds)."""
    while True:
        text = handle.readline(limit + 1)
        if not text:
            return
        if len(text) <= limit or text.endswith("\n"):
            yield text
            continue
        while text and not text.endswith("\n"):
            text = handle.readline(limit + 1)
        yield None


def _read_jsonl(path: Path, homes: HomeRules, skip_lines: int) -> Iterator[LegacyRow | Malformed]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line, text in enumerate(_bounded_lines(handle, JSONL_LINE_SIZE_MAX), start=1):
            if line <= skip_lines:
                continue
            if text is None:
                yield Malformed(line, None, f"line longer than {JSONL_LINE_SIZE_MAX} characters")
                continue
            try:
                fields = json.loads(text)
            except ValueError:
                yield Malformed(line, None, "not JSON")
                continue
            if not isinstance(fields, dict):
                yield Malformed(line, None, "not a JSON object")
                continue
            yield parse(line, fields, homes)


async def read_query(
    dsn: str, query: str, homes: HomeRules, skip_lines: int = 0, prefetch: int = 10_000
) -> AsyncIterator[LegacyRow | Malformed]:
    """The rows of a query on the legacy database, through a server-side cursor: bounded
    memory however many rows it returns. Its order must be stable for a resume (ORDER BY)."""
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        async with connection.transaction(readonly=True, isolation="repeatable_read"):
            line = 0
            async for record in connection.cursor(query, prefetch=prefetch):
                line += 1
                if line > skip_lines:
                    yield parse(line, dict(record), homes)
    finally:
        await connection.close()


def sample_csv_line(fields: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(fields)
    return out.getvalue()
