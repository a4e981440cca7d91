"""docs/writing-plugins.md stays in step with sparklem_core.hookspecs, and its example works."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pluggy
import pytest
from harness import ROOT as PROJECT_ROOT

from sparklem_core import Message, hookspecs, wire
from sparklem_core.admin.scaffold import files, write_plugin
from sparklem_core.db import plugin_tables
from sparklem_core.db.store import Store
from sparklem_core.plugin_host import PluginHost
from sparklem_core.processor.consumer import CONSUMER_DEFAULTS
from sparklem_core.settings.config import HttpSettings, ProcessorSettings
from sparklem_core.settings.validation import plugin_settings
from sparklem_core.testing.plugin import MakeHarness

GUIDE = PROJECT_ROOT / "docs" / "writing-plugins.md"


@pytest.fixture(scope="module")
def guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


def level3_headings(text: str) -> list[str]:
    """``### x`` headings outside fenced code blocks."""
    headings, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.fullmatch(r"###\s+(.+?)\s*#*\s*", line)):
            headings.append(match.group(1).strip("`"))
    return headings


def test_all_hooks_lists_every_hookspec() -> None:
    pm = pluggy.PluginManager("sparklem")
    pm.add_hookspecs(hookspecs)
    declared = {name for name in vars(pm.hook) if not name.startswith("_")}
    assert set(hookspecs.ALL_HOOKS) == declared
    assert len(hookspecs.ALL_HOOKS) == len(set(hookspecs.ALL_HOOKS)) >= 4


def test_every_hook_has_a_heading(guide: str) -> None:
    headings = level3_headings(guide)
    missing = [hook for hook in hookspecs.ALL_HOOKS if hook not in headings]
    assert not missing, f"docs/writing-plugins.md lacks '### <hook>' for {missing}"
    assert all(headings.count(hook) == 1 for hook in hookspecs.ALL_HOOKS)


def test_no_heading_names_a_hook_that_does_not_exist(guide: str) -> None:
    stale = [
        h
        for h in level3_headings(guide)
        if h.startswith("sparklem_") and h not in hookspecs.ALL_HOOKS
    ]
    assert not stale, f"docs/writing-plugins.md documents hooks that no longer exist: {stale}"


