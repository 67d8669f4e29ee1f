"""Mattermost rendering: Markdown with `@username` mentions and times in the team's zone.

Mattermost has no per-reader date token, so times are shown in the configured zone with the
time left beside them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import tzinfo

from bot.messages import Code, Mention, Part, When
from bot.render import clock_and_relative

PLATFORM = "mattermost"
MAX_POST_LENGTH = 16_000

# A zero-width space after `@` keeps text people wrote (a note) from pinging a channel.
_NO_PING = "@\u200b"


def render_markdown(parts: Iterable[Part], zone: tzinfo | None = None) -> str:
    """Render parts as Mattermost Markdown."""
    out = []
    for part in parts:
        if isinstance(part, Mention):
            holder = part.holder
            out.append(
                f"@{holder.display}" if holder.platform == PLATFORM else _quiet(holder.display)
            )
        elif isinstance(part, When):
            out.append(clock_and_relative(part, zone))
        elif isinstance(part, Code):
            out.append("`" + part.text.replace("`", "'") + "`")
        else:
            out.append(_quiet(part))
    return "".join(out)[:MAX_POST_LENGTH]


def _quiet(text: str) -> str:
    """Text with its `@` mentions defused."""
    return text.replace("@", _NO_PING)
