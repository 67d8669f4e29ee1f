"""Expected failures: each carries its context and a message a person can act on.

Handlers raise these; the chat reply and the CLI's stderr line are built from them. Anything
else that goes wrong is a crash: logged with its stack trace, never shown to a user.
"""

from __future__ import annotations

from collections.abc import Sequence

from bot.messages import Code, Mention, Part, When
from bot.model import Lease, LeaseKind


class DeploybotError(Exception):
    """Base of every expected failure; `parts()` is what the user is shown."""

    #: CLI exit status for this failure: 1 refused, 2 usage or validation, 3 store down.
    exit_code = 2

    def parts(self) -> list[Part]:
        """The user-facing message as reply parts."""
        return [str(self)]


class UsageError(DeploybotError):
    """A command was malformed: missing or extra arguments, text too long."""


class UnknownCommand(UsageError):
    """The first word is no deploybot command."""

    def __init__(self, word: str, suggestions: Sequence[str]) -> None:
        self.word = word
        self.suggestions = list(suggestions)
        msg = f"I don't know the command `{word}`."
        if self.suggestions:
            msg += " Did you mean " + " or ".join(f"`{s}`" for s in self.suggestions) + "?"
        msg += " Say `help` to see every command."
        super().__init__(msg)


class InvalidDuration(UsageError):
    """A duration was malformed or outside the allowed bounds."""

    def __init__(self, text: str, reason: str) -> None:
        self.text = text
        self.reason = reason
        super().__init__(reason)


class InvalidName(UsageError):
    """A service, environment or job name has characters or a length we refuse."""

    def __init__(self, name: str, what: str, reason: str) -> None:
        self.name = name
        self.what = what
        super().__init__(reason)


class NameLooksLikeDuration(InvalidName):
    """A new lease's name reads as a duration (`lock 1h`): almost surely the name was left
    out, and taking a lease called `1h` would only puzzle everyone later."""

    def __init__(self, name: str, what: str, usage: str) -> None:
        self.usage = usage
        shown = name.strip().lower()
        article = "an" if what[:1] in "aeiou" else "a"
        super().__init__(
            name,
            what,
            f"`{shown}` looks like a duration, not {article} {what} name; give the {what} "
            f"first: `{usage} {shown}`.",
        )


class UnknownName(UsageError):
    """A name is valid but not among the configured services or environments."""

    def __init__(self, name: str, what: str, suggestions: Sequence[str]) -> None:
        self.name = name
        self.what = what
        self.suggestions = list(suggestions)
        msg = f"There is no {what} called `{name}`."
        if self.suggestions:
            msg += " Did you mean " + " or ".join(f"`{s}`" for s in self.suggestions) + "?"
        else:
            plural = " or ".join(f"{word}s" for word in what.split(" or "))
            msg += f" Say `status` to see the known {plural}."
        super().__init__(msg)


class LeaseHeld(DeploybotError):
    """Someone else holds the lease that was asked for."""

    exit_code = 1

    def __init__(self, lease: Lease, now_ms: int) -> None:
        self.lease = lease
        self.now_ms = now_ms
        super().__init__(
            f"{lease.kind.resource} {lease.name} is held by {lease.holder.display} "
            f"(token {lease.token})"
        )

    def parts(self) -> list[Part]:
        """Who holds it, since when, until when and why."""
        lease = self.lease
        parts: list[Part] = [
            f"{_title(lease.kind)} ",
            Code(lease.name),
            " is held by ",
            Mention(lease.holder),
            " since ",
            When(lease.acquired_at, self.now_ms),
            " until ",
            When(lease.expires_at, self.now_ms),
        ]
        if lease.note:
            parts.append(f": {lease.note}")
        parts.append(". Ask them to release it, or try again after it expires.")
        return parts


class NotHolder(DeploybotError):
    """Someone tried to release or extend a lease another person holds."""

    exit_code = 1

    def __init__(self, lease: Lease, action: str) -> None:
        self.lease = lease
        self.action = action
        super().__init__(
            f"only {lease.holder.display} can {action} {lease.kind.resource} {lease.name}"
        )

    def parts(self) -> list[Part]:
        """Name the holder and the ways forward."""
        return [
            f"Only the holder can {self.action} ",
            Code(self.lease.name),
            ": it is held by ",
            Mention(self.lease.holder),
            ". Ask them, or ask an admin to force it.",
        ]


