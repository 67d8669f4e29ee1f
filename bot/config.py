"""Settings: non-secret ones from config.yaml, overridden by the environment; secrets from the
environment only.

Durations in the file are written the way people type them (`1h`, `7d`) and held here in
milliseconds.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
import yaml
from apscheduler.triggers.cron import CronTrigger
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)
from pytimeparse.timeparse import timeparse as parse_seconds

from bot.errors import InvalidName
from bot.model import Holder, LeaseKind
from bot.names import normalize_name
from bot.render import resolve_zone

DEFAULT_CONFIG_FILE = Path("config.yaml")
MAX_SETTING_SECONDS = 366 * 86_400


class ConfigError(Exception):
    """The configuration cannot be used; the message says which setting and why."""


def _duration_ms(value: Any) -> Any:
    """Accept `90s`, `30m`, `1h30m`, `7d` (or a number of seconds) and return milliseconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value * 1000)
    if isinstance(value, str):
        try:
            seconds = parse_seconds(value.strip())
        except OverflowError:
            seconds = math.inf
        if seconds is None or math.isnan(seconds) or seconds <= 0:
            raise ValueError(f"{value!r} is not a positive duration such as 30m, 2h or 7d")
        if seconds > MAX_SETTING_SECONDS:
            raise ValueError(f"{value!r} is longer than a year; use a shorter duration")
        return int(seconds * 1000)
    return value


