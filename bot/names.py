"""Validation of the names that become part of Redis keys: services, environments, jobs."""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection

from bot.durations import parses_as_duration
from bot.errors import InvalidName, NameLooksLikeDuration, UnknownName

MAX_NAME_LENGTH = 64

# At least one letter or digit: `.` or `--` alone would make baffling keys and replies.
_NAME = re.compile(r"^(?=.*[a-z0-9])[a-z0-9._-]{1,64}$")
_JOB_NAME = re.compile(r"^(?=.*[a-z0-9])[a-z0-9._:/#-]{1,100}$")


def normalize_name(raw: str, what: str, known: Collection[str] = ()) -> str:
    """Return the canonical (lower-case) name, or raise with what would work.

    Names are checked before they ever become part of a key, so a name can never reach
    outside deploybot's namespace or break the key layout. When `known` is not empty the name
    must be one of them; the closest known names are suggested otherwise.
    """
    name = raw.strip().lower()
    if not _NAME.match(name):
        raise InvalidName(raw, what, _invalid_reason(raw, what, MAX_NAME_LENGTH, "`.`, `_`, `-`"))

    if known and name not in known:
        raise UnknownName(name, what, suggest(name, known))
    return name


def normalize_new_name(raw: str, what: str, known: Collection[str] = (), *, usage: str) -> str:
    """`normalize_name` for a lease about to be taken or waited for; `usage` is the command
    that shows where the name goes (`lock <service>`).

    A name that parses as a duration is refused unless `known` lists it: `lock 1h` or
    `lock 5m backend` almost always means a duration with the name missing or misplaced.
    Leases that already have such a name can still be released, so only new ones are checked.
    """
    name = raw.strip().lower()
    if name not in known and parses_as_duration(name):
        raise NameLooksLikeDuration(raw, what, usage)
    return normalize_name(raw, what, known)


def normalize_job_name(raw: str) -> str:
    """Return the canonical job name; jobs also allow `:`, `/` and `#` (e.g. `api/build#42`)."""
    name = raw.strip().lower()
    if not _JOB_NAME.match(name):
        reason = _invalid_reason(raw, "job", 100, "`.`, `_`, `-`, `:`, `/`, `#`")
        raise InvalidName(raw, "job", reason)
    return name


def suggest(word: str, choices: Collection[str], limit: int = 3) -> list[str]:
    """The closest matches to `word` among `choices`, best first."""
    return difflib.get_close_matches(word, sorted(choices), n=limit, cutoff=0.5)


def _invalid_reason(raw: str, what: str, limit: int, punctuation: str) -> str:
    """Explain why a name was refused, and what a valid one looks like."""
    shown = raw if len(raw) <= 40 else raw[:40] + "…"
    if not raw.strip():
        return f"Which {what}? Give its name, e.g. `backend`."
    if len(raw.strip()) > limit:
        return f"A {what} name is at most {limit} characters; `{shown}` is longer."
    return (
        f"`{shown}` is not a valid {what} name: use letters, digits (ASCII only) and "
        f"{punctuation}, with at least one letter or digit, up to {limit} characters."
    )
