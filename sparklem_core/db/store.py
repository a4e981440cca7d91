"""Everything the processor writes, through SQLAlchemy 2 Core.

One transaction per consumed batch holds the plugins' rows, the rejected records,
the per-stream ``seq`` high-water marks and the per-partition consumed offsets. Both
kinds of mark are updated optimistically (``UPDATE ... WHERE value = expected``), so
two processors that ever handle the same stream or partition at once cannot both
commit: the loser gets :class:`Conflict`, reloads and tries again.

The core tables are created and upgraded by Alembic (``sparklem_core/db/migrations``);
plugin tables are created and upgraded from what plugins register
(:mod:`sparklem_core.db.plugin_tables`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sqlalchemy import (
    Connection,
    Table,
    and_,
    bindparam,
    case,
    delete,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.schema import SchemaItem

from sparklem_core.db import read_tables
from sparklem_core.db.batch import Batch
from sparklem_core.db.engines import make_engine
from sparklem_core.db.errors import check_database_url
from sparklem_core.db.inventory import upsert_agents
from sparklem_core.db.mysql_types import TABLE_OPTIONS
from sparklem_core.db.plugin_tables import (
    RECORDED_TABLE,
    PluginTable,
    TableChange,
    declare,
    record,
    upgrade,
)
from sparklem_core.db.row_insert import RowInsert
from sparklem_core.db.schema import CORE_TABLES, core_metadata
from sparklem_core.db.schema_lock import SCHEMA_LOCK_TIMEOUT_S, schema_lock
from sparklem_core.db.writer_turn import WriterTurn
from sparklem_core.plugin_host import PluginHost
from sparklem_core.settings.config import Config, load_plugins

log = logging.getLogger(__name__)


class TableClash(ValueError):
    pass


class Conflict(Exception):
    """Another processor moved a stream or partition mark first; reload and retry."""


class Store:
    def __init__(self, url: str, group_id: str, *, reader: bool = False) -> None:
        self.engine = make_engine(url, reader=reader)
        # For reads beside the batches (fleet counts, registry refresh, dry-run counts): on
        # SQLite a snapshot that never takes the write lock the writer waits on.
        self.read_engine = (
            make_engine(url, reader=True)
            if self.engine.dialect.name == "sqlite" and not reader
            else self.engine
        )
        self.group_id = group_id
        self.metadata = core_metadata()
        self._owners: dict[str, str] = dict.fromkeys(CORE_TABLES, "sparklem core")
        self._plugin_tables: dict[str, PluginTable] = {}
        self._inserts: dict[tuple[Table, tuple[str, ...]], RowInsert] = {}
        # SQLite has one writer at a time: this process's writers take turns at it.
        self.turn = WriterTurn(fair=self.engine.dialect.name == "sqlite")

    @property
    def rejected(self) -> Table:
        return self.metadata.tables["rejected_messages"]

    @property
    def records(self) -> Table:
        return self.metadata.tables["rejected_records"]

    @property
    def streams(self) -> Table:
        return self.metadata.tables["sparklem_streams"]

    @property
    def offsets(self) -> Table:
        return self.metadata.tables["sparklem_offsets"]

    @property
    def redriven(self) -> Table:
        return self.metadata.tables["sparklem_redriven"]

    def register_table(
        self,
        owner: str,
        name: str,
        *columns: SchemaItem,
        time: str | None = None,
        series: Sequence[str] = (),
        values: Sequence[str] = (),
        units: Mapping[str, str] | None = None,
    ) -> Table:
        """Add a plugin's table; the keywords are :func:`~.plugin_tables.declare`'s.

        :class:`TableClash` if the name is taken, ``ValueError`` if the declaration does
        not fit the columns.
        """
        if name in self._owners:
            raise TableClash(f"table {name!r} is already registered by {self._owners[name]}")
        table = Table(name, self.metadata, *columns, **TABLE_OPTIONS)
        try:
            declared = declare(owner, table, time=time, series=series, values=values, units=units)
        except (TypeError, ValueError):
            self.metadata.remove(table)
            raise
        self._owners[name] = owner
        self._plugin_tables[name] = declared
        return table

    def drop_registrations(self, owner: str) -> None:
        """Forget every table ``owner`` registered (after it failed to load)."""
        for name in [n for n, t in self._plugin_tables.items() if t.owner == owner]:
            self.metadata.remove(self.metadata.tables[name])
            del self._owners[name], self._plugin_tables[name]

    def table_owner(self, name: str) -> str | None:
        declared = self._plugin_tables.get(name)
        return declared.owner if declared else None

    @property
    def plugin_tables(self) -> Mapping[str, PluginTable]:
        """Every registered plugin table, by name, with its time, series and value columns."""
        return MappingProxyType(self._plugin_tables)

    def create_schema(self, *, lock_timeout_s: float = SCHEMA_LOCK_TIMEOUT_S) -> list[TableChange]:
        """Upgrade the core tables with Alembic, then create or upgrade the plugin tables
        and record their declarations (what ``serve`` reads them by).

        All of it under the schema lock, so any number of processes may call this at once
        on a fresh database; :class:`SchemaLockTimeout` after ``lock_timeout_s`` of waiting,
        :class:`~.plugin_tables.PluginTableRefused` if a plugin table would
        need an unsafe change. Returns the plugin table changes applied.
        """
        from alembic import command
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with schema_lock(self.engine, timeout_s=lock_timeout_s) as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            changes = upgrade(conn, self._plugin_tables.values())
            recorded = self.metadata.tables[RECORDED_TABLE]
            record(conn, recorded, self._plugin_tables.values(), datetime.now(UTC))
            return changes

    def load_streams(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        keys = list(keys)
        if not keys:
            return {}
        t = self.streams
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t.c.agent_id, t.c.plugin, t.c.last_seq).where(
                    tuple_(t.c.agent_id, t.c.plugin).in_(keys)
                )
            )
            return {(a, p): seq for a, p, seq in rows}

    def load_offsets(
        self, keys: Iterable[tuple[str, int]]
    ) -> dict[tuple[str, int], tuple[int, str | None]]:
        """(next offset, topic id) of each partition this group has committed."""
        keys = list(keys)
        if not keys:
            return {}
        t = self.offsets
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t.c.topic, t.c.partition, t.c.next_offset, t.c.topic_id).where(
                    t.c.group_id == self.group_id,
                    tuple_(t.c.topic, t.c.partition).in_(keys),
                )
            )
            return {(topic, part): (off, tid) for topic, part, off, tid in rows}

    @contextmanager
    def write(self, *, checkpoint: bool = False) -> Iterator[Connection]:
        """A write transaction, begun in this process's turn at SQLite's writer lock.

        ``checkpoint``: on SQLite, then copy the write-ahead log into the database, still
        in the turn, so that the pages this transaction wrote are not left to the next
        writer's commit (SQLite checkpoints in whichever commit finds the log long).
        """
        with self.turn, self.engine.connect() as conn:
            with conn.begin():
                yield conn
            if checkpoint and self.engine.dialect.name == "sqlite":
                # On the driver's connection: outside any transaction, which it needs.
                conn.connection.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def commit(self, batch: Batch) -> None:
        """Write a whole batch in one transaction, or nothing (:class:`Conflict` or DB error)."""
        now = datetime.now(UTC)
        streams = [
            ({**key._asdict(), "last_seq": mark.last_seq, "updated_at": now}, mark.expected)
            for key, mark in batch.streams.items()
        ]
        offsets = [
            ({"group_id": self.group_id, **key._asdict(), "next_offset": mark.next_offset,
              "topic_id": mark.topic_id, "updated_at": now}, mark.expected)
            for key, mark in batch.offsets.items()
        ]  # fmt: skip
        with self.write() as conn:
            self._release(conn, self.rejected, batch.released_messages)
            self._release(conn, self.records, batch.released_records)
            if batch.redriven:
                try:
                    conn.execute(insert(self.redriven), [r.row() for r in batch.redriven])
                except IntegrityError as exc:  # another redrive stored it first
                    raise Conflict(str(exc.orig)[:200]) from None
            for name, rows in batch.rows.items():
                self._insert_rows(conn, self.metadata.tables[name], rows)
            if batch.rejected:
                conn.execute(insert(self.rejected), [r.row() for r in batch.rejected])
            if batch.records:
                conn.execute(insert(self.records), [r.row() for r in batch.records.values()])
            self._move_marks(conn, self.streams, ("agent_id", "plugin"), "last_seq", streams)
            if batch.agents:
                upsert_agents(conn, self.metadata, batch.agents)
            self._move_marks(conn, self.offsets, ("group_id", "topic", "partition"),
                             "next_offset", offsets)  # fmt: skip
            # Last: it takes the feed head's lock, which must be held as briefly as can be.
            read_tables.write(conn, self.metadata, self._plugin_tables, batch, now)

    def _insert_rows(self, conn: Any, table: Table, rows: list[dict[str, Any]]) -> None:
        """INSERT plugin rows: one executemany per set of columns, prepared once."""
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in rows:
            groups.setdefault(tuple(row), []).append(row)
        for columns, group in groups.items():
            key = (table, columns)  # the Table itself: a name can be registered again
            if key not in self._inserts:
                self._inserts[key] = RowInsert(table, columns, self.engine.dialect)
            self._inserts[key].execute(conn, group)

    @staticmethod
    def _release(conn: Any, table: Table, ids: list[int]) -> None:
        """Delete quarantine rows by id; :class:`Conflict` if another redrive took one first."""
        if ids and conn.execute(delete(table).where(table.c.id.in_(ids))).rowcount != len(ids):
            raise Conflict(f"{table.name} changed by another redrive")

    @staticmethod
    def _move_marks(conn: Any, table: Table, key: tuple[str, ...], mark: str,
                    moves: list[tuple[dict[str, Any], int | None]]) -> None:  # fmt: skip
        """Insert new marks and move existing ones from their expected value, all or none.

        One executemany per kind (on MySQL/MariaDB one UPDATE moving them all); the
        UPDATE's row count proves that no other processor moved any of these marks since
        we read them.
        """
        fresh = [values for values, expected in moves if expected is None]
        moved = [{**values, "expected": expected} for values, expected in moves
                 if expected is not None]  # fmt: skip
        if fresh:
            try:
                conn.execute(insert(table), fresh)
            except IntegrityError as exc:  # someone inserted one of these marks first
                raise Conflict(str(exc.orig)[:200]) from None
        if moved:
            c = table.c
            statement = (
                update(table)
                .where(*(c[k] == bindparam(f"k_{k}") for k in key),
                       c[mark] == bindparam("expected"))
                .values({mark: bindparam(f"v_{mark}"), "updated_at": bindparam("v_updated_at"),
                         **({"topic_id": bindparam("v_topic_id")} if "topic_id" in c else {})})
            )  # fmt: skip
            params = [
                {**{f"k_{k}": m[k] for k in key}, "expected": m["expected"],
                 f"v_{mark}": m[mark], "v_updated_at": m["updated_at"],
                 **({"v_topic_id": m["topic_id"]} if "topic_id" in c else {})}
                for m in moved
            ]  # fmt: skip
            if conn.dialect.name in ("mysql", "mariadb"):
                # Its drivers run an executemany of an UPDATE as one statement per mark,
                # a round trip each: every mark in one UPDATE instead, whose row count is
                # the rows it matched (SQLAlchemy connects with FOUND_ROWS).
                changed = 0
                for start in range(0, len(moved), MARKS_PER_UPDATE):
                    chunk = moved[start : start + MARKS_PER_UPDATE]
                    columns = (mark, "updated_at", *(("topic_id",) if "topic_id" in c else ()))
                    one = _moves_in_one(table, key, mark, columns, len(chunk))
                    changed += conn.execute(one, _numbered(chunk, (*key, *columns))).rowcount
            elif conn.dialect.supports_sane_multi_rowcount:
                changed = conn.execute(statement, params).rowcount
            else:  # a driver that cannot count an executemany: one statement per mark
                changed = sum(conn.execute(statement, p).rowcount for p in params)
            if changed != len(params):
                raise Conflict(f"{table.name} moved by another processor")

    def probe(self) -> bool:
        """Whether the database answers a query on a fresh connection (not the pool's)."""
        dialect = self.engine.dialect
        try:
            cargs, cparams = dialect.create_connect_args(self.engine.url)
            connection = dialect.connect(*cargs, **cparams)
            try:
                cursor = connection.cursor()
                cursor.execute("SELECT 1")
                cursor.fetchall()
            finally:
                connection.close()
        except Exception:  # whatever the driver raises: the database is not answering
            return False
        return True

    def dispose(self) -> None:
        self.engine.dispose()
        self.read_engine.dispose()


#: Marks moved by one UPDATE on MySQL/MariaDB (a batch moves one per stream and partition).
MARKS_PER_UPDATE = 500


@functools.lru_cache(maxsize=256)
def _moves_in_one(
    table: Table, key: tuple[str, ...], mark: str, columns: tuple[str, ...], n: int
) -> Any:
    """``UPDATE table SET col = CASE WHEN key = k_i THEN v_i .. END WHERE (key = k_i AND
    mark = e_i) OR ..`` for ``n`` marks: all moved at once, each only from its expected
    value; parameters as :func:`_numbered` names them."""
    c = table.c
    keys = [and_(*(c[k] == bindparam(f"{k}_{i}") for k in key)) for i in range(n)]
    values = {
        column: case(
            *((keys[i], bindparam(f"{column}_{i}", type_=c[column].type)) for i in range(n)),
            else_=c[column],
        )
        for column in columns
    }
    moved_from = or_(*(and_(keys[i], c[mark] == bindparam(f"expected_{i}")) for i in range(n)))
    return update(table).where(moved_from).values(values)


def _numbered(moves: list[dict[str, Any]], columns: tuple[str, ...]) -> dict[str, Any]:
    """The parameters of :func:`_moves_in_one` for ``moves`` (each with its ``expected``)."""
    return {
        f"{column}_{i}": move[column]
        for i, move in enumerate(moves)
        for column in (*columns, "expected")
    }


def open_store(config: Config, *, reader: bool = False) -> tuple[PluginHost, Store]:
    """Load the plugins and declare every table (core and plugins) on a Store
    (a ``reader``'s: see :func:`~sparklem_core.db.engines.make_engine`)."""
    plugins = load_plugins(config)
    check_database_url(config.database_url)  # a permanent mistake: no retry loop for it
    store = Store(config.database_url, config.group_id, reader=reader)
    plugins.register_tables(store.register_table, store.drop_registrations)
    return plugins, store