def _split_list(value: Any) -> Any:
    """A list written as text: JSON (`["a","b"]`) or comma-separated (`a,b`)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError:
            raise ValueError("is neither a JSON list nor a comma-separated one") from None
    return [item.strip() for item in text.split(",") if item.strip()]


DurationMs = Annotated[int, BeforeValidator(_duration_ms), Field(gt=0)]
# Lease durations share the one-minute floor that typed durations have.
LeaseDurationMs = Annotated[
    int, BeforeValidator(_duration_ms), Field(ge=60_000, description="at least 1 minute")
]
# Lists from the environment may be comma-separated (DEPLOYBOT_ADMINS=local:a,slack:U1)
# or JSON. NoDecode stops pydantic-settings from JSON-decoding the variable first, which
# would refuse the comma-separated form before _split_list ever saw it.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_list)]
DurationList = Annotated[list[DurationMs], NoDecode, BeforeValidator(_split_list)]


class LeaseSettings(BaseModel):
    """Defaults and bounds for one kind of lease."""

    model_config = ConfigDict(extra="forbid")

    default_ttl: LeaseDurationMs
    max_ttl: LeaseDurationMs

    @model_validator(mode="after")
    def _default_within_maximum(self) -> LeaseSettings:
        """A default above the maximum would hand out leases longer than allowed."""
        if self.default_ttl > self.max_ttl:
            raise ValueError("default_ttl must not be longer than max_ttl")
        return self


_LEASE_DEFAULTS = {
    "lock": {"default_ttl": "1h", "max_ttl": "24h"},
    "claim": {"default_ttl": "4h", "max_ttl": "7d"},
}


class Settings(BaseSettings):
    """Everything non-secret; see config.yaml for each key's meaning."""

    model_config = SettingsConfigDict(
        env_prefix="DEPLOYBOT_", env_nested_delimiter="__", extra="forbid"
    )

    namespace: str = "deploybot"
    timezone: str = ""
    data_dir: Path | None = None
    admins: CommaList = Field(default_factory=list)
    services: CommaList = Field(default_factory=list)
    environments: CommaList = Field(default_factory=list)
    lock: LeaseSettings = Field(
        default_factory=lambda: LeaseSettings.model_validate(_LEASE_DEFAULTS["lock"])
    )
    claim: LeaseSettings = Field(
        default_factory=lambda: LeaseSettings.model_validate(_LEASE_DEFAULTS["claim"])
    )
    job_retention: DurationMs = Field(default=86_400_000, validate_default=False)
    events_max: int = Field(default=10_000, ge=100)
    history_count: int = Field(default=10, ge=1, le=100)
    max_message_length: int = Field(default=4000, ge=100)
    mattermost_ca_file: Path | None = None
    reminder_offsets: DurationList = Field(
        default_factory=lambda: [600_000], validate_default=False, max_length=10
    )
    handoff: Literal["auto", "notify"] = "auto"
    announce_channels: CommaList = Field(default_factory=list)
    announce_lock_release: bool = True
    digest_cron: str = ""
    sweep_interval_s: float = Field(default=0.5, gt=0, le=60)
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    log_format: Literal["text", "json"] = "text"
    redis_ca_file: Path | None = None
    allowed_channels: CommaList = Field(default_factory=list)
    allowed_users: CommaList = Field(default_factory=list)
    rate_limit_per_minute: int = Field(default=30, ge=0)

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        """The namespace becomes a Redis hash tag, so braces and spaces are not allowed."""
        return _valid_name(value, "namespace")

    @field_validator("lock", "claim", mode="before")
    @classmethod
    def _fill_lease_defaults(cls, value: Any, info: Any) -> Any:
        """Setting one value (say DEPLOYBOT_LOCK__MAX_TTL) keeps the built-in other one."""
        if isinstance(value, dict):
            return {**_LEASE_DEFAULTS[info.field_name], **value}
        return value

    @field_validator("announce_channels")
    @classmethod
    def _check_channels(cls, values: list[str]) -> list[str]:
        """Announcement channels are written `platform:channel_id`."""
        for value in values:
            platform, _, channel = value.partition(":")
            if platform not in ("slack", "mattermost", "local") or not channel:
                raise ValueError(
                    f"announce channel {value!r} must be platform:channel_id, e.g. slack:C024BE91L"
                )
        return values

    @field_validator("digest_cron")
    @classmethod
    def _check_cron(cls, value: str) -> str:
        """A digest schedule must be a valid five-field crontab line."""
        if value.strip():
            try:
                CronTrigger.from_crontab(value.strip())
            except ValueError as error:
                raise ValueError(f"digest_cron {value!r} is not a crontab line: {error}") from None
        return value.strip()

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        """An unknown zone would silently show wrong clock times, so refuse it up front."""
        if value and resolve_zone(value) is None:
            raise ValueError(f"{value!r} is not a known time zone; use a name like Europe/Berlin")
        return value

    @field_validator("services", "environments")
    @classmethod
    def _check_names(cls, values: list[str], info: Any) -> list[str]:
        """Listed names follow the same rules as names typed in chat."""
        what = "service" if info.field_name == "services" else "environment"
        return [_valid_name(value, what) for value in values]

    @field_validator("admins")
    @classmethod
    def _check_admins(cls, values: list[str]) -> list[str]:
        """Admins are written `platform:user_id`, the same identity holders carry."""
        for value in values:
            if ":" not in value:
                raise ValueError(
                    f"admin {value!r} needs its platform, e.g. slack:U024BE7LH or local:{value}"
                )
        return values

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Explicit values, then the environment, then the YAML file (if the class has one)."""
        environment = _EnvironmentSource(settings_cls)
        yaml_file = settings_cls.model_config.get("yaml_file")
        if yaml_file is None:
            return (init_settings, environment)
        return (init_settings, environment, YamlConfigSettingsSource(settings_cls))

    def lease(self, kind: LeaseKind) -> LeaseSettings:
        """The defaults and bounds for `kind`."""
        return self.lock if kind is LeaseKind.LOCK else self.claim

    def known_names(self, kind: LeaseKind) -> list[str]:
        """The configured services or environments; empty means any valid name works."""
        return self.services if kind is LeaseKind.LOCK else self.environments

    def is_admin(self, holder: Holder) -> bool:
        """Whether `holder` may force-release other people's leases."""
        return holder.identity in self.admins

    def resolved_data_dir(self) -> Path:
        """Where the embedded server keeps its files."""
        if self.data_dir is not None:
            return self.data_dir.expanduser()
        return Path(platformdirs.user_data_dir("deploybot")) / "redis"


