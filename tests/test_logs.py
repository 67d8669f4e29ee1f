"""Logging: text or JSON on one switch, key=value context kept, secrets masked."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_announcer import cli_env, run_cli

from bot.logs import REDACTED, RedactSecrets, configure_logging, redact


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger back as pytest set it up, whatever a test configured."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    scheduler = logging.getLogger("apscheduler.executors")
    scheduler_level = scheduler.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        scheduler.setLevel(scheduler_level)


def logged(json_format: bool) -> tuple[logging.Logger, io.StringIO]:
    """A logger whose records go through deploybot's handler into a string buffer."""
    buffer = io.StringIO()
    configure_logging(level=logging.INFO, json_format=json_format, stream=buffer)
    return logging.getLogger("bot.example"), buffer


def test_slack_tokens_are_masked_keeping_their_kind() -> None:
    """Bot, user and app-level tokens are replaced; the prefix stays, to tell which leaked."""
    text = redact("bot xoxb-123-456-AbC user xoxp-9-8-x app xapp-1-A0FAKE-1-deadbeef")

    assert "123-456" not in text and "AbC" not in text and "deadbeef" not in text
    assert f"xoxb-{REDACTED}" in text and f"xapp-{REDACTED}" in text
    assert f"xoxp-{REDACTED}" in text


def test_password_and_token_values_are_masked_but_fencing_tokens_are_kept() -> None:
    """`password=`/`token=` values go; a numeric fencing token is context and stays."""
    text = redact(
        "login password=hunter2 token=abc123 MATTERMOST_TOKEN=8xk3 lease token=1796305440634"
    )

    assert "hunter2" not in text and "abc123" not in text and "8xk3" not in text
    assert f"password={REDACTED}" in text and f"MATTERMOST_TOKEN={REDACTED}" in text
    assert "token=1796305440634" in text


def test_url_passwords_json_tokens_and_bearer_headers_are_masked() -> None:
    """Credentials inside URLs, JSON and Authorization headers are masked too."""
    text = redact(
        'redis://:s3cret@redis:6379/0 {"action": "authentication_challenge", '
        '"data": {"token": "mm-token-1"}} Authorization: Bearer abc.def'
    )

    assert "s3cret" not in text and "mm-token-1" not in text and "abc.def" not in text
    assert "redis://:[redacted]@redis:6379/0" in text


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("json_format", [False, True])
def test_the_filter_masks_arguments_and_tracebacks(json_format: bool) -> None:
    """A token passed as a log argument or inside an exception never reaches the output."""
    log, buffer = logged(json_format)

    log.warning("slack api call failed url=%s", "https://x/?token=xoxb-1-2-leak")
    try:
        raise RuntimeError("refused xapp-1-A-2-leak password=pw-leak")
    except RuntimeError:
        log.exception("command crashed ref=%s", "abc123")

    output = buffer.getvalue()
    assert "leak" not in output
    assert "RuntimeError" in output and "ref=abc123" in output


def test_a_record_with_mismatched_arguments_is_still_written() -> None:
    """Arguments that do not fit the format are kept (masked) instead of raising."""
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "a %s %s", ("xoxb-1-z",), None)

    assert RedactSecrets().filter(record)
    assert "a %s %s" in record.msg and "xoxb-1-z" not in record.msg


@pytest.mark.usefixtures("restore_logging")
def test_text_is_the_default_and_keeps_key_value_context() -> None:
    """Text lines carry time, level, the key=value message and the logger's name."""
    log, buffer = logged(json_format=False)

    log.info("command platform=%s command=%s outcome=%s", "slack", "lock", "LeaseHeld")

    line = buffer.getvalue().strip()
    assert "[info" in line and "[bot.example]" in line
    assert "command platform=slack command=lock outcome=LeaseHeld" in line


@pytest.mark.usefixtures("restore_logging")
def test_json_is_one_object_per_line_with_the_context_as_fields() -> None:
    """JSON lines keep the whole message and also expose each key=value pair as a field."""
    log, buffer = logged(json_format=True)

    log.info("lease acquired kind=lock name=%s token=%s", "backend", 1796305440634)
    log.info("announced event=expired kind=lock msg=%s", "clash")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("command crashed ref=abc123")

    acquired, announced, crashed = (json.loads(line) for line in buffer.getvalue().splitlines())
    assert acquired["msg"] == "lease acquired kind=lock name=backend token=1796305440634"
    assert acquired["level"] == "info" and acquired["logger"] == "bot.example"
    assert (acquired["kind"], acquired["name"], acquired["token"]) == (
        "lock",
        "backend",
        "1796305440634",
    )
    assert "timestamp" in acquired
    assert announced["event"] == "expired"
    assert announced["msg"].endswith("msg=clash")  # a pair never overwrites a formatter field
    assert crashed["level"] == "error" and "ValueError: boom" in crashed["exception"]


@pytest.mark.usefixtures("restore_logging")
def test_configuring_twice_does_not_double_lines() -> None:
    """A second configuration replaces the first handler instead of adding another."""
    configure_logging(level=logging.INFO, json_format=False, stream=io.StringIO())
    log, buffer = logged(json_format=True)

    log.info("once")

    assert len(buffer.getvalue().splitlines()) == 1
    assert len(logging.getLogger().handlers) == 1


@pytest.mark.parametrize(
    ("flag", "env"),
    [(["--log-json"], {}), ([], {"DEPLOYBOT_LOG_FORMAT": "json"})],
    ids=["flag", "setting"],
)
async def test_the_cli_logs_json_with_one_switch(
    flag: list[str],
    env: dict[str, str],
    redis_server_url: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    """`--log-json` or `log_format: json` turns the CLI's log lines into JSON objects."""
    environment = cli_env(redis_server_url, namespace, tmp_path) | env

    code, _out, err = await run_cli(
        environment, tmp_path, "-v", *flag, "lock", "backend", "--as", "alice"
    )

    assert code == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    acquired = next(line for line in lines if line["msg"].startswith("lease acquired"))
    assert acquired["name"] == "backend" and acquired["holder"] == "local:alice"
    assert acquired["logger"] == "bot.store"
