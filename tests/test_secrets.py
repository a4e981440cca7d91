"""No command prints a secret: every failure path of run, init, gen_config.py and the agent.

Each case plants known secrets (database password, ``?password=`` query, SASL
password, token, bundle passphrase) and runs the real command as a subprocess; the
secrets must appear nowhere in its stdout or stderr.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from harness import ROOT as PROJECT_ROOT
from waiting import wait_for

from sparklem_core.agent.agent import PASSPHRASE_ENV

DB_PASSWORD = "DbS3cret-pw"
SPACED_PASSWORD = "Sp4ce pw-x"
QUERY_PASSWORD = "Qu3ry-pw-x"
SASL_PASSWORD = "S4sl-pw-x"
TOKEN = "T0ken-value-x"
PASSPHRASE = "Ph4se-secret-x"
WRONG_PASSPHRASE = "Wr0ng-phrase-x"
SECRETS = (DB_PASSWORD, SPACED_PASSWORD, QUERY_PASSWORD, SASL_PASSWORD, TOKEN, PASSPHRASE)
SECRETS += (WRONG_PASSPHRASE, "Sp4ce%20pw-x", "Sp4ce+pw-x")
UNREACHABLE_DB = "postgresql+psycopg://sparklem@127.0.0.1:1/sparklem"


def assert_no_secret(result: subprocess.CompletedProcess[str] | str) -> None:
    output = result if isinstance(result, str) else result.stdout + result.stderr
    leaked = [secret for secret in SECRETS if secret in output]
    assert not leaked, f"{leaked} printed:\n{output}"


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARKLEM_")}
    env["SPARKLEM_CERTIFICATES_DIR"] = str(tmp_path / "certs")
    env["SPARKLEM_BOOTSTRAP_SERVERS"] = "127.0.0.1:1"  # nothing listens there
    env.update(extra)
    return env


def command(tmp_path: Path, *args: str, timeout: float = 60, **env: str):
    return subprocess.run(
        [sys.executable, *args],
        cwd=tmp_path,
        env=clean_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def main_py(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return command(tmp_path, str(PROJECT_ROOT / "main.py"), *args, **env)


def gen_config(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return command(tmp_path, str(PROJECT_ROOT / "gen_config.py"), *args, **env)


def config_file(tmp_path: Path, doc: dict | str, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a server key, an SQLite schema and an agent bundle."""
    root = tmp_path_factory.mktemp("secrets")
    sqlite = f"sqlite:///{root}/db.sqlite3"
    done = main_py(root, "init", SPARKLEM_DATABASE_URL=sqlite)
    assert done.returncode == 0, done.stderr
    (root / "passphrase").write_text(PASSPHRASE + "\n")
    done = gen_config(
        root, "--agent-id", "edge-1", "--out", str(root / "out"),
        "--passphrase-file", str(root / "passphrase"), "--key-bits", "2048",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert_no_secret(done)  # a passphrase from a file is never printed
    return root


# --- main.py run and init: configuration errors ---------------------------------------------

BAD_CONFIGS = {
    "broken YAML quoting the URL": (
        f'database:\n  url: "postgresql://sparklem:{DB_PASSWORD}@db/x\nkafka: {{a: [\n'
    ),
    "broken YAML, an alias naming the secret": f"kafka: {{sasl.password: *{SASL_PASSWORD}}}\n",
    "password with a space": {"database": {"url": f"postgresql://u:{SPACED_PASSWORD}@h:x/db"}},
    "URL in a list": {"database": {"url": [f"postgresql://u:{DB_PASSWORD}@h/db"]}},
    "secret of the wrong type": {"kafka": {"sasl.password": [SASL_PASSWORD]}},
    "a key that swallowed its value": f"kafka: {{sasl.password {SASL_PASSWORD}: 1}}\n",
    "a token in a plugin setting": {"plugins": {"temperature": {"min_celsius": TOKEN}}},
    "an unknown key holding a secret": {"kafka": {"sasl.password": SASL_PASSWORD}, "x": 1},
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
@pytest.mark.parametrize("cmd", ["run", "init"])
def test_config_errors_of_run_and_init(tmp_path: Path, cmd: str, name: str) -> None:
    path = config_file(tmp_path, BAD_CONFIGS[name])
    done = main_py(tmp_path, cmd, "--config", path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    assert_no_secret(done)


def test_bad_url_in_the_environment(tmp_path: Path) -> None:
    url = f"postgresql://u:{SPACED_PASSWORD}@h:port/db"
    done = main_py(tmp_path, "init", SPARKLEM_DATABASE_URL=url)
    assert done.returncode == 2 and "SPARKLEM_DATABASE_URL" in done.stderr
    assert_no_secret(done)


# --- main.py: an unreachable database -----------------------------------------------------------


def test_init_with_an_unreachable_database(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://sparklem:{DB_PASSWORD}@127.0.0.1:1/sparklem"
    done = main_py(tmp_path, "init", SPARKLEM_DATABASE_URL=url)
    assert done.returncode == 1
    assert "127.0.0.1" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("main.py: database error: ")
    assert_no_secret(done)


def test_run_logs_no_secret_while_the_database_is_unreachable(enrolled: Path) -> None:
    doc = {
        "database": {"url": f"{UNREACHABLE_DB}?password={QUERY_PASSWORD}"},
        "kafka": {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanisms": "PLAIN",
            "sasl.username": "sparklem",
            "sasl.password": SASL_PASSWORD,
            "sasl.oauthbearer.config": f"token={TOKEN}",
        },
    }
    path = config_file(enrolled, doc, "unreachable.yaml")
    log = enrolled / "run.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, str(PROJECT_ROOT / "main.py"), "run", "--config", path],
            cwd=enrolled,
            env=clean_env(enrolled),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_for(
                lambda: "database unavailable at start" in log.read_text() or process.poll(),
                timeout=60,
                message="the processor did not report the database",
            )
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    output = log.read_text()
    assert "processor starting" in output and "password=***" in output, output
    assert_no_secret(output)


# --- gen_config.py -------------------------------------------------------------------------------


def test_gen_config_failures(tmp_path: Path, enrolled: Path) -> None:
    passphrase = enrolled / "passphrase"
    broken = config_file(tmp_path, BAD_CONFIGS["broken YAML quoting the URL"])
    cases = [
        ("--config", broken, "--agent-id", "edge-2"),
        ("--agent-id", "bad id", "--passphrase-file", str(passphrase)),
        ("--agent-id", "edge-2", "--passphrase-file", str(passphrase)),  # no server key here
        ("--agent-id", "edge-2", "--kafka-property", f"sasl.password={SASL_PASSWORD}"),
        ("--agent-id", "edge-2", "--passphrase-file", str(tmp_path / "absent")),
    ]
    for args in cases:
        done = gen_config(tmp_path, *args)
        assert done.returncode != 0, args
        assert "Traceback" not in done.stderr, done.stderr
        assert_no_secret(done)


# --- the agent ---------------------------------------------------------------------------------


def agent(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return command(tmp_path, "-m", "sparklem_core.agent", *args, **env)


def test_agent_failures(tmp_path: Path, enrolled: Path) -> None:
    bundle = str(enrolled / "out" / "config.tar.xz")
    short = tmp_path / "short"
    short.write_text("Sh0rt\n")
    state = ("--state-dir", str(tmp_path / "state"))
    cases = [
        (("--bundle", bundle, *state), {PASSPHRASE_ENV: WRONG_PASSPHRASE}),
        (("--bundle", str(enrolled / "passphrase"), *state), {PASSPHRASE_ENV: PASSPHRASE}),
        (("--bundle", bundle, "--passphrase-file", str(short), *state), {}),
    ]  # fmt: skip
    for args, env in cases:
        done = agent(enrolled, *args, "--once", **env)
        assert done.returncode == 2, (args, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1
        assert_no_secret(done)


def test_agent_with_the_broker_down_logs_no_passphrase(tmp_path: Path, enrolled: Path) -> None:
    bundle = str(enrolled / "out" / "config.tar.xz")
    done = agent(
        enrolled, "--bundle", bundle, "--state-dir", str(tmp_path / "state"), "--once",
        "--flush-timeout", "1", "--log-level", "DEBUG", **{PASSPHRASE_ENV: PASSPHRASE},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "agent stopping" in done.stderr
    assert_no_secret(done)
