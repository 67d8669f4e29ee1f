"""Mattermost adapter (mattermostdriver, websocket)."""

from adapters.mattermost.adapter import MattermostAdapter, MattermostConfigError

__all__ = ["MattermostAdapter", "MattermostConfigError"]
