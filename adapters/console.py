"""A chat in the terminal: each input line is a message, each reply is printed.

Reads piped input too, so a session can be scripted, and ends cleanly at end of input.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from datetime import tzinfo
from typing import TextIO

from bot.commands import CommandHandler
from bot.messages import Message, Reply
from bot.render import render_plain

log = logging.getLogger(__name__)

PLATFORM = "local"


class ConsoleAdapter:
    """Reads lines from `stdin` as messages from `user` and writes replies to `stdout`.

    It is also a chat platform for announcements: channel posts and DMs (to any local user)
    are printed, marked with `»`, so reminders and expiries show up in the terminal.
    """

    platform = PLATFORM

    def __init__(
        self,
        handler: CommandHandler,
        *,
        user: str,
        zone: tzinfo | None = None,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
    ) -> None:
        self._handler = handler
        self._user = user
        self._zone = zone
        self._stdin = stdin or sys.stdin
        self._stdout = stdout or sys.stdout
        self._interactive = self._stdin.isatty()

    async def run(self) -> None:
        """Answer lines until end of input."""
        if self._interactive:
            self._write(
                f"deploybot console as {self._user}. Say `help` for commands, `exit` to leave.\n"
            )
        count = 0
        while True:
            line = await self._read_line()
            if line is None:
                break
            if not line.strip():
                continue
            if line.strip().lower() in ("exit", "quit"):
                break
            count += 1
            message = Message(
                platform=PLATFORM,
                user_id=self._user,
                display_name=self._user,
                channel="console",
                text=line.rstrip("\n"),
                direct=True,
                event_id=str(count),
            )
            reply = await self._handler.handle(message)
            self._write(render_plain(reply.parts, self._zone).rstrip() + "\n")
        log.info("console input ended messages=%s", count)

    @property
    def connected(self) -> bool:
        """A terminal is always there."""
        return True

    async def start(self) -> None:
        """Nothing to connect."""

    async def stop(self) -> None:
        """Nothing to disconnect."""

    async def failure(self) -> str:
        """A terminal does not fail; waits forever."""
        await asyncio.Event().wait()
        return ""

    async def post(self, channel: str, reply: Reply, *, thread: str | None = None) -> None:
        """Print an announcement."""
        self._write(f"» {render_plain(reply.parts, self._zone).rstrip()}\n")

    async def send_direct(self, user_id: str, reply: Reply) -> None:
        """Print a direct message, naming whom it is for."""
        self._write(f"» (to {user_id}) {render_plain(reply.parts, self._zone).rstrip()}\n")

    async def _read_line(self) -> str | None:
        """The next line, or None at end of input.

        Reading blocks, so it happens in a daemon thread of its own: a thread from the
        default executor would keep the process alive after Ctrl-C until Enter is pressed.
        """
        if self._interactive:
            self._write("deploybot> ")
        loop = asyncio.get_running_loop()
        line: asyncio.Future[str] = loop.create_future()

        def read() -> None:
            try:
                text = self._stdin.readline()
            except (OSError, ValueError):
                text = ""
            loop.call_soon_threadsafe(_settle, line, text)

        threading.Thread(target=read, name="console-stdin", daemon=True).start()
        return await line or None

    def _write(self, text: str) -> None:
        self._stdout.write(text)
        self._stdout.flush()


def _settle(future: asyncio.Future[str], value: str) -> None:
    """Resolve `future` unless it was cancelled meanwhile (Ctrl-C)."""
    if not future.done():
        future.set_result(value)
