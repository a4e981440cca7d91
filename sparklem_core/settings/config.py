"""Processor configuration: YAML file, then environment variables, then the schema.

The file's layout is declared once (:class:`ConfigFile`, :class:`ProcessorSettings`)
and validated strictly by :mod:`sparklem_core.settings.validation`; the environment's values go
through the same checks. Every problem is one :class:`ConfigError` line naming the key,
never a stack trace and never a secret. Secrets the configuration holds are masked in
every log line by :class:`SecretFilter`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, model_validator

from sparklem_core.plugin_host import PluginHost, default_plugins_dir
from sparklem_core.settings.kafka import (
    KafkaName,
    KafkaPropertyError,
    KafkaValue,
    check_properties,
)
from sparklem_core.settings.masking import (  # noqa: F401  # re-exported: part of this module's API
    SECRET_NAME_RE,
    SecretFilter,
    mask_secrets,
    mask_url,
    remember_secret,
)
from sparklem_core.settings.validation import (
    STRICT,
    TOPIC_PATTERN,
    SchemaError,
    YamlRefused,
    load_yaml,
    plugin_settings,
    validate,
)

DEFAULT_CONFIG_FILE = Path("config.yaml")
DEFAULT_DATABASE_FILE = Path("db.sqlite3")  # relative to the current directory

ENV_VARS = {
    "SPARKLEM_BOOTSTRAP_SERVERS": "kafka.bootstrap.servers",
    "SPARKLEM_DATABASE_URL": "database.url",
    "SPARKLEM_CERTIFICATES_DIR": "certificates",
    "SPARKLEM_GROUP_ID": "kafka.group.id",
    "SPARKLEM_HTTP_LISTEN": "http.listen",
    "SPARKLEM_READ_TOKENS": "serve.read_tokens",  # comma-separated
    "SPARKLEM_ADMIN_TOKENS": "serve.admin_tokens",
}
LIST_ENV_VARS = ("SPARKLEM_READ_TOKENS", "SPARKLEM_ADMIN_TOKENS")

KAFKA_DEFAULTS = {"bootstrap.servers": "localhost:9092", "group.id": "sparklem-processor"}
# librdkafka properties the processor owns: a config that sets them would break
# the exactly-once guarantee, so it is refused rather than silently overridden.
RESERVED_KAFKA_PROPERTIES = ("enable.auto.commit", "enable.auto.offset.store")


class ConfigError(ValueError):
    """A configuration problem, with the offending key in the message."""


def _path(value: str) -> str:
    if "\0" in value:
        raise ValueError("must not contain a NUL character")
    return value


def _database_url(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        # The URL itself is not repeated: it may hold a password.
        raise ValueError(
            "not an SQLAlchemy URL (dialect[+driver]://user:password@host[:port]/database)"
        ) from None
    return url


_DURATION_RE = re.compile(r"([1-9][0-9]{0,6})([dhm])")
_DURATION_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
#: Longer than any sensible retention, short enough that ``now - duration`` cannot overflow.
MAX_RETENTION = timedelta(days=36500)
#: Tables bounded out of the box; ``retention: {TABLE: 0}`` keeps one forever.
DEFAULT_RETENTION = {
    "rejected_messages": "30d",
    "rejected_records": "30d",
    # Longer than the quarantine: a copy of a redriven message still quarantined (or
    # restored from a backup) must find the row that says it was stored.
    "sparklem_redriven": "90d",
    "sparklem_feed": "1d",  # the stored events tail and /stream resume from
}


def parse_duration(value: object) -> timedelta | None:
    """``30d``, ``12h``, ``90m`` as a timedelta; ``0`` or ``"0"`` (keep forever) as None."""
    if isinstance(value, int) and not isinstance(value, bool) and value == 0 or value == "0":
        return None
    match = _DURATION_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError("must be a duration like 30d, 12h or 90m, or 0 to keep forever")
    duration = timedelta(**{_DURATION_UNITS[match[2]]: int(match[1])})
    if duration > MAX_RETENTION:
        raise ValueError(f"must be at most {MAX_RETENTION.days}d")
    return duration


def format_duration(duration: timedelta) -> str:
    """The shortest of ``30d``, ``12h``, ``90m`` that says ``duration`` exactly."""
    minutes = int(duration.total_seconds()) // 60
    for unit, size in (("d", 1440), ("h", 60)):
        if minutes % size == 0:
            return f"{minutes // size}{unit}"
    return f"{minutes}m"


Duration = Annotated[Any, AfterValidator(parse_duration)]
PathText = Annotated[str, StringConstraints(min_length=1), AfterValidator(_path)]
TopicName = Annotated[str, StringConstraints(pattern=TOPIC_PATTERN)]


class ProcessorSettings(BaseModel):
    """``processor:`` in config.yaml."""

    model_config = STRICT

    batch_size: int = Field(
        500, gt=0, le=100_000, description="records per consume() call and per transaction"
    )
    batch_max_bytes: int = Field(
        8 * 1024 * 1024,
        gt=0,
        le=1024 * 1024 * 1024,
        description="record bytes per transaction (at least one record)",
    )
    poll_timeout_s: float = Field(0.2, gt=0, le=60, description="longest wait of one consume()")
    stats_interval_s: float = Field(
        30.0, gt=0, le=86400, description="seconds between stats log lines"
    )
    max_message_bytes: int = Field(
        1024 * 1024, gt=0, le=64 * 1024 * 1024, description="larger records: too_large"
    )
    clock_skew_s: float = Field(
        300.0, gt=0, le=366 * 86400, description="a ts further in the future: clock_skew"
    )
    key_cache_size: int = Field(
        10_000, gt=0, le=10_000_000, description="unwrapped session keys kept, LRU by (kid, ek)"
    )
    registry_refresh_s: float = Field(
        5.0, gt=0, le=3600, description="how often enrollments and revocations are re-read"
    )
    rejected_raw_max_bytes: int = Field(
        16 * 1024, gt=0, le=64 * 1024 * 1024, description="rejected_messages.raw is cut beyond"
    )
    dead_letter_topic: TopicName | None = Field(
        None, description="also publish every rejected record there"
    )
    shutdown_timeout_s: float = Field(
        8.0,
        gt=0,
        le=3600,
        description="longest wait to leave the group at a stop (half of it to rejoin the "
        "group and let that rebalance finish, the rest for the Kafka consumer to close)",
    )
    topic_partitions: int = Field(
        6, gt=0, le=100_000, description="partitions of topics the processor creates"
    )
    idle_assignment_warn_s: float = Field(
        60.0, gt=0, le=86400, description="a processor without partitions this long says so"
    )
    prune_interval_s: float = Field(
        300.0, gt=0, le=86400, description="seconds between the background pruner's passes"
    )
    prune_batch_rows: int = Field(
        20_000,
        gt=0,
        le=1_000_000,
        description="most rows the pruner deletes per transaction; a table's batches "
        "start at 100 rows and double while quick",
    )
    prune_batch_s: float = Field(
        0.25,
        gt=0,
        le=60,
        description="about the longest a pruner's transaction stays open (on SQLite, "
        "holding the writer lock): a slower batch makes the next one smaller",
    )
    prune_busy_fraction: float = Field(
        0.1,
        gt=0,
        le=1,
        description="most of the database's time the pruner takes: after each batch it "
        "rests (1/fraction - 1) times as long as the batch took; raise it if the pruner "
        "falls behind what arrives",
    )
    prune_lease_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="a pruner that stops renewing its lease (crashed) is taken over after this",
    )


DEFAULT_HTTP_PORT = 9500  # beside Prometheus exporters' range, clear of OTel's 9464


def check_listen(value: str) -> str:
    """``HOST:PORT`` (port 1-65535) or ``""``; ``ValueError`` otherwise."""
    if value == "":
        return value
    host, sep, port = value.rpartition(":")
    odd_host = not host or any(c.isspace() or c == "\0" for c in host)
    if not sep or odd_host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError('must be "HOST:PORT" (port 1-65535), or "" for no HTTP endpoint')
    return value


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as (host, port); the config checked its form."""
    host, _, port = listen.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


