"""sparklem_core.plugin_host.PluginHost over plugin directories made per test."""

from __future__ import annotations

import importlib.metadata
import inspect
import shutil
import subprocess
import sys
import textwrap
import typing
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from harness import ROOT as PROJECT_ROOT

from sparklem_core import Message, PluginResult, RegisterTable
from sparklem_core.db.plugin_tables import declare
from sparklem_core.db.store import Store
from sparklem_core.plugin_host import ENTRY_POINT_GROUP, PluginHost, PluginInfo
from sparklem_core.settings.validation import plugin_settings

BUILTINS = {"temperature", "pu_workload"}

PLUGIN = """\
from sqlalchemy import Column, DateTime, Integer, String

from sparklem_core import Manifest, PluginResult, hookimpl


@hookimpl
def sparklem_manifest():
    return Manifest(name={name!r}, version="0.3.1", description="test plugin")


@hookimpl
def sparklem_register_tables(register):
    for table in {tables!r}:
        register(
            table,
            Column("id", Integer, primary_key=True),
            Column("agent_id", String(64)),
            Column("at", DateTime(timezone=True), nullable=False),
            time="at",
        )


@hookimpl
def sparklem_process(message, settings):
    result = PluginResult()
    for table in {tables!r}:
        result.add_row(table, {{"agent_id": message.agent_id, "at": message.sent_at}})
    return result


@hookimpl
def sparklem_collect(settings):
    return {{"from": {name!r}, "settings": dict(settings)}}
"""


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:8]


def make_plugin(
    root: Path,
    directory: str,
    name: str | None = None,
    tables: tuple[str, ...] = (),
    source: str | None = None,
    requirements: str | None = None,
) -> Path:
    path = root / directory
    path.mkdir(parents=True)
    code = source if source is not None else PLUGIN.format(name=name or directory, tables=tables)
    (path / "__init__.py").write_text(textwrap.dedent(code), encoding="utf-8")
    if requirements is not None:
        (path / "requirements.txt").write_text(requirements, encoding="utf-8")
    return path


def make_full_layout_plugin(root: Path, name: str) -> Path:
    """The documented layout: manifest.py, server.py, main.py, requirements.txt."""
    path = root / name
    path.mkdir(parents=True)
    (path / "manifest.py").write_text(
        "from sparklem_core import Manifest, Setting\n"
        f"MANIFEST = Manifest(name={name!r}, version='2.0.0',\n"
        "    settings=[Setting('interval', int, 5, 'seconds', side='agent')])\n"
    )
    (path / "server.py").write_text(
        "from sparklem_core import PluginResult, hookimpl\n"
        "from .manifest import MANIFEST\n\n"
        "@hookimpl\ndef sparklem_manifest():\n    return MANIFEST\n\n"
        "@hookimpl\ndef sparklem_process(message, settings):\n"
        "    return PluginResult(rows={f'{MANIFEST.name}_t': [dict(message.data)]})\n"
    )
    (path / "main.py").write_text(
        "from sparklem_core import hookimpl\n\n"
        "@hookimpl\ndef sparklem_collect(settings):\n"
        "    return {'interval': settings['interval']}\n"
    )
    (path / "requirements.txt").write_text("# only the standard library\n\npluggy>=1.0  # sure\n")
    (path / "__init__.py").write_text(
        "from .main import sparklem_collect\n"
        "from .server import sparklem_manifest, sparklem_process\n"
    )
    return path


def by_key(host: PluginHost) -> dict[str, PluginInfo]:
    return {info.key: info for info in host.infos}


def message(plugin: str, data: dict | None = None) -> Message:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return Message("edge-1", plugin, 1, at, data or {}, at)


# --- loading -------------------------------------------------------------------------------


def test_good_plugin_loads(tmp_path: Path, uid: str) -> None:
    name = f"good_{uid}"
    directory = make_full_layout_plugin(tmp_path, name)
    host = PluginHost(tmp_path)
    info = host.loaded()[name]
    assert info.ok and info.status == "ok"
    assert info.source == f"directory {directory}"
    assert info.manifest is not None
    assert (info.manifest.name, info.manifest.version) == (name, "2.0.0")
    assert info.manifest.topic == f"sparklem.{name}"
    assert info.manifest.agent_defaults == {"interval": 5}
    result = host.process(info, message(name, {"x": 1}), {})
    assert result.rows == {f"{name}_t": [{"x": 1}]}
    assert host.collect(info, {"interval": 5}) == {"interval": 5}


