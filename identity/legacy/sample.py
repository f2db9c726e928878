"""``regiongate identity legacy-sample``: a legacy export with the mess real systems have, for
the tests and the benchmark. Streamed (any number of rows in bounded memory), and the same
file for the same seed.

The mix, in proportions of the rows (PROPORTIONS): clean names; case twins, exact
collisions and look-alike twins (0 for o, 1 for l, rn for m, or the same name in Cyrillic
look-alikes) of earlier names; names mixing Latin and Cyrillic; zero-width characters;
emoji; over-long names; reserved words; empty names; all-digit names; rows repeated whole
(duplicate legacy rows); unreadable dates. Every row has an ``email`` column that the migration
ignores, and a country (a few a region code instead).
"""

from __future__ import annotations

import collections
import csv
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

PROPORTIONS = {
    "clean": 0.62,
    "case_twin": 0.08,
    "collision": 0.08,
    "look_alike": 0.03,
    "mixed_script": 0.02,
    "zero_width": 0.02,
    "emoji": 0.02,
    "over_long": 0.02,
    "reserved": 0.01,
    "empty": 0.04,
    "all_digits": 0.03,
    "duplicate_row": 0.02,
    "broken_date": 0.01,
}
SYLLABLES = (
    "ka", "lo", "mi", "ra", "ne", "to", "su", "vi", "da", "ze", "ri", "mo", "ba", "lu", "xe",
    "jo", "pe", "an", "el", "or", "ix", "ul", "en", "sa", "ti", "ko", "fa", "ga", "he", "wi",
)  # fmt: skip
LATIN_TO_CYRILLIC = dict(zip("aeopcxy", "\u0430\u0435\u043e\u0440\u0441\u0445\u0443", strict=True))
"""Latin letters and their Cyrillic look-alikes (a, ie, o, er, es, ha, u)."""
COUNTRIES = ("DE", "FR", "GB", "ES", "IT", "US", "CA", "BR", "MX", "JP", "SG", "AU", "IN")
RESERVED = ("admin", "support", "root", "Moderator", "SYSTEM")
RECENT_MAX = 50_000
"""Earlier names the twins are drawn from: a bounded window, so memory does not grow."""
HEADER = ("legacy_id", "username", "created_at", "country", "region", "email")


def _clean(rng: random.Random) -> str:
    name = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
    if rng.random() < 0.5:
        name += str(rng.randint(1, 9999))
    if rng.random() < 0.15:
        name = name[:3] + rng.choice("._-") + name[3:]
    return name.capitalize() if rng.random() < 0.4 else name


def _look_alike(name: str, rng: random.Random) -> str:
    letters = name.lower()
    if rng.random() < 0.3 and set(letters) <= set(LATIN_TO_CYRILLIC):
        return "".join(LATIN_TO_CYRILLIC[c] for c in letters)
    for a, b in (("o", "0"), ("l", "1"), ("m", "rn")):
        if a in letters:
            return letters.replace(a, b, 1)
    return letters.upper()


def rows(count: int, seed: int):
    """(kind, fields) for count rows."""
    rng = random.Random(seed)
    recent: collections.deque[str] = collections.deque(maxlen=RECENT_MAX)
    written: collections.deque[tuple] = collections.deque(maxlen=1_000)
    kinds, weights = zip(*PROPORTIONS.items(), strict=True)
    start = datetime(2005, 1, 1, tzinfo=UTC)
    for n in range(count):
        kind = rng.choices(kinds, weights)[0]
        if kind == "duplicate_row" and written:
            yield kind, rng.choice(written)
            continue
        earlier = rng.choice(recent) if recent else _clean(rng)
        special = {
            "case_twin": earlier.swapcase(),
            "collision": earlier,
            "look_alike": _look_alike(earlier, rng),
            "mixed_script": "\u0441" + _clean(rng).lower(),  # a Cyrillic es first
            "zero_width": earlier[:2] + "\u200b" + earlier[2:],
            "emoji": _clean(rng) + rng.choice("😀🎰💰🔥"),
            "over_long": _clean(rng) * 6,
            "reserved": rng.choice(RESERVED),
            "empty": "",
            "all_digits": str(rng.randint(100, 99_999_999)),
        }
        name = special[kind] if kind in special else _clean(rng)
        if kind in ("clean", "broken_date"):
            recent.append(name)
        created = start + timedelta(seconds=rng.randint(0, 20 * 365 * 86_400))
        created_text = (
            rng.choice(("2019-13-45", "yesterday", "00/00/0000"))
            if kind == "broken_date"
            else created.isoformat().replace("+00:00", "Z")
        )
        country = rng.choice(COUNTRIES)
        region = rng.choice(("eu", "us", "ap")) if rng.random() < 0.03 else ""
        fields = (str(10_000_000 + n), name, created_text, country, region, f"u{n}@example.com")
        written.append(fields)
        yield kind, fields


def write_sample(path: Path, count: int, seed: int) -> dict[str, int]:
    """Write count rows (CSV, or JSON lines for a .jsonl path); the rows of each kind."""
    tally: collections.Counter[str] = collections.Counter()
    with path.open("w", newline="", encoding="utf-8") as handle:
        if path.suffix == ".jsonl":
            for kind, fields in rows(count, seed):
                tally[kind] += 1
                handle.write(json.dumps(dict(zip(HEADER, fields, strict=True))) + "\n")
        else:
            writer = csv.writer(handle)
            writer.writerow(HEADER)
            for kind, fields in rows(count, seed):
                tally[kind] += 1
                writer.writerow(fields)
    return dict(tally)
