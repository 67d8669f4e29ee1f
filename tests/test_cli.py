"""Tests for bot.cli: the `deploybot` command as a pipeline runs it, exit codes included."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

DEPLOYBOT = Path(sys.executable).parent / "deploybot"

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (never the machine's 6379)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != 6379:
            return port


@dataclass(frozen=True)
class Cli:
    """Runs `deploybot` against the test server and namespace, from an empty directory."""

    env: dict[str, str]
    cwd: Path

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(DEPLOYBOT), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.cwd,
            timeout=60,
            check=False,
        )


@pytest.fixture
def cli(redis_server_url: str, namespace: str, tmp_path: Path) -> Cli:
    """The CLI on the test server; cwd holds no config.yaml, and no DEPLOYBOT_* leaks in."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("REDIS_URL", "REDIS_PASSWORD") and not key.startswith("DEPLOYBOT_")
    }
    # A data dir too long for a unix socket: if REDIS_URL were ever ignored, no embedded
    # server could start behind the test's back.
    env |= {
        "REDIS_URL": redis_server_url,
        "DEPLOYBOT_NAMESPACE": namespace,
        "DEPLOYBOT_DATA_DIR": str(tmp_path / ("unused-data-dir-" + "x" * 100)),
    }
    work = tmp_path / "work"
    work.mkdir()
    return Cli(env, work)


@pytest.fixture
def client(redis_server_url: str) -> Iterator[redis.Redis]:
    """A plain client to the test server, to look at or damage what the CLI stored."""
    with redis.Redis.from_url(redis_server_url, decode_responses=True) as client:
        yield client


@pytest.fixture
def admin_config(tmp_path: Path) -> Path:
    """A config file naming `local:root` as the only admin."""
    path = tmp_path / "admins.yaml"
    path.write_text('admins: ["local:root"]\n')
    return path


def lease_of(cli: Cli, name: str) -> dict[str, object] | None:
    """The lease called `name` as `status --json` reports it, or None."""
    result = cli("status", name, "--json")
    assert result.returncode == EXIT_OK, result.stderr
    leases = json.loads(result.stdout)["leases"]
    return leases[0] if leases else None


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    """Neither stream shows a Python traceback."""
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout


def corrupt_lock(client: redis.Redis, namespace: str, name: str) -> str:
    """Overwrite a lock's record and its index entry with text that is not JSON."""
    key = f"{{{namespace}}}:lease:lock:{name}"
    client.set(key, "{not json")
    client.hset(f"{{{namespace}}}:leases", f"lock:{name}", "{not json")
    return key


# lock


def test_lock_prints_the_lease_and_its_token(cli: Cli) -> None:
    """`lock` exits 0 and prints holder, note, expiry and the fencing token."""
    result = cli("lock", "backend", "--as", "alice", "--note", "INC-12", "--ttl", "30m")

    lease = lease_of(cli, "backend")
    assert result.returncode == EXIT_OK, result.stderr
    assert lease is not None
    assert re.fullmatch(
        rf"alice locked `backend` until .* \(in 30 minutes\): INC-12\. Token `{lease['token']}`\.",
        result.stdout.strip(),
    )


def test_lock_quiet_prints_only_the_token(cli: Cli) -> None:
    """`lock -q` prints the token alone, ready for `check --token`."""
    result = cli("lock", "backend", "--as", "alice", "-q")

    lease = lease_of(cli, "backend")
    assert result.returncode == EXIT_OK, result.stderr
    assert lease is not None
    assert result.stdout == f"{lease['token']}\n"


def test_lock_again_by_the_holder_keeps_the_token(cli: Cli) -> None:
    """Locking again as the holder exits 0 with the same token (a refresh)."""
    first = cli("lock", "backend", "--as", "alice", "-q")
    again = cli("lock", "backend", "--as", "alice", "-q")

    assert again.returncode == EXIT_OK
    assert again.stdout == first.stdout


