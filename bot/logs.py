"""Logging setup: text for people by default, JSON lines for log collectors on one switch.

Modules keep using `logging.getLogger(__name__)` and write their context into the message as
`key=value` pairs; structlog's stdlib formatter renders those records. In JSON each pair also
becomes a field of its own, so a collector can filter on `platform` or `command` without
parsing text.

Secrets are never logged on purpose. `RedactSecrets` is the safety net under that rule: it
rewrites every record that reaches the handler, so a token that slips into a message or a
traceback (a library's error text, a URL with a password) is masked before it is written.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "[redacted]"

# Slack tokens: xoxb- (bot), xoxp- (user), xoxa-/xoxr-/xoxe-/xoxs- and xapp- (app-level).
_SLACK_TOKEN = re.compile(r"\b(xox[abeprs]|xapp)-[A-Za-z0-9-]+")
# `password=...`, `bot_token=...`, `secret=...`. A fencing token is all digits and is meant to
# be logged (`token=1796305440634`), so a value made of digits only is kept.
_SECRET_PAIR = re.compile(
    r"(?i)\b(\w*(?:password|passwd|secret|token))=(?!\d+(?![\w-]))[^\s&,;\"']+"
)
# The same as JSON: `"token": "..."` (a websocket authentication challenge, say).
_SECRET_JSON = re.compile(r'(?i)("\w*(?:password|passwd|secret|token)"\s*:\s*")[^"]*"')
# The password in a URL's user part: redis://:hunter2@host, https://user:pw@host.
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")

# `key=value` pairs in a message; a value runs until the next ` key=`.
_PAIR_KEY = re.compile(r"(?:^|(?<=\s))([A-Za-z_][A-Za-z0-9_]*)=")
# JSON fields the formatter sets itself; a pair with one of these names stays in `msg` only.
_RESERVED = frozenset({"timestamp", "level", "logger", "msg", "exception"})


def redact(text: str) -> str:
    """`text` with anything that looks like a token or password replaced by [redacted]."""
    text = _SLACK_TOKEN.sub(rf"\1-{REDACTED}", text)
    text = _SECRET_PAIR.sub(rf"\1={REDACTED}", text)
    text = _SECRET_JSON.sub(rf'\1{REDACTED}"', text)
    text = _URL_PASSWORD.sub(rf"\1{REDACTED}@", text)
    return _BEARER.sub(rf"\1{REDACTED}", text)


class RedactSecrets(logging.Filter):
    """Masks secrets in a record's message and traceback before any formatter sees them.

    The record is rewritten in place (message formatted, arguments dropped), so every
    handler after this one sees the masked text too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            # Arguments that do not fit the format: keep both, masked, rather than fail.
            message = f"{record.msg} {record.args!r}"
        record.msg = redact(message)
        record.args = None

        if record.exc_info and record.exc_info[0] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            record.exc_text = redact(text)
        return True


def configure_logging(*, level: int, json_format: bool, stream: TextIO | None = None) -> None:
    """Send every logger's records to `stream` (stderr), as text or as JSON lines.

    Replaces handlers set up before, so calling it twice (tests, a re-invoked CLI) does not
    double every line.
    """
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_pre_chain(json_format),
            processors=_renderers(json_format, colors=_is_terminal(stream)),
        )
    )

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    # APScheduler logs two INFO lines per job run; the sweep runs twice a second.
    logging.getLogger("apscheduler.executors").setLevel(max(level, logging.WARNING))


def _pre_chain(json_format: bool) -> list[Processor]:
    """What every record gets before rendering: level, logger, time, masked traceback."""
    stamp = (
        structlog.processors.TimeStamper(fmt="iso", utc=True)
        if json_format
        else structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False)
    )
    return [
        stamp,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _masked_exception,
    ]


def _renderers(json_format: bool, *, colors: bool) -> list[Processor]:
    if json_format:
        return [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.EventRenamer("msg"),
            _fields_from_message,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ]
    return [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        structlog.dev.ConsoleRenderer(colors=colors, pad_event_to=0),
    ]


def _masked_exception(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    """Use the traceback RedactSecrets masked instead of rendering the exception again."""
    record = event.get("_record")
    text = getattr(record, "exc_text", None)
    if text:
        event.pop("exc_info", None)
        event["exception"] = text
    return event


def _fields_from_message(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    """`command platform=slack command=lock` also yields the fields platform and command.

    Values stay strings (a name like `007` must not become 7); `msg` keeps the whole line.
    """
    text = str(event.get("msg", ""))
    found = list(_PAIR_KEY.finditer(text))
    if not found:
        return event
    for match, following in zip(found, [*found[1:], None], strict=True):
        key = match.group(1)
        end = following.start() if following is not None else len(text)
        if key not in _RESERVED and key not in event:
            event[key] = text[match.end() : end].strip()
    return event


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
