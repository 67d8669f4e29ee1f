"""What deploybot says about leases, history and jobs, as reply parts.

Chat commands and the CLI both build their answers here, so a pipeline's terminal and a
chat channel describe the same change in the same words.
"""

from __future__ import annotations

from collections.abc import Sequence

from bot.config import Settings
from bot.durations import format_span
from bot.messages import Code, Mention, Part, When
from bot.model import Event, Holder, Job, Lease, LeaseKind
from bot.store import JobListing, LeaseChange, LeaseListing, WaitlistResult

_VERBS = {
    (LeaseKind.LOCK, "acquired"): "locked",
    (LeaseKind.CLAIM, "acquired"): "claimed",
    (LeaseKind.LOCK, "released"): "unlocked",
    (LeaseKind.CLAIM, "released"): "released",
}


def lease_change_parts(change: LeaseChange) -> list[Part]:
    """One sentence on what a lease command did: who, what, until when, why, which token."""
    lease, now = change.lease, change.now_ms
    outcome = change.outcome

    if outcome == "released":
        verb = _VERBS[(lease.kind, outcome)]
        held = format_span(now - lease.acquired_at)
        return [Mention(lease.holder), f" {verb} ", Code(lease.name), f" after {held}."]
    if outcome == "forced":
        return _forced_parts(change)

    if outcome == "refreshed":
        head: list[Part] = [
            Mention(lease.holder),
            " already held ",
            Code(lease.name),
            "; refreshed until ",
        ]
    elif outcome == "extended":
        head = [
            Mention(lease.holder),
            f" extended the {lease.kind} on ",
            Code(lease.name),
            " until ",
        ]
    else:
        head = [
            Mention(lease.holder),
            f" {_VERBS[(lease.kind, 'acquired')]} ",
            Code(lease.name),
            " until ",
        ]
    note: list[Part] = [": ", lease.note] if lease.note else []
    return [*head, When(lease.expires_at, now), *note, ". Token ", Code(str(lease.token)), "."]


def _forced_parts(change: LeaseChange) -> list[Part]:
    """`Ada force-released Alice's lock on backend: stuck deploy.`"""
    lease = change.lease
    actor: list[Part] = [Mention(change.forced_by)] if change.forced_by else ["An admin"]
    reason = f": {change.reason}." if change.reason else "."
    if lease.token == 0:  # the store's placeholder for a damaged record it cleared
        return [*actor, f" cleared the corrupt {lease.kind} record for ", Code(lease.name), reason]
    return [
        *actor,
        " force-released ",
        Mention(lease.holder),
        f"'s {lease.kind} on ",
        Code(lease.name),
        reason,
    ]


def waitlist_parts(
    kind: LeaseKind, raw_name: str, result: WaitlistResult, who: Holder
) -> list[Part]:
    """What joining a waitlist did: your position, or that you got it, or that it is free."""
    name = Code(result.lease.name if result.lease else raw_name.strip().lower())
    lease, now = result.lease, result.now_ms
    if result.outcome == "holding":
        return ["You already hold ", name, "; nothing to wait for."]
    if result.outcome == "acquired" and lease is not None:
        return lease_change_parts(LeaseChange(lease, now, "acquired"))
    if result.outcome == "free":
        verb = "lock" if kind is LeaseKind.LOCK else "claim"
        return [name, f" is free: say `{verb} {raw_name.strip().lower()}` to take it."]
    ahead = result.position - 1
    line: list[Part] = [Mention(who), " is number ", str(result.position), " in line for ", name]
    if lease is not None:
        line += [" (held by ", Mention(lease.holder), " until ", When(lease.expires_at, now), ")"]
    # The console has no DMs: the announcer prints a local user's direct messages there.
    told = "be told in the console" if who.platform == "local" else "get a DM"
    line.append(
        ". " + ("You are next" if ahead == 0 else f"{ahead} ahead of you") + "; "
        f"you will {told} when it is yours. Say `leave {name.text}` to stop waiting."
    )
    return line


def lease_line(lease: Lease, now_ms: int) -> list[Part]:
    """One status line: name, holder, expiry, note and token."""
    parts: list[Part] = [
        Code(lease.name),
        " — ",
        Mention(lease.holder),
        " until ",
        When(lease.expires_at, now_ms),
    ]
    if lease.note:
        parts.append(f": {lease.note}")
    parts.append(f" (token {lease.token})")
    return parts


