"""Each agent's state: the one rule and the one vocabulary that ``sparklem agents`` (its
table and ``--json``), ``serve``'s ``/api/v1/agents``, the dashboard and the processor's
``sparklem_agents`` gauge share (docs/operations.md, "Agent states").

Every agent the registry knows (:class:`~.registry.AgentRegistry`: the certificates
directory and ``sparklem_enrollments``, a revocation in either wins, a key it refuses is
refused here too), and every agent the processors have stored a message or a rejection
of (``sparklem_agents``: authenticated agents only, revoked ones still signing with their
key included), with its counts and whether it went silent: no message for longer than
``fleet.silent_after_s`` when configured, else three times its shortest collection
interval. The processor learns the intervals at enrollment: ``gen_config`` writes them
next to the agent's public key (``agents/<id>.intervals.json``), as the wire contract
carries no interval.
"""

from __future__ import annotations

import os
from collections.abc import Container
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from sparklem_core.db.enrollments import ENROLLED, REVOKED
from sparklem_core.db.errors import first_line
from sparklem_core.db.read_tables import as_utc, rfc3339
from sparklem_core.db.store import Store
from sparklem_core.files import UnusableFile, _strerror, read_regular_file
from sparklem_core.fleet.registry import AGENTS_DIR, REVOKED_DIR, AgentRegistry
from sparklem_core.fleet.registry import log as registry_log
from sparklem_core.settings.config import Config, mask_secrets
from sparklem_core.settings.validation import MAX_INTERVAL_S

SILENT_INTERVALS = 3  # silent after this many collection intervals without a message

# The agent states, one word each. An enrolled agent is active, silent, never_seen or
# seen by its last message; the others say why it is not (or no longer) enrolled:
# revoked (REVOKED, enrollments' word: in revoked/ or the database, its messages are
# rejected), refused or not_enrolled.
ACTIVE = "active"  # a message within its silence threshold
SILENT = "silent"  # no message for longer than its threshold
NEVER_SEEN = "never_seen"  # no message ever
SEEN = "seen"  # sent, but no threshold to judge by (no interval recorded, none configured)
REFUSED = "refused"  # its key is one the registry refuses (``problem`` says why)
NOT_ENROLLED = "not_enrolled"  # seen, its key removed since
STATES = (ACTIVE, SILENT, NEVER_SEEN, SEEN, REVOKED, REFUSED, NOT_ENROLLED)
#: The states :func:`count_by_state` counts, as the gauge's label values.
COUNTED = (ACTIVE, SILENT, NEVER_SEEN, SEEN, REVOKED, REFUSED)
#: Enrolled agents someone should look at: :attr:`AgentStatus.silent`.
NEEDS_LOOK = (SILENT, NEVER_SEEN)


class FleetError(Exception):
    """What keeps the fleet's state from being read (a directory, the database), in one line."""


@dataclass(frozen=True)
class PluginSeen:
    last_message_at: datetime
    messages: int


@dataclass(frozen=True)
class AgentStatus:
    """One agent as ``sparklem agents``, ``/api/v1/agents`` and the dashboard show it."""

    agent_id: str
    state: str  # one of STATES
    silent_after_s: float | None  # None: no interval recorded and none configured
    problem: str | None = None  # why the registry refuses its key (state refused)
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    messages: int = 0
    rejections: int = 0
    last_rejection_reason: str | None = None
    last_rejection_at: datetime | None = None
    plugins: dict[str, PluginSeen] = field(default_factory=dict)

    @property
    def silent(self) -> bool:
        """Enrolled and quiet for too long (or never heard from): someone should look."""
        return self.state in NEEDS_LOOK

    def document(self, now: datetime) -> dict[str, Any]:
        """The JSON form: times in RFC 3339 UTC, ``last_seen_ago_s`` relative to ``now``."""
        doc = {}  # not asdict: its deep copies cost more than the rest of the fleet view
        for name in _FIELDS:
            value = getattr(self, name)
            doc[name] = rfc3339(value) if isinstance(value, datetime) else value
        doc["plugins"] = {
            name: {"last_message_at": rfc3339(p.last_message_at), "messages": p.messages}
            for name, p in self.plugins.items()
        }
        doc["silent"] = self.silent
        doc["enrolled"] = self.state in _ENROLLED_STATES
        doc["revoked"] = self.state == REVOKED
        doc["last_seen_ago_s"] = (
            None if self.last_seen is None else round((now - self.last_seen).total_seconds(), 3)
        )
        return doc