class _EnvironmentSource(EnvSettingsSource):
    """The DEPLOYBOT_* variables; one whose value cannot be decoded is named in the error.

    pydantic-settings decodes a nested setting given whole (DEPLOYBOT_LOCK) as JSON before any
    validator runs, and its own error names neither the variable nor the config file.
    """

    def prepare_field_value(
        self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool
    ) -> Any:
        try:
            return super().prepare_field_value(field_name, field, value, value_is_complex)
        except json.JSONDecodeError as error:
            variable = f"{self.env_prefix}{field_name}".upper()
            msg = (
                f"Invalid setting in the environment: {variable} is not valid JSON ({error}); "
                f"give a JSON object, or set one key at a time as {variable}__<KEY>=value."
            )
            raise ConfigError(msg) from None


def _valid_name(value: str, what: str) -> str:
    """normalize_name, reporting a bad name the way pydantic reports any bad value."""
    try:
        return normalize_name(value, what)
    except InvalidName as error:
        raise ValueError(str(error)) from None


class Secrets(BaseSettings):
    """Credentials, read from the environment only and never logged."""

    model_config = SettingsConfigDict(extra="ignore")

    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL")
    redis_password: SecretStr | None = Field(default=None, validation_alias="REDIS_PASSWORD")
    slack_bot_token: SecretStr | None = Field(default=None, validation_alias="SLACK_BOT_TOKEN")
    slack_app_token: SecretStr | None = Field(default=None, validation_alias="SLACK_APP_TOKEN")
    slack_api_url: str | None = Field(default=None, validation_alias="SLACK_API_URL")
    mattermost_url: str | None = Field(default=None, validation_alias="MATTERMOST_URL")
    mattermost_token: SecretStr | None = Field(default=None, validation_alias="MATTERMOST_TOKEN")
    mattermost_login_id: str | None = Field(default=None, validation_alias="MATTERMOST_LOGIN_ID")
    mattermost_password: SecretStr | None = Field(
        default=None, validation_alias="MATTERMOST_PASSWORD"
    )

    @property
    def slack_configured(self) -> bool:
        """Whether any Slack credential is set (both are then required)."""
        return bool(self.slack_bot_token or self.slack_app_token)


def load_settings(path: Path | None = None) -> Settings:
    """Load settings from `path` (or $DEPLOYBOT_CONFIG, or ./config.yaml when present).

    An explicitly named file must exist; the default one is optional, so the bot runs with
    built-in defaults from any directory.
    """
    explicit = path or (
        Path(os.environ["DEPLOYBOT_CONFIG"]) if "DEPLOYBOT_CONFIG" in os.environ else None
    )
    if explicit is not None and not explicit.is_file():
        problem = "is a directory, not a file" if explicit.is_dir() else "does not exist"
        raise ConfigError(f"The config file {explicit} {problem}; check the path.")
    yaml_file = explicit or (DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None)

    try:
        if yaml_file is None:
            return Settings()
        content = yaml.safe_load(yaml_file.read_text())
        if content is not None and not isinstance(content, dict):
            raise ConfigError(
                f"The config file {yaml_file} must be a mapping of settings (key: value "
                "lines), not a list or a single value; see config.yaml in the repository."
            )
        from_file = type(
            "FileSettings",
            (Settings,),
            {"model_config": {**Settings.model_config, "yaml_file": yaml_file}},
        )
        return from_file()  # type: ignore[no-any-return]
    except ValidationError as error:
        raise ConfigError(_describe(error, yaml_file)) from None
    except (OSError, ValueError, yaml.YAMLError) as error:
        source = f"the config file {yaml_file}" if yaml_file else "the DEPLOYBOT_* variables"
        raise ConfigError(f"Cannot read {source}: {error}") from None


def _describe(error: ValidationError, yaml_file: Path | None) -> str:
    """One line per bad setting, naming the key and the problem."""
    where = (
        f" in {yaml_file} or DEPLOYBOT_* variables" if yaml_file else " in DEPLOYBOT_* variables"
    )
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown setting (secrets such as REDIS_URL come from the environment only)"
        problems.append(f"{key}: {message}")
    return f"Invalid settings{where}: " + "; ".join(problems)