def status_parts(
    settings: Settings,
    listing: LeaseListing,
    kinds: Sequence[LeaseKind],
    one_name: bool,
) -> list[Part]:
    """Current locks and claims by kind; configured names that nobody holds show as free.
    Each kind's section says how many of its own a limited listing left out."""
    parts: list[Part] = []
    for kind in kinds:
        leases = [lease for lease in listing.leases if lease.kind is kind]
        known = [] if one_name else settings.known_names(kind)
        free = sorted(set(known) - {lease.name for lease in leases})
        damaged = [
            key.rsplit(":", 1)[-1] for key in listing.corrupt if key.rsplit(":", 2)[-2] == kind
        ]
        hidden = listing.left_out.get(kind, 0)
        if one_name and not leases and not damaged:
            continue
        parts.append("Deploy locks:\n" if kind is LeaseKind.LOCK else "Staging claims:\n")
        if not leases and not damaged and not hidden:
            parts.append("  none\n")
        command = "force-unlock" if kind is LeaseKind.LOCK else "force-release"
        for name in damaged:
            parts += ["  ", Code(name), f" has a corrupt record; an admin can `{command}` it.\n"]
        for lease in leases:
            parts += ["  ", *lease_line(lease, listing.now_ms), "\n"]
            waiting = listing.waiters.get(f"{lease.kind}:{lease.name}", [])
            if waiting:
                parts += ["    waiting: ", *_joined([Mention(holder) for holder in waiting]), "\n"]
        if hidden:
            parts.append(_left_out_line(kind, hidden, after_some=bool(leases or damaged)))
        if free:
            parts += ["  free: ", ", ".join(free), "\n"]
    if not parts:
        parts.append("Nothing by that name is locked or claimed right now.")
    return parts


def _left_out_line(kind: LeaseKind, count: int, *, after_some: bool) -> str:
    """`…and 7 more locks; …`, or `7 locks not listed here; …` when none of them was."""
    noun = f"{kind}{'' if count == 1 else 's'}"
    head = f"…and {count} more {noun}" if after_some else f"{count} {noun} not listed here"
    return f"  {head}; say `status <name>` for any one of them.\n"


def history_parts(name: str, events: Sequence[Event], now_ms: int) -> list[Part]:
    """The latest events about `name`, newest first."""
    if not events:
        return ["No history for ", Code(name.strip().lower()), " yet."]
    parts: list[Part] = ["Latest events for ", Code(events[0].name), ", newest first:\n"]
    for event in events:
        parts += ["  ", *event_line(event, now_ms), "\n"]
    return parts


def event_line(event: Event, now_ms: int) -> list[Part]:
    """One history line: when, what, who, token and note (or who forced it and why)."""
    data = event.data
    holder = _holder_of(data.get("holder"))
    # An expiry is noticed a little after it happens (or much later, after downtime):
    # show when it happened.
    due = data.get("due_at") if event.type == "expired" else None
    at = int(due) if isinstance(due, int | float) else event.at
    parts: list[Part] = [When(at, now_ms), f" {event.type} {event.kind}"]
    if event.type == "forced":
        admin = _holder_of(data.get("forced_by"))
        parts += [" by ", Mention(admin) if admin else "an admin", f": {data.get('reason', '')}"]
        if holder:
            parts += [" (was held by ", Mention(holder), ")"]
        return parts
    if holder:
        parts += [" — ", Mention(holder)]
    if data.get("token"):
        parts.append(f" (token {data['token']})")
    if data.get("note"):
        parts.append(f": {data['note']}")
    return parts


def job_line(job: Job, now_ms: int) -> list[Part]:
    """One job: name, status, who reported it and when, detail and link."""
    parts: list[Part] = [
        Code(job.name),
        f" {job.status} — by {job.updated_by}, ",
        When(job.updated_at, now_ms),
    ]
    if job.detail:
        parts.append(f": {job.detail}")
    if job.url:
        parts.append(f" {job.url}")
    return parts


def jobs_parts(listing: JobListing) -> list[Part]:
    """Every reported job, and any unreadable record."""
    if not listing.jobs and not listing.corrupt:
        return ["No jobs reported."]
    parts: list[Part] = ["Jobs:\n"]
    for job in listing.jobs:
        parts += ["  ", *job_line(job, listing.now_ms), "\n"]
    for name in listing.corrupt:
        parts += ["  ", Code(name), " has a corrupt record.\n"]
    return parts


def _joined(parts: list[Part]) -> list[Part]:
    """Parts separated by commas."""
    joined: list[Part] = []
    for part in parts:
        joined += [", ", part] if joined else [part]
    return joined


def _holder_of(data: object) -> Holder | None:
    """The holder in an event's data, if it has a readable one."""
    if not isinstance(data, dict):
        return None
    try:
        return Holder.from_dict(data)
    except (KeyError, TypeError):
        return None
