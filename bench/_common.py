"""Shared pieces of the benchmark scripts: a throwaway server, the machine header, tables.

Not a benchmark itself. Each script in bench/ imports it as `_common` (the script's own
directory is first on sys.path when it runs as `python bench/<name>.py`).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"

# tests/servers.py starts exactly the server the benchmarks need (the bundled valkey, a free
# 127.0.0.1 port, no persistence, files in a temp dir); tests/ has no __init__.py.
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from servers import start_test_server, stop_test_server  # noqa: E402

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# When the benchmark started: the table is printed at the end, minutes later.
_STARTED = dt.datetime.now(dt.UTC)


@contextmanager
def bench_server() -> Iterator[tuple[str, int]]:
    """A private server for one benchmark run; yields its redis:// URL and its pid.

    Never the machine's own Redis: the server binds a fresh port in a temp dir and is
    stopped (SIGTERM, then SIGKILL) however the benchmark ends.
    """
    with tempfile.TemporaryDirectory(prefix="deploybot-bench-") as tmp:
        process, url = start_test_server(Path(tmp))
        try:
            yield url, process.pid
        finally:
            stop_test_server(process)


def unique_namespace(prefix: str) -> str:
    """A namespace no earlier run used, so runs never see each other's keys."""
    return f"{prefix}-{secrets.token_hex(4)}"


def server_version(url: str) -> str:
    """The server's name and version, e.g. `valkey 8.1.1`."""
    with redis.Redis.from_url(url) as client:
        info = client.info("server")
    name = "valkey" if "valkey_version" in info else "redis"
    return f"{name} {info.get('valkey_version') or info.get('redis_version')}"


def header(title: str, *extra: str) -> str:
    """The lines every table starts with: what ran, when, and on which machine."""
    lines = [
        f"# {title}",
        f"started     {_STARTED.strftime('%Y-%m-%d %H:%M:%S UTC')}",
        f"nproc       {len(os.sched_getaffinity(0))}",
        f"cpu         {cpu_model()}",
        f"python      {platform.python_version()} ({platform.python_implementation()})",
        f"redis-py    {redis.__version__}",
        f"code        {code_version()}",
        *extra,
    ]
    return "\n".join(lines)


def code_version() -> str:
    """The checked-out commit, marked `+uncommitted changes` when the tree differs from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{commit or 'unknown'}{' +uncommitted changes' if dirty else ''}"


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or `unknown`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain, right-aligned text table."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def percentile(values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile of `values` (NaN when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used so far (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        # The command name (field 2) may contain spaces; the fields after it never do.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def cpu_snapshot() -> tuple[int, int, int]:
    """Machine-wide (busy, steal, total) clock ticks from /proc/stat, for `machine_usage`."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guests are in user.
    idle = fields[3] + fields[4]
    steal = fields[7] if len(fields) > 7 else 0
    total = sum(fields[:8])
    return total - idle - steal, steal, total


def machine_usage(before: tuple[int, int, int]) -> str:
    """How busy the whole machine was since `before`: this benchmark plus everyone else.

    Steal is time the hypervisor gave our virtual CPUs to someone else; both say how far
    the figures above may have been pushed around by other work.
    """
    after = cpu_snapshot()
    busy, steal, total = (a - b for a, b in zip(after, before, strict=True))
    if total <= 0:
        return "machine during run: unknown"
    cores = len(os.sched_getaffinity(0))
    load1, _, _ = os.getloadavg()
    return (
        f"machine during run: {busy / total * 100:.0f}% busy over {cores} cores (this "
        f"benchmark included), steal {steal / total * 100:.1f}%, load average now {load1:.2f}"
    )


def proc_status_kb(pid: int, field: str) -> int:
    """A `kB` field of /proc/<pid>/status, e.g. VmRSS or VmHWM."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    msg = f"/proc/{pid}/status has no {field} line."
    raise KeyError(msg)
