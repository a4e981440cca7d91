"""sparklem_core.config (file, environment, checks, masking) and the CLI's handling of it."""

from __future__ import annotations

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

from sparklem_core import protocol
from sparklem_core.config import (
    PROJECT_ROOT,
    Config,
    ConfigError,
    ProcessorSettings,
    load_config,
    mask_url,
)

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
    assert config.database_url == f"sqlite:///{PROJECT_ROOT / 'db.sqlite3'}"
    assert config.certificates == Path("certificates")
    assert config.plugins_dir == PROJECT_ROOT / "plugins"
    assert config.plugins == {}
    assert config.processor == ProcessorSettings()
    assert config.processor.max_message_bytes == 1024 * 1024
    assert config.processor.clock_skew_s == 300.0
    assert config.processor.dead_letter_topic is None


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
        ({"kafka": {"Bad Name": 1}}, "Bad Name"),
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
    kid = protocol.key_id(key)
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