def test_builtins_load_alongside_a_plugin_directory(tmp_path: Path, uid: str) -> None:
    make_plugin(tmp_path, f"p_{uid}")
    loaded = PluginHost(tmp_path).loaded()
    assert set(loaded) == {f"p_{uid}", *BUILTINS}
    for name in BUILTINS:
        assert loaded[name].source.startswith("installed sparklem ")
        assert f"(sparklem_plugins.{name})" in loaded[name].source


def test_hooks_are_called_per_plugin(tmp_path: Path, uid: str) -> None:
    a, b = f"a_{uid}", f"b_{uid}"
    make_plugin(tmp_path, a)
    make_plugin(tmp_path, b)
    host = PluginHost(tmp_path)
    loaded = host.loaded()
    assert host.collect(loaded[a], {"k": 1}) == {"from": a, "settings": {"k": 1}}
    assert host.collect(loaded[b], {}) == {"from": b, "settings": {}}


def test_missing_requirement(tmp_path: Path, uid: str) -> None:
    missing = f"needs_{uid}"
    make_plugin(tmp_path, missing, requirements=f"# comment\nsparklem-absent-{uid}>=1.0\n")
    too_old = f"old_{uid}"
    make_plugin(tmp_path, too_old, requirements="pluggy>=999\n")
    marker = f"marker_{uid}"
    make_plugin(tmp_path, marker, requirements=f'sparklem-absent-{uid}; python_version < "3"\n')
    fine = f"fine_{uid}"
    make_plugin(tmp_path, fine, requirements="PyYAML>=5  # present\n")
    host = PluginHost(tmp_path)
    infos = by_key(host)
    assert infos[missing].status == f"missing requirement sparklem-absent-{uid}>=1.0"
    assert infos[missing].manifest is None and not infos[missing].ok
    assert infos[too_old].status.startswith("missing requirement pluggy>=999 (found ")
    assert set(host.loaded()) == {marker, fine, *BUILTINS}


def test_unparsable_requirement(tmp_path: Path, uid: str) -> None:
    make_plugin(tmp_path, f"bad_{uid}", requirements="not a requirement!!\n")
    status = by_key(PluginHost(tmp_path))[f"bad_{uid}"].status
    assert status.startswith("missing requirement") and "unparsable" in status


def test_plugin_that_raises_at_import(tmp_path: Path, uid: str) -> None:
    make_plugin(tmp_path, f"boom_{uid}", source="raise RuntimeError('kaboom at import')\n")
    make_plugin(tmp_path, f"syntax_{uid}", source="def broken(:\n")
    make_plugin(tmp_path, f"fine_{uid}")
    host = PluginHost(tmp_path)
    infos = by_key(host)
    assert infos[f"boom_{uid}"].status == "failed: RuntimeError: kaboom at import"
    assert infos[f"syntax_{uid}"].status.startswith("failed: SyntaxError")
    assert f"fine_{uid}" in host.loaded()
    assert f"sparklem_plugins.boom_{uid}" not in sys.modules


def test_misspelled_hook_fails_the_plugin(tmp_path: Path, uid: str) -> None:
    source = PLUGIN.format(name=f"typo_{uid}", tables=()) + (
        "\n\n@hookimpl\ndef sparklem_procss(message, settings):\n    return None\n"
    )
    make_plugin(tmp_path, f"typo_{uid}", source=source)
    make_plugin(tmp_path, f"zfine_{uid}")  # loaded after it: check_pending must not blame it
    host = PluginHost(tmp_path)
    status = by_key(host)[f"typo_{uid}"].status
    assert status.startswith("failed: PluginValidationError") and "sparklem_procss" in status
    assert set(host.loaded()) == {f"zfine_{uid}", *BUILTINS}
    assert all("typo" not in name for name, _ in host.pm.list_name_plugin())


