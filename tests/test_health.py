"""/healthz, /readyz and /metrics; reconnects counted by the adapters; a Redis outage seen
from the outside of a running `deploybot run`."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fake_mattermost import BOT_TOKEN, FakeMattermost
from fake_slack import BOT_USER_ID, FakeSlack
from prometheus_client.parser import text_string_to_metric_families
from servers import _free_port, start_test_server, stop_test_server
from test_announcer import ALICE, BOB, ORIGIN, Recorder, chat, make_runtime, wait_for

from adapters.mattermost import MattermostAdapter
from adapters.runner import time_driven
from adapters.slack import SlackAdapter
from bot.announcer import GROUP
from bot.commands import CommandHandler
from bot.config import Settings
from bot.health import Health, HealthServer, serving_health
from bot.jobs import JobService
from bot.leases import LeaseService
from bot.metrics import Metrics
from bot.model import LeaseKind
from bot.store import LeasePolicy, Store, connect

DEPLOYBOT = Path(sys.executable).parent / "deploybot"
CHANNEL = "C0DEPLOY"


class Platform:
    """A chat platform whose connection state and reconnect count the test sets."""

    def __init__(self, platform: str, *, connected: bool = True, reconnects: int = 0) -> None:
        self.platform = platform
        self.connected = connected
        self.reconnects = reconnects


@pytest.fixture
def slack() -> Platform:
    return Platform("slack")


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def server(store: Store, slack: Platform, metrics: Metrics) -> AsyncIterator[str]:
    """The endpoints on a port the OS picks; yields their base URL."""
    health = Health(store, {"slack": slack})
    metrics.watch_platforms(health.platforms)
    http = HealthServer(health, metrics)
    assert await http.start("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{http.port}"
    finally:
        await http.stop()


async def get(url: str) -> tuple[int, Any]:
    """GET `url`; the status and the body (parsed when it is JSON)."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = await get(f"{base}/metrics")
    assert status == 200
    return samples(text)


# -----------------------------------------------------------------------------------------
# health and readiness


async def test_healthz_answers_while_the_process_runs(server: str) -> None:
    """/healthz is 200 whatever Redis or chat are doing."""
    status, body = await get(f"{server}/healthz")

    assert (status, body) == (200, {"status": "ok"})


async def test_readyz_is_200_when_redis_and_every_platform_are_up(server: str) -> None:
    """/readyz lists each dependency as up."""
    status, body = await get(f"{server}/readyz")

    assert status == 200
    assert body == {"ready": True, "down": [], "checks": {"redis": "up", "slack": "up"}}


async def test_readyz_is_503_naming_a_disconnected_platform(server: str, slack: Platform) -> None:
    """A chat connection that is down makes deploybot not ready, and says which."""
    slack.connected = False

    status, body = await get(f"{server}/readyz")

    assert status == 503
    assert body["down"] == ["slack"] and body["checks"]["slack"] == "disconnected"


async def test_readyz_is_503_when_redis_does_not_answer(metrics: Metrics) -> None:
    """Nothing listening at the Redis URL: not ready, naming redis and nothing secret."""
    dead = Store(connect(f"redis://:hunter2@127.0.0.1:{_free_port()}/0"), namespace="dead")
    http = HealthServer(Health(dead, {}), metrics)
    assert await http.start("127.0.0.1", 0)
    try:
        status, body = await get(f"http://127.0.0.1:{http.port}/readyz")
    finally:
        await http.stop()
        await dead.close()

    assert status == 503
    assert body["down"] == ["redis"]
    assert "hunter2" not in str(body) and "127.0.0.1" not in str(body)


