"""Tests for bot.names: the names that become part of Redis keys."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.errors import InvalidName, NameLooksLikeDuration, UnknownName
from bot.messages import clean_text
from bot.names import (
    MAX_NAME_LENGTH,
    normalize_job_name,
    normalize_name,
    normalize_new_name,
    suggest,
)

SAFE_NAME = re.compile(r"^[a-z0-9._-]{1,64}$")
KNOWN = ["backend", "frontend", "payments"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("backend", "backend"),
        ("Backend", "backend"),
        ("  staging-2\n", "staging-2"),
        ("svc_1.api-v2", "svc_1.api-v2"),
        ("x" * MAX_NAME_LENGTH, "x" * MAX_NAME_LENGTH),
    ],
)
def test_normalize_name_returns_the_canonical_name(raw: str, expected: str) -> None:
    """Valid names come back stripped and lower-cased."""
    assert normalize_name(raw, "service") == expected


@pytest.mark.parametrize(
    ("raw", "hint"),
    [
        ("back end", "letters, digits"),
        ("a/b", "letters, digits"),
        ("{x}", "letters, digits"),
        ("a:b", "letters, digits"),
        ("*", "letters, digits"),
        ("bäckend", "letters, digits"),
        ("x" * (MAX_NAME_LENGTH + 1), "at most 64 characters"),
        ("", "Which service?"),
        ("  \t", "Which service?"),
    ],
    ids=["space", "slash", "braces", "colon", "glob", "unicode", "65-chars", "empty", "blank"],
)
def test_normalize_name_refuses_unsafe_names(raw: str, hint: str) -> None:
    """Names outside [a-z0-9._-]{1,64} raise InvalidName explaining what is allowed."""
    with pytest.raises(InvalidName) as caught:
        normalize_name(raw, "service")

    assert hint in str(caught.value)
    assert (caught.value.name, caught.value.what) == (raw, "service")


def test_long_invalid_name_is_shortened_in_the_message() -> None:
    """A long refused name is cut in the message, so a reply stays readable."""
    with pytest.raises(InvalidName) as caught:
        normalize_name("y" * 500, "environment")

    assert "y" * 41 not in str(caught.value)


def test_unknown_name_suggests_close_known_names() -> None:
    """A name not among the known ones is refused with the closest ones."""
    with pytest.raises(UnknownName) as caught:
        normalize_name("Backnd", "service", KNOWN)

    assert caught.value.name == "backnd"
    assert caught.value.suggestions == ["backend"]
    assert "Did you mean `backend`?" in str(caught.value)


def test_unknown_name_without_suggestions_points_to_status() -> None:
    """With nothing close, the message points to `status` instead."""
    with pytest.raises(UnknownName) as caught:
        normalize_name("zzz", "environment", KNOWN)

    assert caught.value.suggestions == []
    assert "`status`" in str(caught.value)


def test_known_name_in_other_case_is_accepted() -> None:
    """Known names match case-insensitively."""
    assert normalize_name("PAYMENTS", "service", KNOWN) == "payments"


def test_new_name_that_reads_as_a_duration_is_refused_before_the_known_list() -> None:
    """`1h` as a new lease's name gets the duration hint, not `no service called 1h`."""
    with pytest.raises(NameLooksLikeDuration) as caught:
        normalize_new_name("1H", "service", KNOWN, usage="lock <service>")

    assert (caught.value.name, caught.value.what) == ("1H", "service")
    assert str(caught.value) == (
        "`1h` looks like a duration, not a service name; give the service first: "
        "`lock <service> 1h`."
    )


def test_new_name_that_reads_as_a_duration_is_accepted_when_known() -> None:
    """A listed name is meant as a name, whatever it looks like."""
    assert normalize_new_name("5m", "service", [*KNOWN, "5m"], usage="lock <service>") == "5m"


def test_suggest_orders_best_first_and_limits() -> None:
    """suggest() returns the closest matches first, at most `limit` of them."""
    choices = ["staging-1", "staging-2", "staging-3", "production"]

    assert suggest("staging-2", choices, limit=2)[0] == "staging-2"
    assert len(suggest("staging", choices, limit=2)) == 2
    assert suggest("qqqq", choices) == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("api/build#42", "api/build#42"), ("CI:Nightly", "ci:nightly"), ("j" * 100, "j" * 100)],
)
def test_job_names_allow_colon_slash_and_hash(raw: str, expected: str) -> None:
    """Job names also allow `:`, `/` and `#`, up to 100 characters."""
    assert normalize_job_name(raw) == expected


@pytest.mark.parametrize("raw", ["", "a b", "{x}", "j" * 101, "bäck"])
def test_job_names_refuse_unsafe_names(raw: str) -> None:
    """Job names outside their character set or length raise InvalidName."""
    with pytest.raises(InvalidName):
        normalize_job_name(raw)


@given(
    raw=st.one_of(st.text(), st.text("abcXYZ019._-/: {}\n\tä", max_size=80)),
    known=st.lists(st.sampled_from(KNOWN), unique=True),
)
def test_normalize_name_accepts_only_safe_names(raw: str, known: list[str]) -> None:
    """On any text normalize_name returns a safe name or raises InvalidName/UnknownName."""
    try:
        name = normalize_name(raw, "service", known)
    except (InvalidName, UnknownName):
        return
    assert SAFE_NAME.fullmatch(name)
    assert not known or name in known


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("deploy \x1b[31mred\x1b[0m", "deploy red"),
        ("a\x1b]0;new title\x07b", "ab"),
        ("see \x1b]8;;https://evil.example\x1b\\here\x1b]8;;\x1b\\", "see here"),
        ("bell\x07 and nul\x00", "bell and nul"),
        ("tab\tand\nnewline kept, é 日本 too", "tab\tand\nnewline kept, é 日本 too"),
    ],
)
def test_clean_text_removes_every_terminal_escape(text: str, expected: str) -> None:
    """Notes end up in terminals: colours, window titles and hidden links are all removed."""
    assert clean_text(text) == expected
