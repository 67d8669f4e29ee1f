"""Contention: 32 clients race for one lease; there must never be two holders at once.

Issue 7, item 5. Target: 0 double holders.

32 asyncio clients, each with its own Store and connection, loop for `--seconds` (default
30): `Store.acquire` on one lock with a short TTL (2 s); when refused (LeaseHeld) they retry
at once; when granted they hold it for a tiny while (1 ms, across awaits, so other clients
run meanwhile) and release it. Three independent checks:

1. In process: a shared `holders` counter, raised after a grant and lowered before the
   release is sent; a grant that finds it non-zero is a double holder.
2. In Redis time: each grant's interval runs from the acquire's `LeaseChange.now_ms` to the
   release's `now_ms` (or to the lease's expiry, if the release found it gone). Sorted by
   start, no interval may begin before an earlier one with another token has ended.
3. In Redis order: the "acquired" events in the stream (kept uncapped for the run) carry
   strictly increasing fencing tokens, and there are exactly as many as grants observed.

Run:  .venv/bin/python bench/contention.py            (30 s)
      .venv/bin/python bench/contention.py --quick    (3 s)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field

import _common

from bot.errors import LeaseHeld, NotHeld, NotHolder
from bot.model import Holder, LeaseKind
from bot.store import Store, connect

CLIENTS = 32
TTL_MS = 2_000
HOLD_S = 0.001
LEASE_NAME = "contended"
# Generous, so the stream keeps every event of the run for check 3.
EVENTS_MAX = 5_000_000


@dataclass(frozen=True)
class Grant:
    """One holding of the lease, in Redis milliseconds."""

    client: int
    token: int
    start_ms: int
    end_ms: int
    released: bool


@dataclass
class Tally:
    """What all clients saw, shared in one event loop."""

    holders: int = 0
    double_holders: int = 0
    refusals: int = 0
    refreshes: int = 0
    grants: list[Grant] = field(default_factory=list)
    per_client: list[int] = field(default_factory=lambda: [0] * CLIENTS)


async def client_loop(store: Store, client: int, tally: Tally, deadline: float) -> None:
    """Race for the lease until the deadline; record every grant and refusal."""
    holder = Holder("bench", f"racer-{client}", f"racer {client}")
    while time.monotonic() < deadline:
        try:
            change = await store.acquire(LeaseKind.LOCK, LEASE_NAME, holder, ttl_ms=TTL_MS)
        except LeaseHeld:
            tally.refusals += 1
            continue
        if change.outcome == "refreshed":
            # Only possible if our own release failed to run; still one holder, but odd.
            tally.refreshes += 1

        tally.holders += 1
        if tally.holders != 1:
            tally.double_holders += 1
        await asyncio.sleep(HOLD_S)
        tally.holders -= 1

        try:
            released = await store.release(LeaseKind.LOCK, LEASE_NAME, holder)
            end_ms, ok = released.now_ms, True
        except (NotHeld, NotHolder):
            # The TTL ran out while we "held" it: our holding ended at its expiry.
            end_ms, ok = change.lease.expires_at, False
        tally.grants.append(Grant(client, change.lease.token, change.now_ms, end_ms, ok))
        tally.per_client[client] += 1


def overlapping(grants: list[Grant]) -> int:
    """How many grants start before an earlier grant with another token has ended."""
    overlaps = 0
    latest_end, latest_token = -1, None
    for grant in sorted(grants, key=lambda g: (g.start_ms, g.end_ms)):
        if grant.start_ms < latest_end and grant.token != latest_token:
            overlaps += 1
        if grant.end_ms >= latest_end:
            latest_end, latest_token = grant.end_ms, grant.token
    return overlaps


async def stream_tokens(store: Store) -> list[int]:
    """Tokens of every "acquired" event on the lease, in the order Redis ran the scripts."""
    tokens: list[int] = []
    start = "-"
    for _ in range(10_000):  # bounded: 10,000 pages of 1,000 events
        page = await store.redis.xrange(store.key("events"), start, "+", count=1000)
        if not page:
            break
        for _entry_id, fields in page:
            event = dict(fields or {})
            if event.get("type") == "acquired" and event.get("name") == LEASE_NAME:
                tokens.append(int(json.loads(event["data"])["token"]))
        start = f"({page[-1][0]!s}"
    return tokens


async def bench(url: str, seconds: float) -> tuple[Tally, list[int], float]:
    namespace = _common.unique_namespace("bench-contention")
    stores = [
        Store(connect(url), namespace=namespace, events_max=EVENTS_MAX) for _ in range(CLIENTS)
    ]
    tally = Tally()
    try:
        for store in stores:  # open every connection before the race starts
            await store.ping()
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(*(client_loop(s, i, tally, deadline) for i, s in enumerate(stores)))
        elapsed = time.monotonic() - started
        tokens = await stream_tokens(stores[0])
    finally:
        for store in stores:
            await store.close()
    return tally, tokens, elapsed


def report(tally: Tally, tokens: list[int], elapsed: float, url: str) -> str:
    grants = tally.grants
    increasing = all(b > a for a, b in itertools.pairwise(tokens))
    held_ms = [g.end_ms - g.start_ms for g in grants]
    double = tally.double_holders + overlapping(grants)
    rows: list[list[object]] = [
        ["clients", CLIENTS, ""],
        ["duration s", elapsed, ""],
        ["acquisitions", len(grants), ""],
        ["acquisitions/s", len(grants) / elapsed, ""],
        ["refusals (LeaseHeld)", tally.refusals, ""],
        ["refreshes (should be 0)", tally.refreshes, ""],
        ["released by holder", sum(g.released for g in grants), ""],
        ["lost to TTL before release", sum(not g.released for g in grants), ""],
        [
            "held ms p50 / max (Redis time)",
            f"{_common.percentile(held_ms, 50):.0f} / {max(held_ms, default=0):.0f}",
            "",
        ],
        ["grants per client min / max", f"{min(tally.per_client)} / {max(tally.per_client)}", ""],
        ["double holders, in process", tally.double_holders, "target 0"],
        ["overlapping intervals, Redis time", overlapping(grants), "target 0"],
        [
            "acquired events in stream",
            len(tokens),
            f"= acquisitions: {len(tokens) == len(grants)}",
        ],
        ["tokens strictly increasing", "yes" if increasing else "NO", "in Redis order"],
        ["double holders total", double, "MEETS TARGET" if double == 0 else "MISSES TARGET"],
    ]
    head = _common.header(
        "contention: 32 clients racing for one lease",
        f"server      {_common.server_version(url)} (own process, loopback TCP)",
        f"run         {CLIENTS} clients, TTL {TTL_MS} ms, hold {HOLD_S * 1000:g} ms, "
        "retry at once",
    )
    return f"{head}\n\n{_common.table(['measure', 'value', 'note'], rows)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s instead of 30 s")
    parser.add_argument("--seconds", type=float, help="race duration (default 30)")
    args = parser.parse_args()
    seconds = args.seconds or (3.0 if args.quick else 30.0)

    machine = _common.cpu_snapshot()
    with _common.bench_server() as (url, _pid):
        tally, tokens, elapsed = asyncio.run(bench(url, seconds))
        print(report(tally, tokens, elapsed, url))
    print(_common.machine_usage(machine))


if __name__ == "__main__":
    main()
