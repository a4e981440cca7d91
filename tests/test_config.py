"""sparklem_core.settings.config (file, environment, checks, masking) and its CLI handling."""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from Crypto.PublicKey import RSA
from harness import ROOT as PROJECT_ROOT
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sparklem_core import plugin_api, wire
from sparklem_core.settings.config import (
    KAFKA_DEFAULTS,
    Config,
    ConfigError,
    ProcessorSettings,
    SecretFilter,
    load_config,
    load_plugins,
    mask_secrets,
    mask_url,
)
from sparklem_core.settings.kafka import property_table

MAIN = PROJECT_ROOT / "main.py"


def write(tmp_path: Path, doc: Any, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc), encoding="utf-8")
    return path


def load(tmp_path: Path, doc: Any, env: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, doc), env={} if env is None else env)


def error(tmp_path: Path, doc: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, doc)
    return str(caught.value)


# --- defaults, file, environment -----------------------------------------------------------


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.yaml here
    config = load_config(env={})
    assert config.source == "defaults"
    assert config.bootstrap_servers == "localhost:9092"
    assert config.group_id == "sparklem-processor"
    assert config.database_url == f"sqlite:///{tmp_path.resolve() / 'db.sqlite3'}"
    assert config.certificates == Path("certificates")
    assert config.plugins_dir is None  # no ./plugins here: installed plugins only
    assert config.plugins == {}
    assert config.processor == ProcessorSettings()
    assert config.processor.max_message_bytes == 1024 * 1024
    assert config.processor.clock_skew_s == 300.0
    assert config.processor.dead_letter_topic is None


def test_default_plugins_dir_is_the_current_directorys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "plugins").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_config(env={}).plugins_dir == tmp_path.resolve() / "plugins"


def test_default_file_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, {"kafka": {"group.id": "from-cwd"}})
    monkeypatch.chdir(tmp_path)
    config = load_config(env={})
    assert config.group_id == "from-cwd"
    assert config.source == "config.yaml"


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    assert config.bootstrap_servers == "localhost:9092"
    assert config.source == str(tmp_path / "config.yaml")


def test_file_values(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {
            "kafka": {
                "bootstrap.servers": "k1:9092,k2:9092",
                "group.id": "g1",
                "session.timeout.ms": 6000,
            },
            "database": {"url": "postgresql+psycopg://u:pw@db/sparklem"},
            "certificates": "/etc/sparklem/certs",
            "plugins_dir": "/opt/plugins",
            "plugins": {
                "temperature": {"max_celsius": 150, "topic": "t.temp"},
                "pu_workload": {"enabled": False},
            },
            "processor": {
                "batch_size": 50,
                "poll_timeout_s": 1,
                "clock_skew_s": 60.5,
                "dead_letter_topic": "dlq",
            },
        },
    )
    assert config.bootstrap_servers == "k1:9092,k2:9092"
    assert config.group_id == "g1"
    assert config.kafka["session.timeout.ms"] == 6000
    assert config.database_url == "postgresql+psycopg://u:pw@db/sparklem"
    assert config.certificates == Path("/etc/sparklem/certs")
    assert config.plugins_dir == Path("/opt/plugins")
    assert config.plugin_settings("temperature") == {"max_celsius": 150, "topic": "t.temp"}
    assert config.plugin_topic("temperature", "sparklem.temperature") == "t.temp"
    assert config.plugin_topic("pu_workload", "sparklem.pu_workload") == "sparklem.pu_workload"
    assert config.plugin_enabled("temperature") and not config.plugin_enabled("pu_workload")
    assert config.plugin_enabled("never_mentioned")
    assert config.processor.batch_size == 50
    assert config.processor.poll_timeout_s == 1.0 and type(config.processor.poll_timeout_s) is float
    assert config.processor.clock_skew_s == 60.5
    assert config.processor.dead_letter_topic == "dlq"


ENV = {
    "SPARKLEM_BOOTSTRAP_SERVERS": "env-broker:19092",
    "SPARKLEM_DATABASE_URL": "sqlite:////var/lib/sparklem/env.db",
    "SPARKLEM_CERTIFICATES_DIR": "/env/certs",
    "SPARKLEM_GROUP_ID": "env-group",
}


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    doc = {
        "kafka": {"bootstrap.servers": "file:9092", "group.id": "file-group"},
        "database": {"url": "sqlite:////file.db"},
        "certificates": "/file/certs",
    }
    config = load(tmp_path, doc, env=ENV)
    assert config.bootstrap_servers == "env-broker:19092"
    assert config.group_id == "env-group"
    assert config.database_url == "sqlite:////var/lib/sparklem/env.db"
    assert config.certificates == Path("/env/certs")


