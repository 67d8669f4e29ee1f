"""Command path: chat commands through Socket Mode at a fixed rate; ack and reply latency.

Issue 7, item 1. Target: reply p99 at or under 25 ms at 200 commands per second.

A load generator pushes `app_mention` envelopes down the local fake Slack's Socket Mode
socket (tests/fake_slack.py) at 50, 200 and 500 commands per second, `--seconds` at each
rate (default 30), open loop (on a fixed schedule, whether or not replies keep up). The mix
is lock 25%, unlock 20%, claim 20%, release 15%, status 20% (half `status`, half `status
<name>`), from 200 users over 50 services and 20 staging environments, so many commands are
refused because someone else holds the lease: an ordinary answer, not an error.

deploybot runs in its own process: a real `adapters.slack.SlackAdapter` over a Runtime built
as tests/test_slack.py's make_runtime does, connected to the fake like to Slack (Web API
over HTTP, Socket Mode over a websocket), logging at WARNING as `deploybot run` does. The
fake and the load generator share this process, and the server runs in a third. On 2 cores
this is the honest layout: in one process, the fake's HTTP and JSON work would sit on the
bot's event loop and be counted as deploybot latency. Pass `--inline` to measure that
single-process layout instead. The table shows each process's CPU use during each rate.

- ack latency: from sending an envelope to the fake receiving its ack (`fake.ack_times`).
- reply latency: from sending an envelope to the fake receiving the chat.postMessage for
  it. Every command carries its own channel id, so a reply is matched by its channel.
- errors: crash replies ("something went wrong"), "state store unavailable" replies, and
  commands with no reply within 10 s after their rate's run ended.
Before the first rate, every user sends one `help`, so the adapter's display-name cache is
warm and the measured runs see the steady state.

Run:  .venv/bin/python bench/command_path.py                  (30 s per rate, ~2 minutes)
      .venv/bin/python bench/command_path.py --seconds 10     (10 s per rate)
      .venv/bin/python bench/command_path.py --quick          (3 s per rate)
      .venv/bin/python bench/command_path.py --profile out.prof   (cProfile the bot process)
      .venv/bin/python bench/command_path.py --samples out.csv    (every command's timings)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import csv
import logging
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common
from fake_slack import BOT_USER_ID, FakeSlack  # tests/ is on sys.path via _common

TARGET_P99_MS = 25.0
TARGET_RATE = 200
RATES = (50, 200, 500)
USERS = 200
SERVICES = [f"svc-{n:02d}" for n in range(50)]
ENVIRONMENTS = [f"stg-{n:02d}" for n in range(20)]
MIX = (("lock", 25), ("unlock", 20), ("claim", 20), ("release", 15), ("status", 20))
WARMUP_RATE = 100
GRACE_S = 10.0
CONNECT_TIMEOUT_S = 30.0
BOT_TOKEN = "xoxb-bench"
APP_TOKEN = "xapp-bench"
CRASH_TEXT = "something went wrong"
UNAVAILABLE_TEXT = "state store is unavailable"


class TimedFakeSlack(FakeSlack):
    """The fake Slack, also noting when each chat.postMessage arrived, by channel."""

    def __init__(self) -> None:
        super().__init__()
        self.replies: dict[str, tuple[float, str]] = {}

    def _chat_post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel", ""))
        self.replies.setdefault(channel, (time.monotonic(), str(params.get("text", ""))))
        answer: dict[str, Any] = super()._chat_post_message(params)
        return answer


@dataclass
class Sent:
    kind: str
    at: float
    envelope_id: str


@dataclass
class Phase:
    """One rate's run: what was sent and what came back."""

    rate: int
    sent: dict[str, Sent] = field(default_factory=dict)
    max_send_lag_s: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    cpu_ms_per_command: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0


