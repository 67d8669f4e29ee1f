"""Slack adapter (slack-bolt, Socket Mode)."""

from adapters.slack.adapter import SlackAdapter, SlackConfigError

__all__ = ["SlackAdapter", "SlackConfigError"]
