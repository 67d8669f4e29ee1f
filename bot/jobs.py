"""Job status records: what pipelines report about their runs, readable from chat."""

from __future__ import annotations

from bot.config import Settings
from bot.errors import UsageError
from bot.messages import one_line
from bot.model import Job
from bot.names import normalize_job_name
from bot.store import JobListing, Store

MAX_STATUS_LENGTH = 40
MAX_DETAIL_LENGTH = 500
MAX_URL_LENGTH = 500


class JobService:
    """Set, remove and list job statuses."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._settings = settings

    async def set(
        self,
        raw_name: str,
        status: str,
        *,
        updated_by: str,
        url: str | None = None,
        detail: str | None = None,
    ) -> Job:
        """Record a job's status; well-known states and short free text are both accepted."""
        name = normalize_job_name(raw_name)
        status, updated_by = one_line(status), one_line(updated_by)
        detail = one_line(detail) if detail is not None else None
        url = one_line(url) if url is not None else None
        status = status.lower() if status.isalpha() else status
        if not status or len(status) > MAX_STATUS_LENGTH:
            msg = (
                f"A job status is 1 to {MAX_STATUS_LENGTH} characters, e.g. pending, running, "
                "succeeded or failed."
            )
            raise UsageError(msg)
        if url and (not url.startswith(("http://", "https://")) or len(url) > MAX_URL_LENGTH):
            msg = f"A job URL starts with http:// or https://, up to {MAX_URL_LENGTH} characters."
            raise UsageError(msg)
        if detail is not None and len(detail) > MAX_DETAIL_LENGTH:
            raise UsageError(f"A job detail is at most {MAX_DETAIL_LENGTH} characters.")

        job = Job(name, status, 0, updated_by, url=url, detail=detail)
        return await self._store.set_job(job)

    async def remove(self, raw_name: str, *, removed_by: str) -> bool:
        """Forget a job; False if there was none."""
        return await self._store.remove_job(normalize_job_name(raw_name), removed_by=removed_by)

    async def list(self) -> JobListing:
        """Current jobs and the names of unreadable records."""
        return await self._store.jobs(retention_ms=self._settings.job_retention)

    async def get(self, raw_name: str) -> tuple[Job | None, int]:
        """One job's status (or None) and Redis's clock."""
        name = normalize_job_name(raw_name)
        listing = await self.list()
        return next((job for job in listing.jobs if job.name == name), None), listing.now_ms
