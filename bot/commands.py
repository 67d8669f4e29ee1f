"""Chat commands: parse text into a Command, run its handler, answer with a Reply.

Every adapter hands its messages to `CommandHandler.handle`, so Slack, Mattermost and the
console understand exactly the same commands and give the same answers.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from bot.config import Settings
from bot.durations import looks_like_duration, parses_as_duration
from bot.errors import DeploybotError, NotAllowed, UnknownCommand, UsageError
from bot.jobs import JobService
from bot.leases import LeaseService
from bot.limits import Gatekeeper
from bot.messages import Code, Mention, Message, Part, Reply, clean_text, one_line
from bot.model import LeaseKind, Origin
from bot.names import suggest
from bot.replies import (
    history_parts,
    job_line,
    jobs_parts,
    lease_change_parts,
    status_parts,
    waitlist_parts,
)

log = logging.getLogger(__name__)

_LEADING_MENTION = re.compile(r"^\s*(<@[A-Za-z0-9._-]+(\|[^>]*)?>|@[A-Za-z0-9._-]+)[:,]?\s*")


@dataclass(frozen=True)
class Command:
    """A parsed command: its canonical name and the words after it."""

    name: str
    args: list[str]


@dataclass(frozen=True)
class CommandSpec:
    """What `help` shows about a command, and which aliases reach it."""

    name: str
    usage: str
    summary: str
    aliases: tuple[str, ...] = ()


SPECS = (
    CommandSpec(
        "lock", "lock <service> [duration] [note...]", "Take the deploy lock on a service."
    ),
    CommandSpec("unlock", "unlock <service>", "Release your deploy lock."),
    CommandSpec("claim", "claim <env> [branch] [duration]", "Claim a staging environment."),
    CommandSpec("release", "release <env>", "Release your staging claim."),
    CommandSpec("extend", "extend <name> [duration]", "Extend your lock or claim."),
    CommandSpec(
        "status", "status [name]", "Show current locks and claims.", aliases=("locks", "envs")
    ),
    CommandSpec("history", "history <name>", "Show recent events for a service or environment."),
    CommandSpec("jobs", "jobs", "Show job statuses reported by pipelines."),
    CommandSpec("job", "job <name>", "Show one job's status."),
    CommandSpec(
        "force-unlock", "force-unlock <service> <reason...>", "Admins: release anyone's lock."
    ),
    CommandSpec(
        "force-release", "force-release <env> <reason...>", "Admins: release anyone's claim."
    ),
    CommandSpec(
        "queue",
        "queue <name> [duration]",
        "Wait for a lock or claim; the first in line gets it when it frees up.",
    ),
    CommandSpec("leave", "leave <name>", "Stop waiting for a lock or claim."),
    CommandSpec("help", "help [command]", "Show commands, or one command in detail."),
)

_BY_WORD = {word: spec for spec in SPECS for word in (spec.name, *spec.aliases)}
_COMMAND_NAMES = [spec.name for spec in SPECS]

# A chat `status` lists at most this many leases; `status <name>` shows any one.
STATUS_LIMIT = 50

_DURATION_HELP = "Durations look like 90s, 30m, 2h, 1h30m or 1d."


def strip_mention(text: str) -> str:
    """Drop a leading bot mention (`@deploybot`, `<@U123>`), which is optional."""
    return _LEADING_MENTION.sub("", text, count=1)


def parse(text: str, *, max_length: int = 4000) -> Command:
    """Split message text into a Command; unknown words get the closest command suggested."""
    if len(text) > max_length:
        msg = f"That message is {len(text)} characters; I read at most {max_length}."
        raise UsageError(msg)

    words = strip_mention(text).split()
    if not words:
        return Command("help", [])

    word = words[0].lower()
    spec = _BY_WORD.get(word)
    if spec is None:
        raise UnknownCommand(words[0][:40], suggest(word, _COMMAND_NAMES))
    args = [word] if word in spec.aliases else []
    return Command(spec.name, args + words[1:])


Handler = Callable[[Message, list[str]], Awaitable[Reply]]

# Told of every command: (command name, outcome, latency in seconds). Metrics hook in here.
CommandObserver = Callable[[str, str, float], None]


class CommandHandler:
    """Runs commands for every adapter; the only place chat text meets the core."""

    def __init__(
        self,
        leases: LeaseService,
        jobs: JobService,
        settings: Settings,
        *,
        observer: CommandObserver | None = None,
        gatekeeper: Gatekeeper | None = None,
    ) -> None:
        self._gatekeeper = gatekeeper
        self._leases = leases
        self._jobs = jobs
        self._settings = settings
        self.observer = observer
        self._handlers: dict[str, Handler] = {
            "lock": self._lock,
            "unlock": self._unlock,
            "claim": self._claim,
            "release": self._release,
            "extend": self._extend,
            "status": self._status,
            "history": self._history,
            "jobs": self._list_jobs,
            "job": self._job,
            "force-unlock": self._force_unlock,
            "force-release": self._force_release,
            "queue": self._queue,
            "leave": self._leave,
            "help": self._help,
        }

    async def handle(self, message: Message) -> Reply:
        """Answer a message. Expected failures become polite replies; crashes get a ref id."""
        started = time.monotonic()
        command_name = "unparsed"
        message = _cleaned(message)
        try:
            await self._admit(message)
            command = parse(message.text, max_length=self._settings.max_message_length)
            command_name = command.name
            reply = await self._handlers[command.name](message, command.args)
            outcome = "ok"
        except DeploybotError as error:
            reply = Reply.of(error.parts(), ok=False, private=True)
            outcome = type(error).__name__
        except Exception:
            ref = secrets.token_hex(3)
            log.exception(
                "command crashed ref=%s platform=%s command=%s user=%s",
                ref,
                message.platform,
                command_name,
                message.user_id,
            )
            text = f"Something went wrong on my side (ref {ref}). Say `status` to check."
            reply = Reply.of(text, ok=False, private=True)
            outcome = "crash"

        latency = time.monotonic() - started
        log.info(
            "command platform=%s command=%s user=%s outcome=%s latency_ms=%.1f",
            message.platform,
            command_name,
            message.user_id,
            outcome,
            latency * 1000,
        )
        if self.observer is not None:
            self.observer(command_name, outcome, latency)
        return reply

    async def _admit(self, message: Message) -> None:
        """Refuse messages from outside the allow-lists, or over the rate limit."""
        if self._gatekeeper is None:
            return
        refusal = self._gatekeeper.refusal(message)
        if refusal:
            raise NotAllowed(refusal)
        if await self._gatekeeper.over_limit(message):
            limit = self._settings.rate_limit_per_minute
            raise NotAllowed(
                f"Easy there: that is more than {limit} commands in a minute. "
                "Wait a moment and try again; nothing was changed."
            )

    async def _lock(self, message: Message, args: list[str]) -> Reply:
        name, rest = _require_name(args, "lock", _article_and_word(LeaseKind.LOCK))
        duration = rest.pop(0) if rest and looks_like_duration(rest[0]) else None
        if duration is not None and not parses_as_duration(duration):
            raise UsageError(
                f"`{duration}` is not a duration I understand; use one like 90s, 30m, 2h or "
                f"1h30m. To start a note with a number, give the duration first: "
                f"`lock {name} 1h {duration} ...`."
            )
        change = await self._leases.acquire(
            LeaseKind.LOCK,
            name,
            message.sender,
            duration=duration,
            note=" ".join(rest),
            origin=_origin(message),
            via=_via(message),
        )
        return Reply.of(lease_change_parts(change), leases=[change.lease])

    async def _claim(self, message: Message, args: list[str]) -> Reply:
        name, rest = _require_name(args, "claim", _article_and_word(LeaseKind.CLAIM))
        branch = rest.pop(0) if rest and not _meant_as_duration(rest[0]) else ""
        duration = rest.pop(0) if rest and looks_like_duration(rest[0]) else None
        note = " ".join([branch, *rest]).strip()
        change = await self._leases.acquire(
            LeaseKind.CLAIM,
            name,
            message.sender,
            duration=duration,
            note=note,
            origin=_origin(message),
            via=_via(message),
        )
        return Reply.of(lease_change_parts(change), leases=[change.lease])

    async def _unlock(self, message: Message, args: list[str]) -> Reply:
        name = await self._single_name(message, args, "unlock", LeaseKind.LOCK)
        change = await self._leases.release(
            LeaseKind.LOCK, name, message.sender, via=_via(message)
        )
        return Reply.of(lease_change_parts(change))

    async def _release(self, message: Message, args: list[str]) -> Reply:
        name = await self._single_name(message, args, "release", LeaseKind.CLAIM)
        change = await self._leases.release(
            LeaseKind.CLAIM, name, message.sender, via=_via(message)
        )
        return Reply.of(lease_change_parts(change))

    async def _extend(self, message: Message, args: list[str]) -> Reply:
        if not args:
            raise await self._which(message, "extend", None)
        if len(args) > 2:
            raise UsageError(
                "`extend` takes a name and an optional duration: `extend backend 30m`."
            )
        duration = args[1] if len(args) == 2 else None
        changes = await self._leases.extend(
            args[0], message.sender, duration=duration, via=_via(message)
        )
        parts: list[Part] = []
        for change in changes:
            parts += [*(["\n"] if parts else []), *lease_change_parts(change)]
        return Reply.of(parts, leases=[change.lease for change in changes])

    async def _force_unlock(self, message: Message, args: list[str]) -> Reply:
        return await self._force(message, args, LeaseKind.LOCK, "force-unlock")

    async def _force_release(self, message: Message, args: list[str]) -> Reply:
        return await self._force(message, args, LeaseKind.CLAIM, "force-release")

    async def _force(
        self, message: Message, args: list[str], kind: LeaseKind, command: str
    ) -> Reply:
        name, rest = _require_name(args, command, _article_and_word(kind))
        reason = " ".join(rest)
        change = await self._leases.force_release(
            kind, name, message.sender, reason, via=_via(message)
        )
        return Reply.of(lease_change_parts(change))

    async def _status(self, message: Message, args: list[str]) -> Reply:
        kinds = {"locks": [LeaseKind.LOCK], "envs": [LeaseKind.CLAIM]}.get(
            args[0] if args else "", list(LeaseKind)
        )
        names = args[1:] if args and args[0] in ("locks", "envs") else args
        if len(names) > 1:
            raise UsageError("`status` takes at most one name: `status backend`.")
        only = kinds[0] if len(kinds) == 1 else None  # `locks` / `envs` page their own kind
        listing = await self._leases.status(
            names[0] if names else None, limit=STATUS_LIMIT, kind=only
        )
        parts = status_parts(self._settings, listing, kinds, bool(names))
        return Reply.of(parts, private=True)

    async def _history(self, message: Message, args: list[str]) -> Reply:
        if len(args) != 1:
            raise UsageError("`history` takes one name: `history backend`.")
        events, now = await self._leases.history(args[0])
        return Reply.of(history_parts(args[0], events, now), private=True)

    async def _list_jobs(self, message: Message, args: list[str]) -> Reply:
        if args:
            raise UsageError("`jobs` takes no arguments; for one job say `job <name>`.")
        return Reply.of(jobs_parts(await self._jobs.list()), private=True)

    async def _job(self, message: Message, args: list[str]) -> Reply:
        if len(args) != 1:
            raise UsageError("`job` takes one job name: `job api/build#42`.")
        job, now = await self._jobs.get(args[0])
        if job is None:
            text = f"No job called `{args[0].strip().lower()}` has been reported."
            return Reply.of(text, ok=False, private=True)
        return Reply.of(job_line(job, now), private=True)

    async def _queue(self, message: Message, args: list[str]) -> Reply:
        if not args or len(args) > 2:
            raise UsageError("`queue` takes a name and an optional duration: `queue backend 1h`.")
        kind = await self._kind_of(args[0])
        result = await self._leases.join_waitlist(
            kind,
            args[0],
            message.sender,
            duration=args[1] if len(args) == 2 else None,
            origin=_origin(message),
            via=_via(message),
        )
        return Reply.of(
            waitlist_parts(kind, args[0], result, message.sender),
            leases=[result.lease] if result.outcome == "acquired" and result.lease else [],
        )

    async def _leave(self, message: Message, args: list[str]) -> Reply:
        if len(args) != 1:
            raise UsageError("`leave` takes one name: `leave backend`.")
        kind = await self._kind_of(args[0])
        left = await self._leases.leave_waitlist(kind, args[0], message.sender, via=_via(message))
        name = Code(args[0].strip().lower())
        if not left:
            return Reply.of("You were not waiting for ", name, "; nothing changed.", ok=False)
        return Reply.of(Mention(message.sender), " stopped waiting for ", name, ".")

    async def _kind_of(self, raw_name: str) -> LeaseKind:
        """The kind a bare name means (configured lists first, then what is held)."""
        listing = await self._leases.status(raw_name)
        return self._leases.kind_of(raw_name, listing.leases)

    async def _help(self, message: Message, args: list[str]) -> Reply:
        if args:
            spec = _BY_WORD.get(args[0].lower())
            if spec is None:
                raise UnknownCommand(args[0][:40], suggest(args[0].lower(), _COMMAND_NAMES))
            text = f"`{spec.usage}`\n{spec.summary}"
            if "duration" in spec.usage:
                text += f" {_DURATION_HELP}"
            return Reply.of(text, private=True)

        lines = [f"  `{spec.usage}`  {spec.summary}" + _aliases(spec) for spec in SPECS]
        text = "Commands (a leading @mention is optional):\n" + "\n".join(lines)
        text += f"\n{_DURATION_HELP}"
        return Reply.of(text, private=True)

    async def _single_name(
        self, message: Message, args: list[str], command: str, kind: LeaseKind
    ) -> str:
        """The one name `unlock`/`release` need; a missing one gets a helpful question."""
        if not args:
            raise await self._which(message, command, kind)
        if len(args) > 1:
            raise UsageError(f"`{command}` takes one name: `{command} {args[0]}`.")
        return args[0]

    async def _which(self, message: Message, command: str, kind: LeaseKind | None) -> UsageError:
        """Ask which name was meant, listing what the sender holds."""
        listing = await self._leases.status()
        held = [
            lease.name
            for lease in listing.leases
            if lease.holder.same_person(message.sender) and kind in (None, lease.kind)
        ]
        what = "a name" if kind is None else _article_and_word(kind)
        example = held[0] if held else ("staging-1" if kind is LeaseKind.CLAIM else "backend")
        msg = f"`{command}` needs {what}, e.g. `{command} {example}`."
        if held:
            msg += " You hold: " + ", ".join(f"`{name}`" for name in held) + "."
        return UsageError(msg)


def _require_name(args: list[str], command: str, placeholder: str) -> tuple[str, list[str]]:
    """The first argument (a name) and the rest; a missing name gets the usage line."""
    if not args:
        spec = _BY_WORD[command]
        raise UsageError(f"`{command}` needs {placeholder}: `{spec.usage}`.")
    return args[0], list(args[1:])


def _aliases(spec: CommandSpec) -> str:
    """` Also: `locks`, `envs`.` for a command with aliases."""
    if not spec.aliases:
        return ""
    return " Also: " + ", ".join(f"`{alias}`" for alias in spec.aliases) + "."


def _article_and_word(kind: LeaseKind) -> str:
    """`a service` or `an environment`."""
    return "a service" if kind is LeaseKind.LOCK else "an environment"


def _meant_as_duration(word: str) -> bool:
    """Whether `claim`'s first optional word is a duration rather than a branch.

    Branches may start with digits (`1234-fix-login`, `42`), so only a word that parses
    as a duration is taken as one; a malformed duration after the branch is still refused.
    """
    return parses_as_duration(word)


def _cleaned(message: Message) -> Message:
    """The message with text that cannot be stored (lone surrogates) replaced by `?`."""
    return replace(
        message,
        text=clean_text(message.text),
        display_name=one_line(message.display_name),
        user_id=one_line(message.user_id),
    )


def _via(message: Message) -> Origin:
    """Where a command came from, so announcements skip the channel that saw the reply."""
    return Origin(message.platform, message.channel or "direct", message.thread)


def _origin(message: Message) -> Origin | None:
    """Where to announce changes to this lease later: the channel it was taken in (a DM is
    no channel: its holder hears about their own lease by DM anyway)."""
    if message.platform == "local" or message.direct or not message.channel:
        return None
    return Origin(message.platform, message.channel, message.thread)
