"""Who may talk to deploybot, and how often: channel and user allow-lists, a rate limit.

The rate limit is counted in Redis, so it holds across replicas: a person's commands may
reach any of them. When Redis is down the limit is not enforced (the command itself will
report the outage). It guards against chat users only: the local console is not limited.
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from bot.config import Settings
from bot.messages import Message
from bot.store import Store

log = logging.getLogger(__name__)

WINDOW_S = 60
# The console (and the CLI, which never passes here) is someone with a shell on the machine,
# who could run the CLI without any limit; a piped console script must not be cut off.
UNLIMITED_PLATFORMS = frozenset({"local"})


class Gatekeeper:
    """Decides whether a message may be handled; returns the polite refusal if not."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._settings = settings

    def refusal(self, message: Message) -> str | None:
        """Why this message is not for deploybot to answer (allow-lists), or None."""
        channels, users = self._settings.allowed_channels, self._settings.allowed_users
        if users and message.sender.identity not in users:
            return (
                "Sorry, you are not on deploybot's list of users. Ask an admin to add "
                f"`{message.sender.identity}` to allowed_users."
            )
        where = f"{message.platform}:{message.channel}"
        if channels and not message.direct and where not in channels:
            return (
                "Sorry, deploybot is not enabled in this channel; send it a direct message, or "
                f"ask an admin to add `{where}` to allowed_channels."
            )
        return None

    async def over_limit(self, message: Message) -> bool:
        """Count this command against its sender's per-minute budget; True when over it."""
        limit = self._settings.rate_limit_per_minute
        if limit <= 0 or message.platform in UNLIMITED_PLATFORMS:
            return False
        key = self._store.key("rate", message.platform, message.user_id)
        try:
            pipe = self._store.redis.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, WINDOW_S, nx=True)
            count, _ = await pipe.execute()
        except (RedisError, OSError):
            return False
        if int(count) > limit:
            log.warning("rate limited platform=%s user=%s", message.platform, message.user_id)
            return True
        return False