def test_lock_again_without_ttl_never_shortens_the_lock(cli: Cli) -> None:
    """A pipeline re-running `lock` keeps a 2 h lock; an explicit --ttl sets the new expiry."""
    cli("lock", "backend", "--as", "alice", "--ttl", "2h", "-q")
    first = lease_of(cli, "backend")
    cli("lock", "backend", "--as", "alice", "-q")
    kept = lease_of(cli, "backend")
    cli("lock", "backend", "--as", "alice", "--ttl", "30m", "-q")
    cut = lease_of(cli, "backend")

    assert first is not None and kept is not None and cut is not None
    assert kept["expires_at"] == first["expires_at"]
    assert cut["expires_at"] < first["expires_at"] - 60 * 60_000


def test_a_capitalised_name_from_a_pipeline_gets_no_case_note(cli: Cli) -> None:
    """The case-sensitivity note is for people at a terminal, not every CI run."""
    result = cli("lock", "backend", "--as", "CI-Bot", "-q")

    assert result.returncode == EXIT_OK, result.stderr
    assert result.stderr == ""


def test_lock_json_describes_the_lease(cli: Cli) -> None:
    """`lock --json` prints the outcome and the whole lease as JSON."""
    result = cli("lock", "backend", "--as", "alice", "--ttl", "30m", "--note", "v1.2", "--json")

    data = json.loads(result.stdout)
    assert result.returncode == EXIT_OK, result.stderr
    assert data["outcome"] == "acquired"
    assert data["kind"] == "lock"
    assert data["name"] == "backend"
    assert data["holder"] == {"platform": "local", "user_id": "alice", "display": "alice"}
    assert data["note"] == "v1.2"
    assert data["expires_at"] - data["acquired_at"] == 30 * 60_000
    assert isinstance(data["token"], int)


def test_lock_held_by_someone_else_exits_1_with_the_holder_on_stderr(cli: Cli) -> None:
    """`lock` of a held service exits 1 and names holder and note on stderr."""
    cli("lock", "backend", "--as", "alice", "--note", "INC-12")
    before = lease_of(cli, "backend")

    result = cli("lock", "backend", "--as", "bob")

    assert result.returncode == EXIT_REFUSED
    assert result.stdout == ""
    assert "alice" in result.stderr
    assert "INC-12" in result.stderr
    assert lease_of(cli, "backend") == before
    assert_no_traceback(result)


def test_a_refused_lock_with_json_prints_json_too(cli: Cli) -> None:
    """A script asking for --json gets JSON on a refusal as well: why, the exit code, and
    the lease as it is held."""
    cli("lock", "backend", "--as", "alice", "--note", "INC-12")

    result = cli("lock", "backend", "--as", "bob", "--json")

    assert result.returncode == EXIT_REFUSED
    data = json.loads(result.stdout)
    assert data["outcome"] == "refused" and data["exit_code"] == EXIT_REFUSED
    assert "held by alice" in data["error"]
    assert data["lease"]["holder"]["user_id"] == "alice"
    assert data["lease"]["note"] == "INC-12"
    assert "alice" in result.stderr
    assert_no_traceback(result)


