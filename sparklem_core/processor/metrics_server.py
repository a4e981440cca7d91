"""The processor's HTTP endpoint: ``/metrics``, ``/healthz``, ``/readyz``.

A bounded server beside the consumer loop: a few worker threads, a cap on connections
waiting for them (more are closed at once), one request per connection and a deadline
for reading it, so many or slow clients cost at most those threads and never touch the
loop. Answers come from state the loop keeps; nothing here waits on the database or
the broker.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from io import BytesIO
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sparklem_core.settings.config import parse_listen

log = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"
WORKERS = 4
MAX_WAITING = 64  # connections accepted but not yet answered; more are closed at once
READ_DEADLINE_S = 5.0  # the whole request head must arrive within this
MAX_HEAD_BYTES = 8192


class EndpointError(Exception):
    """The endpoint cannot listen where it was told to: one line for the user."""


@dataclass(frozen=True)
class Check:
    """One named check of a probe and the value it judged."""

    name: str
    ok: bool
    value: Any  # JSON-serialisable


Probe = Callable[[], list[Check]]


def probe_body(checks: list[Check]) -> tuple[int, bytes]:
    """The status (200 when every check passes, else 503) and JSON body of a probe."""
    ok = all(c.ok for c in checks)
    body = {
        "status": "ok" if ok else "failing",
        "checks": {c.name: {"ok": c.ok, "value": c.value} for c in checks},
    }
    return (200 if ok else 503), json.dumps(body, sort_keys=True).encode() + b"\n"


def workers_probe(ports: Callable[[], dict[int, int]], path: str) -> Probe:
    """A probe of the host under ``run --workers N``: every worker's checks, each prefixed."""
    from sparklem_core.processor.metrics import fetch, worker_url

    def probe() -> list[Check]:
        checks = []
        for n, port in sorted(ports().items()):
            answer = fetch(worker_url(port, path))
            try:
                body = json.loads(answer[1]) if answer is not None else None
                checks += [
                    Check(f"worker_{n}.{name}", bool(c["ok"]), c["value"])
                    for name, c in body["checks"].items()
                ]
            except (ValueError, KeyError, TypeError, AttributeError):  # None included
                checks.append(Check(f"worker_{n}", False, "not answering"))
        return checks or [Check("workers", False, "none running")]

    return probe


class Endpoint:
    """The running server; :meth:`close` stops it."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self.port: int = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._server.pool.shutdown(wait=False, cancel_futures=True)


def serve(
    listen: str,
    registry: CollectorRegistry,
    probes: dict[str, Probe],
    explicit: bool = True,
) -> Endpoint | None:
    """Listen on ``listen`` and answer ``/metrics`` and the ``probes`` (path -> checks).

    A bad address or a port in use raises :class:`EndpointError`, except a default
    (not ``explicit``) port in use: a warning, and None (a second processor on a host).
    """
    host, port = parse_listen(listen)
    try:
        server = _Server(host, port, registry, probes)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE and not explicit:
            log.warning(
                "http.listen %s: port in use (another processor?); no /metrics or probes "
                "for this one: set http.listen to a free HOST:PORT",
                listen,
            )
            return None
        raise EndpointError(
            f"http.listen {listen}: cannot listen there ({reason}); set http.listen to a free "
            'local HOST:PORT, or "" to turn the endpoint off'
        ) from None
    endpoint = Endpoint(server)
    log.info("serving /metrics, /healthz, /readyz on http://%s", listen)
    return endpoint


class _Server(socketserver.TCPServer):
    allow_reuse_address = True
    request_queue_size = MAX_WAITING

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, probes: dict[str, Probe]
    ) -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise OSError(errno.EADDRNOTAVAIL, exc.strerror) from None
        self.address_family = infos[0][0]
        self.registry = registry
        self.probes = probes
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="http")
        self._slots = threading.BoundedSemaphore(MAX_WAITING)
        super().__init__(infos[0][4][:2], _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many at once: this one is dropped
            return
        try:
            self.pool.submit(self._answer, request, client_address)
        except RuntimeError:  # shutting down
            self._slots.release()
            self.shutdown_request(request)

    def _answer(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # a client's doing (reset, timeout): never the loop's concern
            log.debug("http client %s failed", client_address, exc_info=True)
        finally:
            self.shutdown_request(request)
            self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection
    server_version = "sparklem"

    def setup(self) -> None:
        """Read the request head within a deadline, whatever pace the client sends at."""
        self.connection = self.request
        head, deadline = b"", time.monotonic() + READ_DEADLINE_S
        while b"\r\n\r\n" not in head and len(head) < MAX_HEAD_BYTES:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.connection.settimeout(left)
            try:
                chunk = self.connection.recv(MAX_HEAD_BYTES - len(head))
            except OSError:
                break
            if not chunk:
                break
            head += chunk
        self.connection.settimeout(READ_DEADLINE_S)
        self.rfile = BytesIO(head)
        self.wfile = self.connection.makefile("wb")

    def finish(self) -> None:
        self.wfile.close()  # flushes; the server closes the connection

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path in self.server.probes:
            status, body = probe_body(self.server.probes[path]())
            self._send(status, body, "application/json")
        else:
            self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

    def do_HEAD(self) -> None:
        self.do_GET()

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s: " + format, self.address_string(), *args)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The OS picks it (bind to port 0); there is an unavoidable small race between
    closing the probe socket and the server binding the port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]