_FIELDS = tuple(f.name for f in fields(AgentStatus))
_ENROLLED_STATES = (ACTIVE, SILENT, NEVER_SEEN, SEEN)


def open_registry(config: Config, store: Store) -> AgentRegistry:
    """A registry of ``config``'s certificates and ``store``'s enrollments, for
    :func:`inventory` (a long-lived reader keeps one: only changed files are read again)."""
    registry = AgentRegistry(config.certificates, config.processor.registry_refresh_s)
    registry.use_database(store)
    return registry


def inventory(
    config: Config, now: datetime, store: Store | None = None, registry: AgentRegistry | None = None
) -> list[AgentStatus]:
    """Every enrolled, revoked, refused or seen agent, by id; :class:`FleetError` if
    unreadable. Read through ``store`` and ``registry`` when given (a long-lived
    server's), else ones of its own."""
    reading = store or Store(config.database_url, config.group_id)
    try:
        seen, plugins = _read_tables(config, reading, whole=True)
        if registry is None:  # a command's: what it would log is in the answer (problem)
            registry_log.disabled = True
            try:
                registry = open_registry(config, reading)
            finally:
                registry_log.disabled = False
        standing = enrollment(registry, refresh=True)
    finally:
        if store is None:
            reading.dispose()
    recorded = recorded_intervals(config.certificates)
    statuses = []
    for agent_id in sorted(standing.keys() | seen.keys()):
        row = seen.get(agent_id, {})
        threshold = silent_after(config, agent_id, recorded)
        enrolled, problem = standing.get(agent_id, (NOT_ENROLLED, None))
        statuses.append(
            AgentStatus(
                agent_id,
                state_of(enrolled, row.get("last_seen"), threshold, now),
                threshold,
                problem,
                plugins=plugins.get(agent_id, {}),
                **row,
            )
        )
    return statuses


def count_by_state(
    config: Config, store: Store, now: datetime, registry: AgentRegistry
) -> dict[str, int]:
    """How many agents :func:`inventory` would show in each of :data:`COUNTED` states
    (agents no longer enrolled are not counted). Reads only ids and last-seen times of
    the database; :class:`FleetError` if unreadable."""
    seen, _plugins = _read_tables(config, store, whole=False)
    counts = dict.fromkeys(COUNTED, 0)
    recorded = recorded_intervals(config.certificates)
    for agent_id, (enrolled, _problem) in enrollment(registry, refresh=True).items():
        last = seen.get(agent_id, {}).get("last_seen")
        threshold = silent_after(config, agent_id, recorded) if enrolled == ENROLLED else None
        counts[state_of(enrolled, last, threshold, now)] += 1
    return counts


def enrollment(registry: AgentRegistry, refresh: bool = False) -> dict[str, tuple[str, str | None]]:
    """Each agent's standing as the registry's lookup judges it, with why when refused:
    ENROLLED, REFUSED (its key unusable) or REVOKED (in either place: wins).
    ``refresh``: read the directory and the database again first (what changed only)."""
    if refresh:
        registry.refresh()
        problems = registry.unlistable()
        if problems:
            raise FleetError(problems[0])
    standing: dict[str, tuple[str, str | None]] = {
        agent_id: (ENROLLED, None) if key.key is not None else (REFUSED, key.problem)
        for agent_id, key in registry.agents().items()
    }
    standing.update(dict.fromkeys(registry.revoked(), (REVOKED, None)))
    return standing


def state_of(
    enrolled: str, last_seen: datetime | None, threshold: float | None, now: datetime
) -> str:
    """The one word for an agent: its standing (:func:`enrollment`) unless enrolled, then
    by its last message: active, silent, never_seen or seen (no threshold to judge by)."""
    if enrolled != ENROLLED:
        return enrolled
    if last_seen is None:
        return NEVER_SEEN
    if threshold is None:
        return SEEN
    return SILENT if (now - last_seen).total_seconds() > threshold else ACTIVE