class HttpSettings(BaseModel):
    """``http:`` in config.yaml: the processor's /metrics, /healthz and /readyz."""

    model_config = STRICT

    listen: Annotated[str, AfterValidator(check_listen)] = Field(
        f"127.0.0.1:{DEFAULT_HTTP_PORT}",
        description='HOST:PORT of /metrics, /healthz, /readyz; "" turns the endpoint off',
    )
    ready_max_lag_s: float = Field(
        300.0, gt=0, le=366 * 86400, description="/readyz fails while lag exceeds this"
    )
    alive_max_s: float = Field(
        120.0, gt=0, le=86400, description="/healthz fails when the loop has not turned this long"
    )

    @property
    def explicit_listen(self) -> bool:
        """Whether ``listen`` was configured (its default port being taken is only a warning)."""
        return "listen" in self.model_fields_set


DEFAULT_SERVE_PORT = 8620  # the read API and dashboard: python3 main.py serve


def _token(value: str) -> str:
    if len(value) < 16 or any(c.isspace() or c == "," or not c.isprintable() for c in value):
        raise ValueError("a token must be at least 16 printable characters, no spaces or commas")
    return value


Token = Annotated[str, AfterValidator(_token)]


class ServeSettings(BaseModel):
    """``serve:`` in config.yaml: the read API and dashboard (``python3 main.py serve``)."""

    model_config = STRICT

    listen: Annotated[str, AfterValidator(check_listen)] = Field(
        f"127.0.0.1:{DEFAULT_SERVE_PORT}",
        description="HOST:PORT of the API and dashboard; anything but loopback needs tokens",
    )
    read_tokens: list[Token] = Field(
        [], description="bearer tokens that may read (env SPARKLEM_READ_TOKENS, comma-separated)"
    )
    admin_tokens: list[Token] = Field(
        [],
        description="bearer tokens that may also delete an agent's data "
        "(env SPARKLEM_ADMIN_TOKENS, comma-separated)",
    )
    cors_origins: list[str] = Field(
        [], description="origins allowed to call the API from a browser; default none"
    )
    audit_log: PathText | None = Field(
        None, description="file admin actions are appended to (JSON lines); default: the log"
    )
    stream_keepalive_s: float = Field(
        15.0, gt=0, le=3600, description="seconds between keep-alive comments on /stream"
    )
    stream_poll_s: float = Field(
        0.2, gt=0, le=60, description="how often the shared feed reader looks for new events"
    )
    client_buffer: int = Field(
        4000,
        gt=0,
        le=1_000_000,
        description="events (of those it asked for) queued per /stream client; more: dropped",
    )

    @property
    def tokens(self) -> bool:
        """Whether any token is configured (without, the API is open, on loopback only)."""
        return bool(self.read_tokens or self.admin_tokens)


