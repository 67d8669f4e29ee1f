"""Slack rendering: mrkdwn text with real mentions and per-reader dates, Block Kit buttons."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import tzinfo
from typing import Any

from bot.messages import Code, Mention, Part, Reply, When
from bot.model import Lease, LeaseKind
from bot.render import clock_label, relative

PLATFORM = "slack"
EXTEND_ACTION = "lease_extend"
RELEASE_ACTION = "lease_release"


def escape(text: str) -> str:
    """Escape the three characters Slack treats as markup, so a note cannot ping @channel."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_mrkdwn(parts: Iterable[Part], zone: tzinfo | None = None) -> str:
    """Render parts as Slack mrkdwn.

    Slack people become `<@U…>` mentions; people from other platforms (a CI user, a
    Mattermost user) are shown by name. Times use Slack's date token, so each reader sees
    their own time zone, with a plain fallback for clients that cannot render it.
    """
    out = []
    for part in parts:
        if isinstance(part, Mention):
            holder = part.holder
            out.append(
                f"<@{holder.user_id}>" if holder.platform == PLATFORM else escape(holder.display)
            )
        elif isinstance(part, When):
            out.append(date_token(part, zone))
        elif isinstance(part, Code):
            out.append(f"`{escape(part.text)}`")
        else:
            out.append(escape(part))
    return "".join(out)


def date_token(when: When, zone: tzinfo | None = None) -> str:
    """`<!date^…^{time}|14:35 UTC> (in 30 minutes)`; the date is shown when not today."""
    seconds = when.at_ms // 1000
    fallback, today = clock_label(when.at_ms, when.now_ms, zone)
    layout = "{time}" if today else "{date_short_pretty} {time}"
    return f"<!date^{seconds}^{layout}|{fallback}> ({relative(when.at_ms, when.now_ms)})"


def button_value(lease: Lease) -> str:
    """What a button carries: enough to find the lease and notice it changed hands."""
    return json.dumps({"kind": str(lease.kind), "name": lease.name, "token": lease.token})


def parse_button_value(value: str) -> tuple[LeaseKind, str, int] | None:
    """The kind, name and token a button refers to; None for a value we did not write."""
    try:
        data = json.loads(value)
        return LeaseKind(data["kind"]), str(data["name"]), int(data["token"])
    except (ValueError, KeyError, TypeError):
        return None


def blocks_for(
    reply: Reply, zone: tzinfo | None = None, *, text: str | None = None
) -> list[dict[str, Any]]:
    """A section with the text (rendered here unless given), and Extend/Release buttons for
    the lease the reply is about."""
    text = (text if text is not None else render_mrkdwn(reply.parts, zone)) or " "
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}
    ]
    if len(reply.leases) == 1:
        lease = reply.leases[0]
        value = button_value(lease)
        blocks.append(
            {
                "type": "actions",
                "block_id": f"lease:{lease.kind}:{lease.name}",
                "elements": [
                    _button("Extend", EXTEND_ACTION, value, style="primary"),
                    _button("Release", RELEASE_ACTION, value),
                ],
            }
        )
    return blocks


def _button(label: str, action_id: str, value: str, style: str | None = None) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "text": {"type": "plain_text", "text": label},
        "action_id": action_id,
        "value": value,
    }
    if style:
        button["style"] = style
    return button
