"""deploybot on Slack: Socket Mode (no public URL), mentions, DMs, /deploy, buttons.

Every Socket Mode request is acknowledged before any slow work: bolt acks Events API
envelopes itself, and the command and button listeners call `ack()` first. Each event is
handled once across all deploybot processes sharing the Redis: the first to record its id
(`Store.first_sighting`) handles it, so a redelivered envelope (`retry_attempt` > 0) or
a second replica receiving the same event does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import tzinfo
from typing import Any

import aiohttp
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.format import (
    EXTEND_ACTION,
    PLATFORM,
    RELEASE_ACTION,
    blocks_for,
    parse_button_value,
    render_mrkdwn,
)
from bot.errors import DeploybotError, StoreUnavailable
from bot.messages import Code, Mention, Message, Reply
from bot.model import Holder, Origin
from bot.replies import lease_change_parts
from bot.runtime import Runtime

log = logging.getLogger(__name__)

Listener = Callable[..., Awaitable[None]]

DISPLAY_NAME_TTL_S = 3600
SEEN_TTL_S = 3600
# How long stop() lets commands already being handled finish and post their replies.
STOP_GRACE_S = 3.0


class SlackConfigError(Exception):
    """Slack credentials are missing, malformed or refused; the message says which."""


class SlackAdapter:
    """Connects one Slack workspace to deploybot's command handler."""

    platform = PLATFORM

    def __init__(
        self,
        runtime: Runtime,
        *,
        bot_token: str,
        app_token: str,
        api_url: str | None = None,
        zone: tzinfo | None = None,
        ping_interval: float = 10,
    ) -> None:
        if not bot_token.startswith("xoxb-"):
            raise SlackConfigError("SLACK_BOT_TOKEN must be a bot token starting with xoxb-.")
        if not app_token.startswith("xapp-"):
            raise SlackConfigError(
                "SLACK_APP_TOKEN must be an app-level token starting with xapp-."
            )
        self._runtime = runtime
        self._zone = zone
        self._names: dict[str, tuple[str, float]] = {}
        self._bot_user_id: str | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._sessions = 0

        # One HTTP session for every Web API call: without it slack_sdk opens a connection
        # (and a TLS handshake, against real Slack) per call.
        self._session = aiohttp.ClientSession()
        self.client = AsyncWebClient(
            token=bot_token,
            base_url=_api_base(api_url),
            session=self._session,
            retry_handlers=[
                AsyncRateLimitErrorRetryHandler(max_retry_count=3),
                AsyncConnectionErrorRetryHandler(max_retry_count=2),
            ],
        )
        self.app = AsyncApp(client=self.client, logger=_BOLT_LOG)
        self._register()
        self.handler = AsyncSocketModeHandler(
            self.app,
            app_token,
            logger=logging.getLogger("adapters.slack.socket"),
            ping_interval=ping_interval,
        )
        self.handler.client.on_message_listeners.append(self._count_sessions)
        self.handler.client.on_message_listeners.append(self._log_disconnects)
        self.handler.client.on_close_listeners.append(self._log_close)

    @property
    def connected(self) -> bool:
        """Whether the Socket Mode connection is open."""
        session = self.handler.client.current_session
        return session is not None and not session.closed

    @property
    def reconnects(self) -> int:
        """How many times the Socket Mode connection was re-established since start."""
        return max(0, self._sessions - 1)

    async def start(self) -> None:
        """Check the bot token, then open the Socket Mode connection."""
        try:
            await self._connect()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.handler.close_async()  # type: ignore[no-untyped-call]
            await self._session.close()
            raise
        log.info("slack connected bot_user=%s", self._bot_user_id)

    async def _connect(self) -> None:
        """auth.test, then Socket Mode; refusals and unreachable Slack become clear errors."""
        try:
            identity = await self.client.auth_test()
            self._bot_user_id = str(identity.get("user_id") or "")
        except SlackApiError as error:
            raise SlackConfigError(
                f"Slack refused the bot token ({error.response.get('error')}); "
                "check SLACK_BOT_TOKEN."
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise SlackConfigError(
                f"Cannot reach Slack's Web API ({type(error).__name__}); check the network, "
                "or SLACK_API_URL if you set it."
            ) from None
        try:
            await self.handler.connect_async()  # type: ignore[no-untyped-call]
        except SlackApiError as error:
            raise SlackConfigError(
                f"Slack refused the app token ({error.response.get('error')}); check "
                "SLACK_APP_TOKEN and that Socket Mode is on for the app."
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise SlackConfigError(
                f"Cannot open Slack's Socket Mode connection ({type(error).__name__})."
            ) from None

    async def stop(self) -> None:
        """Stop taking events, let commands in progress post their replies, disconnect.

        Replies go over the Web API, not the socket, so they can still be posted after it
        closed. An event received but not yet acknowledged is redelivered by Slack to the
        next connection, and the de-duplication key keeps it from running twice.
        """
        await self.handler.close_async()  # type: ignore[no-untyped-call]
        if self._in_flight:
            log.info("slack finishing commands in_flight=%s", len(self._in_flight))
            _done, late = await asyncio.wait(self._in_flight, timeout=STOP_GRACE_S)
            if late:
                log.warning("slack stopped with commands unfinished count=%s", len(late))
        await self._session.close()
        log.info("slack disconnected")

    async def failure(self) -> str:
        """Never returns: slack_sdk reconnects by itself, and a bad token fails at start."""
        await asyncio.Event().wait()
        return ""

    async def post(self, channel: str, reply: Reply, *, thread: str | None = None) -> None:
        """Post a reply in a channel, in a thread when given; API errors are logged."""
        text = render_mrkdwn(reply.parts, self._zone)
        await self._api(
            "chat.postMessage",
            channel=channel,
            thread_ts=thread,
            text=text,
            blocks=blocks_for(reply, self._zone, text=text),
        )

    async def send_direct(self, user_id: str, reply: Reply) -> None:
        """Open (or reuse) the DM with a person and post the reply there."""
        opened = await self._api("conversations.open", users=user_id)
        channel = opened and opened.get("channel", {}).get("id")
        if channel:
            await self.post(str(channel), reply)

    def _register(self) -> None:
        """Wire bolt listeners; each acks first (bolt acks events itself)."""
        self.app.event("app_mention")(self._tracked(self._on_mention))
        self.app.event("message")(self._tracked(self._on_message))
        self.app.command("/deploy")(self._tracked(self._on_command))
        self.app.action(EXTEND_ACTION)(self._tracked(self._on_button))
        self.app.action(RELEASE_ACTION)(self._tracked(self._on_button))
        self.app.error(self._on_error)

    def _tracked(self, listener: Listener) -> Listener:
        """`listener`, with its task known to stop() until it has answered."""

        @functools.wraps(listener)
        async def tracked(*args: Any, **kwargs: Any) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._in_flight.add(task)
            try:
                await listener(*args, **kwargs)
            finally:
                if task is not None:
                    self._in_flight.discard(task)

        return tracked

    async def _on_mention(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        """`@deploybot <command>` in a channel: answer there, in the thread if there was one."""
        if _from_bot(event) or event.get("subtype"):
            return
        await self._answer_event(event, body, direct=False)

    async def _on_message(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        """Any message in a DM with the bot is a command; everything else is ignored.

        Edits, deletions, joins and bot posts arrive as subtypes or with a bot_id; they are
        never commands. Channel messages that mention the bot are handled as app_mention.
        """
        if event.get("channel_type") != "im" or event.get("subtype") or _from_bot(event):
            return
        await self._answer_event(event, body, direct=True)

    async def _answer_event(
        self, event: dict[str, Any], body: dict[str, Any], *, direct: bool
    ) -> None:
        """Run the command in a message event and post the reply where it was asked."""
        reply = await self._handle(
            user_id=str(event.get("user", "")),
            channel=str(event.get("channel", "")),
            text=self._without_bot_mention(str(event.get("text", ""))),
            thread=event.get("thread_ts"),
            direct=direct,
            dedup_id=f"event:{body.get('event_id') or event.get('ts')}",
        )
        if reply is not None:
            await self.post(str(event["channel"]), reply, thread=event.get("thread_ts"))

    async def _on_command(self, ack: Any, command: dict[str, Any], respond: Any) -> None:
        """`/deploy <command>`: state changes go to the channel, the rest only to the caller."""
        await ack()
        reply = await self._handle(
            user_id=str(command.get("user_id", "")),
            channel=str(command.get("channel_id", "")),
            text=str(command.get("text", "")),
            thread=None,
            direct=str(command.get("channel_name", "")) == "directmessage",
            dedup_id=f"command:{command.get('trigger_id')}",
        )
        if reply is None:
            return
        visibility = "ephemeral" if reply.private or not reply.ok else "in_channel"
        await self._respond(respond, reply, visibility)

    async def _on_button(self, ack: Any, body: dict[str, Any], respond: Any) -> None:
        """Extend or Release clicked: the holder acts; anyone else is told who holds it."""
        await ack()
        action = (body.get("actions") or [{}])[0]
        user = body.get("user") or {}
        if not await self._first(f"action:{body.get('trigger_id') or action.get('action_ts')}"):
            return
        target = parse_button_value(str(action.get("value", "")))
        if target is None:
            await self._respond(
                respond,
                Reply.of("That button is not one of mine.", ok=False),
                "ephemeral",
                replace=False,
            )
            return

        clicker = Holder(
            PLATFORM, str(user.get("id", "")), await self._display_name(str(user.get("id", "")))
        )
        channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get(
            "channel_id", "direct"
        )
        via = Origin(PLATFORM, str(channel))
        reply = await self._button_reply(action.get("action_id"), target, clicker, via)
        await self._respond(
            respond, reply, "ephemeral" if not reply.ok else "in_channel", replace=reply.ok
        )

    async def _button_reply(
        self, action_id: object, target: tuple[Any, str, int], clicker: Holder, via: Origin
    ) -> Reply:
        """Apply a button click to the lease it names, if that lease is still the same one."""
        kind, name, token = target
        leases = self._runtime.leases
        try:
            lease, _now = await leases.get(kind, name)
            if lease is None or lease.token != token:
                return Reply.of(
                    "This message is outdated: ",
                    Code(name),
                    " has been released or changed hands since, so I did nothing. "
                    "Say `status` to see who holds it now.",
                    ok=False,
                    private=True,
                )
            if not lease.holder.same_person(clicker):
                verb = "extend" if action_id == EXTEND_ACTION else "release"
                return Reply.of(
                    f"Only the holder can {verb} ",
                    Code(name),
                    ": it is held by ",
                    Mention(lease.holder),
                    ".",
                    ok=False,
                    private=True,
                )
            if action_id == EXTEND_ACTION:
                change = await leases.extend_lease(kind, name, clicker, via=via)
                return Reply.of(lease_change_parts(change), leases=[change.lease])
            change = await leases.release(kind, name, clicker, via=via)
            return Reply.of(lease_change_parts(change))
        except DeploybotError as error:
            return Reply.of(error.parts(), ok=False, private=True)

    async def _handle(
        self,
        *,
        user_id: str,
        channel: str,
        text: str,
        thread: Any,
        direct: bool,
        dedup_id: str,
    ) -> Reply | None:
        """Run a command once across processes; None when another delivery handled it."""
        if not await self._first(dedup_id):
            log.info("slack duplicate ignored id=%s", dedup_id)
            return None
        message = Message(
            platform=PLATFORM,
            user_id=user_id,
            display_name=await self._display_name(user_id),
            channel=channel,
            text=text,
            thread=str(thread) if thread else None,
            direct=direct,
            event_id=dedup_id,
        )
        return await self._runtime.commands.handle(message)

    async def _first(self, dedup_id: str) -> bool:
        """Whether this process is the first to see an event.

        With Redis down nothing can be recorded; the command itself will then answer that
        the state store is unavailable, which is harmless to say twice.
        """
        try:
            return await self._runtime.store.first_sighting(PLATFORM, dedup_id, ttl_s=SEEN_TTL_S)
        except StoreUnavailable:
            return True

    async def _display_name(self, user_id: str) -> str:
        """The person's Slack display name, cached for an hour; their id if Slack won't say."""
        cached = self._names.get(user_id)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        info = await self._api("users.info", user=user_id)
        user = (info or {}).get("user") or {}
        profile = user.get("profile") or {}
        name = profile.get("display_name") or profile.get("real_name") or user.get("name")
        if not name:
            return user_id
        self._names[user_id] = (str(name), time.monotonic() + DISPLAY_NAME_TTL_S)
        return str(name)

    async def _respond(
        self, respond: Any, reply: Reply, visibility: str, replace: bool = False
    ) -> None:
        """Answer through the request's response_url (no channel membership needed)."""
        text = render_mrkdwn(reply.parts, self._zone)
        try:
            await respond(
                text=text,
                blocks=blocks_for(reply, self._zone, text=text),
                response_type=visibility,
                replace_original=replace,
            )
        except Exception as error:  # response_url calls raise plain aiohttp errors
            log.warning("slack respond failed error=%s", type(error).__name__)

    async def _api(self, method: str, **params: Any) -> dict[str, Any] | None:
        """Call a Web API method; errors are logged (never the token) and yield None."""
        params = {key: value for key, value in params.items() if value is not None}
        try:
            response = await self.client.api_call(method, json=params)
            return dict(response.data) if isinstance(response.data, dict) else None
        except SlackApiError as error:
            log.warning("slack api error method=%s error=%s", method, error.response.get("error"))
        except Exception as error:
            log.warning("slack api call failed method=%s error=%s", method, type(error).__name__)
        return None

    def _without_bot_mention(self, text: str) -> str:
        """The text after the bot's own mention (people may write `hey @deploybot lock x`)."""
        mention = f"<@{self._bot_user_id}>" if self._bot_user_id else None
        if mention and mention in text:
            return text.split(mention, 1)[1]
        return text

    async def _on_error(self, error: Exception, body: dict[str, Any]) -> None:
        """A listener crashed outside the command handler: log it, never show it."""
        log.error("slack listener failed type=%s", body.get("type"), exc_info=error)

    async def _log_disconnects(self, message: Any) -> None:
        """Log why Slack asked us to reconnect (the client reconnects by itself)."""
        data = getattr(message, "data", "")
        if isinstance(data, str) and '"disconnect"' in data:
            log.info("slack reconnecting reason=disconnect message=%s", data[:200])

    async def _count_sessions(self, message: Any) -> None:
        """Slack greets every new connection with `hello`; each one after the first is a
        reconnect."""
        data = getattr(message, "data", "")
        if isinstance(data, str) and '"hello"' in data and _message_type(data) == "hello":
            self._sessions += 1

    async def _log_close(self, message: Any) -> None:
        log.info("slack socket closed; reconnecting")


class _QuietTokenWarning(logging.Filter):
    """Drop bolt's "`token` will be unused" warning: bolt reads SLACK_BOT_TOKEN from the
    environment even though deploybot hands it a client built from that very token."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`token` will be unused" not in record.getMessage()


_BOLT_LOG = logging.getLogger("adapters.slack.bolt")
_BOLT_LOG.addFilter(_QuietTokenWarning())


def _from_bot(event: dict[str, Any]) -> bool:
    """Whether an event came from a bot (ours or another), which we never answer."""
    return bool(event.get("bot_id") or event.get("subtype") == "bot_message")


def _message_type(data: str) -> str | None:
    """The `type` of a Socket Mode message, or None when it is not a JSON object."""
    try:
        message = json.loads(data)
    except ValueError:
        return None
    return str(message.get("type")) if isinstance(message, dict) else None


def _api_base(api_url: str | None) -> str:
    """slack_sdk wants the Web API base URL with a trailing slash."""
    base = api_url or "https://slack.com/api/"
    return base if base.endswith("/") else base + "/"