def test_quiet_and_json_together_are_refused_before_anything_changes(cli: Cli) -> None:
    """-q prints the token alone and --json a document: asking for both is a usage error."""
    result = cli("lock", "backend", "--as", "alice", "-q", "--json")

    assert result.returncode == EXIT_USAGE
    assert "either -q" in result.stderr
    assert lease_of(cli, "backend") is None


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["lock", "bad/name", "--as", "bob"], "bad/name"),
        (["lock", "a" * 65, "--as", "bob"], "64"),
        (["lock", "backend", "--as", "bob", "--ttl", "5x"], "5x"),
        (["lock", "backend", "--as", "bob", "--ttl", "0m"], "positive"),
        (["lock", "backend", "--as", "bob", "--ttl", "-5m"], "positive"),
        (["lock", "backend", "--as", "bob", "--ttl", "30s"], "too short"),
        (["lock", "backend", "--as", "bob", "--ttl", "2d"], "too long"),
        (["lock", "backend", "--as", "bob b"], "--as"),
        (["lock", "backend", "--as", "a\x1b[31mb"], "printable"),
        (["lock", "backend", "--as", "bob", "--note", "n" * 501], "note"),
        (["lock", "backend", "--bogus"], "--bogus"),
        (["lock", "--as", "bob"], "SERVICE"),
        (["claim", "staging-2", "--as", "bob", "--ttl", "8d"], "too long"),
        (["claim", "bad name", "--as", "bob"], "bad name"),
        (["extend", "backend", "--as", "bob", "--ttl", "0m"], "positive"),
        (["unlock", "bad/name", "--as", "bob"], "bad/name"),
        (["release", "{x}", "--as", "bob"], "{x}"),
        (["check", "backend", "--token", "abc"], "token"),
        (["history", "backend", "-n", "0"], "count"),
        (["status", "nope!"], "nope!"),
        (["lock", "1h", "--as", "alice"], "`deploybot lock <service> --ttl 1h`"),
        (["claim", "2h", "--as", "alice", "--wait", "5m"], "`deploybot claim <env> --ttl 2h`"),
        (["job", "set", "bad name", "--status", "ok", "--as", "ci"], "bad name"),
        (["job", "set", "build", "--status", "ok", "--url", "ftp://x", "--as", "ci"], "http"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_usage_and_validation_errors_exit_2_and_change_nothing(
    cli: Cli, client: redis.Redis, namespace: str, args: list[str], words: str
) -> None:
    """Invalid names, bad --ttl, unknown options and missing arguments exit 2."""
    before = sorted(client.keys(f"{{{namespace}}}:*"))

    result = cli(*args)

    assert result.returncode == EXIT_USAGE, result.stderr
    assert words in result.stderr
    assert result.stdout == ""
    assert_no_traceback(result)
    assert sorted(client.keys(f"{{{namespace}}}:*")) == before


@pytest.mark.parametrize(
    "args",
    [
        ["lock", "backend", "--as", "alice"],
        ["unlock", "backend", "--as", "alice"],
        ["extend", "backend", "--as", "alice"],
        ["claim", "staging-2", "--as", "alice", "--branch", "feature/x"],
        ["release", "staging-2", "--as", "alice"],
        ["status"],
        ["status", "--json"],
        ["history", "backend"],
        ["check", "backend", "--token", "1"],
        ["jobs"],
        ["job", "set", "build", "--status", "running", "--as", "ci"],
        ["job", "rm", "build"],
    ],
)
def test_unreachable_redis_exits_3_with_a_clear_message(cli: Cli, args: list[str]) -> None:
    """With Redis unreachable every state command exits 3, one clear line, no traceback
    (and with --json, the same as JSON on stdout)."""
    url = f"redis://127.0.0.1:{free_loopback_port()}/0"

    result = cli("--redis-url", url, *args)

    assert result.returncode == EXIT_UNAVAILABLE
    if "--json" in args:
        assert json.loads(result.stdout)["outcome"] == "unavailable"
    else:
        assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "deploybot: The state store is unavailable (could not connect), so nothing changed. "
        "Try again shortly."
    ]


# unlock, extend, claim, release


def test_unlock_exit_codes(cli: Cli) -> None:
    """unlock: 1 for a non-holder (holder on stderr), 0 for the holder, 1 once it is free."""
    cli("lock", "backend", "--as", "alice")

    by_bob = cli("unlock", "backend", "--as", "bob")
    by_alice = cli("unlock", "backend", "--as", "alice")
    again = cli("unlock", "backend", "--as", "alice")

    assert by_bob.returncode == EXIT_REFUSED
    assert "alice" in by_bob.stderr
    assert by_alice.returncode == EXIT_OK, by_alice.stderr
    assert by_alice.stdout.startswith("alice unlocked `backend` after ")
    assert again.returncode == EXIT_REFUSED
    assert "not held" in again.stderr
    assert lease_of(cli, "backend") is None