def test_hook_with_a_wrong_argument_fails_the_plugin(tmp_path: Path, uid: str) -> None:
    source = (
        "from sparklem_core import Manifest, hookimpl\n"
        "@hookimpl\ndef sparklem_manifest():\n"
        f"    return Manifest(name='args_{uid}', version='1')\n"
        "@hookimpl\ndef sparklem_process(message, settings, extra):\n    return None\n"
    )
    make_plugin(tmp_path, f"args_{uid}", source=source)
    status = by_key(PluginHost(tmp_path))[f"args_{uid}"].status
    assert status.startswith("failed: PluginValidationError") and "extra" in status


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("return {'name': 'x'}", "failed: TypeError: sparklem_manifest() must return"),
        (
            "return Manifest(name='Bad-Name', version='1')",
            "failed: ValueError: plugin name 'Bad-Name'",
        ),
        ("raise KeyError('nope')", "failed: KeyError: 'nope'"),
    ],
)
def test_bad_manifest_fails_the_plugin(tmp_path: Path, uid: str, body: str, expected: str) -> None:
    source = (
        "from sparklem_core import Manifest, hookimpl\n"
        f"@hookimpl\ndef sparklem_manifest():\n    {body}\n"
    )
    make_plugin(tmp_path, f"m_{uid}", source=source)
    host = PluginHost(tmp_path)
    assert by_key(host)[f"m_{uid}"].status.startswith(expected)
    assert set(host.loaded()) == BUILTINS


def test_plugin_without_manifest_fails(tmp_path: Path, uid: str) -> None:
    make_plugin(tmp_path, f"nomanifest_{uid}", source="X = 1\n")
    assert by_key(PluginHost(tmp_path))[f"nomanifest_{uid}"].status.startswith("failed: TypeError")


def test_same_manifest_name_twice(tmp_path: Path, uid: str) -> None:
    name = f"dup_{uid}"
    first = make_plugin(tmp_path, f"a_{uid}", name=name)
    make_plugin(tmp_path, f"b_{uid}", name=name)
    host = PluginHost(tmp_path)
    second = by_key(host)[f"b_{uid}"]
    assert second.status == f"failed: name {name!r} already provided by directory {first}"
    loaded = host.loaded()[name]
    assert loaded.source == f"directory {first}"
    assert host.collect(loaded, {}) == {"from": name, "settings": {}}


def test_plugin_named_like_a_builtin_is_refused(tmp_path: Path, uid: str) -> None:
    make_plugin(tmp_path, f"t_{uid}", name="temperature")
    host = PluginHost(tmp_path)
    statuses = [i.status for i in host.infos if i.name == "temperature" or i.key == f"t_{uid}"]
    assert statuses.count("ok") == 1
    assert any(s.startswith("failed: name 'temperature' already provided by") for s in statuses)


def test_disabled_plugin(tmp_path: Path, uid: str) -> None:
    make_plugin(tmp_path, f"off_{uid}")
    host = PluginHost(tmp_path, enabled=lambda key: key not in {f"off_{uid}", "pu_workload"})
    infos = by_key(host)
    assert infos[f"off_{uid}"].status == "disabled"
    assert infos["pu_workload"].status == "disabled"
    assert set(host.loaded()) == {"temperature"}


def test_same_directory_name_in_two_plugin_roots(tmp_path: Path, uid: str) -> None:
    """Two hosts over two roots each get their own code, not the first one's."""
    make_plugin(tmp_path / "one", f"p_{uid}", name=f"one_{uid}")
    make_plugin(tmp_path / "two", f"p_{uid}", name=f"two_{uid}")
    assert f"one_{uid}" in PluginHost(tmp_path / "one").loaded()
    loaded = PluginHost(tmp_path / "two").loaded()
    assert f"two_{uid}" in loaded and f"one_{uid}" not in loaded


def test_fixed_plugin_loads_afresh_on_the_next_attempt(tmp_path: Path, uid: str) -> None:
    """A failed import leaves none of its submodules behind to be reused."""
    name = f"fix_{uid}"
    path = make_plugin(
        tmp_path, name, source="from .helper import VALUE\nraise ImportError('half')\n"
    )
    (path / "helper.py").write_text("VALUE = 1\n")
    assert by_key(PluginHost(tmp_path))[name].status == "failed: ImportError: half"
    (path / "helper.py").write_text("VALUE = 2\n")
    (path / "__init__.py").write_text(
        "from .helper import VALUE\n" + PLUGIN.format(name=name, tables=())
    )
    info = PluginHost(tmp_path).loaded()[name]
    assert sys.modules[f"sparklem_plugins.{name}"].VALUE == 2
    assert info.ok