class FleetSettings(BaseModel):
    """``fleet:`` in config.yaml: what ``sparklem agents`` calls silent, and how often the
    processor counts agents by state."""

    model_config = STRICT

    silent_after_s: float | None = Field(
        None,
        gt=0,
        le=366 * 86400,
        description="an agent without a message this long is silent; default: three times "
        "its shortest collection interval, recorded at enrollment",
    )
    count_every_s: float = Field(
        30,
        gt=0,
        le=86400,
        description="how often the processor counts agents by state for /metrics "
        "(sparklem_agents): one read of the inventory and enrollment tables",
    )


class DatabaseSection(BaseModel):
    """``database:`` in config.yaml."""

    model_config = STRICT

    url: Annotated[PathText, AfterValidator(_database_url)] | None = Field(
        None, description="any SQLAlchemy URL; default: ./db.sqlite3 (SQLite)"
    )


class PluginSection(BaseModel):
    """``plugins.NAME``: the core keys here; the plugin's own once it is loaded."""

    model_config = {**STRICT, "extra": "allow"}

    enabled: bool = Field(True, description="false: the plugin is not loaded")
    topic: TopicName | None = Field(None, description="its Kafka topic (default sparklem.NAME)")


class ConfigFile(BaseModel):
    """The processor's config.yaml."""

    model_config = STRICT

    kafka: dict[KafkaName, KafkaValue] | None = Field(
        None, description="librdkafka consumer properties, passed through"
    )
    database: DatabaseSection | None = None
    certificates: PathText = Field("certificates", description="server keys, agents/, revoked/")
    plugins_dir: PathText | None = Field(
        None, description="directory plugins are loaded from; default: ./plugins if present"
    )
    plugins: dict[str, PluginSection | None] | None = Field(None, description="per plugin")
    processor: ProcessorSettings | None = None
    http: HttpSettings | None = None
    fleet: FleetSettings | None = None
    serve: ServeSettings | None = None
    retention: dict[str, Duration] | None = Field(
        None,
        description="TABLE: how long rows are kept (30d, 12h, 90m; 0: forever); default "
        + ", ".join(f"{t} {d}" for t, d in DEFAULT_RETENTION.items()),
    )

    @model_validator(mode="after")
    def _reserved(self) -> ConfigFile:
        for name in RESERVED_KAFKA_PROPERTIES:
            if name in (self.kafka or {}):
                raise ValueError(
                    f"kafka.{name}: the processor manages this itself (offsets are committed "
                    "only after the database transaction); remove it"
                )
        try:
            check_properties({**KAFKA_DEFAULTS, **(self.kafka or {})}, "consumer")
        except KafkaPropertyError as exc:
            raise ValueError(exc.under("kafka.")) from None
        return self