@pytest.mark.parametrize("var", sorted(ENV))
def test_each_environment_variable_alone(tmp_path: Path, var: str) -> None:
    config = load(tmp_path, {}, env={var: ENV[var]})
    values = {
        "SPARKLEM_BOOTSTRAP_SERVERS": config.bootstrap_servers,
        "SPARKLEM_DATABASE_URL": config.database_url,
        "SPARKLEM_CERTIFICATES_DIR": str(config.certificates),
        "SPARKLEM_GROUP_ID": config.group_id,
    }
    assert values[var] == ENV[var]
    defaults = load(tmp_path, {}, env={})
    for other in set(ENV) - {var}:
        assert values[other] != ENV[other]
    assert config.processor == defaults.processor


def test_empty_environment_variables_are_ignored(tmp_path: Path) -> None:
    config = load(tmp_path, {"kafka": {"group.id": "file-group"}}, env=dict.fromkeys(ENV, ""))
    assert config.group_id == "file-group"
    assert config.bootstrap_servers == "localhost:9092"


def test_environment_defaults_to_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPARKLEM_GROUP_ID", "from-os-environ")
    assert load_config(write(tmp_path, {})).group_id == "from-os-environ"


# --- errors name the key ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"kafak": {}}, "kafak"),
        ({"processor": {"batchsize": 10}}, "batchsize"),
        ({"database": {"uri": "sqlite://"}}, "uri"),
        ({"processor": {"batch_size": "10"}}, "processor.batch_size"),
        ({"processor": {"batch_size": 0}}, "processor.batch_size"),
        ({"processor": {"batch_size": True}}, "processor.batch_size"),
        ({"processor": {"batch_size": 2.5}}, "processor.batch_size"),
        ({"processor": {"poll_timeout_s": "fast"}}, "processor.poll_timeout_s"),
        ({"processor": {"clock_skew_s": -1}}, "processor.clock_skew_s"),
        ({"processor": {"clock_skew_s": False}}, "processor.clock_skew_s"),
        ({"processor": {"dead_letter_topic": 5}}, "processor.dead_letter_topic"),
        ({"processor": [1, 2]}, "processor"),
        ({"kafka": "localhost:9092"}, "kafka"),
        ({"kafka": {"bootstrap.servers": ["a", "b"]}}, "kafka.bootstrap.servers"),
        ({"kafka": {"Bad Name": 1}}, "kafka: Bad... is not a valid name"),
        ({"database": "sqlite://"}, "database"),
        ({"database": {"url": 5}}, "database.url"),
        ({"database": {"url": "not a url"}}, "database.url"),
        ({"certificates": ["a"]}, "certificates"),
        ({"certificates": ""}, "certificates"),
        ({"plugins_dir": 3}, "plugins_dir"),
        ({"plugins": ["temperature"]}, "plugins"),
        ({"plugins": {"temperature": 5}}, "plugins.temperature"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_errors_name_the_key(tmp_path: Path, doc: dict[str, Any], key: str) -> None:
    assert key in error(tmp_path, doc)


@pytest.mark.parametrize("prop", ["enable.auto.commit", "enable.auto.offset.store"])
@pytest.mark.parametrize("value", [True, False, "false"])
def test_offset_properties_are_refused(tmp_path: Path, prop: str, value: Any) -> None:
    message = error(tmp_path, {"kafka": {prop: value}})
    assert f"kafka.{prop}" in message and "remove it" in message


def test_unknown_key_error_lists_the_known_ones(tmp_path: Path) -> None:
    message = error(tmp_path, {"kafka": {}, "datbase": {}, "zzz": 1})
    assert "datbase" in message and "zzz" in message
    assert "database" in message.split("(known:")[1]


def test_invalid_yaml(tmp_path: Path) -> None:
    message = error(tmp_path, "kafka: {bootstrap.servers: [unclosed\n")
    assert "not valid YAML" in message and "config.yaml" in message


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    assert "mapping" in error(tmp_path, "- kafka\n- database\n")


def test_missing_explicit_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="does not exist") as caught:
        load_config(missing, env={})
    assert str(missing) in str(caught.value)