def test_extend_exit_codes(cli: Cli) -> None:
    """extend: 1 for a non-holder, 2 for a bad --ttl, 0 for the holder, 1 when nothing is held."""
    cli("lock", "backend", "--as", "alice", "--ttl", "5m")
    before = lease_of(cli, "backend")

    by_bob = cli("extend", "backend", "--as", "bob", "--ttl", "2h")
    bad_ttl = cli("extend", "backend", "--as", "alice", "--ttl", "5x")
    unchanged = lease_of(cli, "backend")
    by_alice = cli("extend", "backend", "--as", "alice", "--ttl", "2h")
    free = cli("extend", "frontend", "--as", "alice")

    after = lease_of(cli, "backend")
    assert by_bob.returncode == EXIT_REFUSED
    assert "alice" in by_bob.stderr
    assert bad_ttl.returncode == EXIT_USAGE
    assert unchanged == before
    assert by_alice.returncode == EXIT_OK, by_alice.stderr
    assert "(in 2 hours)" in by_alice.stdout
    assert before is not None and after is not None
    assert after["token"] == before["token"]
    assert after["expires_at"] > before["expires_at"]  # type: ignore[operator]
    assert free.returncode == EXIT_REFUSED


def test_claim_exit_codes(cli: Cli) -> None:
    """claim: 0 with branch and ttl, 1 for a second person (holder and branch on stderr)."""
    taken = cli("claim", "staging-2", "--as", "alice", "--branch", "feature/x", "--ttl", "2h")
    refused = cli("claim", "staging-2", "--as", "bob", "--branch", "feature/y")

    lease = lease_of(cli, "staging-2")
    assert taken.returncode == EXIT_OK, taken.stderr
    assert re.match(r"alice claimed `staging-2` until .*\(in 2 hours\): feature/x", taken.stdout)
    assert refused.returncode == EXIT_REFUSED
    assert "alice" in refused.stderr
    assert "feature/x" in refused.stderr
    assert lease is not None
    assert lease["kind"] == "claim"
    assert lease["note"] == "feature/x"


def test_claim_defaults_to_four_hours(cli: Cli) -> None:
    """A claim without --ttl lasts the claim default, 4 hours."""
    result = cli("claim", "staging-2", "--as", "alice", "--json")

    data = json.loads(result.stdout)
    assert data["expires_at"] - data["acquired_at"] == 4 * 3600_000


def test_release_exit_codes(cli: Cli) -> None:
    """release: 1 for a non-holder, 0 for the holder, 1 once it is free."""
    cli("claim", "staging-2", "--as", "alice")

    by_bob = cli("release", "staging-2", "--as", "bob")
    by_alice = cli("release", "staging-2", "--as", "alice")
    again = cli("release", "staging-2", "--as", "alice")

    assert by_bob.returncode == EXIT_REFUSED
    assert "alice" in by_bob.stderr
    assert by_alice.returncode == EXIT_OK, by_alice.stderr
    assert by_alice.stdout.startswith("alice released `staging-2`")
    assert again.returncode == EXIT_REFUSED


def test_as_defaults_to_deploybot_user(cli: Cli) -> None:
    """Without --as the holder is $DEPLOYBOT_USER."""
    env = cli.env | {"DEPLOYBOT_USER": "ci-bot"}

    result = Cli(env, cli.cwd)("lock", "backend", "--json")

    assert json.loads(result.stdout)["holder"]["user_id"] == "ci-bot"


# status and history


def test_status_text_lists_locks_and_claims(cli: Cli) -> None:
    """`status` prints each lock and claim with holder, note, time left and token."""
    token = cli("lock", "backend", "--as", "alice", "--note", "INC-12", "-q").stdout.strip()
    cli("claim", "staging-2", "--as", "bob", "--branch", "feature/x")

    result = cli("status")

    assert result.returncode == EXIT_OK
    assert "Deploy locks:" in result.stdout
    assert re.search(
        rf"`backend` — alice until .*\(in 1 hour\): INC-12 \(token {token}\)", result.stdout
    )
    assert "Staging claims:" in result.stdout
    assert re.search(r"`staging-2` — bob until .*\(in 4 hours\): feature/x", result.stdout)


