"""Memory: resident size of `deploybot run`, idle and with 100,000 leases in Redis.

Issue 7, item 4. Target: deploybot's resident size at or under 150 MB.

Starts `deploybot run` (console mode: no chat credentials in its environment) against a
private server, with stdin a pipe that stays open so it keeps running. Its VmRSS and VmHWM
(peak) are read from /proc/<pid>/status:

1. idle, after one `help` round trip has shown it is up;
2. after this script has created 100,000 leases (locks, TTL 10 minutes, 64 concurrent
   acquires through bot.store.Store), once the bot's timeline sweep has caught up with
   every entry that fell due meanwhile (bounded by `--settle` seconds), and a few idle
   seconds more;
3. after a `status` command, which reads and renders every one of those leases (the
   heaviest thing a person can ask of it).

The target is judged on VmHWM, the peak resident size so far, since memory a command
needs for a moment must still be there.

It also reports the server's `used_memory` before and after the leases, and per lease, and
the CPU seconds the bot used between one row and the next.

Run:  .venv/bin/python bench/memory.py            (100,000 leases, one to four minutes)
      .venv/bin/python bench/memory.py --quick    (5,000 leases)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import _common
import redis

from bot.model import Holder, LeaseKind
from bot.store import Store, connect

TARGET_MB = 150
TTL_MS = 10 * 60_000
CONCURRENCY = 64
HOLDERS = 500
IDLE_S = 3.0
REPLY_TIMEOUT_S = 300.0
POLL_S = 0.5
DEPLOYBOT = _common.REPO / ".venv" / "bin" / "deploybot"


class Console:
    """A `deploybot run` child in console mode; stdout is drained by a thread."""

    def __init__(self, url: str, namespace: str, workdir: Path) -> None:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("SLACK_", "MATTERMOST_", "DEPLOYBOT_", "REDIS_"))
        }
        env.update(REDIS_URL=url, DEPLOYBOT_NAMESPACE=namespace)
        self._stderr = (workdir / "deploybot.stderr").open("wb")
        # cwd is an empty temp dir, so no config.yaml is picked up.
        self.process = subprocess.Popen(
            [str(DEPLOYBOT), "run", "--as", "bench"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=workdir,
            env=env,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.reply_chars = 0
        self._cpu_mark = 0.0
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def ask(self, text: str) -> float:
        """Send a line plus a marker command; wait for the marker's reply; return seconds.

        The console writes replies in order, so the marker's reply (an unknown command,
        named in the reply) comes after the whole answer to `text`.
        """
        marker = f"benchmarker{time.monotonic_ns()}"
        assert self.process.stdin is not None
        started = time.monotonic()
        self.process.stdin.write(f"{text}\n{marker}\n")
        self.process.stdin.flush()
        deadline = started + REPLY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                msg = f"deploybot exited with status {self.process.wait()} before replying."
                raise RuntimeError(msg)
            self.reply_chars += len(line)
            if marker in line:
                return time.monotonic() - started
        msg = f"deploybot did not answer {text!r} within {REPLY_TIMEOUT_S:g} s."
        raise TimeoutError(msg)

    def memory_mb(self) -> tuple[float, float]:
        """Current and peak resident size in MB."""
        pid = self.process.pid
        return (
            _common.proc_status_kb(pid, "VmRSS") / 1024,
            _common.proc_status_kb(pid, "VmHWM") / 1024,
        )

    def cpu_since_last(self) -> float:
        """CPU seconds the bot used since the previous call (or since it started)."""
        total = _common.cpu_seconds(self.process.pid)
        used, self._cpu_mark = total - self._cpu_mark, total
        return used

    def stop(self) -> None:
        """Close stdin (end of input ends the console), then make sure it is gone."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._stderr.close()


async def create_leases(url: str, namespace: str, count: int) -> float:
    """Create `count` locks through the Store, CONCURRENCY at a time; return seconds taken."""
    store = Store(connect(url), namespace=namespace)
    names = iter(range(count))
    started = time.monotonic()

    async def worker() -> None:
        for number in names:  # shared iterator: each number is taken once
            holder_no = number % HOLDERS
            holder = Holder("bench", f"user-{holder_no}", f"User {holder_no}")
            await store.acquire(
                LeaseKind.LOCK, f"svc-{number:06d}", holder, ttl_ms=TTL_MS, note="bench lease"
            )

    try:
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    finally:
        await store.close()
    return time.monotonic() - started


