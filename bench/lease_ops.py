"""Lease throughput: acquire+release pairs per second through deploybot's Store vs raw Redis.

Issue 7, item 2. Target: deploybot's rate is at least 0.7 of the raw rate, both with one
sequential client and with 16 concurrent asyncio clients.

- deploybot: `Store.acquire(LOCK, name, holder, ttl_ms=60000)` then `Store.release(...)`:
  one EVALSHA each (lease, fence, index, timeline and event stream updated atomically).
- raw: `SET key val NX PX 60000` then `DEL key` with redis-py on the same server.
- redis-py Lock (shown for context, not part of the target): redis-py's own
  `Lock.acquire` (SET NX PX with a random token) and `Lock.release` (a Lua script that
  deletes the key only if the token still matches): the least a lock that cannot release
  someone else's lease costs.

All use clients built by `bot.store.connect` (same redis-py options), so the ratio is the
cost of deploybot's scripts and Python code, not of different client settings. Each of the
16 concurrent clients has its own client object (its own connection) and its own lease
names, so there is no contention. Every variant runs `--seconds` in total, split into
`--rounds` slices that alternate deploybot, raw and Lock (A B C A B C ...) so that noise from
other work on this shared machine hits all alike; the ratio range shows how much the
per-slice ratio moved. Beside ops/s the table shows the CPU time per
pair spent in this (client) process and in the server, which says which side limits.

Run:  .venv/bin/python bench/lease_ops.py            (10 s per variant, about 65 s)
      .venv/bin/python bench/lease_ops.py --seconds 30 --rounds 30
      .venv/bin/python bench/lease_ops.py --quick    (1 s per variant)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import _common
import redis.asyncio as aioredis

from bot.model import Holder, LeaseKind
from bot.store import Store, connect

TTL_MS = 60_000
TARGET_RATIO = 0.7
WARMUP_S = 0.3

# One client's loop body: one acquire+release pair.
PairFn = Callable[[], Awaitable[None]]


@dataclass
class Slice:
    """One timed run of one variant."""

    pairs: int
    seconds: float
    client_cpu: float
    server_cpu: float


@dataclass
class Variant:
    """One measured configuration and its slices."""

    impl: str
    clients: int
    slices: list[Slice] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return sum(s.pairs for s in self.slices) / sum(s.seconds for s in self.slices)

    def cpu_us_per_pair(self, side: str) -> float:
        total = sum(float(getattr(s, f"{side}_cpu")) for s in self.slices)
        return total / sum(s.pairs for s in self.slices) * 1e6


def plain_client(url: str) -> aioredis.Redis:
    """A client with deploybot's options (bot.store.connect) for the raw variants."""
    client = connect(url)
    if not isinstance(client, aioredis.Redis):
        msg = f"Expected a plain redis client for {url}, got {type(client).__name__}."
        raise TypeError(msg)
    return client


def deploybot_pair(store: Store, client_no: int) -> PairFn:
    """A loop body taking and releasing this client's own lock."""
    holder = Holder("bench", f"client-{client_no}", f"client {client_no}")
    name = f"bench-svc-{client_no}"

    async def pair() -> None:
        change = await store.acquire(LeaseKind.LOCK, name, holder, ttl_ms=TTL_MS)
        if change.outcome != "acquired":
            msg = f"Expected a fresh acquisition of {name}, got {change.outcome}."
            raise RuntimeError(msg)
        await store.release(LeaseKind.LOCK, name, holder)

    return pair


def raw_pair(client: aioredis.Redis, namespace: str, client_no: int) -> PairFn:
    """A loop body doing the plain-Redis equivalent: SET NX PX, then DEL."""
    key = f"{{{namespace}}}:raw:{client_no}"
    value = f"bench:client-{client_no}"

    async def pair() -> None:
        if not await client.set(key, value, nx=True, px=TTL_MS):
            msg = f"SET NX on {key} found the key taken; the previous DEL did not run."
            raise RuntimeError(msg)
        await client.delete(key)

    return pair


def lock_pair(client: aioredis.Redis, namespace: str, client_no: int) -> PairFn:
    """A loop body taking and releasing a redis-py Lock (token-checked release)."""
    lock = client.lock(f"{{{namespace}}}:pylock:{client_no}", timeout=TTL_MS / 1000)

    async def pair() -> None:
        if not await lock.acquire(blocking=False):
            msg = f"redis-py Lock {lock.name!r} was taken; the previous release did not run."
            raise RuntimeError(msg)
        await lock.release()

    return pair


