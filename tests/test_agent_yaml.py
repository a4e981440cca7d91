"""agent.yaml's declared schema: what a bundle may tell its agent, checked on load."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from Crypto.PublicKey import RSA
from harness import ROOT as PROJECT_ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from sparklem_core.admin import enrollment
from sparklem_core.admin.enrollment import EnrollmentError
from sparklem_core.agent import agent as agent_core
from sparklem_core.fleet.registry import create_server_key
from sparklem_core.settings.config import load_config
from sparklem_core.wire import bundle as bundle_file
from sparklem_core.wire.bundle import BundleError

PASSPHRASE = "correct horse battery staple"
PLUGINS = {"temperature": {"topic": "sparklem.temperature", "interval": 30}}


@pytest.fixture(scope="module")
def keys() -> tuple[RSA.RsaKey, RSA.RsaKey]:
    return RSA.generate(2048), RSA.generate(2048)


@pytest.fixture
def document(keys: tuple[RSA.RsaKey, RSA.RsaKey]) -> dict[str, Any]:
    server, agent_key = keys
    return enrollment.agent_document(
        "edge-1",
        bootstrap="localhost:9092",
        plugins=copy.deepcopy(PLUGINS),
        server_public=server.public_key(),
        agent_key=agent_key,
    )


def parse(doc: dict[str, Any]) -> dict[str, Any]:
    return bundle_file.parse_agent_yaml(yaml.safe_dump(doc).encode())


def test_a_generated_document_passes(document: dict[str, Any]) -> None:
    assert parse(document) == document


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("agent_id",), 12345, "agent.yaml: agent_id: must be a string (got an integer)"),
        (("agent_id",), "bad id!", "agent.yaml: agent_id: has a form that is not allowed"),
        (("version",), 2, "agent.yaml: version: must be 1"),
        (("kid",), "XYZ", "agent.yaml: kid: has a form"),
        (("kafka", "bootstrap.servers"), None, "kafka.bootstrap.servers is missing"),
        (("kafka", "sasl.password"), "pw", "kafka.sasl.password: a secret"),
        (("kafka", "linger.ms"), float("nan"), "agent.yaml: kafka.linger.ms: must be a finite"),
        (("agent", "spool_max_rows"), "5", "agent.yaml: agent.spool_max_rows: must be an integer"),
        (
            ("agent", "spool_max_rows"),
            0,
            "agent.yaml: agent.spool_max_rows: must be an integer > 0",
        ),
        (
            ("agent", "stall_timeout_s"),
            float("inf"),
            "agent.yaml: agent.stall_timeout_s: must be a",
        ),
        (("agent", "spool_rows"), 5, "agent.yaml: agent: unknown key(s) spool_rows"),
        (("plugins", "temperature", "interval"), "30", "plugins.temperature.interval: must be a"),
        (("plugins", "temperature", "interval"), 0, "plugins.temperature.interval: must be a"),
        (("plugins", "temperature", "topic"), 5, "plugins.temperature.topic: must be a string"),
        (("plugins", "Temp"), {"topic": "t", "interval": 1}, "plugins: Temp is not a valid name"),
        (("extra",), 1, "agent.yaml: unknown key(s) extra"),
    ],
)
def test_every_value_is_type_checked(
    document: dict[str, Any], path: tuple[str, ...], value: Any, message: str
) -> None:
    target = document
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    with pytest.raises(BundleError) as caught:
        parse(document)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_no_plugin_is_refused(document: dict[str, Any]) -> None:
    document["plugins"] = {}
    with pytest.raises(BundleError, match="agent.yaml: plugins: must not be empty"):
        parse(document)


def test_broken_yaml_says_where() -> None:
    with pytest.raises(BundleError, match=r"not valid YAML \(line 2, column 1\)"):
        bundle_file.parse_agent_yaml(b"kafka: {a: [\n")


def test_agent_document_refuses_bad_agent_settings(keys: tuple[RSA.RsaKey, RSA.RsaKey]) -> None:
    server, agent_key = keys
    with pytest.raises(EnrollmentError, match="agent.stall_timeout_s: must be a finite number"):
        enrollment.agent_document(
            "edge-1",
            bootstrap="localhost:9092",
            plugins=PLUGINS,
            server_public=server.public_key(),
            agent_key=agent_key,
            agent={"stall_timeout_s": "60"},
        )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"temperature": {"thermal_root": 5}},
            "plugins.temperature.thermal_root: must be a string",
        ),
        ({"temperature": {"min_celsius": 5}}, "min_celsius: not an agent setting"),
        ({"temperature": {"thermal_rot": "/x"}}, "unknown key(s) thermal_rot"),
    ],
)
def test_plugin_specs_check_agent_settings(
    tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    config = load_config(None, env={})
    with pytest.raises(EnrollmentError) as caught:
        enrollment.plugin_specs(config, ["temperature"], settings=settings)
    assert message in str(caught.value)


def test_plugin_specs_default_interval_is_the_declared_one(tmp_path: Path) -> None:
    config = load_config(None, env={})
    specs = enrollment.plugin_specs(config, ["temperature", "pu_workload"])
    assert specs == {
        "temperature": {"topic": "sparklem.temperature", "interval": 30},
        "pu_workload": {"topic": "sparklem.pu_workload", "interval": 30},
    }


def write_bundle(
    tmp_path: Path, keys: tuple[RSA.RsaKey, RSA.RsaKey], document: dict[str, Any]
) -> Path:
    server, agent_key = keys
    data = enrollment.build_bundle(document, server.public_key(), agent_key, PASSPHRASE)
    path = tmp_path / "config.tar.xz"
    path.write_bytes(data)
    return path


def test_agent_checks_each_plugins_settings_against_its_declaration(
    tmp_path: Path, keys: tuple[RSA.RsaKey, RSA.RsaKey], document: dict[str, Any]
) -> None:
    document["plugins"]["temperature"]["thermal_root"] = 5
    bundle = bundle_file.load_bundle(write_bundle(tmp_path, keys, document), PASSPHRASE)
    with pytest.raises(
        agent_core.AgentError, match=r"plugins\.temperature\.thermal_root: must be a"
    ):
        agent_core.Agent(bundle, tmp_path / "state")


def test_agent_hands_collectors_their_declared_defaults(
    tmp_path: Path, keys: tuple[RSA.RsaKey, RSA.RsaKey], document: dict[str, Any]
) -> None:
    bundle = bundle_file.load_bundle(write_bundle(tmp_path, keys, document), PASSPHRASE)
    running = agent_core.Agent(bundle, tmp_path / "state")
    try:
        settings = running.collectors["temperature"].settings
        assert settings == {
            "topic": "sparklem.temperature",
            "interval": 30.0,
            "thermal_root": "/sys/class/thermal",
            "hwmon_root": "/sys/class/hwmon",
        }
        assert running.spool.max_rows == bundle_file.DEFAULT_SPOOL_MAX_ROWS
    finally:
        running.close()


def test_agent_command_with_an_integer_agent_id_says_so_in_one_line(
    tmp_path: Path, keys: tuple[RSA.RsaKey, RSA.RsaKey], document: dict[str, Any]
) -> None:
    document["agent_id"] = 12345
    bundle = write_bundle(tmp_path, keys, document)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sparklem_core.agent",
            "--bundle",
            str(bundle),
            "--state-dir",
            str(tmp_path / "state"),
            "--once",
        ],  # fmt: skip
        cwd=PROJECT_ROOT,
        env={"PATH": "/usr/bin:/bin", "SPARKLEM_AGENT_PASSPHRASE": PASSPHRASE},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "sparklem-agent: error: agent.yaml: agent_id: must be a string (got an integer)"
    ]


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=10),
)
yaml_keys = st.one_of(
    st.sampled_from(
        [
            "version",
            "agent_id",
            "kid",
            "agent_key_fingerprint",
            "kafka",
            "agent",
            "plugins",
            "temperature",
            "topic",
            "interval",
            "spool_max_rows",
            "bootstrap.servers",
        ]
    ),  # fmt: skip
    st.text(max_size=6),
    st.integers(),
)
values = st.recursive(
    scalars, lambda inner: st.dictionaries(yaml_keys, inner, max_size=4), max_leaves=10
)


@settings(max_examples=150, deadline=None)
@given(changes=st.dictionaries(yaml_keys, values, max_size=4))
def test_any_agent_yaml_opens_or_is_one_bundle_error(changes: dict[Any, Any]) -> None:
    base = {
        "version": 1,
        "agent_id": "edge-1",
        "kid": "0123456789abcdef",
        "agent_key_fingerprint": "0123456789abcdef",
        "kafka": {"bootstrap.servers": "localhost:9092"},
        "plugins": copy.deepcopy(PLUGINS),
    }
    try:
        doc = parse({**base, **changes})
    except BundleError as exc:
        assert "\n" not in str(exc)
    else:
        checked = bundle_file.AgentDocument.model_validate(doc)
        assert isinstance(checked.agent_id, str) and checked.plugins


def gen_config(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARKLEM_")}
    env["SPARKLEM_CERTIFICATES_DIR"] = str(tmp_path / "certs")
    (tmp_path / "passphrase").write_text(PASSPHRASE + "\n")
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "gen_config.py"), "--agent-id", "edge-1",
         "--out", str(tmp_path / "out"), "--passphrase-file", str(tmp_path / "passphrase"),
         "--key-bits", "2048", "--plugins", "temperature", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_gen_config_writes_checked_plugin_settings(tmp_path: Path) -> None:
    create_server_key(tmp_path / "certs")
    done = gen_config(
        tmp_path,
        "--set", "temperature.thermal_root=/srv/thermal",
        "--plugin-setting", "temperature.interval=5",  # the option's first name, an alias
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    bundle = bundle_file.load_bundle(tmp_path / "out" / "config.tar.xz", PASSPHRASE)
    assert bundle.plugins == {
        "temperature": {
            "topic": "sparklem.temperature",
            "interval": 5,
            "thermal_root": "/srv/thermal",
        }
    }


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("temperature.thermal_root=5", "plugins.temperature.thermal_root: must be a string"),
        ("temperature.interval=fast", "plugins.temperature.interval: must be a finite number"),
        ("temperature.min_celsius=5", "plugins.temperature.min_celsius: not an agent setting"),
        ("pu_workload.proc_root=/p", "settings for plugin(s) not selected: pu_workload"),
        ("temperature.nosuch=5", "plugins.temperature: unknown key(s) nosuch (known: hwmon_root"),
        ("temperature=5", "--set 'temperature': expected PLUGIN.KEY=VALUE"),
        ("temperature.x=[", "the value is not valid YAML"),
    ],
)
def test_gen_config_refuses_bad_plugin_settings(tmp_path: Path, setting: str, message: str) -> None:
    create_server_key(tmp_path / "certs")
    done = gen_config(tmp_path, "--set", setting)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1 and message in done.stderr, done.stderr
    assert not (tmp_path / "out" / "config.tar.xz").exists()
