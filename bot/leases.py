"""Deploy locks and staging claims: one lease mechanism, validated here, stored atomically.

Everything a person types (names, durations, notes) is checked here before the store sees
it; the store then decides atomically. Locks and claims differ only in their settings and
words, so a fix to one is a fix to both.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bot.config import Settings
from bot.durations import parse_duration
from bot.errors import (
    DeploybotError,
    LeaseHeld,
    NotAdmin,
    NotHeld,
    NotHolder,
    UsageError,
    WaitTimedOut,
)
from bot.messages import one_line
from bot.model import Event, Holder, Lease, LeaseKind, Origin
from bot.names import normalize_name, normalize_new_name
from bot.store import LeaseChange, LeaseListing, Store, WaitlistResult

MAX_NOTE_LENGTH = 500
WAIT_POLL_S = 0.5
MAX_REASON_LENGTH = 500

# Where a lease's name goes, shown when a new lease's name reads as a duration.
_PLACEHOLDERS = {LeaseKind.LOCK: "<service>", LeaseKind.CLAIM: "<env>"}


@dataclass(frozen=True)
class CheckResult:
    """Whether a pipeline's token still holds its lock, and what holds it instead if not."""

    valid: bool
    lease: Lease | None
    now_ms: int


class LeaseService:
    """The operations people and pipelines perform on leases."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._settings = settings

    def name(self, kind: LeaseKind, raw: str) -> str:
        """Validate a service or environment name against the rules and the config."""
        return normalize_name(raw, kind.resource, self._settings.known_names(kind))

    def new_name(
        self, kind: LeaseKind, raw: str, command: str, *, duration_option: str = ""
    ) -> str:
        """`name`, for a lease `command` is about to take or wait for: a name that reads as
        a duration (`lock 1h`) is refused unless the config lists it. The refusal shows
        `command`, the name's place and `duration_option` (the CLI's `--ttl`) before the
        duration."""
        usage = " ".join(part for part in (command, _PLACEHOLDERS[kind], duration_option) if part)
        return normalize_new_name(
            raw, kind.resource, self._settings.known_names(kind), usage=usage
        )

    def duration(self, kind: LeaseKind, text: str | None) -> int:
        """Milliseconds for `text`, or the kind's default; bounded by the kind's maximum."""
        limits = self._settings.lease(kind)
        if text is None:
            return limits.default_ttl
        return parse_duration(text, maximum_ms=limits.max_ttl)

    async def acquire(
        self,
        kind: LeaseKind,
        raw_name: str,
        holder: Holder,
        *,
        duration: str | None = None,
        note: str = "",
        origin: Origin | None = None,
        via: Origin | None = None,
    ) -> LeaseChange:
        """Take or refresh a lease; raises LeaseHeld with the holder's details if taken.

        Without a duration a new lease gets the kind's default, and a refresh keeps the
        later of its current expiry and now + the default: re-running `lock` in a pipeline
        never cuts a lease short.
        """
        name = self.new_name(kind, raw_name, str(kind))
        ttl_ms = self.duration(kind, duration)
        note = _bounded(note, "note", MAX_NOTE_LENGTH)
        return await self._store.acquire(
            kind,
            name,
            holder,
            ttl_ms=ttl_ms,
            note=note,
            origin=origin,
            via=via,
            keep_longer=duration is None,
        )

    async def release(
        self, kind: LeaseKind, raw_name: str, holder: Holder, *, via: Origin | None = None
    ) -> LeaseChange:
        """Release a lease `holder` holds; the first waiter (if any) is served."""
        name = self.name(kind, raw_name)
        try:
            return await self._store.release(kind, name, holder, via=via)
        except NotHeld as error:
            raise await self._with_other_kind(error) from None

    async def join_waitlist(
        self,
        kind: LeaseKind,
        raw_name: str,
        holder: Holder,
        *,
        duration: str | None = None,
        note: str = "",
        origin: Origin | None = None,
        via: Origin | None = None,
        wait_ms: int | None = None,
    ) -> WaitlistResult:
        """Wait for a lease; when it frees up the first waiter gets it (or is told).
        With `wait_ms` the place in line lapses after that long."""
        name = self.new_name(kind, raw_name, "queue")
        ttl_ms = self.duration(kind, duration) if duration is not None else None
        note = _bounded(note, "note", MAX_NOTE_LENGTH)
        return await self._store.join_waitlist(
            kind, name, holder, ttl_ms=ttl_ms, note=note, origin=origin, via=via, wait_ms=wait_ms
        )

    async def acquire_or_wait(
        self,
        kind: LeaseKind,
        raw_name: str,
        holder: Holder,
        *,
        wait: str,
        duration: str | None = None,
        note: str = "",
        via: Origin | None = None,
        on_waiting: Callable[[WaitlistResult], None] = lambda result: None,
    ) -> LeaseChange:
        """Take the lease, or join its waitlist and block until it is handed over.

        Gives up after `wait` (raising WaitTimedOut), leaving the waitlist so nobody hands
        the lease to a pipeline that stopped waiting; an interrupted wait leaves it too.
        """
        wait_ms = parse_duration(
            wait, maximum_ms=self._settings.lease(kind).max_ttl, minimum_ms=1000
        )
        try:
            return await self.acquire(
                kind, raw_name, holder, duration=duration, note=note, via=via
            )
        except LeaseHeld:
            pass
        name = self.name(kind, raw_name)
        joined = await self.join_waitlist(
            kind, name, holder, duration=duration, note=note, via=via, wait_ms=wait_ms
        )
        if joined.outcome == "acquired" and joined.lease is not None:
            return LeaseChange(joined.lease, joined.now_ms, "acquired")
        on_waiting(joined)
        deadline = joined.now_ms + wait_ms
        try:
            return await self._wait_for_handoff(kind, name, holder, deadline, duration, note, via)
        except BaseException as stopped:
            won = await asyncio.shield(self._stop_waiting(kind, name, holder, via))
            if won is not None and isinstance(stopped, WaitTimedOut):
                return won  # handed over just as the wait ran out: it is ours after all
            if won is not None:  # interrupted: do not keep a lease nobody will use
                await asyncio.shield(self._store.release(kind, name, holder, via=via))
            raise

    async def _stop_waiting(
        self, kind: LeaseKind, name: str, holder: Holder, via: Origin | None
    ) -> LeaseChange | None:
        """Leave the waitlist; if the lease was handed over meanwhile, return it."""
        if await self._store.leave_waitlist(kind, name, holder, via=via):
            return None
        lease, now = await self.get(kind, name)
        if lease is not None and lease.holder.same_person(holder):
            return LeaseChange(lease, now, "acquired")
        return None

    async def _wait_for_handoff(
        self,
        kind: LeaseKind,
        name: str,
        holder: Holder,
        deadline: int,
        duration: str | None,
        note: str,
        via: Origin | None,
    ) -> LeaseChange:
        """Poll until the lease is ours (handed over, or free to take) or the deadline."""
        while True:
            await asyncio.sleep(WAIT_POLL_S)
            lease, now = await self.get(kind, name)
            if lease is not None and lease.holder.same_person(holder):
                return LeaseChange(lease, now, "acquired")
            if lease is None:  # 'notify' mode, or between expiry and the sweep
                with contextlib.suppress(LeaseHeld):
                    return await self.acquire(
                        kind, name, holder, duration=duration, note=note, via=via
                    )
            if now >= deadline:
                raise WaitTimedOut(kind, name, lease)

    async def leave_waitlist(
        self, kind: LeaseKind, raw_name: str, holder: Holder, *, via: Origin | None = None
    ) -> bool:
        """Stop waiting for a lease; False if `holder` was not waiting."""
        return await self._store.leave_waitlist(kind, self.name(kind, raw_name), holder, via=via)

    async def waiters(self, kind: LeaseKind, raw_name: str) -> list[Holder]:
        """Who waits for a lease, first in line first."""
        return await self._store.waiters(kind, self.name(kind, raw_name))

    def kind_of(self, raw_name: str, held: Sequence[Lease] = ()) -> LeaseKind:
        """Which kind a bare name means: a configured environment is a claim, a configured
        service a lock; otherwise the kind currently held under that name, else a lock."""
        name = raw_name.strip().lower()
        if name in self._settings.environments and name not in self._settings.services:
            return LeaseKind.CLAIM
        if name in self._settings.services:
            return LeaseKind.LOCK
        kinds = {lease.kind for lease in held if lease.name == name}
        return LeaseKind.CLAIM if kinds == {LeaseKind.CLAIM} else LeaseKind.LOCK

    async def force_release(
        self,
        kind: LeaseKind,
        raw_name: str,
        admin: Holder,
        reason: str,
        *,
        via: Origin | None = None,
    ) -> LeaseChange:
        """Release anyone's lease; admins only, and the reason goes into the history."""
        name = self.name(kind, raw_name)
        if not self._settings.is_admin(admin):
            raise NotAdmin(admin.identity)
        reason = _bounded(reason, "reason", MAX_REASON_LENGTH)
        if not reason:
            raise UsageError("Say why you force it, e.g. `force-unlock backend deploy is stuck`.")
        try:
            return await self._store.release(kind, name, admin, force_reason=reason, via=via)
        except NotHeld as error:
            raise await self._with_other_kind(error) from None

    async def _with_other_kind(self, error: NotHeld) -> NotHeld:
        """`error`, saying so when the other kind of lease is held under that name
        (`release web` for a lock on `web`)."""
        if error.kind is None:
            return error
        other = LeaseKind.CLAIM if error.kind is LeaseKind.LOCK else LeaseKind.LOCK
        try:
            held = await self._store.get(other, error.name)
        except DeploybotError:  # unreadable, or Redis gone since: the plain answer will do
            return error
        return error if held is None else NotHeld(error.kind, error.name, held_as=other)

    async def extend(
        self,
        raw_name: str,
        holder: Holder,
        *,
        duration: str | None = None,
        via: Origin | None = None,
    ) -> list[LeaseChange]:
        """Extend whatever `holder` holds under this name: the lock, the claim, or both.

        A name can be both a service and an environment; people say `extend api` without
        naming the kind, so the holder's own leases decide.
        """
        if duration is not None:  # a typo is reported as such, whatever is held
            longest = max(self._settings.lock.max_ttl, self._settings.claim.max_ttl)
            parse_duration(duration, maximum_ms=longest)
        mine, others = await self._leases_named(raw_name, holder)
        if not mine:
            if others:
                raise NotHolder(others[0], "extend")
            raise NotHeld(None, raw_name.strip().lower())

        # Check every duration before changing anything, so a refusal extends nothing.
        ttls = {lease.kind: self.duration(lease.kind, duration) for lease in mine}
        return [
            await self._store.extend(
                lease.kind, lease.name, holder, ttl_ms=ttls[lease.kind], via=via
            )
            for lease in mine
        ]

    async def extend_lease(
        self,
        kind: LeaseKind,
        raw_name: str,
        holder: Holder,
        *,
        duration: str | None = None,
        via: Origin | None = None,
    ) -> LeaseChange:
        """Extend one lease of a known kind (a button names it exactly)."""
        name = self.name(kind, raw_name)
        ttl_ms = self.duration(kind, duration)
        return await self._store.extend(kind, name, holder, ttl_ms=ttl_ms, via=via)

    async def get(self, kind: LeaseKind, raw_name: str) -> tuple[Lease | None, int]:
        """The current lease on a name (or None) and Redis's clock."""
        lease = await self._store.get(kind, self.name(kind, raw_name))
        return lease, await self._store.now_ms()

    async def status(
        self,
        raw_name: str | None = None,
        *,
        limit: int | None = None,
        kind: LeaseKind | None = None,
    ) -> LeaseListing:
        """Current leases (at most `limit`, only `kind` if given), or those named `raw_name`
        (lock and claim)."""
        if raw_name is None:
            return await self._store.leases(limit=limit, kind=kind)
        return await self._store.leases(name=self._any_name(raw_name))

    async def history(self, raw_name: str, count: int | None = None) -> tuple[list[Event], int]:
        """The latest events about a name, newest first, and Redis's clock."""
        count = count or self._settings.history_count
        kinds = tuple(str(kind) for kind in LeaseKind)
        events = await self._store.history(self._any_name(raw_name), count=count, kinds=kinds)
        return events, await self._store.now_ms()

    async def check(self, raw_name: str, token: int) -> CheckResult:
        """Whether the lock (or claim) on `raw_name` is still held with `token`.

        A pipeline calls this before each risky step: a lease that expired, or expired and
        was taken by someone else, fails the check even if the pipeline never noticed.
        """
        name = self._any_name(raw_name)
        found = [lease for kind in LeaseKind if (lease := await self._store.get(kind, name))]
        now = await self._store.now_ms()
        for lease in found:
            if lease.token == token:
                return CheckResult(True, lease, now)
        return CheckResult(False, found[0] if found else None, now)

    async def _leases_named(
        self, raw_name: str, holder: Holder
    ) -> tuple[list[Lease], list[Lease]]:
        """Split the live leases called `raw_name` into the holder's and other people's."""
        name = self._any_name(raw_name)
        mine: list[Lease] = []
        others: list[Lease] = []
        for kind in LeaseKind:
            lease = await self._store.get(kind, name)
            if lease is not None:
                (mine if lease.holder.same_person(holder) else others).append(lease)
        return mine, others

    def _any_name(self, raw: str) -> str:
        """Validate a name that may be a service or an environment."""
        services, environments = self._settings.services, self._settings.environments
        known = [*services, *environments] if services and environments else []
        return normalize_name(raw, "service or environment", known)


def _bounded(text: str, what: str, limit: int) -> str:
    """Strip `text` and refuse it if longer than `limit` characters."""
    text = one_line(text)
    if len(text) > limit:
        raise UsageError(f"That {what} is {len(text)} characters; keep it to {limit} at most.")
    return text
