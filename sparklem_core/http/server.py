"""``python3 main.py serve``: the API on uvicorn, bound where config and --listen say."""

from __future__ import annotations

import errno
import gc
import ipaddress
import logging
import socket

from sparklem_core.settings.config import Config, parse_listen

log = logging.getLogger(__name__)

GRACEFUL_S = 3  # open streams are cut after this at a stop


class ServeError(Exception):
    """Why serve cannot start, in one line."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve anywhere
        return False


def bind(listen: str, tokens: bool) -> socket.socket:
    """A listening socket on ``listen``; :class:`ServeError` when refused or taken."""
    if not listen:
        raise ServeError('serve.listen is "": set it to HOST:PORT, or pass --listen')
    host, port = parse_listen(listen)
    if not tokens and not is_loopback(host):
        raise ServeError(
            f"refusing to listen on {listen} without tokens: set serve.read_tokens "
            "(or SPARKLEM_READ_TOKENS), or listen on 127.0.0.1"
        )
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ServeError(f"cannot listen on {listen}: {exc}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        taken = exc.errno == errno.EADDRINUSE
        what = "is in use (another serve?)" if taken else f"refused: {exc.strerror}"
        raise ServeError(f"{listen} {what}: stop it or choose another --listen") from None
    return sock


def run(config: Config, listen: str) -> int:
    """Serve until SIGINT/SIGTERM."""
    import uvicorn

    from sparklem_core.http.app import create_app
    from sparklem_core.http.auth import AuditLogError

    sock = bind(listen, config.serve.tokens)
    try:
        app = create_app(config)
    except AuditLogError as exc:
        sock.close()
        raise ServeError(str(exc)) from None
    # What is loaded by now lives as long as the process: out of the collector's sight,
    # a full collection during a large answer (20,000 latest values) walks only the
    # request's objects, not every module's (that answer's p95 ~100 against 105-145 ms).
    gc.collect()
    gc.freeze()
    server = uvicorn.Server(
        uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=GRACEFUL_S)
    )
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serve: API on http://{shown}:{port}/api/v1 (docs: /docs), dashboard on "
          f"http://{shown}:{port}/; Ctrl-C stops it", flush=True)  # fmt: skip
    server.run(sockets=[sock])
    return 0
