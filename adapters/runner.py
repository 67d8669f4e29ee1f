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
from bot.health import Health, serving_health
from bot.messages import Reply
from bot.metrics import Metrics
from bot.model import LeaseKind
from bot.replies import status_parts
from bot.runtime import Runtime
from bot.timeline import Timeline

log = logging.getLogger(__name__)

# Shutdown budget: the three steps together stay under the 10 s an orchestrator (Kubernetes'
# default grace is 30 s, docker stop's 10 s) gives before it kills the process.
STOP_PLATFORMS_S = 4.0  # stop taking events; commands in progress post their replies
STOP_SWEEP_S = 1.5  # a sweep in progress finishes
STOP_ANNOUNCER_S = 3.5  # the announcer posts the events in hand


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
    """Serve until SIGINT/SIGTERM (or end of console input when no platform is set up).

    Health, readiness and metrics are served over HTTP alongside (see bot.health). A signal
    starts a graceful shutdown that takes at most STOP_PLATFORMS_S + STOP_SWEEP_S +
    STOP_ANNOUNCER_S: platforms stop taking events and answer the commands in progress, then
    the sweep and the announcer finish what they have in hand.
    """
    metrics = Metrics()
    runtime.commands.observer = metrics.observe_command
    platforms = configured_platforms(runtime, secrets, zone)
    if not platforms:
        if not sys.stdin.isatty():
            log.warning("no chat platform is configured; reading console commands from stdin")
        console = ConsoleAdapter(runtime.commands, user=console_user, zone=zone)
        health = Health(runtime.store, {console.platform: console})
        metrics.watch_platforms(health.platforms)
        async with serving_health(runtime.settings, health, metrics):
            await _serve_console(runtime, console, zone, metrics)
        return

    health = Health(runtime.store, {p.platform: p for p in platforms})
    metrics.watch_platforms(health.platforms)
    async with serving_health(runtime.settings, health, metrics):
        await _serve_chat(runtime, platforms, zone, metrics, health)


async def _serve_chat(
    runtime: Runtime,
    platforms: list[ChatPlatform],
    zone: tzinfo | None,
    metrics: Metrics,
    health: Health,
) -> None:
    """Connect every platform and serve them until a signal or a permanent failure."""
    stop = _stop_on_signals(signal.SIGINT, signal.SIGTERM)
    started: list[ChatPlatform] = []
    try:
        for platform in platforms:
            await _start(platform)
            started.append(platform)
        log.info("deploybot running platforms=%s", ",".join(p.platform for p in started))
        by_name = {p.platform: p for p in started}
        async with time_driven(runtime, by_name, zone, metrics=metrics):
            reason = await _first_of(stop, started)
            log.info("shutting down reason=%s", reason)
            health.stopping = True
            await _stop_platforms(started)
        log.info("deploybot stopped")
        if reason != "signal":
            raise PlatformConfigError(reason)
    finally:
        await _stop_platforms(started)


async def run_console(
    runtime: Runtime, *, user: str, zone: tzinfo | None, metrics: Metrics | None = None
) -> None:
    """A terminal chat, with reminders and announcements printed as they happen."""
    console = ConsoleAdapter(runtime.commands, user=user, zone=zone)
    await _serve_console(runtime, console, zone, metrics)


async def _serve_console(
    runtime: Runtime, console: ConsoleAdapter, zone: tzinfo | None, metrics: Metrics | None
) -> None:
    """Answer console lines until end of input, or SIGTERM (Ctrl-C keeps its usual 130).

    On SIGTERM the line being read is abandoned; a command already running is cut short too,
    which leaves Redis consistent (each change is one atomic script) but may lose its reply.
    """
    stop = _stop_on_signals(signal.SIGTERM)
    async with time_driven(runtime, {console.platform: console}, zone, metrics=metrics):
        chat = asyncio.ensure_future(console.run())
        signalled = asyncio.ensure_future(stop.wait())
        await asyncio.wait([chat, signalled], return_when=asyncio.FIRST_COMPLETED)
        signalled.cancel()
        if chat.done():
            chat.result()  # end of input; a crash of the console is raised here
            return
        log.info("shutting down reason=signal")
        chat.cancel()
        await asyncio.wait([chat])


@asynccontextmanager
async def time_driven(
    runtime: Runtime,
    platforms: Mapping[str, ChatPlatform],
    zone: tzinfo | None,
    *,
    metrics: Metrics | None = None,
) -> AsyncIterator[Announcer]:
    """The sweep and the announcer, for as long as the bot serves; stopped gracefully.

    On the way out a sweep in progress finishes (each batch is one atomic script anyway),
    then the announcer finishes the events in hand. Events it read but could not post in
    time stay unacknowledged in the stream, and a deploybot started later (or another
    replica) takes them over, so nothing is lost.
    """
    announcer = Announcer(
        runtime.store,
        runtime.settings,
        platforms,
        observer=metrics.observe_delivery if metrics else None,
    )
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
        try:
            await asyncio.wait_for(timeline.stop(), timeout=STOP_SWEEP_S)
        except TimeoutError:
            log.warning("sweep did not finish in time; its batch is atomic, so it ran or not")
        await announcer.stop()
        try:
            await asyncio.wait_for(task, timeout=STOP_ANNOUNCER_S)
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


def _stop_on_signals(*signals: signal.Signals) -> asyncio.Event:
    """An event set by the first of `signals`; a second one gets the default, hard stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def first_signal() -> None:
        stop.set()
        for signum in signals:
            loop.remove_signal_handler(signum)

    for signum in signals:
        loop.add_signal_handler(signum, first_signal)
    return stop


async def _stop_platforms(platforms: list[ChatPlatform]) -> None:
    """Stop each platform (no new events, in-flight commands answered, disconnected).

    The whole takes at most STOP_PLATFORMS_S, so the process exits within its budget even
    when a command hangs; stopped platforms are removed from the list.
    """
    deadline = asyncio.get_running_loop().time() + STOP_PLATFORMS_S
    while platforms:
        platform = platforms.pop()
        left = max(0.1, deadline - asyncio.get_running_loop().time())
        try:
            await asyncio.wait_for(platform.stop(), timeout=left)
        except TimeoutError:
            log.warning("platform did not stop in time platform=%s", platform.platform)


async def _start(platform: ChatPlatform) -> None:
    """Start one platform, turning refused credentials into a configuration error."""
    from adapters.mattermost import MattermostConfigError
    from adapters.slack import SlackConfigError

    try:
        await platform.start()
    except (SlackConfigError, MattermostConfigError) as error:
        raise PlatformConfigError(str(error)) from None
