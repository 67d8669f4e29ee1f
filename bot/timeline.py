"""Time-driven work on APScheduler's asyncio scheduler: the sweep and the daily digest.

Nothing about pending reminders or expiries lives in this process: they are entries of the
`{ns}:timeline` sorted set, and the sweep takes due ones out atomically. A restarted bot
picks up where it left off (late entries are announced as late), several replicas share the
work without doubling it, and the jobs here are plain in-memory APScheduler jobs with
stable ids, never pickled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, tzinfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bot.config import Settings
from bot.errors import DeploybotError, StoreUnavailable
from bot.store import Store

log = logging.getLogger(__name__)

SWEEP_JOB_ID = "timeline-sweep"
DIGEST_JOB_ID = "daily-digest"
SWEEP_BATCH = 500
RECOVERY_INTERVAL_S = 5.0


class Timeline:
    """Owns the scheduler; `start()` registers the jobs, `stop()` waits for a running sweep."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        zone: tzinfo | None = None,
        digest: Callable[[], Awaitable[None]] | None = None,
        recover: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._zone = zone or datetime.now().astimezone().tzinfo or UTC
        self._digest = digest
        self._recover = recover
        self._last_recovery = 0.0
        self._sweeping = asyncio.Lock()
        self._store_down = False
        self.scheduler = AsyncIOScheduler(timezone=self._zone)
        self.sweeps = 0

    def start(self) -> None:
        """Register the jobs and start the scheduler on the running loop."""
        self.scheduler.add_job(
            self.sweep,
            IntervalTrigger(seconds=self._settings.sweep_interval_s),
            id=SWEEP_JOB_ID,
            max_instances=1,
            coalesce=True,
            replace_existing=True,
        )
        if self._settings.digest_cron and self._digest is not None:
            self.scheduler.add_job(
                self._post_digest,
                CronTrigger.from_crontab(self._settings.digest_cron, timezone=self._zone),
                id=DIGEST_JOB_ID,
                max_instances=1,
                coalesce=True,
                replace_existing=True,
            )
        self.scheduler.start()
        log.info("timeline started interval_s=%s", self._settings.sweep_interval_s)

    async def stop(self) -> None:
        """Stop scheduling and wait for a sweep in progress, so nothing is half done."""
        self.scheduler.shutdown(wait=False)
        async with self._sweeping:
            pass
        log.info("timeline stopped")

    async def sweep(self) -> None:
        """Sweep until nothing more is due (big backlogs come in batches).

        While the store is unavailable each tick also asks for it to be brought back. That
        happens after the sweep lock is let go: restarting a server can take seconds, and
        stop() must not wait for it.
        """
        async with self._sweeping:
            try:
                while True:
                    result = await self._store.sweep_due(limit=SWEEP_BATCH)
                    self.sweeps += 1
                    if result.due < SWEEP_BATCH:
                        break
                if self._store_down:
                    log.info("timeline: state store is back")
                self._store_down = False
            except StoreUnavailable:
                if not self._store_down:
                    log.warning("timeline: state store unavailable; will retry each tick")
                self._store_down = True
            except DeploybotError as error:  # e.g. the timeline key overwritten by hand
                log.warning("timeline: sweep refused: %s", error)

        if self._store_down:
            await self._try_recovery()

    async def _try_recovery(self) -> None:
        """Ask for the store to be brought back, at most every RECOVERY_INTERVAL_S."""
        now = asyncio.get_running_loop().time()
        if self._recover is None or now - self._last_recovery < RECOVERY_INTERVAL_S:
            return
        self._last_recovery = now
        await self._recover()

    async def _post_digest(self) -> None:
        """Post the digest once per day across all replicas."""
        assert self._digest is not None
        today = datetime.now(self._zone).date().isoformat()
        try:
            if not await self._store.first_sighting("digest", today, ttl_s=86_400 * 2):
                return
            await self._digest()
        except StoreUnavailable:
            log.warning("digest skipped: state store unavailable")
