"""Plain-text rendering of reply parts, for the console and the CLI.

Chat adapters render the same parts in their own formats; this one shows people by display
name and times as a clock time in the configured zone plus the time left or ago.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.durations import format_span
from bot.messages import Code, Mention, Part, When


def resolve_zone(name: str) -> tzinfo | None:
    """The configured zone, or None for the machine's local zone; an unknown name is None."""
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def same_day(at_ms: int, now_ms: int, zone: tzinfo | None) -> bool:
    """Whether both instants fall on the same calendar day in `zone`."""
    return _local(at_ms, zone).date() == _local(now_ms, zone).date()


def clock_time(at_ms: int, now_ms: int, zone: tzinfo | None) -> str:
    """`14:35 UTC` today, `Fri 4 Dec 14:35 UTC` on another day (in `zone`)."""
    return clock_label(at_ms, now_ms, zone)[0]


def clock_label(at_ms: int, now_ms: int, zone: tzinfo | None) -> tuple[str, bool]:
    """clock_time and same_day at once: a `status` shows dozens of times."""
    at = _local(at_ms, zone)
    today = at.date() == _local(now_ms, zone).date()
    label = at.strftime("%H:%M %Z")
    if not today:
        label = f"{at:%a} {at.day} {at:%b} {label}"
    return label, today


def _local(at_ms: int, zone: tzinfo | None) -> datetime:
    return datetime.fromtimestamp(at_ms / 1000).astimezone(zone)


def relative(at_ms: int, now_ms: int) -> str:
    """`in 59 minutes`, `12 minutes ago`, or `now`."""
    delta = at_ms - now_ms
    if abs(delta) < 1000:
        return "now"
    span = format_span(abs(delta))
    return f"in {span}" if delta > 0 else f"{span} ago"


def clock_and_relative(when: When, zone: tzinfo | None) -> str:
    """`14:35 UTC (in 30 minutes)`: the clock time and the time left (or ago)."""
    return f"{clock_time(when.at_ms, when.now_ms, zone)} ({relative(when.at_ms, when.now_ms)})"


def render_plain(parts: Iterable[Part], zone: tzinfo | None = None) -> str:
    """Join parts into text a terminal shows as is."""
    out = []
    for part in parts:
        if isinstance(part, Mention):
            out.append(part.holder.display)
        elif isinstance(part, When):
            out.append(clock_and_relative(part, zone))
        elif isinstance(part, Code):
            out.append(f"`{part.text}`")
        else:
            out.append(part)
    return "".join(out)