async def run_for(pairs: list[PairFn], seconds: float) -> int:
    """Run every client's loop until the deadline; return the pairs completed."""
    deadline = time.monotonic() + seconds

    async def loop(pair: PairFn) -> int:
        done = 0
        while time.monotonic() < deadline:
            await pair()
            done += 1
        return done

    return sum(await asyncio.gather(*(loop(p) for p in pairs)))


async def server_cpu(client: aioredis.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def measure(
    pairs: list[PairFn], seconds: float, monitor: aioredis.Redis, variant: Variant
) -> None:
    """Time one slice of one variant, with the CPU both sides spent on it."""
    server_before = await server_cpu(monitor)
    cpu_before = time.process_time()
    started = time.monotonic()
    done = await run_for(pairs, seconds)
    elapsed = time.monotonic() - started
    client_cpu = time.process_time() - cpu_before
    server = await server_cpu(monitor) - server_before
    variant.slices.append(Slice(done, elapsed, client_cpu, server))


async def bench(url: str, seconds: float, rounds: int) -> list[list[Variant]]:
    """Measure deploybot, raw and Lock at 1 and 16 clients; one list of variants per count."""
    namespace = _common.unique_namespace("bench-leaseops")
    monitor = plain_client(url)
    results = []
    for clients in (1, 16):
        stores = [Store(connect(url), namespace=namespace) for _ in range(clients)]
        raws = [plain_client(url) for _ in range(clients)]
        loops = {
            "deploybot": [deploybot_pair(s, i) for i, s in enumerate(stores)],
            "raw": [raw_pair(r, namespace, i) for i, r in enumerate(raws)],
            "redis-py Lock": [lock_pair(r, namespace, i) for i, r in enumerate(raws)],
        }
        try:
            # Warm-up: connections opened, scripts loaded into the server's cache.
            for pairs in loops.values():
                await run_for(pairs, WARMUP_S)
            variants = {impl: Variant(impl, clients) for impl in loops}
            for _ in range(rounds):
                for impl, pairs in loops.items():
                    await measure(pairs, seconds / rounds, monitor, variants[impl])
            results.append(list(variants.values()))
        finally:
            for store in stores:
                await store.close()
            for client in raws:
                await client.aclose()
    await monitor.aclose()
    return results


def report(results: list[list[Variant]], seconds: float, rounds: int, url: str) -> str:
    rows = []
    for variants in results:
        raw = next(v for v in variants if v.impl == "raw")
        for variant in variants:
            ratios = [
                (v.pairs / v.seconds) / (r.pairs / r.seconds)
                for v, r in zip(variant.slices, raw.slices, strict=True)
            ]
            ratio = variant.rate / raw.rate
            judged = variant.impl == "deploybot"
            rows.append(
                [
                    variant.clients,
                    variant.impl,
                    sum(s.pairs for s in variant.slices),
                    round(variant.rate),
                    variant.cpu_us_per_pair("client"),
                    variant.cpu_us_per_pair("server"),
                    "" if variant is raw else f"{ratio:.2f}",
                    "" if variant is raw else _spread(ratios),
                    ("yes" if ratio >= TARGET_RATIO else "NO") if judged else "",
                ]
            )
    headers = [
        "clients",
        "impl",
        "pairs",
        "pairs/s",
        "client cpu us/pair",
        "server cpu us/pair",
        "ratio to raw",
        "slice ratios min/median/max",
        f">= {TARGET_RATIO}",
    ]
    head = _common.header(
        "lease_ops: acquire+release pairs/s, deploybot Store vs raw SET NX PX + DEL",
        f"server      {_common.server_version(url)} (own process, loopback TCP)",
        f"run         {seconds:g} s per variant in {rounds} alternating slices",
    )
    return f"{head}\n\n{_common.table(headers, rows)}"


def _spread(ratios: list[float]) -> str:
    return f"{min(ratios):.2f}/{statistics.median(ratios):.2f}/{max(ratios):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s per variant, 2 slices")
    parser.add_argument("--seconds", type=float, help="seconds per variant (default 10)")
    parser.add_argument(
        "--rounds", type=int, help="alternating slices per variant (default: one per second)"
    )
    args = parser.parse_args()
    seconds = args.seconds or (1.0 if args.quick else 10.0)
    rounds = args.rounds or max(2, round(seconds))

    machine = _common.cpu_snapshot()
    with _common.bench_server() as (url, _pid):
        results = asyncio.run(bench(url, seconds, rounds))
        print(report(results, seconds, rounds, url))
    print(_common.machine_usage(machine))


if __name__ == "__main__":
    main()