# --- tables --------------------------------------------------------------------------------


def test_table_clash_fails_the_second_plugin(tmp_path: Path, uid: str) -> None:
    first, second = f"a_{uid}", f"b_{uid}"
    shared = f"shared_{uid}"
    make_plugin(tmp_path, first, tables=(shared,))
    make_plugin(tmp_path, second, tables=(f"own_{uid}", shared))
    host = PluginHost(tmp_path)
    store = Store(f"sqlite:///{tmp_path}/db.sqlite3", "g")
    host.register_tables(store.register_table, store.drop_registrations)
    infos = by_key(host)
    assert infos[first].ok
    status = infos[second].status
    assert status.startswith("failed: registering tables:")
    assert repr(shared) in status and first in status
    assert store.table_owner(shared) == first
    assert store.table_owner(f"own_{uid}") is None  # its earlier table is dropped as well
    assert f"own_{uid}" not in store.metadata.tables
    assert second not in host.loaded()
    assert {"temperature_readings", "pu_workload_readings"} <= set(store.metadata.tables)
    store.create_schema()
    store.dispose()


def test_plugin_claiming_a_core_table_fails(tmp_path: Path, uid: str) -> None:
    make_plugin(tmp_path, f"c_{uid}", tables=("rejected_messages",))
    host = PluginHost(tmp_path)
    store = Store(f"sqlite:///{tmp_path}/db.sqlite3", "g")
    host.register_tables(store.register_table, store.drop_registrations)
    status = by_key(host)[f"c_{uid}"].status
    assert "'rejected_messages'" in status and "sparklem core" in status
    store.dispose()


def test_process_must_return_a_plugin_result(tmp_path: Path, uid: str) -> None:
    source = PLUGIN.format(name=f"r_{uid}", tables=()).replace(
        "    return result\n", "    return {'rows': {}}\n"
    )
    make_plugin(tmp_path, f"r_{uid}", source=source)
    host = PluginHost(tmp_path)
    with pytest.raises(TypeError, match="not PluginResult"):
        host.process(host.loaded()[f"r_{uid}"], message(f"r_{uid}"), {})


# --- traps refused at load ------------------------------------------------------------------


@pytest.mark.parametrize(
    "hook", ["sparklem_process", "sparklem_collect", "sparklem_register_tables"]
)
def test_hook_without_hookimpl_fails_the_plugin(tmp_path: Path, uid: str, hook: str) -> None:
    """Undecorated, pluggy would never call it: every message would be quarantined."""
    name = f"bare_{uid}"
    source = PLUGIN.format(name=name, tables=()).replace(f"@hookimpl\ndef {hook}(", f"def {hook}(")
    make_plugin(tmp_path, name, source=source)
    make_plugin(tmp_path, f"zfine_{uid}")
    host = PluginHost(tmp_path)
    status = by_key(host)[name].status
    assert status == (
        f"failed: PluginValidationError: {hook} is not decorated with @hookimpl, so it would"
        " never be called: decorate it (from sparklem_core import hookimpl)"
    )
    assert set(host.loaded()) == {f"zfine_{uid}", *BUILTINS}
    assert all(name not in key for key, _ in host.pm.list_name_plugin())


def test_undecorated_hook_imported_into_a_package_fails_it(tmp_path: Path, uid: str) -> None:
    name = f"layout_{uid}"
    path = make_full_layout_plugin(tmp_path, name)
    server = path / "server.py"
    server.write_text(
        server.read_text().replace("@hookimpl\ndef sparklem_process", "def sparklem_process")
    )
    status = by_key(PluginHost(tmp_path))[name].status
    assert status.startswith("failed: PluginValidationError: sparklem_process is not decorated")