class NotHeld(DeploybotError):
    """The lease to release, extend or check does not exist (free, or already expired)."""

    exit_code = 1

    def __init__(
        self, kind: LeaseKind | None, name: str, *, held_as: LeaseKind | None = None
    ) -> None:
        self.kind = kind
        self.name = name
        # The other kind of lease is held under this name: the caller picked the wrong verb.
        self.held_as = held_as
        message = f"{_title(kind)} {name} is not held by anyone right now"
        if held_as is not None:
            message += f"; there is a {_lease_word(held_as)} on it"
        super().__init__(message)

    def parts(self) -> list[Part]:
        """Say it is free, so nothing needs doing, or which verb was meant."""
        if self.kind is None:
            return ["Nothing called ", Code(self.name), " is held right now; nothing changed."]
        parts: list[Part] = [
            f"{_title(self.kind)} ",
            Code(self.name),
            " is not held by anyone right now; nothing changed.",
        ]
        if self.held_as is not None:
            verb = "unlock" if self.held_as is LeaseKind.LOCK else "release"
            parts += [
                f" There is a {_lease_word(self.held_as)} on it: ",
                Code(f"{verb} {self.name}"),
                ".",
            ]
        return parts


class NotAdmin(DeploybotError):
    """A force command came from someone who is not a configured admin."""

    exit_code = 1

    def __init__(self, identity: str) -> None:
        self.identity = identity
        super().__init__(
            "Only admins listed in deploybot's config can force a release; "
            "ask the holder to release it, or ask an admin."
        )


class WaitTimedOut(DeploybotError):
    """A pipeline waited for a lease as long as it was willing to; it left the waitlist."""

    exit_code = 1

    def __init__(self, kind: LeaseKind, name: str, lease: Lease | None) -> None:
        self.kind = kind
        self.name = name
        self.lease = lease
        holder = f" (still held by {lease.holder.display})" if lease else ""
        super().__init__(
            f"Gave up waiting for the {kind} on {name}{holder}; left the waitlist, nothing taken."
        )


class NotAllowed(DeploybotError):
    """The sender or channel is not on the allow-lists, or sent too many commands."""

    exit_code = 1


class CorruptRecord(DeploybotError):
    """A value in Redis is not what deploybot wrote (hand-edited or damaged)."""

    exit_code = 1

    def __init__(self, key: str) -> None:
        self.key = key
        kind, _, name = key.split(":lease:", 1)[-1].partition(":")
        command = "force-unlock" if kind == "lock" else "force-release"
        super().__init__(
            f"The {kind} record for `{name}` in the state store is corrupt, so I changed "
            f"nothing. An admin can clear it with `{command} {name} <reason>`."
        )


class CorruptState(DeploybotError):
    """A deploybot key holds the wrong kind of value (changed by hand), e.g. a string where
    a hash belongs.

    Redis reports this only when a script reaches the command on that key, and a script's
    earlier writes stay: a lock may be taken although its timeline entry failed. So the
    message cannot promise that nothing changed.
    """

    exit_code = 1

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        super().__init__(
            "Part of deploybot's state in Redis holds the wrong kind of value (a key under "
            f"{prefix} was changed by hand), so I could not finish: the change may be only "
            "partly made. An admin should inspect or delete that key, then check `status`."
        )


class StoreUnavailable(DeploybotError):
    """Redis could not be reached or answered with an error; nothing was changed."""

    exit_code = 3

    def __init__(self, reason: str = "") -> None:
        self.reason = reason
        why = f" ({reason})" if reason else ""
        super().__init__(
            f"The state store is unavailable{why}, so nothing changed. Try again shortly."
        )


def _lease_word(kind: LeaseKind) -> str:
    return "deploy lock" if kind is LeaseKind.LOCK else "staging claim"


def _title(kind: LeaseKind | None) -> str:
    """`Service` or `Environment`, for the start of a sentence."""
    return kind.resource.capitalize() if kind else "Resource"
