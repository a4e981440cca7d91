"""Plugin tables follow their plugin's declaration: a new table, column or index is applied
by ``init`` and ``run`` (Store.create_schema), an unsafe change is refused in one line,
concurrent starts are serialized by the schema lock. SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from harness import ROOT
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table
from waiting import wait_for

from sparklem_core.db.batch import Batch
from sparklem_core.db.plugin_tables import PluginTableRefused, declare
from sparklem_core.db.store import Store
from sparklem_core.fleet.registry import create_server_key
from sparklem_core.plugin_host import PluginHost

TABLE = "gauge_readings"
WHEN = datetime(2026, 11, 30, 4, 0, tzinfo=UTC)

# Columns of every version: a spread of types, so that a declaration unchanged is seen
# unchanged on every database (no false "retyped" from the comparison).
V1_COLUMNS = """\
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
        Column("agent_id", String(64), nullable=False),
        Column("seq", BigInteger, nullable=False),
        Column("gauge", String(128), nullable=False),
        Column("value", Float, nullable=False),
        Column("count", Integer),
        Column("total", BigInteger),
        Column("ok", Boolean),
        Column("ratio", Numeric(10, 3)),
        Column("note", Text),
        Column("extra", JSON),
        Column("blob", LargeBinary),
        Column("day", Date),
        Column("clock", Time),
        Column("uid", Uuid),
        Column("level", Enum("low", "high", name="gauge_level")),
        Column("measured_at", DateTime(timezone=True), nullable=False),
        Index("ix_gauge_readings_agent_measured", "agent_id", "measured_at"),
"""
V2_COLUMNS = (
    V1_COLUMNS
    + """\
        Column("unit", String(16)),
        Index("ix_gauge_readings_unit", "unit"),
"""
)
PLUGIN = """\
from sqlalchemy import (JSON, BigInteger, Boolean, Column, Date, DateTime, Enum, Float, Index,
                        Integer, LargeBinary, Numeric, String, Text, Time, Uuid)

from sparklem_core import Manifest, PluginResult, hookimpl


@hookimpl
def sparklem_manifest():
    return Manifest(name="gauge", version="1.0.0")


@hookimpl
def sparklem_register_tables(register):
    register(
        "gauge_readings",
{columns}
        {declaration}
    )
    if {second_table}:
        register(
            "gauge_events",
            Column("id", Integer, primary_key=True),
            Column("at", DateTime(timezone=True), nullable=False),
            Index("ix_gauge_events_at", "at"),
            time="at",
        )


@hookimpl
def sparklem_process(message, settings):
    return PluginResult()