def test_undecorated_misspelled_hook_fails_the_plugin(tmp_path: Path, uid: str) -> None:
    name = f"typo_{uid}"
    source = PLUGIN.format(name=name, tables=()) + (
        "\n\ndef sparklem_procss(message, settings):\n    return None\n"
    )
    make_plugin(tmp_path, name, source=source)
    status = by_key(PluginHost(tmp_path))[name].status
    assert status == (
        "failed: PluginValidationError: sparklem_procss is named like a hook but no hook has"
        " that name (sparklem_manifest, sparklem_register_tables, sparklem_process,"
        " sparklem_collect): fix the name, or rename a helper so it does not start with sparklem_"
    )


def test_only_undecorated_functions_named_like_hooks_are_traps(tmp_path: Path, uid: str) -> None:
    name = f"others_{uid}"
    source = (
        "import sparklem_core\n"
        + PLUGIN.format(name=name, tables=())
        + "\nsparklem_version = '1'\n\nclass sparklem_Thing:\n    pass\n\n"
        "def helper():\n    return 1\n"
    )
    make_plugin(tmp_path, name, source=source)
    assert by_key(PluginHost(tmp_path))[name].ok


PROCESSOR_ONLY_BY_SETTINGS = """\
from sparklem_core import Manifest, Setting, hookimpl


@hookimpl
def sparklem_manifest():
    return Manifest(name={name!r}, version="1", settings=[Setting("limit", int, 3, "max")])
"""


def test_tables_without_process_fail_the_plugin(tmp_path: Path, uid: str) -> None:
    name = f"noproc_{uid}"
    source = PLUGIN.format(name=name, tables=(f"t_{uid}",)).replace(
        "@hookimpl\ndef sparklem_process(", "def process("
    )
    make_plugin(tmp_path, name, source=source)
    host = PluginHost(tmp_path)
    assert by_key(host)[name].status == (
        "failed: PluginValidationError: it has sparklem_register_tables but no sparklem_process,"
        " so the processor would refuse its every message: add"
        " @hookimpl def sparklem_process(message, settings)"
    )
    store = Store("sqlite://", "g")
    host.register_tables(store.register_table, store.drop_registrations)
    assert f"t_{uid}" not in store.metadata.tables
    store.dispose()


def test_processor_settings_without_process_fail_the_plugin(tmp_path: Path, uid: str) -> None:
    name = f"settings_{uid}"
    make_plugin(tmp_path, name, source=PROCESSOR_ONLY_BY_SETTINGS.format(name=name))
    agent_only = f"agent_{uid}"  # agent settings and sparklem_collect only: fine
    make_full_layout_plugin(tmp_path, agent_only)
    server = tmp_path / agent_only / "server.py"
    server.write_text(server.read_text().split("@hookimpl\ndef sparklem_process")[0])
    (tmp_path / agent_only / "__init__.py").write_text(
        "from .main import sparklem_collect\nfrom .server import sparklem_manifest\n"
    )
    host = PluginHost(tmp_path)
    assert by_key(host)[name].status == (
        "failed: PluginValidationError: it declares processor settings (limit) but no"
        " sparklem_process, so the processor would refuse its every message: add"
        " @hookimpl def sparklem_process(message, settings)"
    )
    assert by_key(host)[agent_only].ok
    assert host.collect(host.loaded()[agent_only], {"interval": 7}) == {"interval": 7}


def test_single_plugin_hooks_are_not_firstresult(tmp_path: Path, uid: str) -> None:
    """Called across plugins, each hook answers for every plugin; the host takes one's."""
    a, b = f"a_{uid}", f"b_{uid}"
    make_plugin(tmp_path, a)
    make_plugin(tmp_path, b)
    none = f"none_{uid}"
    nothing = PLUGIN.format(name=none, tables=())
    nothing = nothing.replace('    return {"from"', '    return None\n    return {"from"')
    make_plugin(tmp_path, none, source=nothing)
    host = PluginHost(tmp_path, enabled=lambda key: key not in BUILTINS)
    assert {m.name for m in host.pm.hook.sparklem_manifest()} == {a, b, none}
    assert len(host.pm.hook.sparklem_process(message=message(a), settings={})) == 3
    collected = host.pm.hook.sparklem_collect(settings={})
    assert sorted(c["from"] for c in collected) == [a, b]  # pluggy leaves out None
    loaded = host.loaded()
    assert host.collect(loaded[a], {}) == {"from": a, "settings": {}}
    assert host.collect(loaded[none], {}) is None
    assert isinstance(host.process(loaded[b], message(b), {}), PluginResult)