class Commands:
    """A reproducible stream of (kind, user, text) commands in the issue's mix."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._kinds = [kind for kind, _ in MIX]
        self._weights = [weight for _, weight in MIX]

    def next(self) -> tuple[str, str, str]:
        rng = self._rng
        kind = rng.choices(self._kinds, self._weights)[0]
        user = f"U{rng.randrange(USERS):04d}"
        service, env = rng.choice(SERVICES), rng.choice(ENVIRONMENTS)
        text = {
            "lock": f"lock {service} 30m bench run",
            "unlock": f"unlock {service}",
            "claim": f"claim {env} feature/bench 2h",
            "release": f"release {env}",
            "status": "status" if rng.random() < 0.5 else f"status {service}",
        }[kind]
        return kind, user, text


# -----------------------------------------------------------------------------------------
# the bot side (a child process, or inline with --inline)


async def serve_adapter(api_url: str, redis_url: str, namespace: str, stop: asyncio.Event) -> None:
    """Run a SlackAdapter against the fake until `stop` is set."""
    from adapters.slack import SlackAdapter
    from bot.commands import CommandHandler
    from bot.config import Settings
    from bot.jobs import JobService
    from bot.leases import LeaseService
    from bot.runtime import Runtime
    from bot.store import Store, connect

    settings = Settings(namespace=namespace)
    store = Store(connect(redis_url), namespace=namespace)
    leases, jobs = LeaseService(store, settings), JobService(store, settings)
    runtime = Runtime(settings, store, leases, jobs, CommandHandler(leases, jobs, settings))
    adapter = SlackAdapter(runtime, bot_token=BOT_TOKEN, app_token=APP_TOKEN, api_url=api_url)
    await adapter.start()
    try:
        await stop.wait()
    finally:
        await adapter.stop()
        await store.close()


def adapter_child(args: argparse.Namespace) -> None:
    """Child process entry: serve until stdin reaches end of input (the parent closed it)."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    async def main() -> None:
        stop = asyncio.Event()
        stdin = sys.stdin.fileno()

        def on_stdin() -> None:
            if not os.read(stdin, 4096):  # end of input: the parent is done
                stop.set()

        asyncio.get_running_loop().add_reader(stdin, on_stdin)
        await serve_adapter(args.api_url, args.redis_url, args.namespace, stop)

    if not args.profile:
        asyncio.run(main())
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        asyncio.run(main())
    finally:
        profiler.disable()
        profiler.dump_stats(args.profile)


# -----------------------------------------------------------------------------------------
# the load generator side


async def start_bot(
    fake: FakeSlack, redis_url: str, namespace: str, args: argparse.Namespace
) -> tuple[asyncio.subprocess.Process | None, asyncio.Event, asyncio.Task[None] | None]:
    """Start the bot (child process or inline task) and wait until it is connected."""
    stop = asyncio.Event()
    child, task = None, None
    if args.inline:
        task = asyncio.create_task(serve_adapter(fake.api_url, redis_url, namespace, stop))
    else:
        command = [sys.executable, __file__, "--adapter-child", "--api-url", fake.api_url]
        command += ["--redis-url", redis_url, "--namespace", namespace]
        if args.profile:
            command += ["--profile", args.profile]
        child = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stderr=args.child_log
        )
    await fake.wait_for_connections(1, timeout=CONNECT_TIMEOUT_S)
    return child, stop, task


async def stop_bot(
    child: asyncio.subprocess.Process | None, stop: asyncio.Event, task: asyncio.Task[None] | None
) -> None:
    stop.set()
    if task is not None:
        await asyncio.wait_for(task, timeout=10)
    if child is not None:
        assert child.stdin is not None
        child.stdin.close()
        try:
            await asyncio.wait_for(child.wait(), timeout=20)
        except TimeoutError:
            child.kill()
            await child.wait()


async def send_at_rate(
    fake: TimedFakeSlack, commands: Commands, rate: int, seconds: float, phase: Phase
) -> None:
    """Send rate * seconds commands on a fixed schedule, each to a channel of its own."""
    count = round(rate * seconds)
    start = time.monotonic() + 0.05
    for number in range(count):
        target = start + number / rate
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        phase.max_send_lag_s = max(phase.max_send_lag_s, time.monotonic() - target)

        kind, user, text = commands.next()
        channel = f"C{rate:03d}X{number:07d}"
        event = fake.app_mention_event(
            user_id=user, channel_id=channel, text=f"<@{BOT_USER_ID}> {text}"
        )
        sent_at = time.monotonic()
        envelope_id = await fake.send_events_api(event)
        phase.sent[channel] = Sent(kind, sent_at, envelope_id)


async def wait_for_replies(fake: TimedFakeSlack, channels: list[str]) -> None:
    """Wait (at most GRACE_S) until every channel got its reply."""
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline:
        if all(channel in fake.replies for channel in channels):
            return
        await asyncio.sleep(0.05)