@pytest.mark.parametrize("hook", hookspecs.ALL_HOOKS)
def test_hookspec_docstring_says_when_it_is_called(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert "Called" in doc, f"{hook}'s docstring must say when it is called ('Called ...')"


def test_hooks_are_grouped_by_side() -> None:
    grouped = set(hookspecs.PROCESSOR_HOOKS) | set(hookspecs.AGENT_HOOKS)
    assert grouped == set(hookspecs.ALL_HOOKS)


@pytest.mark.parametrize("hook", hookspecs.ALL_HOOKS)
def test_hookspec_docstring_documents_every_argument_and_the_result(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    for name in inspect.signature(getattr(hookspecs, hook)).parameters:
        assert f":param {name}:" in doc, f"{hook}'s docstring lacks ':param {name}:'"
    assert ":return:" in doc, f"{hook}'s docstring lacks ':return:'"


def hook_section(guide: str, hook: str) -> str:
    """The guide's text from ``### <hook>`` to the next heading."""
    match = re.search(rf"^### {hook}\n(.*?)(?=^#)", guide + "\n#", re.M | re.S)
    assert match is not None, f"no '### {hook}' in the guide"
    return match.group(1)


@pytest.mark.parametrize("hook", hookspecs.ALL_HOOKS)
def test_the_guide_documents_every_argument_and_the_result(guide: str, hook: str) -> None:
    section = hook_section(guide, hook)
    prose = re.sub(r"```.*?```", "", section, flags=re.S)
    for name in inspect.signature(getattr(hookspecs, hook)).parameters:
        assert f"`{name}`" in prose, f"the guide's {hook} section does not explain `{name}`"
    assert "Returns" in prose, f"the guide's {hook} section does not say what it returns"
    assert "Called" in prose, f"the guide's {hook} section does not say when it is called"


@pytest.mark.parametrize("hook", hookspecs.ALL_HOOKS)
def test_documented_signature_matches_the_hookspec(guide: str, hook: str) -> None:
    line = re.search(rf"^def {hook}\(.*$", guide, re.M)
    assert line is not None, f"no 'def {hook}(...)' in the guide"
    (function,) = ast.parse(line.group()).body
    assert isinstance(function, ast.FunctionDef)
    documented = [arg.arg for arg in function.args.args]
    assert documented == list(inspect.signature(getattr(hookspecs, hook)).parameters)


def test_every_keyword_of_register_is_documented(guide: str) -> None:
    """register(name, *columns, time=..., ...): the hookspec and the guide explain each keyword."""
    keywords = [
        p.name
        for p in inspect.signature(plugin_tables.declare).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    assert keywords
    doc = inspect.getdoc(hookspecs.sparklem_register_tables) or ""
    prose = re.sub(r"```.*?```", "", hook_section(guide, "sparklem_register_tables"), flags=re.S)
    for name in keywords:
        assert f"``{name}``" in doc, f"sparklem_register_tables' docstring lacks ``{name}``"
        assert f"`{name}`" in prose, f"the guide's sparklem_register_tables lacks `{name}`"


def test_guide_shows_the_generated_pyproject_in_full(guide: str) -> None:
    assert f"```toml\n{files('humidity')['pyproject.toml']}```" in guide


def test_guide_testing_example_runs_against_the_generated_plugin(
    guide: str, tmp_path: Path, plugin_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_plugin("humidity", tmp_path / "sparklem-humidity")
    monkeypatch.syspath_prepend(str(tmp_path / "sparklem-humidity"))
    section = guide[guide.index("## Testing a plugin") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    namespace: dict[str, Any] = {}
    try:
        exec(compile(code.group(1), "writing-plugins.md", "exec"), namespace)
        namespace["test_a_sample_is_stored"](plugin_harness)
    finally:  # the package lives in tmp_path: no later import may find it cached
        for name in [m for m in sys.modules if m.partition(".")[0] == "sparklem_humidity"]:
            del sys.modules[name]


def test_guide_lists_every_field_of_message(guide: str) -> None:
    section = guide[guide.index("### Message") : guide.index("### PluginResult")]
    for field in dataclasses.fields(Message):
        assert f"| `{field.name}` |" in section, f"the guide's Message table lacks {field.name}"


def test_guide_covers_layout_types_and_entry_points(guide: str) -> None:
    for word in (
        "__init__.py",
        "manifest.py",
        "requirements.txt",
        "server.py",
        "main.py",
        "[project.entry-points.sparklem]",
        "### Manifest",
        "### Setting",
        "### Message",
        "### PluginResult",
        "### InvalidPayload",
        "invalid_reading",
        "invalid_payload",
        "register(",
    ):
        assert word in guide, word


# --- the example plugin, extracted from the guide and run ---------------------------------------


def example_files(guide: str) -> dict[str, str]:
    """``#### `plugins/humidity/<file>` `` followed by a fenced block."""
    pattern = re.compile(r"^#### `plugins/humidity/([^`]+)`\s*\n+```[a-z]*\n(.*?)^```", re.M | re.S)
    return {name: body for name, body in pattern.findall(guide)}


def test_example_plugin_works(guide: str, tmp_path: Path) -> None:
    files = example_files(guide)
    assert set(files) == {"__init__.py", "manifest.py", "requirements.txt", "server.py", "main.py"}
    directory = tmp_path / "plugins" / "humidity"
    directory.mkdir(parents=True)
    for name, body in files.items():
        (directory / name).write_text(body, encoding="utf-8")

    host = PluginHost(tmp_path / "plugins")
    info = host.loaded()["humidity"]
    assert info.status == "ok" and info.source == f"directory {directory}"
    assert info.manifest is not None and info.manifest.topic == "sparklem.humidity"

    store = Store(f"sqlite:///{tmp_path}/db.sqlite3", "docs")
    host.register_tables(store.register_table, store.drop_registrations)
    assert store.table_owner("humidity_readings") == "humidity"
    store.create_schema()
    store.dispose()

    sent = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    samples = [
        {"sensor": "iio:device0", "percent": 41.5},
        {"sensor": "iio:device1", "percent": 140},
        {"sensor": "", "percent": 3},
        "nope",
    ]
    settings = plugin_settings(info.manifest, {})
    result = host.process(
        info, Message("edge-1", "humidity", 3, sent, {"samples": samples}, sent), settings
    )
    assert result.rows == {
        "humidity_readings": [
            {
                "agent_id": "edge-1",
                "seq": 3,
                "sensor": "iio:device0",
                "percent": 41.5,
                "measured_at": sent,
            }
        ]
    }
    assert [r.reading for r in result.rejected] == samples[1:]

    from sparklem_core import InvalidPayload

    with pytest.raises(InvalidPayload):
        host.process(info, Message("edge-1", "humidity", 4, sent, {"samples": []}, sent), settings)

    sensor = tmp_path / "iio:device0" / "in_humidityrelative_input"
    sensor.parent.mkdir()
    sensor.write_text("45250\n")
    collect = plugin_settings(info.manifest, {"topic": "t", "path": str(sensor)}, "agent")
    assert collect["interval"] == 60
    assert host.collect(info, collect) == {"samples": [{"sensor": "iio:device0", "percent": 45.25}]}
    assert host.collect(info, {"path": str(tmp_path / "absent")}) is None


def test_every_rejection_reason_is_documented() -> None:
    for page in (PROJECT_ROOT / "docs" / "architecture.md", PROJECT_ROOT / "docs" / "protocol.md"):
        text = page.read_text(encoding="utf-8")
        missing = [reason for reason in wire.REASONS if f"`{reason}`" not in text]
        assert not missing, f"{page.name} does not document {missing}"


# --- documented settings match their declarations ------------------------------------------

README = PROJECT_ROOT / "README.md"
CONFIGURATION = PROJECT_ROOT / "docs" / "configuration.md"


def documented_settings(text: str) -> dict[str, tuple[str, str]]:
    """``| `key` | <side or environment> | <default> | ...`` rows: key -> (second, default)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(
            r"`(processor|http|plugins)\.[a-z_]+\.?[a-z_]*`", cells[0]
        ):
            rows[cells[0].strip("`")] = (cells[1], cells[2].strip("`"))
    return rows


def same_default(documented: str, declared: Any) -> bool:
    if declared is None:
        return documented == "none"
    if isinstance(declared, bool) or not isinstance(declared, int | float):
        return documented == str(declared)
    try:
        return float(documented) == float(declared)
    except ValueError:
        return False


def declared_settings() -> dict[str, tuple[str, Any]]:
    """Every setting the project declares: key -> (side, default)."""
    declared: dict[str, tuple[str, Any]] = {
        f"processor.{name}": ("", info.default)
        for name, info in ProcessorSettings.model_fields.items()
    }
    declared.update(
        (f"http.{name}", ("", info.default)) for name, info in HttpSettings.model_fields.items()
    )
    for name, info in PluginHost(PROJECT_ROOT / "plugins").loaded().items():
        assert info.manifest is not None
        for setting in info.manifest.settings:
            declared[f"plugins.{name}.{setting.name}"] = (setting.side, setting.default)
    return declared


def test_documented_settings_match_their_declarations() -> None:
    documented = documented_settings(CONFIGURATION.read_text(encoding="utf-8"))
    declared = declared_settings()
    assert sorted(set(declared) - set(documented)) == [], "declared but not in configuration.md"
    assert sorted(set(documented) - set(declared)) == [], "in configuration.md but not declared"
    wrong = {
        key: (documented[key], declared[key])
        for key in declared
        if not same_default(documented[key][1], declared[key][1])
        or (declared[key][0] and documented[key][0] != declared[key][0])
    }
    assert wrong == {}, "configuration.md and the declarations disagree (documented, declared)"


def test_documented_settings_detector_sees_a_disagreement() -> None:
    text = "| `processor.batch_size` | | 50 | x |\n| `plugins.a.b` | agent | `/x` | y |\n"
    assert documented_settings(text) == {
        "processor.batch_size": ("", "50"),
        "plugins.a.b": ("agent", "/x"),
    }
    assert not same_default("50", 500) and same_default("0.2", 0.2)
    assert same_default("none", None) and same_default("/x", "/x")


# --- no secret on a command line ------------------------------------------------------------

COMMAND_LINE_SECRET = re.compile(
    r"PASSPHRASE=['\"]?[^\s'\"$]"  # a passphrase assigned on the command line
    r"|--passphrase(?!-file)\b"
    r"|://[^:/\s]+:(?!\$\{)[^@\s]+@"  # a URL with a password (not ${VAR}) in an argument
)


def shell_lines(path: Path) -> list[str]:
    """Lines of ```sh blocks (of Markdown) or the comments of a Dockerfile."""
    text = path.read_text(encoding="utf-8")
    if path.name == "Dockerfile":
        return [line for line in text.splitlines() if line.startswith("#")]
    return [
        line
        for block in re.findall(r"^```(?:sh|bash|shell|console)\n(.*?)^```", text, re.M | re.S)
        for line in block.splitlines()
    ]


@pytest.mark.parametrize(
    "path",
    [
        README,
        GUIDE,
        *(
            PROJECT_ROOT / "docs" / f"{name}.md"
            for name in ("deployment", "operations", "reading", "testing")
        ),
        PROJECT_ROOT / "Dockerfile",
    ],
    ids=lambda p: p.name,
)
def test_docs_never_put_a_secret_on_a_command_line(path: Path) -> None:
    lines = shell_lines(path)
    assert lines or path == GUIDE
    offending = [line for line in lines if COMMAND_LINE_SECRET.search(line)]
    assert offending == [], f"{path.name}: use a file or the environment (ps shows arguments)"


def test_the_command_line_secret_detector() -> None:
    for line in [
        "SPARKLEM_AGENT_PASSPHRASE='abc' sparklem-agent",
        "-e SPARKLEM_DATABASE_URL='postgresql+psycopg://u:SECRET@db/x' \\",
        "gen_config.py --passphrase hunter2",
    ]:
        assert COMMAND_LINE_SECRET.search(line), line
    for line in [
        "read -rs SPARKLEM_AGENT_PASSPHRASE && export SPARKLEM_AGENT_PASSPHRASE",
        "-e SPARKLEM_AGENT_PASSPHRASE \\",
        "sparklem-agent --passphrase-file /etc/sparklem/passphrase",
        "URL=postgresql://sparklem:${POSTGRES_PASSWORD}@db/x",
    ]:
        assert not COMMAND_LINE_SECRET.search(line), line


# --- the README stays short, and its links into docs/ lead somewhere -------------------------

PAGES = [README, *sorted((PROJECT_ROOT / "docs").glob("*.md"))]


def test_readme_is_under_250_lines() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 250, f"README.md has {len(lines)} lines: move detail into docs/"


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings (outside fenced code blocks)."""
    found: set[str] = set()
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.fullmatch(r"#{1,6}\s+(.+?)\s*#*\s*", line)):
            slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
            anchor, n = slug, 0
            while anchor in found:
                n += 1
                anchor = f"{slug}-{n}"
            found.add(anchor)
    return found


def relative_links(text: str) -> list[str]:
    """Targets of ``[text](target)`` links that are neither URLs nor mail addresses."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", prose) if not re.match(r"[a-z]+:", t)]


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in relative_links(page.read_text(encoding="utf-8")):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif (
            anchor
            and linked.suffix == ".md"
            and anchor not in anchors(linked.read_text(encoding="utf-8"))
        ):
            broken.append(f"{target}: no such heading in {linked.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_lead_to_a_file_and_heading(page: Path) -> None:
    assert broken_links(page) == []


def test_the_readme_links_into_docs() -> None:
    targets = {t.partition("#")[0] for t in relative_links(README.read_text(encoding="utf-8"))}
    pages = {f"docs/{p.name}" for p in (PROJECT_ROOT / "docs").glob("*.md")}
    assert pages <= targets, f"README.md links to no {sorted(pages - targets)}"


def test_the_link_checker_sees_a_missing_file_and_heading(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    headings = "# A\n\n## The hot path's budget, in µs\n\n## x\n## x\n"
    (tmp_path / "docs" / "a.md").write_text(headings, encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md#the-hot-paths-budget-in-µs) [ok](docs/a.md#x-1) `[no](docs/z.md)`\n"
        "[gone](docs/b.md) [bad](docs/a.md#y) [web](https://example.com/z.md)\n"
        "```\n[code](docs/c.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(page) == ["docs/b.md: no such file", "docs/a.md#y: no such heading in a.md"]


def test_the_configuration_page_names_the_consumers_kafka_defaults() -> None:
    page = PROJECT_ROOT / "docs" / "configuration.md"
    (row,) = [line for line in page.read_text().splitlines() if line.startswith("| `kafka.*`")]
    missing = [f"{k}: {v}" for k, v in CONSUMER_DEFAULTS.items() if f"`{k}: {v}`" not in row]
    assert missing == [], "docs/configuration.md's kafka.* row does not give these defaults"
