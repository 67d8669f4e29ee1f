"""The records deploybot keeps: holders, leases, jobs and history events."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import orjson


class LeaseKind(StrEnum):
    """What a lease is on: a deploy lock on a service, or a staging claim on an environment."""

    LOCK = "lock"
    CLAIM = "claim"

    @property
    def resource(self) -> str:
        """The word for what this kind of lease is taken on."""
        return "service" if self is LeaseKind.LOCK else "environment"


@dataclass(frozen=True)
class Holder:
    """A person (or pipeline) on one platform; platform plus user id is the identity."""

    platform: str
    user_id: str
    display: str

    @property
    def identity(self) -> str:
        """The stable key used for holder checks and admin lists, e.g. `slack:U024BE7LH`."""
        return f"{self.platform}:{self.user_id}"

    def same_person(self, other: Holder) -> bool:
        """Whether both name the same account; display names are not identity."""
        return self.identity == other.identity

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Holder:
        """Build a holder from its stored form."""
        return cls(
            platform=str(data["platform"]),
            user_id=str(data["user_id"]),
            display=str(data.get("display") or data["user_id"]),
        )


@dataclass(frozen=True)
class Origin:
    """Where a lease was taken, so announcements about it go back to that channel."""

    platform: str
    channel: str
    thread: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Origin | None:
        """Build an origin from its stored form; None when the lease came from the CLI."""
        if not data or not data.get("channel"):
            return None
        return cls(str(data["platform"]), str(data["channel"]), data.get("thread"))


@dataclass(frozen=True)
class Lease:
    """An exclusive, expiring lease on a named resource. Times are Unix milliseconds."""

    kind: LeaseKind
    name: str
    holder: Holder
    note: str
    acquired_at: int
    expires_at: int
    token: int
    origin: Origin | None = None

    def remaining_ms(self, now_ms: int) -> int:
        """Milliseconds until expiry as seen at `now_ms`, never negative."""
        return max(0, self.expires_at - now_ms)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form used by `--json` output."""
        data = asdict(self)
        data["kind"] = str(self.kind)
        return data

    @classmethod
    def from_json(cls, raw: str | bytes) -> Lease:
        """Parse a stored lease; raises ValueError (or KeyError/TypeError) on a bad record."""
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a lease record must be a JSON object")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lease:
        """Build a lease from its decoded form (extra keys, as events carry, are ignored)."""
        # Positional, and the kind by lookup: this runs for every lease operation.
        return cls(
            _LEASE_KINDS[data["kind"]],
            str(data["name"]),
            Holder.from_dict(data["holder"]),
            str(data.get("note") or ""),
            int(data["acquired_at"]),
            int(data["expires_at"]),
            int(data["token"]),
            Origin.from_dict(data.get("origin")),
        )


_LEASE_KINDS = {kind.value: kind for kind in LeaseKind}


class JobState(StrEnum):
    """The well-known job states; any other short text is accepted as a custom state."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


FINISHED_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED})


@dataclass(frozen=True)
class Job:
    """The last reported status of a CI or deploy job."""

    name: str
    status: str
    updated_at: int
    updated_by: str
    url: str | None = None
    detail: str | None = None

    @property
    def finished(self) -> bool:
        """Whether the job reached a final state and may drop out of the list."""
        return self.status in FINISHED_JOB_STATES

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form, also the stored form."""
        return asdict(self)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Job:
        """Parse a stored job status; raises ValueError (or KeyError/TypeError) if malformed."""
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a job record must be a JSON object")
        return cls(
            name=str(data["name"]),
            status=str(data["status"]),
            updated_at=int(data["updated_at"]),
            updated_by=str(data["updated_by"]),
            url=data.get("url") or None,
            detail=data.get("detail") or None,
        )


@dataclass(frozen=True)
class Event:
    """One entry of the event stream: a state change, for history and announcements."""

    id: str
    type: str
    kind: str
    name: str
    at: int
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form used by `--json` output."""
        return asdict(self)