def test_invalid_url_error_does_not_show_the_password(tmp_path: Path) -> None:
    message = error(tmp_path, {"database": {"url": "postgresql://u:s3cret@h:notaport/db"}})
    assert "database.url" in message and "s3cret" not in message


# --- mask_url ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://user:s3cret@db:5432/sparklem", "postgresql://user:***@db:5432/sparklem"),
        ("postgresql+psycopg://user:s3cret@db/x", "postgresql+psycopg://user:***@db/x"),
        ("postgresql://user:p%40ss%2Fw@db/x", "postgresql://user:***@db/x"),
        ("postgresql://user:p@ss@db/x", "postgresql://user:***@db/x"),
        ("postgresql://user:pa/ss@db/x", "postgresql://user:***@db/x"),
        ("postgresql://user:pa/ss@db", "postgresql://user:***@db"),
        ("redis://:tok@cache:6379/0", "redis://:***@cache:6379/0"),
        ("mysql://u:pw@h", "mysql://u:***@h"),
        (
            "from postgresql://a:one@h1/db to mysql+pymysql://b:two@h2:3306/db2, done",
            "from postgresql://a:***@h1/db to mysql+pymysql://b:***@h2:3306/db2, done",
        ),
        (
            "urls=postgresql://a:one@h1,postgresql://b:two@h2/db",
            "urls=postgresql://a:***@h1,postgresql://b:***@h2/db",
        ),
        (
            "database=postgresql://u:pw@h/db contact admin@example.com",
            "database=postgresql://u:***@h/db contact admin@example.com",
        ),
    ],
)
def test_mask_url_masks_passwords(text: str, masked: str) -> None:
    assert mask_url(text) == masked
    assert mask_url(masked) == masked  # idempotent


@pytest.mark.parametrize(
    "text",
    [
        "sqlite:////var/lib/sparklem/db.sqlite3",
        "sqlite:///db.sqlite3",
        "postgresql://user@db:5432/sparklem",
        "postgresql://db/sparklem",
        "http://broker:8080/path",
        "bootstrap=localhost:9092 group=sparklem-processor",
        "no url here: user:password@host",
        "",
    ],
)
def test_mask_url_leaves_urls_without_password(text: str) -> None:
    assert mask_url(text) == text


# --- the CLI, through a real process --------------------------------------------------------


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARKLEM_")}
    env["SPARKLEM_CERTIFICATES_DIR"] = str(tmp_path / "certs")
    env["SPARKLEM_DATABASE_URL"] = f"sqlite:///{tmp_path}/db.sqlite3"
    env["SPARKLEM_BOOTSTRAP_SERVERS"] = "127.0.0.1:1"  # nothing listens: never reached
    env.update(extra)
    return env


