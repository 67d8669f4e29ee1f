"""The contract between adapters and the core: messages in, replies out.

Adapters turn platform events into a `Message` and turn a `Reply` into a platform post.
Replies are built from parts so each adapter renders people and times in its own format
(a Slack mention and date token, a Mattermost `@username`, plain text on a console).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from bot.model import Holder, Lease

_CONTROL = re.compile(
    r"\x1b\[[0-9;?]*[ -/]*[@-~]"  # CSI: colours, cursor moves
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC, DCS, SOS, PM, APC: titles, links
    r"|\x1b[ -~]"  # other two-character escapes
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"  # control characters, C1 included
)


def clean_text(text: str) -> str:
    """Text safe to store and to print: valid UTF-8, no terminal control sequences.

    Lone surrogates (possible in JSON) become `?`; escape sequences and control
    characters (a note could otherwise rewrite someone's terminal) are removed. Newlines and
    tabs stay; `one_line` folds them where a value must fit on one line.
    """
    text = text.encode("utf-8", "replace").decode("utf-8")
    return _CONTROL.sub("", text)


def one_line(text: str) -> str:
    """`clean_text`, with every run of whitespace (newlines too) folded to one space."""
    return " ".join(clean_text(text).split())


@dataclass(frozen=True)
class Message:
    """A chat message addressed to deploybot, normalized across platforms."""

    platform: str
    user_id: str
    display_name: str
    channel: str
    text: str
    thread: str | None = None
    direct: bool = False
    event_id: str | None = None

    @property
    def sender(self) -> Holder:
        """The sender as a potential lease holder."""
        return Holder(self.platform, self.user_id, self.display_name)


@dataclass(frozen=True)
class Mention:
    """A person, rendered as a mention where the platform has one."""

    holder: Holder


@dataclass(frozen=True)
class When:
    """A point in time, rendered as a clock time and as time left (or ago) from `now_ms`."""

    at_ms: int
    now_ms: int


@dataclass(frozen=True)
class Code:
    """A command or name the reader may copy, rendered in monospace where possible."""

    text: str


Part = str | Mention | When | Code


@dataclass(frozen=True)
class Reply:
    """What deploybot says back.

    `private` asks for an ephemeral answer where the platform has one (help, status, errors
    from a slash command). `leases` lists the leases the reply is about, so an adapter can
    attach Extend and Release buttons to them.
    """

    parts: tuple[Part, ...]
    ok: bool = True
    private: bool = False
    leases: tuple[Lease, ...] = field(default_factory=tuple)

    @classmethod
    def of(
        cls,
        *parts: Part | Sequence[Part],
        ok: bool = True,
        private: bool = False,
        leases: Sequence[Lease] = (),
    ) -> Reply:
        """Build a reply from parts and lists of parts, flattened in order."""
        flat: list[Part] = []
        for part in parts:
            if isinstance(part, str | Mention | When | Code):
                flat.append(part)
            else:
                flat.extend(part)
        return cls(tuple(flat), ok=ok, private=private, leases=tuple(leases))