async def test_a_taken_port_is_a_warning_and_the_bot_carries_on(
    store: Store, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    """When something else listens on the port, serving_health logs why and yields None."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(http_port=port)

        async with serving_health(settings, Health(store, {}), metrics) as http:
            assert http is None

    assert "http server not started" in caplog.text
    assert "the port is already in use" in caplog.text


async def test_port_zero_turns_the_server_off(store: Store, metrics: Metrics) -> None:
    """http_port: 0 starts no server at all."""
    async with serving_health(Settings(http_port=0), Health(store, {}), metrics) as http:
        assert http is None


# -----------------------------------------------------------------------------------------
# metrics


async def test_commands_are_counted_by_name_and_outcome_with_latency(
    server: str, store: Store, settings: Settings, metrics: Metrics
) -> None:
    """Each command is counted under its name and outcome (the error's class name)."""
    leases, jobs = LeaseService(store, settings), JobService(store, settings)
    commands = CommandHandler(leases, jobs, settings, observer=metrics.observe_command)

    await commands.handle(chat(ALICE, "lock backend 30m secret-note-INC-12"))
    await commands.handle(chat(BOB, "lock backend"))
    await commands.handle(chat(BOB, "unlokc backend"))

    found = await scrape(server)
    assert found[("deploybot_commands_total", (("command", "lock"), ("outcome", "ok")))] == 1
    assert (
        found[("deploybot_commands_total", (("command", "lock"), ("outcome", "LeaseHeld")))] == 1
    )
    unknown = (("command", "unparsed"), ("outcome", "UnknownCommand"))
    assert found[("deploybot_commands_total", unknown)] == 1
    assert found[("deploybot_command_latency_seconds_count", (("command", "lock"),))] == 2
    assert found[("deploybot_command_latency_seconds_sum", (("command", "lock"),))] > 0


async def test_labels_carry_no_user_ids_channels_or_message_text(
    server: str, store: Store, settings: Settings, metrics: Metrics
) -> None:
    """Whatever people type, the exposition names only commands, outcomes and kinds."""
    leases, jobs = LeaseService(store, settings), JobService(store, settings)
    commands = CommandHandler(leases, jobs, settings, observer=metrics.observe_command)
    await commands.handle(chat(ALICE, "lock backend 30m secret-note-INC-12"))
    await commands.handle(chat(ALICE, "xoxb-1-2-typed-by-mistake"))

    status, text = await get(f"{server}/metrics")

    assert status == 200
    for private in ("UALICE", "Alice", CHANNEL, "secret-note", "xoxb", "typed-by-mistake"):
        assert private not in text


async def test_active_leases_by_kind_and_waiters_are_read_at_scrape_time(
    server: str, store: Store
) -> None:
    """Gauges follow Redis: a lock, a claim and one person waiting; then the lock is freed."""
    await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=60_000)
    await store.acquire(LeaseKind.CLAIM, "staging-1", ALICE, ttl_ms=60_000)
    await store.join_waitlist(LeaseKind.LOCK, "backend", BOB)

    found = await scrape(server)
    assert found[("deploybot_active_leases", (("kind", "lock"),))] == 1
    assert found[("deploybot_active_leases", (("kind", "claim"),))] == 1
    assert found[("deploybot_waiters", ())] == 1
    assert found[("deploybot_state_store_up", ())] == 1

    await store.leave_waitlist(LeaseKind.LOCK, "backend", BOB)
    await store.release(LeaseKind.LOCK, "backend", ALICE)
    found = await scrape(server)
    assert found[("deploybot_active_leases", (("kind", "lock"),))] == 0
    assert found[("deploybot_waiters", ())] == 0


async def test_an_unreachable_store_is_reported_not_guessed(metrics: Metrics) -> None:
    """With Redis down, store_up is 0 and no lease counts are made up."""
    dead = Store(connect(f"redis://127.0.0.1:{_free_port()}/0"), namespace="dead")
    try:
        await metrics.refresh(dead)
    finally:
        await dead.close()

    found = samples(metrics.render().decode())
    assert found[("deploybot_state_store_up", ())] == 0
    assert not any(name == "deploybot_active_leases" for name, _labels in found)


async def test_connection_state_and_reconnects_are_reported_by_platform(
    server: str, slack: Platform
) -> None:
    """What each adapter reports about its connection is exported as it is at scrape time."""
    slack.reconnects = 2
    slack.connected = False

    found = await scrape(server)

    assert found[("deploybot_reconnects_total", (("platform", "slack"),))] == 2
    assert found[("deploybot_chat_connected", (("platform", "slack"),))] == 0


async def test_reminders_and_announcements_are_counted_by_event_type(
    redis_server_url: str, settings: Settings, metrics: Metrics
) -> None:
    """The announcer reports each post: a reminder DM, then the expiry's channel post and DM."""
    store = Store(
        connect(redis_server_url),
        namespace=settings.namespace,
        policy=LeasePolicy(reminder_offsets_ms=(60_000,)),
    )
    fast = settings.model_copy(update={"sweep_interval_s": 0.05})
    recorder = Recorder("slack")
    try:
        await store.ensure_event_group(GROUP)
        await store.acquire(
            LeaseKind.LOCK, "backend", ALICE, ttl_ms=600, origin=ORIGIN, via=ORIGIN
        )
        async with time_driven(
            make_runtime(store, fast), {"slack": recorder}, None, metrics=metrics
        ):
            await wait_for(lambda: len(recorder.posts) == 3, "reminder, expiry post and DM")
    finally:
        await store.close()

    found = samples(metrics.render().decode())
    assert found[("deploybot_reminders_sent_total", ())] == 1
    sent = "deploybot_announcements_sent_total"
    assert found[(sent, (("event", "reminder"), ("platform", "slack")))] == 1
    assert found[(sent, (("event", "expired"), ("platform", "slack")))] == 2


async def test_slack_counts_its_reconnects(store: Store, settings: Settings) -> None:
    """A dropped Socket Mode connection that comes back counts as one reconnect."""
    async with FakeSlack() as fake:
        adapter = SlackAdapter(
            make_runtime(store, settings),
            bot_token="xoxb-test",
            app_token="xapp-test",
            api_url=fake.api_url,
            ping_interval=0.5,
        )
        await adapter.start()
        try:
            await fake.wait_for_connections(1)
            await wait_for(lambda: adapter.connected, "the first connection")
            assert adapter.reconnects == 0

            await fake.drop_connections()
            await fake.wait_for_connections(2, timeout=10)
            await wait_for(lambda: adapter.reconnects == 1, "the reconnect to be counted")
        finally:
            await adapter.stop()


async def test_mattermost_counts_its_reconnects(store: Store, settings: Settings) -> None:
    """A dropped Mattermost websocket that comes back counts as one reconnect."""
    async with FakeMattermost() as fake:
        adapter = MattermostAdapter(
            make_runtime(store, settings),
            url=fake.url,
            token=BOT_TOKEN,
            ping_interval=0.5,
            ping_timeout=0.5,
        )
        await adapter.start()
        try:
            assert adapter.connected and adapter.reconnects == 0

            await fake.drop_connections()
            await fake.wait_for_authenticated(2, total=True, timeout=15)
            await wait_for(lambda: adapter.reconnects == 1, "the reconnect to be counted")
        finally:
            await adapter.stop()


# -----------------------------------------------------------------------------------------
# Redis down while `deploybot run` serves Slack


@pytest.fixture
def redis_dir(tmp_path: Path) -> Path:
    path = tmp_path / "redis"
    path.mkdir()
    return path


@pytest.fixture
def own_redis(redis_dir: Path) -> Iterator[dict[str, Any]]:
    """A persistent throwaway server this test may stop and start; its process and URL."""
    process, url = start_test_server(redis_dir, persistent=True)
    state = {"process": process, "url": url}
    try:
        yield state
    finally:
        stop_test_server(state["process"])


async def mention(fake: FakeSlack, text: str) -> str:
    """Mention the bot as Alice and return the text of its answer (one may wait out a few
    Redis retries, hence the long limit)."""
    before = len(fake.calls_to("chat.postMessage"))
    event = fake.app_mention_event(
        user_id="UALICE", channel_id=CHANNEL, text=f"<@{BOT_USER_ID}> {text}"
    )
    await fake.send_events_api(event)
    reply = await fake.wait_for_call("chat.postMessage", count=before + 1, timeout=15)
    return str(reply["text"])


async def _is(answer: Any, status: int) -> bool:
    code, _body = await answer
    return bool(code == status)


async def ready(base: str) -> tuple[int, Any]:
    try:
        return await get(f"{base}/readyz")
    except aiohttp.ClientError:
        return 0, None


async def test_redis_outage_is_survived_without_a_restart(
    own_redis: dict[str, Any], redis_dir: Path, namespace: str, tmp_path: Path
) -> None:
    """Redis stops: commands say "nothing changed", Slack stays connected, /readyz is 503.
    Redis restarts on the same port and data: commands work, the old lock is still there,
    /readyz is 200 again, all without restarting deploybot."""
    http_port = _free_port()
    base = f"http://127.0.0.1:{http_port}"
    async with FakeSlack() as fake:
        fake.add_user("UALICE", "alice", "Alice")
        env = {
            **os.environ,
            "REDIS_URL": own_redis["url"],
            "DEPLOYBOT_NAMESPACE": namespace,
            "DEPLOYBOT_HTTP_PORT": str(http_port),
            "SLACK_BOT_TOKEN": "xoxb-test",
            "SLACK_APP_TOKEN": "xapp-test",
            "SLACK_API_URL": fake.api_url,
        }
        with (tmp_path / "stderr.log").open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                str(DEPLOYBOT), "-v", "run", cwd=tmp_path, env=env,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
            )  # fmt: skip
        try:
            await fake.wait_for_connections(1, timeout=20)
            await wait_for(lambda: _is(ready(base), 200), "/readyz 200", limit=20)
            assert "<@UALICE> locked `backend`" in await mention(fake, "lock backend")

            stop_test_server(own_redis["process"])
            await wait_for(lambda: _is(ready(base), 503), "/readyz 503", limit=20)
            _status, body = await ready(base)
            assert body["down"] == ["redis"] and body["checks"]["slack"] == "up"
            refusal = await mention(fake, "lock api")
            assert "state store is unavailable" in refusal and "nothing changed" in refusal
            assert "Traceback" not in refusal
            assert fake.total_connections == 1 and fake.connection_count == 1

            port = int(own_redis["url"].rsplit(":", 1)[1].split("/")[0])
            own_redis["process"], _url = start_test_server(redis_dir, port=port, persistent=True)
            await wait_for(lambda: _is(ready(base), 200), "/readyz 200 again", limit=20)
            assert "<@UALICE> locked `api`" in await mention(fake, "lock api")
            kept = await mention(fake, "status backend")  # taken before the outage
            assert "`backend`" in kept and "<@UALICE>" in kept
            assert fake.total_connections == 1
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), timeout=15)

    log = (tmp_path / "stderr.log").read_text()  # small, and the process has exited
    assert process.returncode == 0, log
    assert "state store unavailable" in log
    assert "Traceback" not in log and "xoxb-test" not in log
