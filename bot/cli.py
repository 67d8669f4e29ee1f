"""The `deploybot` command: the bot itself, and lease and job commands for pipelines.

Exit status: 0 done, 1 refused (held by someone else, not the holder, check failed),
2 usage or validation error, 3 state store unreachable, 4 an unexpected failure (a bug).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import os
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from bot.config import ConfigError, Secrets, Settings, load_settings
from bot.embedded import EmbeddedServerError, EmbeddedSetupError, server_running, stop_server
from bot.errors import DeploybotError, StoreUnavailable
from bot.logs import configure_logging
from bot.messages import Part, When, clean_text
from bot.model import Holder, Lease, LeaseKind, Origin
from bot.render import render_plain, resolve_zone
from bot.replies import history_parts, jobs_parts, lease_change_parts, status_parts
from bot.runtime import Runtime, open_runtime
from bot.store import LeaseChange, WaitlistResult

log = logging.getLogger(__name__)

EXIT_REFUSED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_CRASH = 1, 2, 3, 4
EXIT_INTERRUPTED = 130
EXIT_TERM = 143  # 128 + SIGTERM, as a shell reports it
CLI_PLATFORM = "local"
CLI_VIA = Origin(CLI_PLATFORM, "cli")

T = TypeVar("T")


class Context:
    """What every subcommand shares: the settings and how to reach Redis."""

    def __init__(self, settings: Settings, redis_url: str | None) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.zone = resolve_zone(settings.timezone)
        self.json_output = False  # --json: refusals go to stdout as JSON as well

    def run(self, work: Callable[[Runtime], Awaitable[T]]) -> T:
        """Run `work` against a fresh runtime; expected failures exit with their status."""
        return asyncio.run(self._run(work))

    async def _run(self, work: Callable[[Runtime], Awaitable[T]]) -> T:
        try:
            async with open_runtime(self.settings, Secrets(), redis_url=self.redis_url) as rt:
                return await work(rt)
        except DeploybotError as error:
            message = render_plain(error.parts(), self.zone)
            if self.json_output:
                click.echo(json.dumps(_refusal_json(error, message), indent=2))
            fail(message, error.exit_code)
        except EmbeddedSetupError as error:
            fail(str(error), EXIT_USAGE)
        except EmbeddedServerError as error:
            fail(f"{error} {StoreUnavailable()}", EXIT_UNAVAILABLE)
        except Exception:
            ref = secrets.token_hex(3)
            log.exception("cli command crashed ref=%s", ref)
            fail(f"Something went wrong (ref {ref}); see the log above.", EXIT_CRASH)

    def show(self, *parts: Part) -> None:
        """Print parts rendered as plain text."""
        click.echo(render_plain(parts, self.zone).rstrip())


def _one_output(*, quiet: bool, as_json: bool) -> None:
    if quiet and as_json:
        raise click.UsageError("Use either -q (the token alone) or --json, not both.")


def _refusal_json(error: DeploybotError, message: str) -> dict[str, Any]:
    """What --json prints when a command is refused: why, the exit code, the lease held."""
    outcome = {EXIT_REFUSED: "refused", EXIT_USAGE: "invalid"}.get(error.exit_code, "unavailable")
    payload: dict[str, Any] = {"outcome": outcome, "error": message, "exit_code": error.exit_code}
    lease = getattr(error, "lease", None)
    if isinstance(lease, Lease):
        payload["lease"] = lease.to_dict()
    return payload


def fail(message: str, code: int) -> NoReturn:
    """Print an error to stderr and exit with `code`."""
    click.echo(f"deploybot: {message}", err=True)
    sys.exit(code)


def default_user() -> str:
    """Who a command acts as without --as: $DEPLOYBOT_USER, else the login name."""
    return os.environ.get("DEPLOYBOT_USER") or getpass.getuser()


as_option = click.option(
    "--as",
    "user",
    default=default_user,
    show_default="$DEPLOYBOT_USER or your login name",
    help="Who is acting (the holder's name).",
)
ttl_option = click.option("--ttl", help="Duration such as 30m, 2h, 1h30m, 1d.")


def _json_requested(click_ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    """Note --json on the shared Context, so a refusal is printed as JSON too."""
    if value:
        click_ctx.ensure_object(Context).json_output = True
    return value


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    callback=_json_requested,
    help="Print JSON (a refusal too, with its exit code).",
)
wait_option = click.option(
    "--wait",
    metavar="DUR",
    help="If it is held, join the waitlist and wait up to DUR for it (exit 1 on timeout).",
)


def pass_context(func: Callable[..., Any]) -> Callable[..., Any]:
    """Hand the shared Context to a subcommand."""

    @click.pass_obj
    @wraps(func)
    def wrapper(ctx: Context, *args: Any, **kwargs: Any) -> Any:
        return func(ctx, *args, **kwargs)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    envvar="DEPLOYBOT_CONFIG",
    help="Settings file (default: ./config.yaml if present).",
)
@click.option("--redis-url", help="Redis to use (default: $REDIS_URL, else the embedded server).")
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level to stderr.")
@click.option(
    "--log-json", is_flag=True, help="Log JSON lines to stderr (same as log_format: json)."
)
@click.pass_context
def cli(
    click_ctx: click.Context,
    config_path: Path | None,
    redis_url: str | None,
    verbose: bool,
    log_json: bool,
) -> None:
    """deploybot: deploy locks, staging claims and job statuses, shared with chat."""
    try:
        settings = load_settings(config_path)
    except ConfigError as error:
        fail(str(error), EXIT_USAGE)

    # One-shot commands report their own failures; the long-running ones also log warnings.
    quiet_level = logging.WARNING if click_ctx.invoked_subcommand == "run" else logging.ERROR
    configure_logging(
        level=logging.INFO if verbose else quiet_level,
        json_format=log_json or settings.log_format == "json",
        stream=sys.stderr,
    )
    click_ctx.obj = Context(settings, redis_url)


def _lease_summary(ctx: Context, change: LeaseChange, quiet: bool, as_json: bool) -> None:
    """Print what a lease command did: a sentence, the token alone, or JSON."""
    lease = change.lease
    if quiet:
        click.echo(str(lease.token))
    elif as_json:
        click.echo(json.dumps({"outcome": change.outcome, **lease.to_dict()}, indent=2))
    else:
        ctx.show(*lease_change_parts(change))


@cli.command()
@click.argument("service")
@as_option
@ttl_option
@click.option("--note", default="", help="Commit, branch or reason, shown to others.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the fencing token.")
@wait_option
@json_option
@pass_context
def lock(
    ctx: Context,
    service: str,
    user: str,
    ttl: str | None,
    note: str,
    quiet: bool,
    wait: str | None,
    as_json: bool,
) -> None:
    """Take the deploy lock on SERVICE (exit 1 if someone else holds it)."""
    _one_output(quiet=quiet, as_json=as_json)
    change = ctx.run(lambda rt: _take(rt, LeaseKind.LOCK, service, user, ttl, note, wait))
    _lease_summary(ctx, change, quiet, as_json)


@cli.command()
@click.argument("env")
@as_option
@click.option("--branch", default="", help="Branch deployed to the environment.")
@ttl_option
@click.option("--note", default="", help="Anything else others should know.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the fencing token.")
@wait_option
@json_option
@pass_context
def claim(
    ctx: Context,
    env: str,
    user: str,
    branch: str,
    ttl: str | None,
    note: str,
    quiet: bool,
    wait: str | None,
    as_json: bool,
) -> None:
    """Claim the staging environment ENV (exit 1 if someone else has it)."""
    text = " ".join(part for part in (branch, note) if part)
    _one_output(quiet=quiet, as_json=as_json)
    change = ctx.run(lambda rt: _take(rt, LeaseKind.CLAIM, env, user, ttl, text, wait))
    _lease_summary(ctx, change, quiet, as_json)


async def _take(
    rt: Runtime,
    kind: LeaseKind,
    name: str,
    user: str,
    ttl: str | None,
    note: str,
    wait: str | None,
) -> LeaseChange:
    """Acquire now, or with --wait join the waitlist and block until it is ours."""
    holder = _holder(user)
    # Checked before the service does, so a name that reads as a duration is refused with
    # the CLI's way to give one (`--ttl`) rather than chat's.
    rt.leases.new_name(kind, name, f"deploybot {kind}", duration_option="--ttl")
    if wait is None:
        return await rt.leases.acquire(kind, name, holder, duration=ttl, note=note, via=CLI_VIA)

    def waiting(result: WaitlistResult) -> None:
        held = f", held by {result.lease.holder.display}" if result.lease else ""
        click.echo(
            f"deploybot: waiting for {name.strip().lower()} (number {result.position} "
            f"in line{held}); giving up after {wait}",
            err=True,
        )

    # A CI runner cancels a job with SIGTERM: stop waiting and leave the waitlist, as Ctrl-C
    # does, instead of dying in line (the place would only lapse when the wait runs out).
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    terminated = []

    def on_sigterm() -> None:
        terminated.append(True)
        if task is not None:
            task.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await rt.leases.acquire_or_wait(
            kind, name, holder, wait=wait, duration=ttl, note=note, via=CLI_VIA, on_waiting=waiting
        )
    except asyncio.CancelledError:
        if terminated:
            fail(f"stopped by SIGTERM; left the waitlist for {name.strip().lower()}.", EXIT_TERM)
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


@cli.command()
@click.argument("service")
@as_option
@pass_context
def unlock(ctx: Context, service: str, user: str) -> None:
    """Release your deploy lock on SERVICE."""
    _release_lease(ctx, LeaseKind.LOCK, service, user)


@cli.command()
@click.argument("env")
@as_option
@pass_context
def release(ctx: Context, env: str, user: str) -> None:
    """Release your claim on the staging environment ENV."""
    _release_lease(ctx, LeaseKind.CLAIM, env, user)


def _release_lease(
    ctx: Context, kind: LeaseKind, name: str, user: str, *, force_reason: str | None = None
) -> None:
    """Release your own lease, or (admins, with a reason) anyone's."""
    holder = _holder(user)
    if force_reason is None:
        change = ctx.run(lambda rt: rt.leases.release(kind, name, holder, via=CLI_VIA))
    else:
        change = ctx.run(
            lambda rt: rt.leases.force_release(kind, name, holder, force_reason, via=CLI_VIA)
        )
    _lease_summary(ctx, change, False, False)