@dataclass
class Config:
    kafka: dict[str, Any] = field(default_factory=dict)
    database_url: str = ""
    certificates: Path = Path("certificates")
    plugins_dir: Path | None = None
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)
    processor: ProcessorSettings = field(default_factory=ProcessorSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    fleet: FleetSettings = field(default_factory=FleetSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    #: How long each bounded table keeps rows; tables kept forever are absent.
    retention: dict[str, timedelta] = field(default_factory=lambda: _retention(DEFAULT_RETENTION))
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


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Read ``path`` (default ``./config.yaml`` when present), apply the environment, check.

    A ``path`` given explicitly must exist.
    """
    env = os.environ if env is None else env
    doc: dict[Any, Any] = {}
    source = "defaults"
    if path is not None or DEFAULT_CONFIG_FILE.exists():
        file = Path(path) if path is not None else DEFAULT_CONFIG_FILE
        doc = _read(file)
        source = str(file)
    labels = {}
    for var, key in ENV_VARS.items():
        value = env.get(var)
        if value:
            _override(doc, key, value.split(",") if var in LIST_ENV_VARS else value)
            labels[key] = var
    try:
        parsed = validate(ConfigFile, doc, labels=labels)
    except SchemaError as exc:
        raise ConfigError(str(exc)) from None
    database_url = (parsed.database.url if parsed.database else None) or (
        f"sqlite:///{DEFAULT_DATABASE_FILE.resolve()}"
    )
    config = Config(
        kafka={**KAFKA_DEFAULTS, **(parsed.kafka or {})},
        database_url=database_url,
        certificates=Path(parsed.certificates),
        plugins_dir=Path(parsed.plugins_dir) if parsed.plugins_dir else default_plugins_dir(),
        plugins={str(n): dict(s or {}) for n, s in (doc.get("plugins") or {}).items()},
        processor=parsed.processor or ProcessorSettings(),
        http=parsed.http or HttpSettings(),
        fleet=parsed.fleet or FleetSettings(),
        serve=parsed.serve or ServeSettings(),
        retention=_retention({**DEFAULT_RETENTION, **(parsed.retention or {})}),
        source=source,
    )
    remember_secrets(config)
    return config


def load_plugins(config: Config) -> PluginHost:
    """Load the plugins and check every ``plugins.NAME`` against its declaration.

    A section for a plugin that is not installed is refused. Afterwards
    ``config.plugins`` holds each loaded plugin's settings with their defaults.
    """
    host = PluginHost(config.plugins_dir, enabled=config.plugin_enabled)
    found = {info.name for info in host.infos} | {info.key for info in host.infos}
    unknown = sorted(set(config.plugins) - found)
    if unknown:
        raise ConfigError(
            f"plugins.{unknown[0]}: no such plugin is installed (found: "
            f"{', '.join(sorted(found)) or 'none'}); see sparklem plugins"
        )
    for name, info in host.loaded().items():
        assert info.manifest is not None  # loaded plugins have one
        try:
            config.plugins[name] = plugin_settings(info.manifest, config.plugins.get(name) or {})
        except SchemaError as exc:
            raise ConfigError(str(exc)) from None
    return host


def _retention(durations: Mapping[str, str | int | timedelta | None]) -> dict[str, timedelta]:
    """The tables with a bound, from validated durations (defaults given as text)."""
    parsed = {
        table: value if isinstance(value, timedelta | None) else parse_duration(value)
        for table, value in durations.items()
    }
    return {table: value for table, value in parsed.items() if value is not None}


def _read(file: Path) -> dict[Any, Any]:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {file} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
    try:
        loaded = load_yaml(text)
    except YamlRefused as exc:
        raise ConfigError(f"config file {file} {exc}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config file {file} must hold a mapping at the top level")
    return loaded or {}


def _override(doc: dict[Any, Any], key: str, value: str | list[str]) -> None:
    """Put an environment variable's ``value`` at dotted ``key`` (section.name) in ``doc``."""
    section, _, name = key.partition(".")
    if not name:
        doc[section] = value
        return
    current = doc.get(section)
    if current is None or isinstance(current, dict):
        doc[section] = {**(current or {}), name: value}
    # else: a section that is not a mapping; validation reports it by name


# --- secrets --------------------------------------------------------------------------


def remember_secrets(config: Config) -> None:
    """Every secret ``config`` holds: the database password, secret Kafka properties."""
    from sqlalchemy.engine import make_url

    url = make_url(config.database_url)  # checked by load_config
    remember_secret(url.password)
    for name, value in url.query.items():
        if SECRET_NAME_RE.search(name):
            for item in (value,) if isinstance(value, str) else value:
                remember_secret(item)
    for name, value in config.kafka.items():
        if SECRET_NAME_RE.search(name):
            remember_secret(str(value))
    for token in (*config.serve.read_tokens, *config.serve.admin_tokens):
        remember_secret(token)
