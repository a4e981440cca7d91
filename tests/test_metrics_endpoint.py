"""The processor's HTTP endpoint: /metrics, /healthz, /readyz, against a running processor."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import GOOD, ProcessorProcess, start
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_for

from sparklem_core.db.batch import OffsetMark, PartitionKey
from sparklem_core.dev.servers import free_port
from sparklem_core.processor.metrics import LagTracker
from sparklem_core.processor.metrics_server import Check, Endpoint, serve
from sparklem_core.settings.config import ConfigError, load_config


def get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric(url: str, name: str, **labels: str) -> float | None:
    """One sample's value; None when absent or the endpoint is not listening (yet)."""
    try:
        status, body = get(f"{url}/metrics")
    except OSError:
        return None
    assert status == 200
    return samples(body.decode()).get((name, tuple(sorted(labels.items()))))


def with_http(config: dict[str, Any], port: int, **http: Any) -> dict[str, Any]:
    return {**config, "http": {"listen": f"127.0.0.1:{port}", **http}}


# --- configuration -------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["9500", "localhost", "host:0", "host:65536", ":80", "a b:1"])
def test_a_bad_listen_address_is_one_line_naming_the_key(tmp_path: Path, listen: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({"http": {"listen": listen}}))
    with pytest.raises(ConfigError, match=r"^http\.listen: must be \"HOST:PORT\"") as caught:
        load_config(path, env={})
    assert "\n" not in str(caught.value)


def test_the_endpoint_is_on_by_default_and_off_with_an_empty_listen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.yaml
    assert load_config(None, env={}).http.listen == "127.0.0.1:9500"
    path = tmp_path / "config.yaml"
    path.write_text('http: {listen: ""}\n')
    assert load_config(path, env={}).http.listen == ""


# --- the server alone ----------------------------------------------------------------


def test_a_port_in_use_is_an_error_when_configured_and_a_warning_by_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prometheus_client import CollectorRegistry

    from sparklem_core.processor.metrics_server import EndpointError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(EndpointError, match="cannot listen there") as caught:
            serve(listen, CollectorRegistry(), {}, explicit=True)
        assert "\n" not in str(caught.value)
        assert serve(listen, CollectorRegistry(), {}, explicit=False) is None
        assert "port in use" in caplog.text


@pytest.fixture(scope="module")
def endpoint() -> Iterator[Endpoint]:
    """An endpoint alone, with a registry of its own and a probe that always passes."""
    from prometheus_client import CollectorRegistry

    served = serve(
        f"127.0.0.1:{free_port()}",
        CollectorRegistry(),
        {"/healthz": lambda: [Check("loop", True, 0)]},
    )
    assert served is not None
    yield served
    served.close()