"""
DECLARATION = 'time="measured_at", series=("agent_id", "gauge"), values=("value",),'


def write_plugin(
    root: Path, columns: str, declaration: str = DECLARATION, *, second_table: bool = False
) -> Path:
    """A directory plugin ``gauge`` under ``root/plugins``; each version in its own root."""
    directory = root / "plugins" / "gauge"
    directory.mkdir(parents=True)
    source = PLUGIN.format(
        columns=columns.rstrip("\n"), declaration=declaration, second_table=second_table
    )
    (directory / "__init__.py").write_text(source, encoding="utf-8")
    return root / "plugins"


def store_for(plugins_dir: Path, url: str) -> Store:
    """A Store with the gauge plugin's tables registered, as the processor's start does."""
    host = PluginHost(plugins_dir)
    store = Store(url, "g")
    host.register_tables(store.register_table, store.drop_registrations)
    info = host.loaded()["gauge"]
    assert info.ok, info.status
    return store


def gauge_changes(store: Store) -> list[str]:
    """create_schema(), and what it did to the gauge table (the built-ins load too)."""
    return sorted(str(c) for c in store.create_schema() if c.table == TABLE)


def add_row(store: Store, gauge: str, **extra: object) -> None:
    row = {"agent_id": "edge-1", "seq": 1, "gauge": gauge, "value": 1.5, "measured_at": WHEN}
    row.update(extra)
    store.commit(Batch(rows={TABLE: [row]}))


def stored(url: str) -> list[dict[str, object]]:
    engine = sa.create_engine(url)
    try:
        table = sa.Table(TABLE, sa.MetaData(), autoload_with=engine)
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(table).order_by(table.c.id))]
    finally:
        engine.dispose()


def columns_of(url: str) -> dict[str, bool]:
    """Column name -> nullable, as the database has them."""
    engine = sa.create_engine(url)
    try:
        return {c["name"]: c["nullable"] for c in sa.inspect(engine).get_columns(TABLE)}
    finally:
        engine.dispose()


def index_names(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return {i["name"] for i in sa.inspect(engine).get_indexes(TABLE)}
    finally:
        engine.dispose()


@pytest.fixture
def v1(tmp_path: Path, database_url: str) -> str:
    """The gauge table created from version 1, with one row stored; the database URL."""
    store = store_for(write_plugin(tmp_path / "v1", V1_COLUMNS), database_url)
    try:
        assert gauge_changes(store) == [f"created table {TABLE}"]
        add_row(store, "old")
    finally:
        store.dispose()
    return database_url


# --- upgrades ------------------------------------------------------------------------------------


def test_a_new_column_index_and_table_are_added_and_old_rows_kept(tmp_path: Path, v1: str) -> None:
    store = store_for(write_plugin(tmp_path / "v2", V2_COLUMNS, second_table=True), v1)
    try:
        assert sorted(str(c) for c in store.create_schema() if c.table.startswith("gauge")) == [
            "created table gauge_events",
            f"upgraded table {TABLE}: added column unit",
            f"upgraded table {TABLE}: added index ix_gauge_readings_unit",
        ]
        add_row(store, "new", unit="kPa")
        assert gauge_changes(store) == []  # at the declaration: nothing more to do
    finally:
        store.dispose()
    assert [(r["gauge"], r["unit"]) for r in stored(v1)] == [("old", None), ("new", "kPa")]
    assert "ix_gauge_readings_unit" in index_names(v1)


def test_an_index_declared_anew_is_rebuilt_and_a_comment_ignored(tmp_path: Path, v1: str) -> None:
    columns = V1_COLUMNS.replace(
        '"agent_id", "measured_at")', '"agent_id", "gauge", "measured_at")'
    ).replace('Column("note", Text)', 'Column("note", Text, comment="free text")')
    store = store_for(write_plugin(tmp_path / "v2", columns), v1)
    try:
        assert gauge_changes(store) == [
            f"upgraded table {TABLE}: added index ix_gauge_readings_agent_measured",
            f"upgraded table {TABLE}: dropped old index ix_gauge_readings_agent_measured",
        ]
    finally:
        store.dispose()
    engine = sa.create_engine(v1)
    try:
        indexes = {i["name"]: i["column_names"] for i in sa.inspect(engine).get_indexes(TABLE)}
    finally:
        engine.dispose()
    assert indexes["ix_gauge_readings_agent_measured"] == ["agent_id", "gauge", "measured_at"]


def test_built_in_plugin_tables_are_seen_unchanged(tmp_path: Path, database_url: str) -> None:
    for _ in range(2):
        host = PluginHost(ROOT / "plugins")
        store = Store(database_url, "g")
        host.register_tables(store.register_table, store.drop_registrations)
        assert set(store.plugin_tables) == {"temperature_readings", "pu_workload_readings"}
        try:
            changes = store.create_schema()
        finally:
            store.dispose()
    assert changes == []


def test_a_column_no_longer_declared_is_left_in_place(
    tmp_path: Path, v1: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An older version of the plugin (a rollback, a rolling upgrade) still starts."""
    newer = store_for(write_plugin(tmp_path / "v2", V2_COLUMNS), v1)
    older = store_for(write_plugin(tmp_path / "v1-again", V1_COLUMNS), v1)
    try:
        newer.create_schema()
        with caplog.at_level(logging.WARNING, logger="sparklem_core.db.plugin_tables"):
            assert gauge_changes(older) == []
        add_row(older, "from v1")
    finally:
        newer.dispose()
        older.dispose()
    assert "column unit is no longer declared; left in place" in caplog.text
    assert "unit" in columns_of(v1)
    assert [r["gauge"] for r in stored(v1)] == ["old", "from v1"]


