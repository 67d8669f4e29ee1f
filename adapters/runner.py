"""`deploybot run`: start every configured chat platform on one shared state.

With no chat credentials it runs the console instead, so a first run needs nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import tzinfo

from adapters.console import ConsoleAdapter
from bot.announcer import Announcer
from bot.chat import ChatPlatform
from bot.config import Secrets
from bot.messages import Reply
from bot.model import LeaseKind
from bot.replies import status_parts
from bot.runtime import Runtime
from bot.timeline import Timeline

log = logging.getLogger(__name__)


class PlatformConfigError(Exception):
    """A chat platform is half-configured or its credentials were refused."""


def configured_platforms(
    runtime: Runtime, secrets: Secrets, zone: tzinfo | None
) -> list[ChatPlatform]:
    """Adapters for every platform with credentials in the environment."""
    platforms: list[ChatPlatform] = []
    if secrets.slack_configured:
        from adapters.slack import SlackAdapter, SlackConfigError

        if not (secrets.slack_bot_token and secrets.slack_app_token):
            raise PlatformConfigError(
                "Slack needs both SLACK_BOT_TOKEN (xoxb-...) and SLACK_APP_TOKEN (xapp-...)."
            )
        try:
            platforms.append(
                SlackAdapter(
                    runtime,
                    bot_token=secrets.slack_bot_token.get_secret_value(),
                    app_token=secrets.slack_app_token.get_secret_value(),
                    api_url=secrets.slack_api_url,
                    zone=zone,
                )
            )
        except SlackConfigError as error:
            raise PlatformConfigError(str(error)) from None
    if secrets.mattermost_url or secrets.mattermost_token:
        platforms.append(_mattermost(runtime, secrets, zone))
    return platforms


def _mattermost(runtime: Runtime, secrets: Secrets, zone: tzinfo | None) -> ChatPlatform:
    """The Mattermost adapter, or a clear error naming what is missing."""
    from adapters.mattermost import MattermostAdapter, MattermostConfigError

    if not secrets.mattermost_url:
        raise PlatformConfigError("MATTERMOST_URL is not set, e.g. https://chat.example.com.")
    token = secrets.mattermost_token.get_secret_value() if secrets.mattermost_token else None
    password = (
        secrets.mattermost_password.get_secret_value() if secrets.mattermost_password else None
    )
    try:
        return MattermostAdapter(
            runtime,
            url=secrets.mattermost_url,
            token=token,
            login_id=secrets.mattermost_login_id,
            password=password,
            ca_file=runtime.settings.mattermost_ca_file,
            zone=zone,
        )
    except MattermostConfigError as error:
        raise PlatformConfigError(str(error)) from None


async def run_bot(
    runtime: Runtime, secrets: Secrets, *, console_user: str, zone: tzinfo | None
) -> None:
    """Serve until SIGINT/SIGTERM (or end of console input when no platform is set up)."""
    platforms = configured_platforms(runtime, secrets, zone)
    if not platforms:
        if not sys.stdin.isatty():
            log.warning("no chat platform is configured; reading console commands from stdin")
        await run_console(runtime, user=console_user, zone=zone)
        return

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    started: list[ChatPlatform] = []
    try:
        for platform in platforms:
            await _start(platform)
            started.append(platform)
        log.info("deploybot running platforms=%s", ",".join(p.platform for p in started))
        async with time_driven(runtime, {p.platform: p for p in started}, zone):
            reason = await _first_of(stop, started)
        log.info("shutting down reason=%s", reason)
        if reason != "signal":
            raise PlatformConfigError(reason)
    finally:
        for platform in reversed(started):
            await platform.stop()


async def run_console(runtime: Runtime, *, user: str, zone: tzinfo | None) -> None:
    """A terminal chat, with reminders and announcements printed as they happen."""
    console = ConsoleAdapter(runtime.commands, user=user, zone=zone)
    async with time_driven(runtime, {console.platform: console}, zone):
        await console.run()


@asynccontextmanager
async def time_driven(
    runtime: Runtime, platforms: Mapping[str, ChatPlatform], zone: tzinfo | None
) -> AsyncIterator[Announcer]:
    """The sweep and the announcer, for as long as the bot serves; stopped gracefully."""
    announcer = Announcer(runtime.store, runtime.settings, platforms)
    timeline = Timeline(
        runtime.store,
        runtime.settings,
        zone=zone,
        digest=lambda: _post_digest(runtime, platforms),
        recover=runtime.recover_store,
    )
    timeline.start()
    task = asyncio.create_task(announcer.run())
    try:
        yield announcer
    finally:
        await timeline.stop()
        await announcer.stop()
        try:
            await asyncio.wait_for(task, timeout=5)
        except TimeoutError:
            log.warning("announcer did not finish in time; unannounced events stay queued")


async def _post_digest(runtime: Runtime, platforms: Mapping[str, ChatPlatform]) -> None:
    """Who holds what, to every announcement channel."""
    listing = await runtime.leases.status()
    reply = Reply.of(
        "Daily digest\n", status_parts(runtime.settings, listing, list(LeaseKind), False)
    )
    for entry in runtime.settings.announce_channels:
        platform_name, _, channel = entry.partition(":")
        platform = platforms.get(platform_name)
        if platform is not None:
            await platform.post(channel, reply)


async def _first_of(stop: asyncio.Event, platforms: list[ChatPlatform]) -> str:
    """Wait for a stop signal or a platform's permanent failure; say which."""
    waiters = [asyncio.ensure_future(platform.failure()) for platform in platforms]
    signalled = asyncio.ensure_future(stop.wait())
    done, pending = await asyncio.wait([signalled, *waiters], return_when=asyncio.FIRST_COMPLETED)
    for waiter in pending:
        waiter.cancel()
    if signalled in done:
        return "signal"
    return str(next(iter(done)).result())


async def _start(platform: ChatPlatform) -> None:
    """Start one platform, turning refused credentials into a configuration error."""
    from adapters.mattermost import MattermostConfigError
    from adapters.slack import SlackConfigError

    try:
        await platform.start()
    except (SlackConfigError, MattermostConfigError) as error:
        raise PlatformConfigError(str(error)) from None