@cli.command()
@click.argument("name")
@as_option
@ttl_option
@json_option
@pass_context
def extend(ctx: Context, name: str, user: str, ttl: str | None, as_json: bool) -> None:
    """Extend your lock or claim NAME to now + TTL (default: its kind's default)."""
    changes = ctx.run(lambda rt: rt.leases.extend(name, _holder(user), duration=ttl, via=CLI_VIA))
    if as_json:  # one JSON document, even when a lock and a claim were both extended
        payload = [{"outcome": change.outcome, **change.lease.to_dict()} for change in changes]
        click.echo(json.dumps(payload, indent=2))
        return
    for change in changes:
        _lease_summary(ctx, change, False, False)


@cli.command("force-unlock")
@click.argument("service")
@as_option
@click.option("--reason", required=True, help="Why; recorded in the history.")
@pass_context
def force_unlock(ctx: Context, service: str, user: str, reason: str) -> None:
    """Admins: release anyone's lock on SERVICE."""
    _release_lease(ctx, LeaseKind.LOCK, service, user, force_reason=reason)


@cli.command("force-release")
@click.argument("env")
@as_option
@click.option("--reason", required=True, help="Why; recorded in the history.")
@pass_context
def force_release(ctx: Context, env: str, user: str, reason: str) -> None:
    """Admins: release anyone's claim on ENV."""
    _release_lease(ctx, LeaseKind.CLAIM, env, user, force_reason=reason)