# --- refused changes -----------------------------------------------------------------------------

REFUSED = {
    "not null column without default": (
        V1_COLUMNS + '        Column("unit", String(16), nullable=False),\n',
        "new column unit is NOT NULL without a server default",
    ),
    "retyped column": (
        V1_COLUMNS.replace('Column("count", Integer)', 'Column("count", String(8))'),
        "column count is ",  # ... INTEGER in the database but declared VARCHAR(8)
    ),
    "not null column dropped": (
        V1_COLUMNS.replace('        Column("seq", BigInteger, nullable=False),\n', ""),
        "column seq (NOT NULL in the database) is no longer declared",
    ),
    "made not null": (
        V1_COLUMNS.replace('Column("note", Text)', 'Column("note", Text, nullable=False)'),
        "column note is nullable in the database but declared NOT NULL",
    ),
}


@pytest.mark.parametrize("change", sorted(REFUSED))
def test_an_unsafe_change_is_refused_in_one_line_and_nothing_changes(
    tmp_path: Path, v1: str, change: str
) -> None:
    columns, expected = REFUSED[change]
    before = columns_of(v1)
    store = store_for(write_plugin(tmp_path / "v2", columns), v1)
    try:
        with pytest.raises(PluginTableRefused) as refused:
            store.create_schema()
    finally:
        store.dispose()
    message = str(refused.value)
    assert f"plugin gauge, table {TABLE}: {expected}" in message and "\n" not in message
    assert columns_of(v1) == before
    assert [r["gauge"] for r in stored(v1)] == ["old"]


