"""Static checks of the deployment files: docker-compose.yaml, Dockerfile, .dockerignore.

No Docker engine is needed: the files are parsed and checked for what docs/deployment.md
promises. ``docker compose config`` also validates the compose file when the compose
plugin is installed (it needs no engine); without the plugin that one test is skipped.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


def interpolate(value: object) -> str:
    """Compose's ``${VAR:-default}`` with an empty environment: the default, or ''."""
    return _VAR.sub(lambda m: m.group("default") or "", str(value))


@pytest.fixture(scope="module")
def compose() -> dict:
    doc = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict), "docker-compose.yaml must hold a mapping"
    return doc


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): interpolate(v) for k, v in env.items()}


def healthcheck_command(service: dict) -> str:
    test = service.get("healthcheck", {}).get("test")
    assert test, "no healthcheck test"
    if isinstance(test, list):
        assert test[0] in ("CMD", "CMD-SHELL"), test
        return " ".join(test[1:])
    return str(test)


# --- docker-compose.yaml ---------------------------------------------------------------


def test_compose_services(services: dict) -> None:
    assert {"kafka", "postgres", "processor"} <= set(services)


def test_no_zookeeper_anywhere() -> None:
    assert "zookeeper" not in COMPOSE_FILE.read_text(encoding="utf-8").lower()


def test_kafka_kraft_single_node(services: dict) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:"), kafka["image"]
    assert "profiles" not in kafka, "Kafka must start with a plain `docker compose up -d`"
    env = env_of(kafka)
    roles = {r.strip() for r in env["KAFKA_PROCESS_ROLES"].split(",")}
    assert {"broker", "controller"} <= roles
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"].lower() == "true"

    listeners = dict(
        item.split("://", 1) for item in env["KAFKA_LISTENERS"].split(",") if item.strip()
    )
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in listeners, "the controller listener must be among KAFKA_LISTENERS"
    advertised = env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert "PLAINTEXT_HOST://localhost:9092" in advertised
    assert any(a.endswith("//kafka:19092") for a in advertised), advertised
    protocol_map = dict(
        p.split(":", 1) for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(listeners) <= set(protocol_map)
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert voters.startswith(f"{env['KAFKA_NODE_ID']}@kafka:"), voters
    assert voters.rsplit(":", 1)[1] == listeners[controller].rsplit(":", 1)[1]


def test_kafka_publishes_9092_and_has_healthcheck_and_volume(compose: dict) -> None:
    kafka = compose["services"]["kafka"]
    published = [str(p) for p in kafka.get("ports", [])]
    assert any(re.fullmatch(r"(?:[\d.]+:)?9092:9092(?:/tcp)?", p) for p in published), published
    assert "kafka-broker-api-versions" in healthcheck_command(kafka)
    volume_names = {str(v).split(":", 1)[0] for v in kafka.get("volumes", [])}
    assert volume_names & set(compose.get("volumes") or {}), "Kafka needs a named volume"


def test_postgres_profile_healthcheck_volume(compose: dict) -> None:
    pg = compose["services"]["postgres"]
    assert pg["image"].startswith("postgres:16")
    assert "postgres" in pg["profiles"]
    assert "pg_isready" in healthcheck_command(pg)
    assert env_of(pg)["POSTGRES_DB"] == "sparklem"
    volume_names = {str(v).split(":", 1)[0] for v in pg.get("volumes", [])}
    assert volume_names & set(compose.get("volumes") or {}), "PostgreSQL needs a named volume"


def test_processor_service(services: dict) -> None:
    proc = services["processor"]
    assert "processor" in proc["profiles"]
    assert "build" in proc
    assert "container_name" not in proc, "a container_name would forbid --scale processor=N"
    assert proc["restart"] == "unless-stopped"
    command = proc["command"]
    assert (command if isinstance(command, list) else command.split()) == ["run"]

    env = env_of(proc)
    assert env["SPARKLEM_BOOTSTRAP_SERVERS"] == "kafka:19092"
    assert (
        env["SPARKLEM_BOOTSTRAP_SERVERS"] in env_of(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    )
    url = urlsplit(env["SPARKLEM_DATABASE_URL"])
    assert url.scheme == "postgresql+psycopg"
    assert url.hostname == "postgres"
    pg_env = env_of(services["postgres"])
    assert url.path.lstrip("/") == pg_env["POSTGRES_DB"]
    assert url.username == pg_env["POSTGRES_USER"]
    assert url.password == pg_env["POSTGRES_PASSWORD"]

    assert proc["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert proc["depends_on"]["postgres"]["condition"] == "service_healthy"

    mounts = [str(v) for v in proc.get("volumes", [])]
    assert any(m.startswith("./certificates:") for m in mounts), mounts


def test_processor_env_names_are_known_to_the_config() -> None:
    from sparklem_core.settings.config import ENV_VARS

    proc = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]["processor"]
    unknown = {k for k in env_of(proc) if k.startswith("SPARKLEM_")} - set(ENV_VARS)
    assert not unknown, f"processor sets variables the config does not read: {unknown}"


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_compose_config_validates() -> None:
    version = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, timeout=60
    )
    if version.returncode != 0:
        pytest.skip(f"docker compose plugin absent: {version.stderr.strip() or version.stdout}")
    for profiles in ([], ["--profile", "postgres", "--profile", "processor"]):
        result = subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE_FILE), *profiles, "config", "-q"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr


# --- Dockerfile ------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def copy_sources(args: str) -> list[str] | None:
    """The context paths a COPY reads, or None for ``COPY --from=stage``."""
    flags = re.findall(r"(?:^|\s)(--\S+)", args.split("[", 1)[0])
    if any(f.startswith("--from=") for f in flags):
        return None
    rest = args
    for flag in flags:
        rest = rest.replace(flag, "", 1)
    rest = rest.strip()
    paths = exec_form(rest) if rest.startswith("[") else rest.split()
    assert len(paths) >= 2, f"COPY needs a source and a destination: {args}"
    return paths[:-1]


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    return instructions[last_from:]


def test_dockerfile_bases_are_python_311_slim() -> None:
    froms = [args.split()[0] for kw, args in dockerfile_instructions() if kw == "FROM"]
    assert froms, "no FROM"
    assert all(f == "python:3.11-slim" for f in froms), froms


def test_dockerfile_installs_the_project_with_postgres() -> None:
    runs = " ".join(args for kw, args in dockerfile_instructions() if kw == "RUN")
    assert re.search(r"pip install --no-cache-dir [\"']?\.\[postgres\][\"']?", runs), runs


def test_dockerfile_non_root_user_before_entrypoint() -> None:
    stage = final_stage(dockerfile_instructions())
    keywords = [kw for kw, _ in stage]
    assert "USER" in keywords and "ENTRYPOINT" in keywords
    user_at = max(i for i, kw in enumerate(keywords) if kw == "USER")
    assert user_at < keywords.index("ENTRYPOINT"), "USER must come before ENTRYPOINT"
    user = stage[user_at][1].split(":", 1)[0]
    assert user not in ("root", "0", ""), user


def test_dockerfile_entrypoint_and_workdir() -> None:
    stage = dict(final_stage(dockerfile_instructions()))
    assert exec_form(stage["ENTRYPOINT"]) == ["python3", "main.py"]
    assert exec_form(stage["CMD"]) == ["run"]
    assert stage["WORKDIR"] == "/app"


def test_dockerfile_bakes_in_no_secret() -> None:
    for kw, args in dockerfile_instructions():
        if kw in ("ENV", "ARG"):
            assert not re.search(r"PASSWORD|PASSPHRASE|SECRET|TOKEN", args, re.I), args


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [p.strip().rstrip("/") for p in lines if p.strip() and not p.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Rough .dockerignore matching: a pattern matches the path or one of its parents."""
    parts = Path(path.rstrip("/")).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        pattern = pattern.removeprefix("**/")
        if any(
            fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(parts[-1], pattern) for p in prefixes
        ):
            return True
    return False


def all_copy_sources() -> list[str]:
    sources = []
    for kw, args in dockerfile_instructions():
        if kw in ("COPY", "ADD"):
            sources += copy_sources(args) or []
    return sources


def test_dockerfile_copies_what_the_image_needs() -> None:
    sources = {s.rstrip("/") for s in all_copy_sources()}
    needed = {"main.py", "gen_config.py", "plugins", "sparklem_core", "pyproject.toml"}
    assert needed | {"README.md"} <= sources


@pytest.mark.parametrize("source", sorted(set(all_copy_sources())))
def test_dockerfile_copy_source_exists_and_is_not_ignored(source: str) -> None:
    assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
    assert not ignored(source, dockerignore_patterns()), f"COPY {source} is in .dockerignore"


def test_dockerignore_keeps_local_state_and_secrets_out() -> None:
    patterns = dockerignore_patterns()
    for path in (
        ".venv",
        ".git",
        "sparklem_core/__pycache__",
        "db.sqlite3",
        "db.sqlite3-wal",
        "certificates/server_private.pem",
        "demo",
        ".pytest_cache",
        ".ruff_cache",
    ):
        assert ignored(path, patterns), f"{path} would be sent to the Docker build"


def test_processor_health_is_healthz_never_readyz(services: dict) -> None:
    """A processor catching up on lag is healthy: restarts go by /healthz only."""
    command = healthcheck_command(services["processor"])
    assert "/healthz" in command and "/readyz" not in command
    assert env_of(services["processor"])["SPARKLEM_HTTP_LISTEN"] == "0.0.0.0:9500"
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    (healthcheck,) = re.findall(r"^HEALTHCHECK (?:.*\\\n)*.*", dockerfile, re.MULTILINE)
    assert "/healthz" in healthcheck and "/readyz" not in healthcheck
    assert "SPARKLEM_HTTP_LISTEN=0.0.0.0:9500" in dockerfile


def test_monitoring_profile_scrapes_the_processor(services: dict) -> None:
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    assert any(v.startswith("./deploy/prometheus:") for v in prometheus["volumes"])
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = scrape["scrape_configs"]
    assert job["dns_sd_configs"] == [{"names": ["processor"], "type": "A", "port": 9500}]
    assert scrape["rule_files"] == ["alerts.yml"]


def test_grafana_dashboard_is_json_with_prometheus_queries() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/sparklem-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert exprs and all("sparklem_" in e or "up{" in e for e in exprs)