def cli(
    tmp_path: Path, *args: str, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(MAIN), *args],
        cwd=tmp_path,  # no ./config.yaml of the checkout's
        env=cli_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "args", [["--help"], ["run", "--help"], ["init", "--help"], ["plugins", "--help"]]
)
def test_cli_help(tmp_path: Path, args: list[str]) -> None:
    result = cli(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert "usage: main.py" in result.stdout
    assert result.stderr == ""


def test_cli_help_mentions_commands_and_environment(tmp_path: Path) -> None:
    out = cli(tmp_path, "--help").stdout
    for word in ("run", "init", "plugins", "SPARKLEM_DATABASE_URL"):
        assert word in out
    assert "--config" in cli(tmp_path, "run", "--help").stdout


def test_cli_help_says_what_prune_does(tmp_path: Path) -> None:
    out = cli(tmp_path, "--help").stdout
    assert "prune     delete, once, the rows their table's retention no longer keeps" in out


ENROL_AS_SCRIPT = "import sys; from sparklem_core.admin.cli import main; sys.exit(main())"


# A checkout's entry points pass their file name as prog; the console scripts
# (sparklem_core.cli:main, sparklem_core.admin.cli:main) do not.
@pytest.mark.parametrize(
    "argv, enroll",
    [
        ([str(MAIN), "plugins"], "python3 gen_config.py"),
        ([str(PROJECT_ROOT / "gen_config.py"), "--agent-id", "edge-1"], "python3 gen_config.py"),
        (["-m", "sparklem_core.cli", "plugins"], "sparklem-enroll"),
        (["-c", ENROL_AS_SCRIPT, "--agent-id", "edge-1"], "sparklem-enroll"),
    ],
)
def test_a_setting_in_the_wrong_place_names_the_enrol_command_the_user_has(
    tmp_path: Path, argv: list[str], enroll: str
) -> None:
    config = write(tmp_path, {"plugins": {"temperature": {"interval": 5}}})
    result = subprocess.run(
        [sys.executable, *argv, "--config", str(config)], cwd=tmp_path, env=cli_env(tmp_path),
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.endswith(f"it belongs in the agent's bundle ({enroll} --set)"), line


def test_cli_unknown_config_key_exits_2_with_one_line(tmp_path: Path) -> None:
    config = write(tmp_path, {"kafka": {}, "bogus_key": 1}, name="bad.yaml")
    result = cli(tmp_path, "run", "--config", str(config))
    assert result.returncode == 2
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "bogus_key" in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_refused_kafka_property_exits_2(tmp_path: Path) -> None:
    config = write(tmp_path, {"kafka": {"enable.auto.commit": True}}, name="bad.yaml")
    result = cli(tmp_path, "plugins", "--config", str(config))
    assert result.returncode == 2
    assert "kafka.enable.auto.commit" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("kafka", "message"),
    [
        (
            {"bootstrap.server": "k:9092"},
            "kafka.bootstrap.server: not a librdkafka property (did you mean bootstrap.servers?)",
        ),
        (
            {"session.timeout.ms": "abc"},
            "kafka.session.timeout.ms: librdkafka refuses this value (expects integer, 1 .. ",
        ),
    ],
)
@pytest.mark.parametrize("command", ["run", "init"])
def test_cli_kafka_property_librdkafka_refuses_exits_2_in_one_line(
    tmp_path: Path, command: str, kafka: dict[str, Any], message: str
) -> None:
    config = write(tmp_path, {"kafka": kafka}, name="bad.yaml")
    result = cli(tmp_path, command, "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"main.py: configuration error: {message}")
    assert result.stderr.count("\n") == 1 and result.stdout == "", result.stderr
    assert not (tmp_path / "certs").exists()  # refused before init did anything


def test_cli_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = cli(tmp_path, "run", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "absent.yaml" in result.stderr and "Traceback" not in result.stderr


def test_cli_run_without_server_key_says_to_init(tmp_path: Path) -> None:
    result = cli(tmp_path, "run")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "python3 main.py init" in output
    assert "Traceback" not in output


def test_cli_init_creates_the_key_once(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    first = cli(tmp_path, "init", timeout=120)
    assert first.returncode == 0, first.stderr
    key_file = certs / "server_private.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert (certs / "agents").is_dir() and (certs / "revoked").is_dir()
    key = RSA.import_key(key_file.read_bytes())
    assert key.has_private() and key.size_in_bits() >= 2048
    kid = wire.key_id(key)
    assert re.search(rf"^kid:\s+{kid}$", first.stdout, re.M), first.stdout
    assert "created" in first.stdout
    assert (tmp_path / "db.sqlite3").exists()

    pem = key_file.read_bytes()
    second = cli(tmp_path, "init", timeout=120)
    assert second.returncode == 0, second.stderr
    assert key_file.read_bytes() == pem
    assert "already there" in second.stdout
    assert re.search(rf"^kid:\s+{kid}$", second.stdout, re.M)


def test_invalid_url_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SPARKLEM_DATABASE_URL") as caught:
        load(tmp_path, {}, env={"SPARKLEM_DATABASE_URL": "postgresql://u:s3cret@h:port/db"})
    assert "s3cret" not in str(caught.value)


# --- strict values: no coercion, no NaN, no unknown key ------------------------------------


def plugin_error(tmp_path: Path, plugins: dict[str, Any]) -> str:
    config = load(tmp_path, {"plugins": plugins})
    with pytest.raises(ConfigError) as caught:
        load_plugins(config)
    return str(caught.value)


@pytest.mark.parametrize(
    ("kafka", "message"),
    [
        ({"linger.msec": 5}, "kafka.linger.msec: not a librdkafka property (did you mean"),
        ({"auto.offset.reset": "oldest"}, "kafka.auto.offset.reset: librdkafka refuses this value"),
        ({"enable.partition.eof": "yes"}, "kafka.enable.partition.eof: librdkafka refuses"),
        ({"security.protocol": "tls"}, "expects enum value, plaintext, ssl, sasl_plaintext"),
        ({"linger.ms": 5}, "kafka.linger.ms: a producer property; this consumer would ignore it"),
        ({"error_cb": "x"}, "kafka.error_cb: set through librdkafka's C API, not in a config"),
        ({"logger": "x"}, "kafka.logger: not a librdkafka property"),
        ({"client.id": "a\0b"}, "kafka.client.id: must be UTF-8 text without NUL characters"),
        ({"group.id": "\t"}, "kafka.group.id: must not be blank"),  # an abort in C, unchecked
        (
            {"partition.assignment.strategy": "range,cooperative-sticky"},
            "kafka: librdkafka refuses this combination: ",
        ),
    ],
)
def test_kafka_properties_are_checked_by_librdkafka(
    tmp_path: Path, kafka: dict[str, Any], message: str
) -> None:
    assert message in error(tmp_path, {"kafka": kafka})


def test_kafka_properties_librdkafka_takes_are_kept(tmp_path: Path) -> None:
    kafka = {
        "session.timeout.ms": 6000,
        "auto.offset.reset": "latest",
        "security.protocol": "ssl",  # its files are the real consumer's to read
        "ssl.ca.location": str(tmp_path / "absent-ca.pem"),
        "fetch.wait.max.ms": 100,
        "isolation.level": "read_committed",
    }
    assert load(tmp_path, {"kafka": kafka}).kafka == {**KAFKA_DEFAULTS, **kafka}


def test_a_refused_secret_value_is_not_repeated(tmp_path: Path) -> None:
    message = error(tmp_path, {"kafka": {"sasl.password": 5, "acks": 0}})
    assert "kafka.acks: a producer property" in message and "5" not in message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("processor: {registry_refresh_s: .nan}", "processor.registry_refresh_s: must be a finite"),
        ("processor: {clock_skew_s: .nan}", "processor.clock_skew_s: must be a finite number > 0"),
        ("processor: {clock_skew_s: .inf}", "processor.clock_skew_s: must be a finite"),
        ("processor: {poll_timeout_s: -.inf}", "processor.poll_timeout_s: must be a finite"),
        ("processor: {batch_size: '5'}", "processor.batch_size: must be an integer"),
        ("processor: {stats_interval_s: '30'}", "processor.stats_interval_s: must be a finite"),
        ("processor: {batch_size: 1000000}", "processor.batch_size: must be an integer > 0"),
        ("processor: {dead_letter_topic: 'a topic'}", "processor.dead_letter_topic"),
        ("kafka: {session.timeout.ms: .nan}", "kafka.session.timeout.ms: must be a finite"),
        ("kafka: {client.id: {a: 1}}", "kafka.client.id: must be a string, number or boolean"),
        ("plugins: {temperature: {enabled: 'false'}}", "plugins.temperature.enabled: must be true"),
        ("plugins: {temperature: {topic: 5}}", "plugins.temperature.topic: must be a string"),
        ("database: {url: ''}", "database.url: must not be empty"),
        ("certificates: 2026-01-01", "certificates: must be a string (got a date)"),
        ("1: x", "key 1 is not a string"),
    ],
)
def test_values_are_not_coerced(tmp_path: Path, text: str, message: str) -> None:
    assert message in error(tmp_path, text)


@pytest.mark.parametrize(
    "text", ["kafka: {sasl.password S3cret-pw: 1}", "database: {url postgresql://u:S3cret-pw@h}"]
)
def test_a_key_that_swallowed_its_value_is_not_printed_whole(tmp_path: Path, text: str) -> None:
    message = error(tmp_path, text)
    assert "S3cret-pw" not in message and ("sasl.password..." in message or "url..." in message)


def test_one_line_names_every_unknown_key_of_a_section(tmp_path: Path) -> None:
    message = error(tmp_path, {"processor": {"batchsize": 1, "clockskew": 2}})
    assert message.startswith("processor: unknown key(s) batchsize, clockskew (known: ")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("plugins", "message"),
    [
        ({"temperatur": {}}, "plugins.temperatur: no such plugin is installed"),
        ({"temperature": {"min_celsius": "abc"}}, "plugins.temperature.min_celsius: must be a"),
        ({"temperature": {"min_celsius": float("nan")}}, "plugins.temperature.min_celsius"),
        ({"temperature": {"max_celsius": True}}, "plugins.temperature.max_celsius"),
        ({"temperature": {"min_celsius": 50, "max_celsius": 50}}, "min_celsius must be below"),
        ({"temperature": {"min_celsius": 60, "max_celsius": 50}}, "min_celsius must be below"),
        ({"temperature": {"min_celsius": -300}}, "plugins.temperature.min_celsius"),
        ({"temperature": {"max_celsus": 50}}, "plugins.temperature: unknown key(s) max_celsus"),
        ({"temperature": {"interval": 5}}, "plugins.temperature.interval: not a processor"),
        ({"pu_workload": {"proc_root": "/p"}}, "plugins.pu_workload.proc_root: not a processor"),
    ],
)
def test_plugin_sections_are_checked_against_the_declaration(
    tmp_path: Path, plugins: dict[str, Any], message: str
) -> None:
    assert message in plugin_error(tmp_path, plugins)


def test_plugin_settings_get_their_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, {"plugins": {"temperature": {"max_celsius": 150}}})
    host = load_plugins(config)
    assert {"temperature", "pu_workload"} <= set(host.loaded())
    assert config.plugin_settings("temperature") == {
        "enabled": True,
        "topic": "sparklem.temperature",
        "min_celsius": -90.0,
        "max_celsius": 150.0,
    }
    assert type(config.plugin_settings("temperature")["max_celsius"]) is float
    assert config.plugin_settings("pu_workload") == {
        "enabled": True,
        "topic": "sparklem.pu_workload",
    }


