"""Tests for bot.durations: parsing what people type, and showing spans back to them."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bot.durations import MINIMUM_MS, format_span, looks_like_duration, parse_duration
from bot.errors import InvalidDuration

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


@pytest.mark.parametrize(
    ("text", "expected_ms"),
    [
        ("90s", 90_000),
        ("30m", 30 * MINUTE_MS),
        ("2h", 2 * HOUR_MS),
        ("1h30m", 90 * MINUTE_MS),
        ("1d", DAY_MS),
        ("1.5h", 90 * MINUTE_MS),
        ("  45m ", 45 * MINUTE_MS),
        ("1:00:00", HOUR_MS),
    ],
)
def test_parse_duration_reads_common_forms(text: str, expected_ms: int) -> None:
    """Seconds, minutes, hours, days, combinations and decimals parse to milliseconds."""
    assert parse_duration(text, maximum_ms=7 * DAY_MS) == expected_ms


def test_parse_duration_accepts_its_bounds() -> None:
    """Exactly the minimum and exactly the maximum are allowed."""
    assert parse_duration("1m", maximum_ms=HOUR_MS) == MINIMUM_MS
    assert parse_duration("60m", maximum_ms=HOUR_MS) == HOUR_MS


def test_parse_duration_honours_a_custom_minimum() -> None:
    """A caller may lower the minimum."""
    assert parse_duration("10s", maximum_ms=HOUR_MS, minimum_ms=1_000) == 10_000


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("59s", "too short: the shortest is 1 minute"),
        ("0m", "must be positive"),
        ("-5m", "must be positive"),
        ("3x0m", "like 90s, 30m, 2h, 1h30m or 1d"),
        ("abc", "like 90s, 30m, 2h, 1h30m or 1d"),
        ("30", "like 90s, 30m, 2h, 1h30m or 1d"),
        ("", "like 90s, 30m, 2h, 1h30m or 1d"),
        ("   ", "like 90s, 30m, 2h, 1h30m or 1d"),
        ("61m", "too long: the longest allowed is 1 hour"),
    ],
)
def test_parse_duration_refuses_with_a_hint(text: str, hint: str) -> None:
    """Malformed, non-positive, too short or too long: InvalidDuration saying what works."""
    with pytest.raises(InvalidDuration) as caught:
        parse_duration(text, maximum_ms=HOUR_MS)

    assert hint in str(caught.value)
    assert caught.value.text == text


@pytest.mark.parametrize("digits", [30, 400])
def test_parse_duration_refuses_enormous_numbers(digits: int) -> None:
    """A number too large for a float is refused as too long, not an OverflowError."""
    with pytest.raises(InvalidDuration):
        parse_duration("9" * digits + ".5s", maximum_ms=DAY_MS)


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        *[("30m", True), ("1h30m", True), ("-5m", True), ("+2h", True), ("3x0m", True)],
        *[("hotfix", False), ("", False), ("m30", False), ("INC-12", False)],
    ],
)
def test_looks_like_duration_means_starts_with_a_number(word: str, expected: bool) -> None:
    """A word starting with a (signed) number is meant as a duration, anything else is not."""
    assert looks_like_duration(word) is expected


@pytest.mark.parametrize(
    ("ms", "expected"),
    [
        (45_000, "45 seconds"),
        (MINUTE_MS, "1 minute"),
        (90 * MINUTE_MS, "1 hour and 30 minutes"),
        (7 * DAY_MS, "7 days"),
        (-5_000, "less than a second"),
        (90_499, "1 minute and 30 seconds"),
        (90_500, "1 minute and 31 seconds"),
        (20 * MINUTE_MS + 29_999, "20 minutes"),
        (20 * MINUTE_MS + 30_000, "21 minutes"),
    ],
)
def test_format_span_reads_naturally(ms: int, expected: str) -> None:
    """Spans are shown in words, rounded to the second (to the minute from ten minutes on),
    and a negative span as zero."""
    assert format_span(ms) == expected


_UNITS = ["", "s", "m", "h", "d", "w", "sec", "mins", "hours", "days", "x"]
_duration_like = st.builds(
    lambda sign, whole, fraction, unit: f"{sign}{whole}{fraction}{unit}",
    st.sampled_from(["", "+", "-"]),
    st.one_of(
        st.text("0123456789", max_size=20),
        st.integers(min_value=1, max_value=400).map(lambda length: "9" * length),
    ),
    st.sampled_from(["", ".", ".5", ".25"]),
    st.sampled_from(_UNITS),
)


@given(text=st.one_of(st.text(), _duration_like))
@example(text="9" * 400 + ".5s")
def test_parse_duration_fails_only_with_invalid_duration(text: str) -> None:
    """On any text parse_duration returns a bounded value or raises InvalidDuration."""
    try:
        duration_ms = parse_duration(text, maximum_ms=7 * DAY_MS)
    except InvalidDuration:
        return
    assert MINIMUM_MS <= duration_ms <= 7 * DAY_MS