def test_register_table_is_typed_like_the_stores() -> None:
    """What plugins are handed is the store's register_table with its owner bound."""
    assert typing.Protocol in RegisterTable.__bases__
    ours = list(inspect.signature(RegisterTable.__call__).parameters.values())[1:]
    stores = list(inspect.signature(Store.register_table).parameters.values())[2:]
    assert ours == stores
    assert [p.name for p in ours] == ["name", "columns", "time", "series", "values", "units"]
    keywords = list(inspect.signature(declare).parameters.values())[2:]
    assert [(p.name, p.default) for p in keywords] == [(p.name, p.default) for p in ours[2:]]


# --- built-ins and entry points ----------------------------------------------------------------


def test_builtins_load_once_from_the_checkout() -> None:
    host = PluginHost(PROJECT_ROOT / "plugins")
    names = [info.name for info in host.infos]
    assert sorted(names) == sorted(BUILTINS)  # not twice: directory and entry point
    for info in host.infos:
        assert info.ok, info.status
        assert info.source == f"directory {PROJECT_ROOT / 'plugins' / info.name}"
    entry_points = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert entry_points >= BUILTINS


def test_a_copy_of_a_builtin_in_the_plugins_directory_wins_and_loads_once(
    tmp_path: Path,
) -> None:
    """An installed built-in and ./plugins/NAME from another place (a deployment's copy)."""
    shutil.copytree(PROJECT_ROOT / "plugins" / "temperature", tmp_path / "temperature")
    saved = {k: m for k, m in sys.modules.items() if k.startswith("sparklem_plugins.temperature")}
    try:
        host = PluginHost(tmp_path)
        sources = {info.name: info.source for info in host.infos}
        assert [info.name for info in host.infos].count("temperature") == 1
        assert sources["temperature"] == f"directory {tmp_path / 'temperature'}"
        assert sources["pu_workload"].startswith("installed sparklem ")
        assert all(info.ok for info in host.infos), [i.status for i in host.infos]
    finally:  # the real built-in back under its name for the other tests
        for name in [k for k in sys.modules if k.startswith("sparklem_plugins.temperature")]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_builtins_from_entry_points_only() -> None:
    host = PluginHost(None)
    assert set(host.loaded()) == BUILTINS
    result = host.process(
        host.loaded()["temperature"],
        message("temperature", {"readings": [{"sensor": "s", "value": 20}]}),
        plugin_settings(host.loaded()["temperature"].manifest, {}),
    )
    assert isinstance(result, PluginResult) and len(result.rows["temperature_readings"]) == 1


def test_installed_distribution_plugin(
    tmp_path: Path, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"sparklem_ext_{uid}"
    make_plugin(tmp_path / "site", module, name=f"ext_{uid}")
    make_plugin(tmp_path / "site", f"broken_{uid}", source="import sparklem_absent_module\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    real = importlib.metadata.entry_points

    def entry_points(**selection):
        found = list(real(**selection))
        if selection.get("group") == ENTRY_POINT_GROUP:
            found.append(importlib.metadata.EntryPoint("ext", module, ENTRY_POINT_GROUP))
            found.append(
                importlib.metadata.EntryPoint("broken", f"broken_{uid}", ENTRY_POINT_GROUP)
            )
        return found

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    host = PluginHost(None)
    info = host.loaded()[f"ext_{uid}"]
    assert info.source == f"installed unknown distribution ({module})"
    assert host.collect(info, {}) == {"from": f"ext_{uid}", "settings": {}}
    broken = by_key(host)["broken"]
    assert broken.status.startswith("failed: ModuleNotFoundError")
    assert set(host.loaded()) == {f"ext_{uid}", *BUILTINS}


# --- python3 main.py plugins ---------------------------------------------------------------


def run_plugins_command(
    tmp_path: Path, config: dict | None = None
) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, str(PROJECT_ROOT / "main.py"), "plugins"]
    if config is not None:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        args += ["--config", str(path)]
    return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=60)