@cli.command()
@click.argument("service", metavar="NAME")
@click.option("--token", required=True, type=int, help="The token `lock` or `claim` printed.")
@pass_context
def check(ctx: Context, service: str, token: int) -> None:
    """Exit 0 only if the lock (or claim) on NAME is still held with TOKEN."""
    result = ctx.run(lambda rt: rt.leases.check(service, token))
    lease = result.lease
    if result.valid and lease is not None:
        ctx.show(
            f"ok: {lease.holder.display} holds {lease.name} with token {token} until ",
            When(lease.expires_at, result.now_ms),
        )
        return
    if lease is None:
        fail(
            f"Nothing called {service.strip().lower()} is held now (it expired, was released, "
            f"or never was); token {token} is not valid.",
            EXIT_REFUSED,
        )
    fail(
        f"The {lease.kind} on {lease.name} is now held by {lease.holder.display} with token "
        f"{lease.token}; token {token} is not valid.",
        EXIT_REFUSED,
    )


@cli.command()
@click.argument("name", required=False)
@json_option
@pass_context
def status(ctx: Context, name: str | None, as_json: bool) -> None:
    """Show current locks and claims, or those called NAME."""
    listing = ctx.run(lambda rt: rt.leases.status(name))
    if as_json:
        payload = {
            "now": listing.now_ms,
            "leases": [lease.to_dict() for lease in listing.leases],
            "corrupt": listing.corrupt,
        }
        click.echo(json.dumps(payload, indent=2))
        return
    ctx.show(*status_parts(ctx.settings, listing, list(LeaseKind), name is not None))


@cli.command()
@click.argument("name")
@click.option("-n", "--count", type=click.IntRange(1, 1000), help="How many events.")
@json_option
@pass_context
def history(ctx: Context, name: str, count: int | None, as_json: bool) -> None:
    """Show the latest events for the service or environment NAME."""
    events, now = ctx.run(lambda rt: rt.leases.history(name, count))
    if as_json:
        click.echo(json.dumps([event.to_dict() for event in events], indent=2))
        return
    ctx.show(*history_parts(name, events, now))


@cli.group()
def job() -> None:
    """Report job statuses (for pipelines)."""