def main_py(command: str, config: Path) -> subprocess.Popen[str]:
    """``main.py init`` or ``main.py run`` on ``config``, output piped."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), command, "--config", str(config)],
        cwd=config.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def write_config(directory: Path, plugins_dir: Path, url: str) -> Path:
    certificates = directory / "certificates"
    create_server_key(certificates, bits=2048)
    path = directory / "config.yaml"
    settings = {
        "kafka": {"bootstrap.servers": "127.0.0.1:1"},  # init never connects
        "database": {"url": url},
        "certificates": str(certificates),
        "plugins_dir": str(plugins_dir),
    }
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


@pytest.mark.parametrize("command", ["init", "run"])
def test_init_and_run_say_what_they_refuse_in_one_line(
    tmp_path: Path, v1: str, command: str
) -> None:
    columns, _ = REFUSED["not null column without default"]
    config = write_config(tmp_path, write_plugin(tmp_path / "v2", columns), v1)
    proc = main_py(command, config)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, output
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"main.py: plugin gauge, table {TABLE}: new column unit is NOT NULL")
    assert "Traceback" not in output


def test_run_upgrades_before_it_consumes(tmp_path: Path, v1: str) -> None:
    config = write_config(tmp_path, write_plugin(tmp_path / "v2", V2_COLUMNS), v1)
    proc = main_py("run", config)  # its broker does not answer: it stops at the start
    try:
        wait_for(lambda: "unit" in columns_of(v1), 60, message="run did not add the column")
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=60)
    assert f"upgraded table {TABLE}: added column unit (plugin gauge)" in output, output
    assert "ix_gauge_readings_unit" in index_names(v1)


def test_concurrent_inits_on_a_changed_declaration(tmp_path: Path, v1: str) -> None:
    config = write_config(tmp_path, write_plugin(tmp_path / "v2", V2_COLUMNS), v1)
    procs = [main_py("init", config) for _ in range(3)]
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output
    upgraded = [o for o in outputs if f"upgraded table {TABLE}: added column unit" in o]
    assert len(upgraded) == 1, outputs  # the others found it done, under the lock
    assert "unit" in columns_of(v1) and "ix_gauge_readings_unit" in index_names(v1)


# --- declarations --------------------------------------------------------------------------------

BAD_DECLARATIONS = {
    'series=("agent_id", "gauge")': "name its time column: register('gauge_readings', ..., time=",
    'time="nope"': "'nope' is not one of its columns",
    'time="value"': "time column 'value' must be a DateTime(timezone=True)",
    'time="measured_at", series="gauge"': "series must be a tuple of column names, not 'gauge'",
    'time="measured_at", values=None': "values must be a tuple of column names, not None",
    'time="measured_at", values=("measured_at",)': "column 'measured_at' is declared twice",
    'time="measured_at", colour="red"': "unexpected keyword argument 'colour'",
    f'{DECLARATION} units={{"gauge": "m"}}': "unit for 'gauge', which is not one of its values",
    f'{DECLARATION} units={{"value": 1}}': "unit of 'value' must be a string of at most 16",
    f'{DECLARATION} units={{"value": "x" * 17}}': "unit of 'value' must be a string of at most 16",
    f'{DECLARATION} units={{"value": "m\\n"}}': "unit of 'value' holds the control character",
    f'{DECLARATION} units="m"': "units must be a dict of value column to unit, not 'm'",
}


@pytest.mark.parametrize("declaration", sorted(BAD_DECLARATIONS))
def test_a_bad_declaration_fails_its_plugin_in_one_line(
    tmp_path: Path, declaration: str, caplog: pytest.LogCaptureFixture
) -> None:
    host = PluginHost(write_plugin(tmp_path, V1_COLUMNS, declaration + ","))
    store = Store("sqlite://", "g")
    with caplog.at_level(logging.WARNING):
        host.register_tables(store.register_table, store.drop_registrations)
    [info] = [i for i in host.infos if i.name == "gauge"]
    assert info.status.startswith("failed: registering tables: ")
    assert BAD_DECLARATIONS[declaration] in info.status and "\n" not in info.status
    assert "plugin gauge " in caplog.text
    assert TABLE not in store.metadata.tables and TABLE not in store.plugin_tables


def test_a_nullable_time_column_is_refused() -> None:
    table = Table(
        TABLE,
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("at", DateTime(timezone=True)),
    )
    with pytest.raises(ValueError, match=r"time column 'at' must be nullable=False$"):
        declare("gauge", table, time="at")


NAMES = st.sampled_from(["id", "agent_id", "gauge", "value", "at", "nope", ""])


@given(time=NAMES, series=st.lists(NAMES, max_size=3), values=st.lists(NAMES, max_size=3))
def test_any_declaration_is_accepted_or_refused_in_one_line(
    time: str, series: list[str], values: list[str]
) -> None:
    table = Table(
        TABLE,
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("agent_id", String(64), nullable=False),
        Column("gauge", String(64)),
        Column("value", Integer),
        Column("at", DateTime(timezone=True), nullable=False),
    )
    try:
        declared = declare("gauge", table, time=time, series=series, values=values)
    except ValueError as exc:
        assert str(exc).startswith(f"table '{TABLE}': ") and "\n" not in str(exc)
    else:
        assert declared.time == "at"
        named = [declared.time, *declared.series, *declared.values]
        assert len(set(named)) == len(named) and set(named) <= set(table.c.keys())


def test_the_plugins_command_lists_declared_tables_and_refused_declarations(
    tmp_path: Path,
) -> None:
    good = write_plugin(tmp_path / "good", V1_COLUMNS)
    config = write_config(tmp_path / "good", good, "sqlite:///unused.db")
    output, _ = main_py("plugins", config).communicate(timeout=60)
    blocks = {b.splitlines()[0]: b.splitlines()[1:] for b in output.split("\n\n")}
    assert [line.split() for line in blocks["tables of gauge:"]] == [
        ["TABLE", "TIME", "SERIES", "VALUES"],
        [TABLE, "measured_at", "agent_id,gauge", "value"],
    ]
    assert blocks["tables of temperature:"][1].split() == [
        "temperature_readings", "measured_at", "agent_id,sensor", "celsius[°C]"
    ]  # fmt: skip

    bad = write_plugin(tmp_path / "bad", V1_COLUMNS, 'time="value",')
    config = write_config(tmp_path / "bad", bad, "sqlite:///unused.db")
    output, _ = main_py("plugins", config).communicate(timeout=60)
    [line] = [line for line in output.splitlines() if line.startswith("gauge ")]
    assert "failed: registering tables: table 'gauge_readings': time column 'value'" in line
    assert "tables of gauge:" not in output
