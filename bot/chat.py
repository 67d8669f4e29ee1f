"""What the core needs from a chat platform: post to channels and DMs, report its health.

Adapters implement this; the runner starts them, and later the announcer posts reminders
and announcements through it without knowing which platform it talks to.
"""

from __future__ import annotations

from typing import Protocol

from bot.messages import Reply


class ChatPlatform(Protocol):
    """A connected chat platform."""

    platform: str

    async def start(self) -> None:
        """Connect and begin handling messages; returns once connected."""

    async def stop(self) -> None:
        """Stop taking events, finish in-flight work and disconnect."""

    async def post(self, channel: str, reply: Reply, *, thread: str | None = None) -> None:
        """Post `reply` in a channel (in a thread when given)."""

    async def send_direct(self, user_id: str, reply: Reply) -> None:
        """Send `reply` to a person as a direct message."""

    async def failure(self) -> str:
        """Wait until the platform fails for good (e.g. a revoked token); return why."""

    @property
    def connected(self) -> bool:
        """Whether the platform connection is up right now."""