@job.command("set")
@click.argument("name")
@click.option(
    "--status", "state", required=True, help="pending, running, succeeded, failed, or short text."
)
@click.option("--url", help="Link to the run.")
@click.option("--detail", help="One line of detail.")
@as_option
@pass_context
def job_set(
    ctx: Context, name: str, state: str, url: str | None, detail: str | None, user: str
) -> None:
    """Record the status of job NAME."""
    recorded = ctx.run(
        lambda rt: rt.jobs.set(name, state, updated_by=user, url=url, detail=detail)
    )
    click.echo(f"job {recorded.name}: {recorded.status}")


@job.command("rm")
@click.argument("name")
@as_option
@pass_context
def job_rm(ctx: Context, name: str, user: str) -> None:
    """Forget job NAME."""
    removed = ctx.run(lambda rt: rt.jobs.remove(name, removed_by=user))
    if not removed:
        fail(f"There is no job called {name.strip().lower()}; nothing changed.", EXIT_REFUSED)
    click.echo(f"job {name.lower()} removed")


@cli.command()
@json_option
@pass_context
def jobs(ctx: Context, as_json: bool) -> None:
    """Show job statuses."""
    listing = ctx.run(lambda rt: rt.jobs.list())
    if as_json:
        payload = {"jobs": [job.to_dict() for job in listing.jobs], "corrupt": listing.corrupt}
        click.echo(json.dumps(payload, indent=2))
        return
    ctx.show(*jobs_parts(listing))


@cli.command()
@as_option
@pass_context
def console(ctx: Context, user: str) -> None:
    """Chat with deploybot in this terminal (or from piped input)."""
    from adapters.runner import run_console

    name = _holder(user).user_id
    ctx.run(lambda rt: run_console(rt, user=name, zone=ctx.zone))


@cli.command()
@as_option
@pass_context
def run(ctx: Context, user: str) -> None:
    """Run the bot: Slack and/or Mattermost when configured, else the console."""
    from adapters.runner import PlatformConfigError, run_bot

    async def serve(rt: Runtime) -> None:
        try:
            await run_bot(rt, Secrets(), console_user=_holder(user).user_id, zone=ctx.zone)
        except PlatformConfigError as error:
            fail(str(error), EXIT_USAGE)

    ctx.run(serve)


@cli.group()
def server() -> None:
    """Manage the embedded Redis-compatible server."""


@server.command("status")
@pass_context
def server_status(ctx: Context) -> None:
    """Say whether the embedded server runs, and where its data lives; exit 3 if stopped.

    3 is both this CLI's "state store unavailable" and an init script's "not running", so
    `deploybot server status || ...` works as a check.
    """
    data_dir = ctx.settings.resolved_data_dir()
    try:
        running = server_running(data_dir)
    except EmbeddedSetupError as error:
        fail(str(error), EXIT_USAGE)
    except EmbeddedServerError as error:
        fail(str(error), EXIT_UNAVAILABLE)

    click.echo(f"embedded server {'running' if running else 'stopped'}; data in {data_dir}")
    if Secrets().redis_url or ctx.redis_url:
        click.echo("note: REDIS_URL is set, so deploybot uses that Redis, not this server")
    if not running:
        sys.exit(EXIT_UNAVAILABLE)


@server.command("stop")
@pass_context
def server_stop(ctx: Context) -> None:
    """Stop the embedded server (its data is kept and used again on the next start)."""
    data_dir = ctx.settings.resolved_data_dir()
    try:
        stopped = stop_server(data_dir)
    except EmbeddedSetupError as error:
        fail(str(error), EXIT_USAGE)
    except EmbeddedServerError as error:
        fail(str(error), EXIT_UNAVAILABLE)
    click.echo("embedded server stopped" if stopped else "embedded server was not running")


def _holder(user: str) -> Holder:
    """The holder a CLI or console user acts as; the same identity in both."""
    name = user.strip()
    if (
        not name
        or len(name) > 64
        or clean_text(name) != name
        or any(ch.isspace() or not ch.isprintable() for ch in name)
    ):
        fail(
            f"--as needs a name of 1 to 64 printable characters without spaces, not {user!r}.",
            EXIT_USAGE,
        )
    # For a person at a terminal; a pipeline would see it on every run.
    if any(ch.isupper() for ch in name) and sys.stderr.isatty():
        click.echo(
            f"deploybot: note that names are case-sensitive: {name!r} is not {name.lower()!r}.",
            err=True,
        )
    return Holder(CLI_PLATFORM, name, name)


def main() -> None:
    """Console-script entry point. Ctrl-C ends with the shell's usual 130, not 1 ("refused")."""
    try:
        cli(prog_name="deploybot", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("\ndeploybot: interrupted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