def wait_for_sweep(url: str, namespace: str, limit_s: float) -> tuple[float, int]:
    """Wait until no timeline entry is due (the bot's sweep caught up), at most `limit_s`.

    Returns the seconds waited and the entries still due at the end (0 when caught up).
    """
    started = time.monotonic()
    with redis.Redis.from_url(url) as client:
        while True:
            seconds, micros = client.time()
            now_ms = seconds * 1000 + micros // 1000
            due = int(client.zcount(f"{{{namespace}}}:timeline", "-inf", now_ms))
            waited = time.monotonic() - started
            if due == 0 or waited >= limit_s:
                return waited, due
            time.sleep(POLL_S)


def used_memory_mb(url: str) -> float:
    with redis.Redis.from_url(url) as client:
        return int(client.info("memory")["used_memory"]) / 2**20


def bench(url: str, count: int, settle_s: float) -> tuple[list[list[object]], list[str]]:
    namespace = _common.unique_namespace("bench-memory")
    rows: list[list[object]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="deploybot-bench-memory-") as tmp:
        console = Console(url, namespace, Path(tmp))
        try:
            console.ask("help")
            time.sleep(IDLE_S)
            server_before = used_memory_mb(url)
            rows.append(
                ["deploybot run, idle", *console.memory_mb(), console.cpu_since_last(),
                 server_before]
            )  # fmt: skip

            seconds = asyncio.run(create_leases(url, namespace, count))
            notes.append(f"created {count:,} leases in {seconds:.1f} s ({count / seconds:,.0f}/s)")
            waited, still_due = wait_for_sweep(url, namespace, settle_s)
            notes.append(
                f"sweep caught up {waited:.1f} s after the last lease was created"
                if still_due == 0
                else f"sweep still had {still_due:,} due entries after {waited:.0f} s"
            )
            time.sleep(IDLE_S)
            server_after = used_memory_mb(url)
            rows.append(
                [f"{count:,} leases exist, swept", *console.memory_mb(),
                 console.cpu_since_last(), server_after]
            )  # fmt: skip

            before_chars = console.reply_chars
            status_s = console.ask("status")
            rows.append(
                [f"after `status` of {count:,}", *console.memory_mb(),
                 console.cpu_since_last(), used_memory_mb(url)]
            )  # fmt: skip
            notes.append(
                f"`status` took {status_s:.1f} s and printed "
                f"{(console.reply_chars - before_chars) / 1e6:.1f} MB of text"
            )
            per_lease = (server_after - server_before) * 2**20 / count
            notes.append(f"server memory per lease: {per_lease:,.0f} bytes (all keys it writes)")
        finally:
            console.stop()
    return rows, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 leases instead of 100,000")
    parser.add_argument("--leases", type=int, help="how many leases (default 100,000)")
    parser.add_argument(
        "--settle", type=float, help="longest wait for the sweep to catch up (default 180 s)"
    )
    args = parser.parse_args()
    count = args.leases or (5_000 if args.quick else 100_000)
    settle_s = args.settle or (15.0 if args.quick else 180.0)

    machine = _common.cpu_snapshot()
    with _common.bench_server() as (url, _pid):
        rows, notes = bench(url, count, settle_s)
        head = _common.header(
            "memory: deploybot run (console mode) resident size",
            f"server      {_common.server_version(url)} (own process, loopback TCP)",
        )
    for row in rows:
        peak = row[2]
        row.append("yes" if isinstance(peak, float) and peak <= TARGET_MB else "NO")
    headers = [
        "state", "VmRSS MB", "VmHWM MB (peak so far)", "bot cpu s since last row",
        "server used_memory MB", f"peak <= {TARGET_MB}",
    ]  # fmt: skip
    print(f"{head}\n\n{_common.table(headers, rows)}\n")
    print("\n".join(notes))
    print(_common.machine_usage(machine))


if __name__ == "__main__":
    main()
