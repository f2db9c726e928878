"""The username rules and the public id, the pure core of identity (issue 26).

Proved: a table of bad names (empty, too long, mixed script, zero-width characters,
right-to-left overrides, emoji, all digits, reserved words and their look-alikes, leading dot,
doubled punctuation, NUL) each refused with its rule; canonical forms as RFC 8265 gives them;
look-alike names share a skeleton, different names do not; under Hypothesis, checking is
idempotent (the canonical form of a canonical form is itself, with the same skeleton) and never
fails but by naming a rule; every generated fallback is valid and they do not repeat; the
public id is uniform over its alphabet at every position (chi-square over 100,000 ids), shares
no prefix beyond its type prefix, and does not sort by creation.
"""

from __future__ import annotations

import collections
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from identity.usernames import UsernameRefused, UsernameRule, UsernameRules, check, fallback
from tests.support import property_settings
from wire.ids import PLAYER_ID_PATTERN, PLAYER_ID_PREFIX, new_player_id

RULES = UsernameRules()


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        ("", UsernameRule.EMPTY),
        ("ab", UsernameRule.TOO_SHORT),
        ("a" * 25, UsernameRule.TOO_LONG),
        ("x" * 10_000, UsernameRule.TOO_LONG),
        ("pаypаl", UsernameRule.MIXED_SCRIPT),  # Cyrillic а inside Latin
        ("abcδεζ", UsernameRule.MIXED_SCRIPT),
        ("zero\u200bwidth", UsernameRule.DISALLOWED_CHARACTER),
        ("join\u200dme", UsernameRule.DISALLOWED_CHARACTER),
        ("evil\u202egnp", UsernameRule.DISALLOWED_CHARACTER),  # right-to-left override
        ("\u2066isolate", UsernameRule.DISALLOWED_CHARACTER),
        ("smile😀", UsernameRule.DISALLOWED_CHARACTER),
        ("two words", UsernameRule.DISALLOWED_CHARACTER),
        ("nul\x00byte", UsernameRule.DISALLOWED_CHARACTER),
        ("tab\there", UsernameRule.DISALLOWED_CHARACTER),
        ("1234567", UsernameRule.ALL_DIGITS),
        ("१२३४५", UsernameRule.ALL_DIGITS),  # Devanagari digits
        ("١٢٣٤", UsernameRule.DISALLOWED_CHARACTER),  # Arabic-Indic digits alone: bidi rule
        ("admin", UsernameRule.RESERVED),
        ("ADMIN", UsernameRule.RESERVED),
        ("аdmin", UsernameRule.MIXED_SCRIPT),  # a look-alike of a reserved word
        ("adrnin", UsernameRule.RESERVED),  # rn looks like m: same skeleton as admin
        ("support", UsernameRule.RESERVED),
        (".dotfirst", UsernameRule.PUNCTUATION),
        ("dotlast.", UsernameRule.PUNCTUATION),
        ("two..dots", UsernameRule.PUNCTUATION),
        ("a+b+c", UsernameRule.PUNCTUATION),
        ("semi;colon", UsernameRule.PUNCTUATION),
    ],
)
def test_a_bad_name_is_refused_naming_its_rule(raw, rule):
    with pytest.raises(UsernameRefused) as refused:
        check(raw, RULES)
    assert refused.value.rule is rule, (raw, refused.value.detail)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("Juliet", "juliet"),
        ("ＪＵＬＩＥＴ", "juliet"),  # fullwidth is width-mapped
        ("Müller", "müller"),
        ("ΣΑΣ", "σας"),
        ("user_01", "user_01"),
        ("ab-cd.ef", "ab-cd.ef"),
        ("日本語", "日本語"),
        ("カタカナー", "カタカナー"),  # the prolonged sound mark goes with katakana
        ("Ѕсоре", "ѕсоре"),  # all Cyrillic: one script, allowed
    ],
)
def test_a_good_name_takes_its_canonical_form(raw, canonical):
    assert check(raw, RULES).canonical == canonical


def test_look_alike_names_share_a_skeleton_and_others_do_not():
    assert check("scope", RULES).skeleton == check("Ѕсоре", RULES).skeleton  # Latin, Cyrillic
    assert check("rnoney", RULES).skeleton == check("money", RULES).skeleton
    assert check("user_01", RULES).skeleton == check("user_Ol", RULES).skeleton
    assert check("juliet", RULES).skeleton != check("romeo", RULES).skeleton


def test_the_rules_are_configurable_and_bounded():
    strict = UsernameRules(length_min=5, length_max=8, punctuation="", reserved=("juliet",))
    with pytest.raises(UsernameRefused, match="at least 5"):
        check("abc", strict)
    with pytest.raises(UsernameRefused) as refused:
        check("a.bcdef", strict)
    assert refused.value.rule is UsernameRule.PUNCTUATION
    with pytest.raises(UsernameRefused) as refused:
        check("JULIET", strict)
    assert refused.value.rule is UsernameRule.RESERVED
    with pytest.raises(ValueError, match="exceeds"):
        UsernameRules(length_min=9, length_max=8)


names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=40
)


@property_settings(300)
@given(raw=names)
def test_checking_is_idempotent_and_only_refuses_by_a_rule(raw):
    try:
        name = check(raw, RULES)
    except UsernameRefused as refused:
        assert refused.rule in UsernameRule
        return
    again = check(name.canonical, RULES)
    assert again == name


def test_generated_fallbacks_are_valid_and_do_not_repeat():
    generated = [fallback(RULES) for _ in range(10_000)]
    assert len({name.canonical for name in generated}) == len(generated)
    assert all(check(name.canonical, RULES) == name for name in generated)


def test_the_public_id_reveals_nothing_and_is_uniform():
    ids = [new_player_id() for _ in range(100_000)]
    assert all(PLAYER_ID_PATTERN.match(i) for i in ids) and len(set(ids)) == len(ids)
    bodies = [i[len(PLAYER_ID_PREFIX) :] for i in ids]
    # Not ordered by creation: about half of consecutive pairs are out of order.
    descending = sum(a > b for a, b in itertools.pairwise(bodies))
    assert 0.45 < descending / (len(bodies) - 1) < 0.55
    # No shared prefix beyond the type prefix: every letter uniform at every position.
    # Chi-square with 31 degrees of freedom; 80 is beyond its 99.99th percentile (about 66).
    for position in range(26):
        counts = collections.Counter(body[position] for body in bodies)
        expected = len(bodies) / 32
        chi_square = sum((counts.get(c, 0) - expected) ** 2 / expected for c in _ALPHABET)
        assert chi_square < 80, (position, chi_square)


_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


@property_settings(300)
@given(raw=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30))
def test_the_ascii_fast_path_decides_as_precis_does(raw):
    """Printable ASCII skips PRECIS, the script check and the general skeleton: the same
    canonical form, skeleton or refused rule as the general path."""
    from identity import usernames

    def decide(fast: bool):
        try:
            return usernames._check(raw, RULES, ascii_fast_path=fast)
        except UsernameRefused as exc:
            return exc.rule

    assert decide(True) == decide(False)
    assert usernames.skeleton(raw) == usernames._general_skeleton(raw)
