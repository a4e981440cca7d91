"""Processor configuration: YAML file, then environment variables, then checks.

Every problem is reported by key name through :class:`ConfigError`, never as a
stack trace from deep inside the processor.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE = Path("config.yaml")

ENV_VARS = {
    "SPARKLEM_BOOTSTRAP_SERVERS": "kafka.bootstrap.servers",
    "SPARKLEM_DATABASE_URL": "database.url",
    "SPARKLEM_CERTIFICATES_DIR": "certificates",
    "SPARKLEM_GROUP_ID": "kafka.group.id",
}

# librdkafka properties the processor owns: a config that sets them would break
# the exactly-once guarantee, so it is refused rather than silently overridden.
RESERVED_KAFKA_PROPERTIES = ("enable.auto.commit", "enable.auto.offset.store")


class ConfigError(ValueError):
    """A configuration problem, with the offending key in the message."""


@dataclass
class ProcessorSettings:
    batch_size: int = 500  # records per consume() call, and per database transaction
    poll_timeout_s: float = 0.2
    stats_interval_s: float = 30.0
    max_message_bytes: int = 1024 * 1024
    clock_skew_s: float = 300.0
    key_cache_size: int = 10_000  # unwrapped session keys kept, LRU by (kid, ek)
    registry_refresh_s: float = 5.0
    rejected_raw_max_bytes: int = 16 * 1024
    dead_letter_topic: str | None = None
    shutdown_timeout_s: float = 8.0
    topic_partitions: int = 6  # for topics the processor creates
    idle_assignment_warn_s: float = 60.0  # say so after this long without partitions


@dataclass
class Config:
    kafka: dict[str, Any] = field(default_factory=dict)
    database_url: str = ""
    certificates: Path = Path("certificates")
    plugins_dir: Path = PROJECT_ROOT / "plugins"
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)
    processor: ProcessorSettings = field(default_factory=ProcessorSettings)
    source: str = "defaults"  # where the config came from, for the start line

    @property
    def bootstrap_servers(self) -> str:
        return str(self.kafka["bootstrap.servers"])

    @property
    def group_id(self) -> str:
        return str(self.kafka["group.id"])

    def plugin_settings(self, name: str) -> dict[str, Any]:
        return dict(self.plugins.get(name) or {})

    def plugin_topic(self, name: str, default: str) -> str:
        """The plugin's topic: ``plugins.NAME.topic`` when set, else the manifest's."""
        return str(self.plugin_settings(name).get("topic") or default)

    def plugin_enabled(self, name: str) -> bool:
        return self.plugin_settings(name).get("enabled", True) is not False


TOP_LEVEL_KEYS = {"kafka", "database", "certificates", "plugins", "plugins_dir", "processor"}


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Read ``path`` (default ``./config.yaml`` when present), apply the environment, check.

    A ``path`` given explicitly must exist.
    """
    env = os.environ if env is None else env
    doc: dict[str, Any] = {}
    source = "defaults"
    if path is not None or DEFAULT_CONFIG_FILE.exists():
        file = Path(path) if path is not None else DEFAULT_CONFIG_FILE
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {file} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {file} must hold a mapping at the top level")
        doc = loaded or {}
        source = str(file)

    unknown = sorted(set(doc) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown key(s) in config: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(TOP_LEVEL_KEYS))})"
        )

    config = Config(source=source)
    config.kafka = _kafka(doc.get("kafka"))
    config.database_url = _database_url(doc.get("database"))
    if "certificates" in doc:
        config.certificates = Path(_string(doc["certificates"], "certificates"))
    if "plugins_dir" in doc:
        config.plugins_dir = Path(_string(doc["plugins_dir"], "plugins_dir"))
    config.plugins = _plugins(doc.get("plugins"))
    config.processor = _processor(doc.get("processor"))

    for var, key in ENV_VARS.items():
        value = env.get(var)
        if not value:
            continue
        if key.startswith("kafka."):
            config.kafka[key.removeprefix("kafka.")] = value
        elif key == "database.url":
            config.database_url = _check_url(value, var)
        elif key == "certificates":
            config.certificates = Path(value)
    return config


def _kafka(section: Any) -> dict[str, Any]:
    section = _mapping(section, "kafka")
    props: dict[str, Any] = {
        "bootstrap.servers": "localhost:9092",
        "group.id": "sparklem-processor",
    }
    for key, value in section.items():
        if not isinstance(key, str) or not re.fullmatch(r"[a-z][a-z0-9._-]*", key):
            raise ConfigError(f"kafka: {key!r} is not a librdkafka property name")
        if key in RESERVED_KAFKA_PROPERTIES:
            raise ConfigError(
                f"kafka.{key}: the processor manages this itself (offsets are committed "
                "only after the database transaction); remove it"
            )
        if not isinstance(value, str | int | float | bool):
            raise ConfigError(f"kafka.{key}: must be a string, number or boolean")
        props[key] = value
    return props


def _database_url(section: Any) -> str:
    section = _mapping(section, "database")
    unknown = sorted(set(section) - {"url"})
    if unknown:
        raise ConfigError(f"database: unknown key(s) {', '.join(unknown)} (known: url)")
    url = section.get("url") or f"sqlite:///{PROJECT_ROOT / 'db.sqlite3'}"
    return _check_url(_string(url, "database.url"), "database.url")


def _check_url(url: str, key: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ConfigError(f"{key}: {mask_url(url)!r} is not an SQLAlchemy URL") from None
    return url


def _plugins(section: Any) -> dict[str, dict[str, Any]]:
    section = _mapping(section, "plugins")
    result = {}
    for name, settings in section.items():
        result[str(name)] = _mapping(settings, f"plugins.{name}")
    return result


def _processor(section: Any) -> ProcessorSettings:
    section = _mapping(section, "processor")
    settings = ProcessorSettings()
    known = settings.__dataclass_fields__
    for key, value in section.items():
        if key not in known:
            raise ConfigError(f"processor: unknown key {key!r} (known: {', '.join(sorted(known))})")
        default = getattr(settings, key)
        if key == "dead_letter_topic":
            if value is not None and not isinstance(value, str):
                raise ConfigError("processor.dead_letter_topic: must be a topic name")
        elif isinstance(default, int) and (type(value) is not int or value <= 0):
            raise ConfigError(f"processor.{key}: must be a positive integer, got {value!r}")
        elif isinstance(default, float):
            if type(value) not in (int, float) or value <= 0:
                raise ConfigError(f"processor.{key}: must be a positive number, got {value!r}")
            value = float(value)
        setattr(settings, key, value)
    return settings


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: must be a mapping, got {type(value).__name__}")
    return value


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a non-empty string")
    return value


# The password runs to the "@" after which the host has no "@" up to "/", blank or end:
# it may hold "@" and "/" unencoded (SQLAlchemy's own URL parser accepts "/" there).
_PASSWORD_IN_URL = re.compile(
    r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)\S*?@(?=[^@/\s]*(?:[/\s]|$))"
)


def mask_url(text: str) -> str:
    """Replace the password of every URL in ``text`` with ``***``."""
    return _PASSWORD_IN_URL.sub(r"\g<head>***@", text)