def test_status_json_lists_every_lease(cli: Cli) -> None:
    """`status --json` is valid JSON with now, leases (all fields) and corrupt."""
    cli("lock", "backend", "--as", "alice", "--note", "INC-12")
    cli("claim", "staging-2", "--as", "bob")

    result = cli("status", "--json")

    data = json.loads(result.stdout)
    assert result.returncode == EXIT_OK
    assert set(data) == {"now", "leases", "corrupt"}
    assert data["corrupt"] == []
    by_name = {lease["name"]: lease for lease in data["leases"]}
    assert set(by_name) == {"backend", "staging-2"}
    fields = {"kind", "name", "holder", "note", "acquired_at", "expires_at", "token", "origin"}
    assert set(by_name["backend"]) == fields
    assert by_name["backend"]["kind"] == "lock"
    assert by_name["staging-2"]["kind"] == "claim"
    assert by_name["staging-2"]["holder"]["user_id"] == "bob"
    assert by_name["backend"]["expires_at"] > data["now"]


def test_status_of_one_name_shows_only_it(cli: Cli) -> None:
    """`status NAME` shows that name only."""
    cli("lock", "backend", "--as", "alice")
    cli("lock", "frontend", "--as", "alice")

    text = cli("status", "backend")
    data = json.loads(cli("status", "backend", "--json").stdout)

    assert "`backend`" in text.stdout
    assert "frontend" not in text.stdout
    assert [lease["name"] for lease in data["leases"]] == ["backend"]


def test_history_text_and_json_list_events_newest_first(cli: Cli) -> None:
    """`history` shows acquired, extended and released, newest first; --json the same."""
    cli("lock", "backend", "--as", "alice", "--note", "INC-12")
    cli("extend", "backend", "--as", "alice", "--ttl", "2h")
    cli("unlock", "backend", "--as", "alice")

    text = cli("history", "backend")
    data = json.loads(cli("history", "backend", "--json").stdout)

    assert text.returncode == EXIT_OK
    lines = text.stdout.strip().splitlines()
    assert "backend" in lines[0]
    assert [line.split(")", 1)[1].split()[0] for line in lines[1:]] == [
        "released",
        "extended",
        "acquired",
    ]
    assert [event["type"] for event in data] == ["released", "extended", "acquired"]
    assert {"id", "type", "kind", "name", "at", "data"} <= set(data[0])
    assert data[-1]["data"]["holder"]["user_id"] == "alice"
    assert data[-1]["data"]["note"] == "INC-12"
    assert data[0]["at"] >= data[-1]["at"]


def test_history_count_limits_the_events(cli: Cli) -> None:
    """`history -n 1` prints only the newest event."""
    cli("lock", "backend", "--as", "alice")
    cli("unlock", "backend", "--as", "alice")

    data = json.loads(cli("history", "backend", "-n", "1", "--json").stdout)

    assert [event["type"] for event in data] == ["released"]


# check


def test_check_passes_only_with_the_current_token(cli: Cli) -> None:
    """check: 0 with the lock's token, 1 with another, 1 once the lock is released."""
    token = cli("lock", "backend", "--as", "alice", "-q").stdout.strip()

    right = cli("check", "backend", "--token", token)
    wrong = cli("check", "backend", "--token", str(int(token) - 1))
    cli("unlock", "backend", "--as", "alice")
    after_unlock = cli("check", "backend", "--token", token)

    assert right.returncode == EXIT_OK, right.stderr
    assert token in right.stdout
    assert wrong.returncode == EXIT_REFUSED
    assert "not valid" in wrong.stderr
    assert after_unlock.returncode == EXIT_REFUSED
    assert "is held now" in after_unlock.stderr and "not valid" in after_unlock.stderr


def test_check_fails_once_someone_else_holds_the_lock(cli: Cli) -> None:
    """An old token fails after the lock changed hands, naming the new holder."""
    old = cli("lock", "backend", "--as", "alice", "-q").stdout.strip()
    cli("unlock", "backend", "--as", "alice")
    new = cli("lock", "backend", "--as", "bob", "-q").stdout.strip()

    result = cli("check", "backend", "--token", old)

    assert int(new) > int(old)
    assert result.returncode == EXIT_REFUSED
    assert "The lock on backend is now held by bob" in result.stderr