def test_a_disabled_plugin_keeps_its_section(tmp_path: Path) -> None:
    config = load(tmp_path, {"plugins": {"pu_workload": {"enabled": False}}})
    host = load_plugins(config)
    assert "pu_workload" not in host.loaded()
    assert not config.plugin_enabled("pu_workload")


@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        ("Setting('x', list, [], 'd')", "type must be bool, int, float or str"),
        ("Setting('x', int, 'a', 'd')", "default must be a int"),
        ("Setting('X', int, 1, 'd')", "is not [a-z]"),
        ("Setting('topic', str, 't', 'd')", "topic is a core setting"),
        ("Setting('interval', str, 'a', 'd', side='agent')", "interval is an agent-side number"),
        ("Setting('x', str, 'a', 'd', ge=1)", "ge/le bound numbers only"),
        ("Setting('x', int, 0, 'd', ge=1)", "default 0 is outside ge/le"),
        ("Setting('x', float, 5, 'd', le=1)", "default 5 is outside ge/le"),
    ],
)
def test_bad_declarations_fail_the_plugin(setting: str, reason: str) -> None:
    with pytest.raises((TypeError, ValueError), match=re.escape(reason)):
        eval(f"Manifest(name='p', version='1', settings=[{setting}])", vars(plugin_api))


