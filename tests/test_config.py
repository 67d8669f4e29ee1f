"""Tests for bot.config: settings from a YAML file, overridden by DEPLOYBOT_* variables."""

from __future__ import annotations

import json
import os
import typing
from pathlib import Path

import pytest

from bot.config import ConfigError, Settings, load_settings
from bot.model import Holder, LeaseKind

REPO_ROOT = Path(__file__).resolve().parent.parent
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

FULL_CONFIG = """\
namespace: acme-deploys
timezone: Europe/Berlin
admins: [slack:U024BE7LH, local:root]
services: [Backend, frontend]
environments: [staging-1, staging-2]
lock:
  default_ttl: 30m
  max_ttl: 12h
claim:
  default_ttl: 2h
  max_ttl: 3d
job_retention: 2d
events_max: 5000
history_count: 20
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DEPLOYBOT_* variable of the machine, and no ./config.yaml, leaks into a test."""
    for name in list(os.environ):
        if name.startswith("DEPLOYBOT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write_config(tmp_path: Path, text: str, name: str = "deploybot.yaml") -> Path:
    """Write a config file and return its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_values_are_read_from_the_file(tmp_path: Path) -> None:
    """Every setting in the file is read, names normalized and durations in milliseconds."""
    settings = load_settings(write_config(tmp_path, FULL_CONFIG))

    assert settings.namespace == "acme-deploys"
    assert settings.timezone == "Europe/Berlin"
    assert settings.services == ["backend", "frontend"]
    assert settings.environments == ["staging-1", "staging-2"]
    assert (settings.lock.default_ttl, settings.lock.max_ttl) == (30 * MINUTE_MS, 12 * HOUR_MS)
    assert (settings.claim.default_ttl, settings.claim.max_ttl) == (2 * HOUR_MS, 3 * DAY_MS)
    assert settings.job_retention == 2 * DAY_MS
    assert (settings.events_max, settings.history_count) == (5000, 20)
    assert settings.is_admin(Holder("slack", "U024BE7LH", "Pat"))
    assert not settings.is_admin(Holder("slack", "U999", "Sam"))
    assert settings.known_names(LeaseKind.LOCK) == ["backend", "frontend"]


def test_defaults_without_any_file() -> None:
    """With no file at all the built-in defaults apply: 1h/24h locks, 4h/7d claims."""
    settings = load_settings()

    assert settings.namespace == "deploybot"
    assert (settings.lock.default_ttl, settings.lock.max_ttl) == (HOUR_MS, DAY_MS)
    assert (settings.claim.default_ttl, settings.claim.max_ttl) == (4 * HOUR_MS, 7 * DAY_MS)
    assert settings.services == settings.environments == settings.admins == []


def test_config_yaml_in_the_working_directory_is_used(tmp_path: Path) -> None:
    """Without an explicit path, ./config.yaml is read when present."""
    write_config(tmp_path, "namespace: from-cwd\n", name="config.yaml")

    assert load_settings().namespace == "from-cwd"


def test_deploybot_config_variable_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$DEPLOYBOT_CONFIG points at the file to read."""
    path = write_config(tmp_path, "namespace: from-variable\n", name="elsewhere.yaml")
    monkeypatch.setenv("DEPLOYBOT_CONFIG", str(path))

    assert load_settings().namespace == "from-variable"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DEPLOYBOT_LOCK__DEFAULT_TTL replaces the file's value and keeps its sibling."""
    path = write_config(tmp_path, FULL_CONFIG)
    monkeypatch.setenv("DEPLOYBOT_LOCK__DEFAULT_TTL", "2h")

    settings = load_settings(path)

    assert settings.lock.default_ttl == 2 * HOUR_MS
    assert settings.lock.max_ttl == 12 * HOUR_MS


def test_environment_overrides_one_value_of_a_default_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DEPLOYBOT_LOCK__DEFAULT_TTL works when the file has no lock section (max stays 24h)."""
    path = write_config(tmp_path, "services: [backend]\n")
    monkeypatch.setenv("DEPLOYBOT_LOCK__DEFAULT_TTL", "2h")

    settings = load_settings(path)

    assert settings.lock.default_ttl == 2 * HOUR_MS
    assert settings.lock.max_ttl == DAY_MS


def test_environment_overrides_a_top_level_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DEPLOYBOT_NAMESPACE replaces the namespace from the file."""
    path = write_config(tmp_path, FULL_CONFIG)
    monkeypatch.setenv("DEPLOYBOT_NAMESPACE", "from-env")

    assert load_settings(path).namespace == "from-env"


# Every list setting, given in the environment comma-separated and as JSON, with what it
# reads as. A list setting missing here fails test_every_list_setting_is_covered.
LIST_VARIABLES = {
    "admins": ("local:alice, slack:U1", ["local:alice", "slack:U1"]),
    "services": ("backend,API", ["backend", "api"]),
    "environments": ("staging-1,staging-2", ["staging-1", "staging-2"]),
    "announce_channels": ("slack:C1,mattermost:m2", ["slack:C1", "mattermost:m2"]),
    "allowed_channels": ("slack:C1,local:console", ["slack:C1", "local:console"]),
    "allowed_users": ("slack:U1,local:alice", ["slack:U1", "local:alice"]),
    "reminder_offsets": ("10m,5m", [10 * MINUTE_MS, 5 * MINUTE_MS]),
}


def test_every_list_setting_is_covered() -> None:
    """The comma and JSON tests below cover each list-valued setting there is."""
    lists = {
        name
        for name, field in Settings.model_fields.items()
        if typing.get_origin(field.annotation) is list
    }

    assert lists == set(LIST_VARIABLES)


@pytest.mark.parametrize("field", sorted(LIST_VARIABLES))
def test_list_settings_can_be_comma_separated_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, field: str
) -> None:
    """DEPLOYBOT_<LIST>=a,b reads as a list, as the README promises for every list."""
    text, expected = LIST_VARIABLES[field]
    monkeypatch.setenv(f"DEPLOYBOT_{field.upper()}", text)

    assert getattr(load_settings(), field) == expected


