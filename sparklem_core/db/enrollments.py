"""Enrollments in the database: one fleet for several processor hosts.

``gen_config`` writes each enrollment and revocation to ``sparklem_enrollments`` as well as
to the certificates directory (when the database has the table: ``sparklem init`` or a
processor start made it). Every processor's :class:`~.registry.AgentRegistry` reads the
table at each refresh and merges it with its files: a revocation in either wins, so a
revocation takes effect on every host within ``registry_refresh_s``.

The table is as hostile as any file: a row whose key does not parse, or whose id or
state is not one we write, makes that agent unknown (logged once per version).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, MetaData, inspect, select

from sparklem_core.db.inventory import upsert_statement

log = logging.getLogger(__name__)

TABLE = "sparklem_enrollments"
ENROLLED, REVOKED = "enrolled", "revoked"


@dataclass(frozen=True)
class DbEnrollment:
    """One ``sparklem_enrollments`` row as the registry keeps it."""

    agent_id: str
    state: str
    fingerprint: str
    public_key: str  # PEM


def publish(engine: Engine, metadata: MetaData, agent_id: str, state: str, pem: bytes) -> bool:
    """Record an enrollment or revocation with the agent's public key (PEM); False when the
    database has no such table yet."""
    if not inspect(engine).has_table(TABLE):
        return False
    row = {
        "agent_id": agent_id,
        "state": state,
        "fingerprint": hashlib.sha256(pem).hexdigest()[:32],
        "public_key": pem.decode("ascii", "replace"),
        "updated_at": datetime.now(UTC),
    }
    statement = upsert_statement(engine.dialect.name, metadata.tables[TABLE], _replace)
    with engine.begin() as conn:
        conn.execute(statement, [row])
    return True


def _replace(_old: Any, new: Any) -> list[tuple[str, Any]]:
    return [(c, getattr(new, c)) for c in ("state", "fingerprint", "public_key", "updated_at")]


def read(
    engine: Engine, metadata: MetaData, known: dict[str, DbEnrollment]
) -> dict[str, DbEnrollment]:
    """Every row; keys are fetched again only for rows whose fingerprint changed."""
    table = metadata.tables[TABLE]
    with engine.connect() as conn:
        heads = conn.execute(select(table.c.agent_id, table.c.state, table.c.fingerprint)).all()
        changed = [a for a, _s, f in heads if a not in known or known[a].fingerprint != f]
        keys: dict[str, str] = {}
        for start in range(0, len(changed), 500):
            part = changed[start : start + 500]
            query = select(table.c.agent_id, table.c.public_key).where(table.c.agent_id.in_(part))
            keys.update({a: k for a, k in conn.execute(query)})
    rows = {}
    for agent_id, state, fingerprint in heads:
        if agent_id in keys:
            rows[agent_id] = DbEnrollment(agent_id, state, fingerprint, keys[agent_id])
        elif agent_id in known and known[agent_id].fingerprint == fingerprint:  # unchanged
            rows[agent_id] = DbEnrollment(agent_id, state, fingerprint, known[agent_id].public_key)
    return rows