# --- secrets -----------------------------------------------------------------------------------


def test_yaml_errors_say_where_not_what(tmp_path: Path) -> None:
    text = 'database:\n  url: "postgresql://sparklem:S3cretPW@db/x\nkafka: {a: [\n'
    message = error(tmp_path, text)
    assert "S3cretPW" not in message and "sparklem" not in message.split("config.yaml")[1]
    assert re.search(r"not valid YAML \(line \d+, column \d+", message), message


def test_yaml_problem_text_quoting_the_file_is_left_out(tmp_path: Path) -> None:
    message = error(tmp_path, "kafka: {sasl.password: *S3cretPW}\n")
    assert "S3cretPW" not in message and "line 1, column" in message


def test_url_errors_never_show_the_url(tmp_path: Path) -> None:
    message = error(tmp_path, {"database": {"url": "postgresql://u:pass word@h:x/db"}})
    assert "pass word" not in message and "pass" not in message.split(":", 1)[1].split("(")[0]


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://u@h/db?password=S3cret&sslmode=require", "?password=***&sslmode=require"),
        ("mysql://h/db?user=u&passwd=S3cret", "&passwd=***"),
        ("host=db password=S3cret dbname=x", "password=*** dbname=x"),
        ("https://api/x?access_token=S3cret", "access_token=***"),
    ],
)
def test_mask_url_masks_secret_parameters(text: str, masked: str) -> None:
    assert masked in mask_url(text) and "S3cret" not in mask_url(text)