@settings(max_examples=60, deadline=None)
@given(request=st.binary(max_size=2000))
def test_any_bytes_sent_to_the_endpoint_leave_it_answering(
    endpoint: Endpoint, request: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as conn:
        conn.sendall(request)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass
    assert get(f"http://127.0.0.1:{endpoint.port}/healthz")[0] == 200


# --- lag -------------------------------------------------------------------------------


def test_lag_is_dated_by_when_the_processor_first_saw_an_offset() -> None:
    now = [100.0]
    lag = LagTracker(clock=lambda: now[0])
    key = PartitionKey("t", 0)
    lag.assigned([key])
    lag.sampled({key: 10})  # 10 records at the broker at t=100
    lag.consumed({key: 0})
    now[0] = 103.0
    lag.sampled({key: 25})
    (first,) = lag.lags()
    assert (first.records, first.seconds) == (25, 3.0)
    lag.stored({key: OffsetMark(None, 10, None)})  # offsets 0-9 stored: 10 is from t=103
    now[0] = 104.0
    (second,) = lag.lags()
    assert (second.records, second.seconds) == (15, 1.0)
    lag.stored({key: OffsetMark(10, 25, None)})
    (caught_up,) = lag.lags()
    assert (caught_up.records, caught_up.seconds) == (0, 0.0)
    lag.revoked([key])
    assert lag.lags() == []


# --- a running processor ---------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_metrics_and_probes_of_a_running_processor(
    fleet, db, processors, tmp_path, broker, database_url
):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = with_http(fleet.config(broker.bootstrap, database_url), port)
    config["fleet"] = {"count_every_s": 0.5}  # agents by state, counted every half second
    start(processors, tmp_path, config)
    fleet.enroll("edge-2")
    for _ in range(5):
        fleet.send(fleet.envelope("edge-1", "temperature", GOOD), key="edge-1")
    fleet.send(b"not json", key="x")
    fleet.flush()
    db.wait_count("temperature_readings", 5)
    topic = fleet.topics["temperature"]
    wait_for(
        lambda: metric(url, "sparklem_messages_stored_total", plugin="temperature") == 5,
        20,
        message="stored messages not counted",
    )
    assert metric(url, "sparklem_records_consumed_total", topic=topic) == 6
    assert metric(url, "sparklem_rows_stored_total", table="temperature_readings") == 5
    assert metric(url, "sparklem_records_rejected_total", reason="malformed", plugin="") == 1
    # edge-1 sent (no interval recorded: "seen", not judged), edge-2 never did
    wait_for(
        lambda: (
            metric(url, "sparklem_agents", state="seen") == 1
            and metric(url, "sparklem_agents", state="never_seen") == 1
        ),
        20,
        message="agents not counted by state",
    )
    assert metric(url, "sparklem_agents", state="revoked") == 0
    assert metric(url, "sparklem_plugin_up", plugin="temperature") == 1
    assert metric(url, "sparklem_batch_duration_seconds_count") >= 1
    assert metric(url, "sparklem_commit_duration_seconds_count") >= 1
    assert metric(url, "sparklem_last_commit_timestamp_seconds") > 0
    assert metric(url, "sparklem_session_key_cache_misses_total") == 1
    assert metric(url, "sparklem_session_key_cache_hits_total") == 4

    # Lag: every record stored, the broker's high watermarks read within a few seconds.
    def caught_up() -> bool:
        body = get(f"{url}/metrics")[1].decode()
        lags = [v for k, v in samples(body).items() if k[0].startswith("sparklem_consumer_lag")]
        return bool(lags) and all(v == 0 for v in lags)

    wait_for(caught_up, 15, message="no lag reported, or not 0 once every record is stored")
    status, body = get(f"{url}/healthz")
    assert status == 200 and json.loads(body)["checks"]["loop_turned_s_ago"]["ok"]
    status, body = wait_for(lambda: (r := get(f"{url}/readyz"))[0] == 200 and r, 20)
    checks = json.loads(body)["checks"]
    assert set(checks) == {"database", "broker", "group_joined", "lag_seconds"}
    assert get(f"{url}/nothing")[0] == 404


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_readyz_fails_during_a_database_outage_while_metrics_answer(
    fleet, db, processors, tmp_path, broker, database_url, pg_server
):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start(processors, tmp_path, with_http(fleet.config(broker.bootstrap, database_url), port))
    fleet.send(fleet.envelope("edge-1", "temperature", GOOD), key="edge-1")
    fleet.flush()
    db.wait_count("temperature_readings", 1)
    wait_for(lambda: get(f"{url}/readyz")[0] == 200, 20, message="never ready")
    pg_server.stop()
    try:
        fleet.send(fleet.envelope("edge-1", "temperature", GOOD), key="edge-1")
        fleet.flush()
        status, body = wait_for(lambda: (r := get(f"{url}/readyz"))[0] == 503 and r, 30)
        assert json.loads(body)["checks"]["database"] == {"ok": False, "value": "unavailable"}
        assert get(f"{url}/metrics")[0] == 200
        assert get(f"{url}/healthz")[0] == 200  # waiting for the database is alive
    finally:
        pg_server.start()
    db.wait_count("temperature_readings", 2, timeout=60)
    wait_for(lambda: get(f"{url}/readyz")[0] == 200, 30, message="not ready after the outage")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_many_slow_clients_neither_stall_ingestion_nor_the_endpoint_for_long(
    fleet, db, processors, tmp_path, broker, database_url
):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start(processors, tmp_path, with_http(fleet.config(broker.bootstrap, database_url), port))
    slow = []
    try:
        for _ in range(300):  # connections that send half a request and wait
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=5)
                conn.sendall(b"GET /metrics HTTP/1.1\r\n")
                slow.append(conn)
            except OSError:
                break  # the backlog is full: what a client sees when refused
        for _ in range(20):
            fleet.send(fleet.envelope("edge-1", "temperature", GOOD), key="edge-1")
        fleet.flush()
        db.wait_count("temperature_readings", 20, timeout=30)
    finally:
        for conn in slow:
            conn.close()
    wait_for(lambda: _answers(url), 30, message="the endpoint did not recover")


def _answers(url: str) -> bool:
    try:
        return get(f"{url}/metrics", timeout=2)[0] == 200
    except OSError:
        return False


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_configured_port_in_use_stops_the_processor_in_one_line(
    fleet, processors, tmp_path, broker, database_url
):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = with_http(fleet.config(broker.bootstrap, database_url), port)
        proc = start(processors, tmp_path, config, wait_assigned=False)
        assert proc.proc is not None
        assert proc.proc.wait(30) == 1
    lines = [line for line in proc.log().splitlines() if "http.listen" in line]
    assert lines and "cannot listen there" in lines[0]
    assert "Traceback" not in proc.log()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_workers_are_summed_behind_one_endpoint(
    fleet, db, processors, tmp_path, broker, database_url
):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = with_http(fleet.config(broker.bootstrap, database_url, batch_size=5), port)
    config["fleet"] = {"count_every_s": 0.5}
    proc = ProcessorProcess(tmp_path, config)
    processors.append(proc)
    proc.start(False, "--workers", "2")
    wait_for(lambda: metric(url, "sparklem_worker_up", worker="1") == 1, 60, message="workers")
    for n in range(12):
        agent = f"edge-{n % 3}"
        fleet.enroll(agent)
        fleet.send(fleet.envelope(agent, "temperature", GOOD), key=agent)
    fleet.flush()
    db.wait_count("temperature_readings", 12, timeout=60)
    wait_for(
        lambda: metric(url, "sparklem_messages_stored_total", plugin="temperature") == 12,
        20,
        message="the workers' stored messages are not summed",
    )
    assert metric(url, "sparklem_worker_up", worker="0") == 1
    wait_for(  # counted by each worker, the same in both: the host's is their max
        lambda: metric(url, "sparklem_agents", state="seen") == 3,
        20,
        message="the workers' agents by state are not maxed",
    )
    status, body = get(f"{url}/healthz")
    checks = json.loads(body)["checks"]
    assert status == 200
    assert set(checks) == {"worker_0.loop_turned_s_ago", "worker_1.loop_turned_s_ago"}
