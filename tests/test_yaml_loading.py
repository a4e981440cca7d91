"""The one YAML loader (settings.validation.load_yaml): every YAML we read goes through
it, and it refuses a key written twice in one mapping, naming the key and its lines."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sparklem_core.admin.cli import parse_plugin_settings
from sparklem_core.admin.enrollment import EnrollmentError
from sparklem_core.settings.config import ConfigError, load_config
from sparklem_core.settings.validation import YamlRefused, load_yaml
from sparklem_core.wire.bundle import BundleError, parse_agent_yaml

TWICE = "kafka:\n  bootstrap.servers: a:9092\ndatabase: {url: 'sqlite://'}\nkafka: {}\n"


def test_a_key_twice_in_the_config_file_is_refused_by_name_and_lines(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(TWICE, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value) == (
        f"config file {path} holds the key kafka twice (lines 1 and 4): keep one"
    )


def test_a_key_twice_in_a_nested_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("processor:\n  batch_size: 10\n  batch_size: 20\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"the key batch_size twice \(lines 2 and 3\)"):
        load_config(path, env={})


def test_a_key_twice_in_agent_yaml_is_refused() -> None:
    with pytest.raises(BundleError) as caught:
        parse_agent_yaml(b"agent_id: a\nagent_id: b\n")
    assert str(caught.value) == (
        "agent.yaml in the bundle holds the key agent_id twice (lines 1 and 2): keep one"
    )


def test_a_key_twice_in_a_set_value_is_refused() -> None:
    with pytest.raises(EnrollmentError, match=r"--set 'temperature.x': the value holds the key a"):
        parse_plugin_settings(["temperature.x={a: 1, a: 2}"])


def test_merge_keys_may_override_what_they_merge() -> None:
    doc = load_yaml("base: &b {a: 1, b: 2}\nmine:\n  <<: *b\n  a: 3\n")
    assert doc["mine"] == {"a": 3, "b": 2}


def test_a_secret_like_key_is_not_repeated() -> None:
    """Keys are named the way the schema errors name them: up to a blank or symbol."""
    with pytest.raises(YamlRefused) as caught:
        load_yaml("sasl.password S3cret: 1\nsasl.password S3cret: 2\n")
    assert "S3cret" not in str(caught.value) and "sasl.password..." in str(caught.value)


YAMLISH = st.lists(
    st.sampled_from([*"{}[]:,-'\"&*!?|>< \n\t#%@`ab01.", "a: 1\n", "a: 2\n", "<<: ", "!!binary ",
                     "!!timestamp ", "2024-13-01", "9" * 5000, "&x ", "*x ", "? "]),
    max_size=40,
).map("".join)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=200) | YAMLISH)
@example("a: 1\na: 2\n")
@example("2024-13-01")
@example("1" * 5000)
@example("? [a]\n: b\n")
@example("{1: a, true: b}")
def test_any_text_loads_or_is_refused_in_one_line(text: str) -> None:
    try:
        load_yaml(text)
    except YamlRefused as exc:
        message = str(exc)
        assert message and "\n" not in message and len(message) < 200, message