def test_secret_filter_masks_every_secret_of_the_config(tmp_path: Path) -> None:
    load(
        tmp_path,
        {
            "database": {"url": "postgresql://u:DbPass-123@h/db?sslpassword=KeyPass-456"},
            "kafka": {"sasl.password": "SaslPass-789", "ssl.key.password": "SslPass-000"},
        },
    )
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretFilter())
    logger = logging.getLogger(f"test-secrets-{id(stream)}")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("plain %s and %s", "DbPass-123", "SaslPass-789")
        logger.error("encoded %s", "KeyPass-456 SslPass-000")
        try:
            raise RuntimeError("connect failed: DbPass-123")
        except RuntimeError:
            logger.exception("with traceback")
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert "plain *** and ***" in output and "RuntimeError: connect failed: ***" in output
    for secret in ("DbPass-123", "KeyPass-456", "SaslPass-789", "SslPass-000"):
        assert secret not in output and secret not in mask_secrets(f"x {secret} y")


# --- any document: a Config or one ConfigError line, never the planted secret ------------------

SECRET = "Pl4nted-Secret"
SPACED_SECRET = "Pl4nted Secret"  # with a blank: a typo cannot turn all of it into a key name
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["false", "5", "", "sparklem.x", SECRET, f"postgresql://u:{SECRET}@h/d"]),
)
keys = st.one_of(
    st.sampled_from(
        [
            "kafka",
            "database",
            "url",
            "processor",
            "plugins",
            "certificates",
            "plugins_dir",
            "temperature",
            "pu_workload",
            "enabled",
            "topic",
            "min_celsius",
            "max_celsius",
            "batch_size",
            "clock_skew_s",
            "dead_letter_topic",
            "sasl.password",
            "group.id",
            "http",
            "listen",
            "ready_max_lag_s",
            "retention",
            "rejected_messages",
            "temperature_readings",
            "prune_batch_rows",
            "prune_batch_s",
            "fleet",
            "silent_after_s",
            "serve",
            "read_tokens",
            "admin_tokens",
            "cors_origins",
            "audit_log",
            "client_buffer",
            "bootstrap.server",
            "session.timeout.ms",
            "linger.ms",
            "auto.offset.reset",
            "security.protocol",
            "error_cb",
        ]
    ),  # fmt: skip
    st.text(max_size=8),
    st.integers(),
)
values = st.recursive(
    scalars, lambda inner: st.dictionaries(keys, inner, max_size=4), max_leaves=12
)
documents = st.dictionaries(keys, values, max_size=5)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(doc=documents)
@example(doc={"retention": {"\n": None}}).via("a key holding a newline, in a mapping of keys")
def test_any_document_gives_a_config_or_one_error_line(tmp_path: Path, doc: dict[Any, Any]) -> None:
    path = tmp_path / "random.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    try:
        config = load_config(path, env={})
        load_plugins(config)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and SECRET not in message
    else:
        assert isinstance(config, Config)


kafka_names = st.one_of(
    st.sampled_from(sorted(property_table() or ["bootstrap.servers"])),
    st.from_regex(r"[a-z][a-z0-9._-]{0,24}", fullmatch=True),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(kafka=st.dictionaries(kafka_names, scalars, max_size=4))
@example(kafka={"bootstrap.server": "k:9092"}).via("issue 18: a typo of a property")
@example(kafka={"session.timeout.ms": "abc"}).via("issue 18: a value librdkafka refuses")
@example(kafka={"group.id": " "}).via("a blank group.id aborts confluent-kafka's Consumer")
def test_any_kafka_section_gives_a_config_or_one_error_line(
    tmp_path: Path, kafka: dict[str, Any]
) -> None:
    """Any librdkafka property name (or none) with any value: checked, never a traceback."""
    path = tmp_path / "random.yaml"
    path.write_text(yaml.safe_dump({"kafka": kafka}), encoding="utf-8")
    try:
        config = load_config(path, env={})
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and SECRET not in message and message.startswith("kafka")
    else:
        assert set(kafka) <= set(config.kafka)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(parts=st.lists(st.sampled_from([*"{}[]:,-'\"&*!?|> \n\tab1.", SPACED_SECRET]), max_size=30))
def test_any_text_gives_a_config_or_one_error_line(tmp_path: Path, parts: list[str]) -> None:
    """Broken YAML around a planted secret: the error says where, never what."""
    text = "".join(parts)
    path = tmp_path / "random.yaml"
    url = f"postgresql://u:{SPACED_SECRET.replace(' ', '%20')}@h/d"
    path.write_text(f"database: {{url: '{url}'}}\n{text}", encoding="utf-8")
    try:
        load_config(path, env={})
    except ConfigError as exc:
        assert "\n" not in str(exc) and SPACED_SECRET not in str(exc)