@pytest.mark.parametrize("field", sorted(LIST_VARIABLES))
def test_list_settings_can_be_json_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, field: str
) -> None:
    """DEPLOYBOT_<LIST>='["a","b"]' reads as the same list as the comma-separated form."""
    text, expected = LIST_VARIABLES[field]
    items = [item.strip() for item in text.split(",")]
    monkeypatch.setenv(f"DEPLOYBOT_{field.upper()}", json.dumps(items))

    assert getattr(load_settings(), field) == expected


def test_a_single_reminder_offset_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """DEPLOYBOT_REMINDER_OFFSETS=10m, one value without a comma, is a list of one."""
    monkeypatch.setenv("DEPLOYBOT_REMINDER_OFFSETS", "10m")

    assert load_settings().reminder_offsets == [10 * MINUTE_MS]


@pytest.mark.parametrize("with_file", [False, True], ids=["no-file", "config-file"])
def test_undecodable_variable_is_named_not_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_file: bool
) -> None:
    """DEPLOYBOT_LOCK=abc is reported as that variable, not as a config file that is fine."""
    path = write_config(tmp_path, FULL_CONFIG) if with_file else None
    monkeypatch.setenv("DEPLOYBOT_LOCK", "abc")

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    message = str(caught.value)
    assert "DEPLOYBOT_LOCK " in message and "DEPLOYBOT_LOCK__<KEY>" in message
    assert "config file" not in message and "None" not in message


def test_a_whole_section_can_be_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """DEPLOYBOT_LOCK as a JSON object sets that section; a key left out keeps its default."""
    monkeypatch.setenv("DEPLOYBOT_LOCK", '{"max_ttl": "12h"}')

    settings = load_settings()

    assert (settings.lock.default_ttl, settings.lock.max_ttl) == (HOUR_MS, 12 * HOUR_MS)


def test_unknown_key_is_named(tmp_path: Path) -> None:
    """An unknown key such as redis_url is refused, and the message names it."""
    path = write_config(tmp_path, "redis_url: redis://example:6379/0\n")

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    assert "redis_url" in str(caught.value)
    assert "environment" in str(caught.value)


def test_unknown_nested_key_is_named(tmp_path: Path) -> None:
    """An unknown key inside a lease section is refused with its dotted path."""
    path = write_config(tmp_path, "lock:\n  default_ttl: 1h\n  max_ttl: 2h\n  maximum: 3h\n")

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    assert "lock.maximum" in str(caught.value)


@pytest.mark.parametrize(
    "value",
    ["soon", "-5m", "0s", "'" + "9" * 400 + ".5s'"],
    ids=["word", "negative", "zero", "huge"],
)
def test_bad_duration_names_the_key(tmp_path: Path, value: str) -> None:
    """A duration that is malformed or not positive is refused, naming the key."""
    path = write_config(tmp_path, f"lock:\n  default_ttl: {value}\n  max_ttl: 24h\n")

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    assert "lock.default_ttl" in str(caught.value)


def test_default_above_maximum_is_refused(tmp_path: Path) -> None:
    """A default duration longer than the maximum is refused, naming the section."""
    path = write_config(tmp_path, "claim:\n  default_ttl: 2d\n  max_ttl: 1d\n")

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    assert "claim" in str(caught.value)


def test_more_than_ten_reminder_offsets_are_refused(tmp_path: Path) -> None:
    """Each lease has room for ten reminders; an eleventh offset is named as too many."""
    offsets = "".join(f"  - {minutes}m\n" for minutes in range(1, 12))
    path = write_config(tmp_path, f"reminder_offsets:\n{offsets}")

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    assert "reminder_offsets" in str(caught.value)
    assert "10" in str(caught.value)


def test_broken_yaml_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not valid YAML raises ConfigError naming the file."""
    path = write_config(tmp_path, "services: [backend\nlock: {default_ttl: 1h\n")

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    assert str(path) in str(caught.value)


def test_admin_without_platform_is_refused(tmp_path: Path) -> None:
    """An admin written without `platform:` is refused with an example of the right form."""
    path = write_config(tmp_path, "admins: [U024BE7LH]\n")

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    assert "admins" in str(caught.value)
    assert "slack:U024BE7LH" in str(caught.value)


@pytest.mark.parametrize("line", ["services: [back end]", "namespace: '{evil}'"])
def test_invalid_names_in_config_are_refused(tmp_path: Path, line: str) -> None:
    """Configured names and the namespace follow the safe-name rules."""
    path = write_config(tmp_path, line + "\n")

    with pytest.raises(ConfigError):
        load_settings(path)


def test_missing_explicit_file_is_a_config_error(tmp_path: Path) -> None:
    """A named file that does not exist is an error, not a silent fall-back to defaults."""
    missing = tmp_path / "nope.yaml"

    with pytest.raises(ConfigError) as caught:
        load_settings(missing)

    assert str(missing) in str(caught.value)


def test_repository_config_loads() -> None:
    """The config.yaml shipped at the repository root is valid."""
    shipped = REPO_ROOT / "config.yaml"

    settings = load_settings(shipped)

    assert settings.model_dump() == Settings().model_dump(), "it documents the defaults"