def test_check_names_a_claim_as_a_claim(cli: Cli) -> None:
    """A wrong token for a staging claim is refused in the words of a claim."""
    cli("claim", "staging-2", "--as", "alice", "-q")

    result = cli("check", "staging-2", "--token", "1")

    assert result.returncode == EXIT_REFUSED
    assert "The claim on staging-2 is now held by alice" in result.stderr


# jobs


def test_job_set_list_and_remove(cli: Cli) -> None:
    """job set, jobs, jobs --json and job rm work; removing an unknown job exits 1."""
    set_result = cli(
        "job",
        "set",
        "api/build#42",
        "--status",
        "running",
        "--url",
        "https://ci.example/42",
        "--detail",
        "step 3 of 5",
        "--as",
        "ci-bot",
    )
    text = cli("jobs")
    listing = json.loads(cli("jobs", "--json").stdout)
    removed = cli("job", "rm", "api/build#42")
    again = cli("job", "rm", "api/build#42")
    after = json.loads(cli("jobs", "--json").stdout)

    assert set_result.returncode == EXIT_OK, set_result.stderr
    assert set_result.stdout.strip() == "job api/build#42: running"
    assert re.search(r"`api/build#42` running — by ci-bot, .*: step 3 of 5", text.stdout)
    assert listing["corrupt"] == []
    [job] = listing["jobs"]
    assert job["name"] == "api/build#42"
    assert job["status"] == "running"
    assert job["url"] == "https://ci.example/42"
    assert job["detail"] == "step 3 of 5"
    assert job["updated_by"] == "ci-bot"
    assert isinstance(job["updated_at"], int)
    assert removed.returncode == EXIT_OK
    assert again.returncode == EXIT_REFUSED
    assert "no job" in again.stderr
    assert after["jobs"] == []


def test_jobs_with_none_reported(cli: Cli) -> None:
    """`jobs` with nothing recorded says so and exits 0."""
    result = cli("jobs")

    assert result.returncode == EXIT_OK
    assert result.stdout.strip() == "No jobs reported."


# force


def test_force_unlock_needs_an_admin_from_the_config(cli: Cli, admin_config: Path) -> None:
    """force-unlock: 1 for a non-admin (lock kept), 0 for an admin; history has who and why."""
    cli("lock", "backend", "--as", "alice")
    config = ["--config", str(admin_config)]

    by_bob = cli(*config, "force-unlock", "backend", "--as", "bob", "--reason", "stuck")
    kept = lease_of(cli, "backend")
    by_root = cli(*config, "force-unlock", "backend", "--as", "root", "--reason", "deploy stuck")
    history = json.loads(cli("history", "backend", "--json").stdout)

    assert by_bob.returncode == EXIT_REFUSED
    assert "admin" in by_bob.stderr
    assert kept is not None
    assert by_root.returncode == EXIT_OK, by_root.stderr
    assert lease_of(cli, "backend") is None
    assert history[0]["type"] == "forced"
    assert history[0]["data"]["forced_by"]["user_id"] == "root"
    assert history[0]["data"]["reason"] == "deploy stuck"
    assert history[0]["data"]["holder"]["user_id"] == "alice"


def test_force_release_by_an_admin_frees_a_claim(cli: Cli, admin_config: Path) -> None:
    """force-release by an admin exits 0 and frees the claim."""
    cli("claim", "staging-2", "--as", "alice")

    result = cli(
        "--config",
        str(admin_config),
        "force-release",
        "staging-2",
        "--as",
        "root",
        "--reason",
        "x",
    )

    assert result.returncode == EXIT_OK, result.stderr
    assert lease_of(cli, "staging-2") is None