def table(output: str) -> list[list[str]]:
    """The plugin table: the output's first block."""
    return [line.split() for line in output.split("\n\n")[0].splitlines() if line.strip()]


def test_plugins_command_lists_builtins(tmp_path: Path) -> None:
    result = run_plugins_command(tmp_path)
    assert result.returncode == 0, result.stderr
    rows = table(result.stdout)
    assert rows[0] == ["NAME", "VERSION", "TOPIC", "STATUS", "SOURCE"]
    found = {row[0]: row for row in rows[1:]}
    assert set(found) == BUILTINS
    temperature = found["temperature"]
    assert temperature[1:4] == ["1.0.0", "sparklem.temperature", "ok"]
    # no ./plugins in this directory: the built-ins come from the installed distribution
    assert temperature[4:6] == ["installed", "sparklem"]
    assert temperature[-1] == "(sparklem_plugins.temperature)"
    assert found["pu_workload"][2:4] == ["sparklem.pu_workload", "ok"]


def test_plugins_command_lists_each_plugins_settings(tmp_path: Path) -> None:
    result = run_plugins_command(tmp_path)
    assert result.returncode == 0, result.stderr
    blocks = {b.splitlines()[0]: b for b in result.stdout.split("\n\n")[1:]}
    temperature = blocks["settings of temperature (plugins.temperature.*):"]
    rows = {tuple(line.split()[:2]): line.split() for line in temperature.splitlines()[2:]}
    assert rows[("processor", "min_celsius")][2:4] == ["float", "-90"]
    assert rows[("processor", "max_celsius")][2:4] == ["float", "200"]
    assert rows[("agent", "interval")][2:4] == ["float", "30"]
    assert rows[("agent", "thermal_root")][2:4] == ["str", "/sys/class/thermal"]
    assert "lowest plausible reading" in " ".join(rows[("processor", "min_celsius")])
    pu_workload = blocks["settings of pu_workload (plugins.pu_workload.*):"]
    assert "nvidia_smi" in pu_workload and "proc_root" in pu_workload


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"temperatur": {}}, "plugins.temperatur"),
        ({"temperature": {"min_celsius": "abc"}}, "plugins.temperature.min_celsius"),
        ({"temperature": {"enabled": "false"}}, "plugins.temperature.enabled"),
    ],
)
def test_plugins_command_refuses_bad_sections(tmp_path: Path, section: dict, key: str) -> None:
    result = run_plugins_command(tmp_path, {"plugins": section})
    assert result.returncode == 2
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr
    assert key in result.stderr and "Traceback" not in result.stderr


def test_plugins_command_shows_failures_overrides_and_disabled(tmp_path: Path, uid: str) -> None:
    plugins = tmp_path / "plugins"
    make_plugin(plugins, f"good_{uid}")
    make_plugin(plugins, f"needs_{uid}", requirements=f"sparklem-absent-{uid}\n")
    make_plugin(plugins, f"boom_{uid}", source="raise RuntimeError('kaboom')\n")
    config = {
        "plugins_dir": str(plugins),
        "plugins": {"temperature": {"topic": "site.temps"}, "pu_workload": {"enabled": False}},
    }
    result = run_plugins_command(tmp_path, config)
    assert result.returncode == 0, result.stderr
    block = result.stdout.split("\n\n")[0]
    lines = {line.split()[0]: line for line in block.splitlines()[1:] if line.strip()}
    assert set(lines) == {f"good_{uid}", f"needs_{uid}", f"boom_{uid}", *BUILTINS}
    assert lines[f"good_{uid}"].split()[1:4] == ["0.3.1", f"sparklem.good_{uid}", "ok"]
    assert f"missing requirement sparklem-absent-{uid}" in lines[f"needs_{uid}"]
    assert "failed: RuntimeError: kaboom" in lines[f"boom_{uid}"]
    assert lines["temperature"].split()[2] == "site.temps"
    assert " disabled " in lines["pu_workload"]
    assert f"directory {plugins / f'boom_{uid}'}" in lines[f"boom_{uid}"]
    assert "installed sparklem" in lines["temperature"]
