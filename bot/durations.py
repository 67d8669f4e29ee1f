"""Durations typed by people (`90s`, `30m`, `1h30m`, `1d`) and spans shown back to them."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from functools import lru_cache

import humanize
from pytimeparse.timeparse import timeparse as parse_seconds

from bot.errors import InvalidDuration

MINIMUM_MS = 60_000

_LOOKS_LIKE_DURATION = re.compile(r"^[+-]?\.?[0-9]")
_EXAMPLES = "like 90s, 30m, 2h, 1h30m or 1d"


def looks_like_duration(word: str) -> bool:
    """Whether a word was meant as a duration (it starts with a number).

    Used to tell an optional duration argument from the note that may follow it, so that a
    malformed duration is reported instead of silently becoming part of the note.
    """
    return bool(_LOOKS_LIKE_DURATION.match(word))


def parse_duration(text: str, *, maximum_ms: int, minimum_ms: int = MINIMUM_MS) -> int:
    """Parse a duration into milliseconds, within [minimum_ms, maximum_ms]."""
    try:
        # pytimeparse's \d also takes other scripts' digits; people type ASCII durations.
        seconds = parse_seconds(text.strip()) if text.strip().isascii() else None
    except OverflowError:  # digits beyond what a float holds: absurdly long
        seconds = math.inf
    if seconds is None or seconds != seconds:  # None, or NaN
        msg = f"`{_shown(text)}` is not a duration I understand; use one {_EXAMPLES}."
        raise InvalidDuration(text, msg)

    # Compared before int(): an absurd number parses to infinity, which int() cannot take.
    if seconds <= 0:
        msg = f"A duration must be positive, and `{_shown(text)}` is not; use one {_EXAMPLES}."
        raise InvalidDuration(text, msg)
    if seconds * 1000 > maximum_ms:
        msg = f"`{_shown(text)}` is too long: the longest allowed is {format_span(maximum_ms)}."
        raise InvalidDuration(text, msg)

    duration_ms = int(seconds * 1000)
    if duration_ms < minimum_ms:
        msg = f"`{_shown(text)}` is too short: the shortest is {format_span(minimum_ms)}."
        raise InvalidDuration(text, msg)
    return duration_ms


def format_span(ms: int) -> str:
    """A span for people: `45 seconds`, `1 minute and 30 seconds`, `2 hours and 5 minutes`.

    Seconds are shown below ten minutes, where they still matter to someone waiting; above
    that the span is rounded to the minute.
    """
    if ms < 1000:
        return "less than a second"
    if ms < 600_000:
        return _span_of((ms + 500) // 1000, "seconds")
    return _span_of((ms + 30_000) // 60_000 * 60, "minutes")


# A chat `status` lists up to 50 leases, each with its time left; the spans repeat (they are
# rounded to the second or the minute), and humanize takes tens of microseconds for each.
@lru_cache(maxsize=4096)
def _span_of(seconds: int, minimum_unit: str) -> str:
    delta = timedelta(seconds=seconds)
    return str(humanize.precisedelta(delta, minimum_unit=minimum_unit, format="%0.0f"))


def _shown(text: str) -> str:
    """The text as quoted back in an error, shortened so a pasted essay stays readable."""
    return text if len(text) <= 30 else text[:30] + "…"


def parses_as_duration(word: str) -> bool:
    """Whether `word` is a duration in a form we understand (its bounds aside)."""
    try:
        return word.strip().isascii() and parse_seconds(word.strip()) is not None
    except OverflowError:
        return True