def test_missing_config_file_exits_2(cli: Cli, tmp_path: Path) -> None:
    """A --config path that does not exist is a usage error naming the path."""
    missing = tmp_path / "nope.yaml"

    result = cli("--config", str(missing), "status")

    assert result.returncode == EXIT_USAGE
    assert str(missing) in result.stderr


def test_comma_separated_reminder_offsets_from_the_environment(cli: Cli) -> None:
    """DEPLOYBOT_REMINDER_OFFSETS=10m,5m is read as two offsets, not refused as bad JSON."""
    with_offsets = Cli(cli.env | {"DEPLOYBOT_REMINDER_OFFSETS": "10m,5m"}, cli.cwd)

    result = with_offsets("jobs")

    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout.strip() == "No jobs reported."


def test_undecodable_setting_variable_is_named(cli: Cli) -> None:
    """DEPLOYBOT_LOCK=abc exits 2 naming the variable, not a config file called None."""
    broken = Cli(cli.env | {"DEPLOYBOT_LOCK": "abc"}, cli.cwd)

    result = broken("jobs")

    assert result.returncode == EXIT_USAGE
    assert "DEPLOYBOT_LOCK is not valid JSON" in result.stderr
    assert "config file" not in result.stderr
    assert_no_traceback(result)


# corrupt records


@pytest.mark.parametrize(
    "args",
    [
        ["lock", "backend", "--as", "alice"],
        ["unlock", "backend", "--as", "alice"],
        ["extend", "backend", "--as", "alice"],
        ["check", "backend", "--token", "1"],
    ],
)
def test_corrupt_lease_exits_1_saying_corrupt(
    cli: Cli, client: redis.Redis, namespace: str, args: list[str]
) -> None:
    """A lease value that is not JSON: exit 1 with "corrupt", not a traceback; value kept."""
    key = corrupt_lock(client, namespace, "backend")

    result = cli(*args)

    assert result.returncode == EXIT_REFUSED
    assert "corrupt" in result.stderr
    assert_no_traceback(result)
    assert client.get(key) == "{not json"


def test_status_reports_a_corrupt_lease(cli: Cli, client: redis.Redis, namespace: str) -> None:
    """`status` lists a corrupt record instead of failing; --json names its key."""
    key = corrupt_lock(client, namespace, "backend")

    text = cli("status")
    data = json.loads(cli("status", "--json").stdout)

    assert text.returncode == EXIT_OK
    assert "corrupt" in text.stdout
    assert data["corrupt"] == [key]
    assert_no_traceback(text)


def test_force_unlock_clears_a_corrupt_lease(
    cli: Cli, client: redis.Redis, namespace: str, admin_config: Path
) -> None:
    """An admin's force-unlock clears a corrupt record, and the lock can be taken again."""
    corrupt_lock(client, namespace, "backend")

    forced = cli(
        "--config", str(admin_config), "force-unlock", "backend", "--as", "root", "--reason", "bad"
    )
    relock = cli("lock", "backend", "--as", "alice")

    assert forced.returncode == EXIT_OK, forced.stderr
    assert relock.returncode == EXIT_OK, relock.stderr


# the CLI and the console share state


def test_cli_lock_is_seen_and_released_from_the_console(cli: Cli) -> None:
    """A lock taken by the CLI shows in a console `status`, and the same user unlocks it there."""
    token = cli("lock", "backend", "--as", "alice", "--note", "from-ci", "-q").stdout.strip()

    console = cli("console", "--as", "alice", stdin="status\nunlock backend\n")

    assert console.returncode == EXIT_OK, console.stderr
    assert re.search(rf"`backend` — alice until .*: from-ci \(token {token}\)", console.stdout)
    assert "alice unlocked `backend`" in console.stdout
    assert lease_of(cli, "backend") is None


def test_console_lock_is_refused_to_another_cli_user(cli: Cli) -> None:
    """A lock taken in the console is held against a different CLI user."""
    cli("console", "--as", "alice", stdin="lock backend 30m from-chat\n")

    result = cli("lock", "backend", "--as", "bob")

    assert result.returncode == EXIT_REFUSED
    assert "alice" in result.stderr
    assert "from-chat" in result.stderr