def silent_after(
    config: Config, agent_id: str, recorded: Container[str] | None = None
) -> float | None:
    """The agent's silence threshold: ``fleet.silent_after_s``, else three times its
    shortest collection interval; None when neither is known. ``recorded``: the agents
    with intervals on file (:func:`recorded_intervals`), so that no other file is tried."""
    if config.fleet.silent_after_s is not None:
        return config.fleet.silent_after_s
    if recorded is not None and agent_id not in recorded:
        return None
    intervals = read_intervals(config.certificates, agent_id)
    return SILENT_INTERVALS * min(intervals.values()) if intervals else None


def _read_tables(
    config: Config, store: Store, *, whole: bool
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, PluginSeen]]]:
    """sparklem_agents by agent (``whole``: every column, else only ``last_seen``) and
    sparklem_agent_plugins by agent and plugin (only when ``whole``)."""
    agents = store.metadata.tables["sparklem_agents"]
    per_plugin = store.metadata.tables["sparklem_agent_plugins"]
    try:
        with store.read_engine.connect() as conn:
            columns = [agents] if whole else [agents.c.agent_id, agents.c.last_seen]
            rows = conn.execute(select(*columns)).mappings().all()
            plugin_rows = conn.execute(select(per_plugin)).all() if whole else []
    except SQLAlchemyError as exc:
        where = mask_secrets(config.database_url)
        raise FleetError(
            f"cannot read the fleet inventory from {where}: {mask_secrets(first_line(exc))} "
            "(run sparklem init to create or upgrade the schema)"
        ) from None
    seen = {}
    for row in rows:
        values = {k: as_utc(v) if isinstance(v, datetime) else v for k, v in row.items()}
        seen[values.pop("agent_id")] = values
    plugins: dict[str, dict[str, PluginSeen]] = {}
    for agent_id, plugin, last, messages in plugin_rows:
        plugins.setdefault(agent_id, {})[plugin] = PluginSeen(as_utc(last), messages)
    return seen, plugins


INTERVALS_SUFFIX = ".intervals.json"
MAX_INTERVALS_BYTES = 64 * 1024
_Intervals = TypeAdapter(
    dict[Annotated[str, Field(max_length=64)], Annotated[float, Field(gt=0, le=MAX_INTERVAL_S)]]
)


def intervals_path(certificates: Path, agent_id: str) -> Path:
    return certificates / AGENTS_DIR / f"{agent_id}{INTERVALS_SUFFIX}"


def recorded_intervals(certificates: Path) -> frozenset[str]:
    """The agents with intervals recorded (listed once, none read): a fleet of thousands
    without them costs one directory listing, not a failed open per agent."""
    try:
        names = os.listdir(certificates / AGENTS_DIR)
    except OSError:  # no directory, or an unreadable one: no file of it could be read
        return frozenset()
    return frozenset(n.removesuffix(INTERVALS_SUFFIX) for n in names
                     if n.endswith(INTERVALS_SUFFIX))  # fmt: skip


def read_intervals(certificates: Path, agent_id: str) -> dict[str, float]:
    """The intervals recorded at enrollment; empty when none were (or the file is unusable)."""
    try:
        data = read_regular_file(intervals_path(certificates, agent_id), MAX_INTERVALS_BYTES)
        return _Intervals.validate_json(data)
    except (UnusableFile, ValidationError):
        return {}


def agent_files(certificates: Path) -> list[tuple[str, Path]]:
    """(status, path) of every agent key file, enrolled then revoked, each sorted by name;
    listed only, none read (the agent's id is the name without ``.pem``)."""
    files = []
    for status, directory in ((ENROLLED, AGENTS_DIR), (REVOKED, REVOKED_DIR)):
        try:
            names = sorted(n for n in os.listdir(certificates / directory) if n.endswith(".pem"))
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise FleetError(f"cannot list {certificates / directory}: {_strerror(exc)}") from None
        files.extend((status, certificates / directory / name) for name in names)
    return files