async def run_phase(
    fake: TimedFakeSlack, commands: Commands, rate: int, seconds: float, pids: dict[str, int]
) -> Phase:
    """One rate: send, wait for the replies, and note every process's CPU time."""
    phase = Phase(rate)
    cpu_before = {name: _common.cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    await send_at_rate(fake, commands, rate, seconds, phase)
    phase.wall_s = time.monotonic() - started
    cpu_mid = {name: _common.cpu_seconds(pid) for name, pid in pids.items()}
    await wait_for_replies(fake, list(phase.sent))
    cpu_after = {name: _common.cpu_seconds(pid) for name, pid in pids.items()}
    # Share of a core over the sending window only (the wait for stragglers would dilute
    # it); cost per command over sending plus draining, so a backlog is counted in full.
    phase.cpu = {name: (cpu_mid[name] - cpu_before[name]) / phase.wall_s for name in pids}
    phase.cpu_ms_per_command = {
        name: (cpu_after[name] - cpu_before[name]) / len(phase.sent) * 1000 for name in pids
    }
    return phase


async def bench(
    args: argparse.Namespace, redis_url: str, server_pid: int
) -> tuple[TimedFakeSlack, list[Phase]]:
    """Run every rate; return the (stopped) fake, whose records the report reads, and phases."""
    namespace = _common.unique_namespace("bench-command")
    fake = TimedFakeSlack()
    await fake.start()
    try:
        for number in range(USERS):
            fake.add_user(f"U{number:04d}", f"user{number}", f"User {number}")
        child, stop, task = await start_bot(fake, redis_url, namespace, args)
        pids = {"loadgen+fake": os.getpid(), "valkey": server_pid}
        if child is not None:
            pids["deploybot"] = child.pid
        try:
            await warm_up(fake)
            commands = Commands(args.seed)
            phases = [
                await run_phase(fake, commands, rate, args.seconds, pids) for rate in args.rates
            ]
            return fake, phases
        finally:
            await stop_bot(child, stop, task)
    finally:
        await fake.stop()


async def warm_up(fake: TimedFakeSlack) -> None:
    """Every user says `help` once, so display names are cached before measuring."""
    channels = []
    start = time.monotonic()
    for number in range(USERS):
        delay = start + number / WARMUP_RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        channel = f"CWARM{number:04d}"
        event = fake.app_mention_event(
            user_id=f"U{number:04d}", channel_id=channel, text=f"<@{BOT_USER_ID}> help"
        )
        await fake.send_events_api(event)
        channels.append(channel)
    await wait_for_replies(fake, channels)
    missing = [c for c in channels if c not in fake.replies]
    if missing:
        msg = f"The bot did not answer {len(missing)} of {USERS} warm-up commands."
        raise RuntimeError(msg)


# -----------------------------------------------------------------------------------------
# report


def latencies(fake: TimedFakeSlack, phase: Phase, kind: str | None = None) -> dict[str, Any]:
    acks, replies, crashes, unavailable, missing = [], [], 0, 0, 0
    for channel, sent in phase.sent.items():
        if kind is not None and sent.kind != kind:
            continue
        ack = fake.ack_times.get(sent.envelope_id)
        if ack is not None:
            acks.append(ack * 1000)
        reply = fake.replies.get(channel)
        if reply is None:
            missing += 1
            continue
        replies.append((reply[0] - sent.at) * 1000)
        text = reply[1].lower()
        crashes += CRASH_TEXT in text
        unavailable += UNAVAILABLE_TEXT in text
    return {
        "acks": acks,
        "replies": replies,
        "errors": crashes + unavailable + missing,
        "detail": f"{crashes}/{unavailable}/{missing}",
    }


def report(fake: TimedFakeSlack, phases: list[Phase], args: argparse.Namespace, url: str) -> str:
    pct = _common.percentile
    rows, cpu_rows, kind_rows = [], [], []
    for phase in phases:
        got = latencies(fake, phase)
        acks, replies = got["acks"], got["replies"]
        p99 = pct(replies, 99)
        verdict = ""
        if phase.rate == TARGET_RATE:
            verdict = "yes" if p99 <= TARGET_P99_MS and got["errors"] == 0 else "NO"
        rows.append(
            [
                phase.rate,
                len(phase.sent),
                len(phase.sent) / phase.wall_s,
                pct(acks, 50),
                pct(acks, 99),
                max(acks, default=float("nan")),
                pct(replies, 50),
                pct(replies, 99),
                max(replies, default=float("nan")),
                got["errors"],
                got["detail"],
                phase.max_send_lag_s * 1000,
                verdict,
            ]
        )
        cpu_rows.append(
            [
                phase.rate,
                *(f"{v * 100:.0f}%" for v in phase.cpu.values()),
                *phase.cpu_ms_per_command.values(),
            ]
        )
        for kind, _weight in MIX:
            by_kind = latencies(fake, phase, kind)["replies"]
            kind_rows.append(
                [phase.rate, kind, len(by_kind), pct(by_kind, 50), pct(by_kind, 99), max(by_kind)]
            )

    headers = [
        "rate/s", "sent", "sent/s", "ack p50", "ack p99", "ack max", "reply p50",
        "reply p99", "reply max", "errors", "crash/unavail/missing", "send lag max",
        f"p99<={TARGET_P99_MS:g}@{TARGET_RATE}",
    ]  # fmt: skip
    layout = "bot inline with fake+loadgen" if args.inline else "bot in its own process"
    head = _common.header(
        "command_path: app_mention -> SlackAdapter -> chat.postMessage, latencies in ms",
        f"server      {_common.server_version(url)} (own process, loopback TCP)",
        f"run         {args.seconds:g} s per rate, {USERS} users, {len(SERVICES)} services, "
        f"{len(ENVIRONMENTS)} envs; {layout}",
    )
    cpu_headers = [
        "rate/s",
        *(f"{name} cpu" for name in phases[0].cpu),
        *(f"{name} cpu ms/cmd" for name in phases[0].cpu),
    ]
    kind_headers = ["rate/s", "command", "count", "reply p50", "reply p99", "reply max"]
    return "\n\n".join(
        [
            head,
            _common.table(headers, rows),
            "CPU: share of one core while sending, and CPU ms per command including the "
            "drain:\n" + _common.table(cpu_headers, cpu_rows),
            "Reply latency by command (ms):\n" + _common.table(kind_headers, kind_rows),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s per rate")
    parser.add_argument("--seconds", type=float, help="seconds per rate (default 30)")
    parser.add_argument("--rates", type=int, nargs="+", default=list(RATES))
    parser.add_argument("--seed", type=int, default=7, help="seed of the command mix")
    parser.add_argument("--inline", action="store_true", help="run the bot in this process")
    parser.add_argument("--profile", help="write a cProfile of the bot process to this file")
    parser.add_argument("--samples", help="write every command's timings to this CSV file")
    parser.add_argument("--adapter-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--api-url", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--namespace", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.adapter_child:
        adapter_child(args)
        return
    if args.profile and args.inline:
        parser.error("--profile profiles the bot's own process; it cannot go with --inline")
    args.seconds = args.seconds or (3.0 if args.quick else 30.0)
    args.profile = os.path.abspath(args.profile) if args.profile else None

    with tempfile.TemporaryDirectory(prefix="deploybot-bench-") as tmp:
        log_path = Path(tmp) / "bot.log"
        with log_path.open("w") as log_file, _common.bench_server() as (url, server_pid):
            # The bot's warnings go to a file and are summarised, not scrolled past.
            args.child_log = log_file
            logging.basicConfig(level=logging.WARNING, stream=log_file)
            machine = _common.cpu_snapshot()
            fake, phases = asyncio.run(bench(args, url, server_pid))
            print(report(fake, phases, args, url))
            if args.samples:
                write_samples(fake, phases, args.samples)
        print()
        print(log_summary(log_path))
        print(_common.machine_usage(machine))


def write_samples(fake: TimedFakeSlack, phases: list[Phase], path: str) -> None:
    """One CSV row per command: rate, kind, send time (s into its rate), ack and reply ms."""
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["rate", "command", "sent_s", "ack_ms", "reply_ms", "reply_start"])
        for phase in phases:
            first = min((sent.at for sent in phase.sent.values()), default=0.0)
            for channel, sent in phase.sent.items():
                ack = fake.ack_times.get(sent.envelope_id)
                reply = fake.replies.get(channel)
                writer.writerow(
                    [
                        phase.rate,
                        sent.kind,
                        f"{sent.at - first:.4f}",
                        "" if ack is None else f"{ack * 1000:.2f}",
                        "" if reply is None else f"{(reply[0] - sent.at) * 1000:.2f}",
                        "" if reply is None else reply[1][:40],
                    ]
                )


def log_summary(path: Path) -> str:
    """Count the bot's WARNING and ERROR log lines, grouped by message (digits masked)."""
    counts: collections.Counter[str] = collections.Counter()
    with path.open(encoding="utf-8", errors="replace") as log:
        for line in log:
            if line.startswith(("WARNING:", "ERROR:", "CRITICAL:")):
                counts[re.sub(r"\d+", "N", line.strip())[:120]] += 1
    if not counts:
        return "bot log: no warnings or errors"
    lines = [f"bot log: {sum(counts.values()):,} warning/error lines; most common:"]
    lines += [f"  {count:>7,}  {message}" for message, count in counts.most_common(8)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
