"""``run --workers N``: N consumer processes in one group, supervised by this one.

Each worker is a plain ``sparklem run`` (one process, its own database engine and
Kafka consumer), so the parent holds no state: it restarts a worker that dies and,
on SIGTERM/SIGINT, forwards the signal and waits for all of them. A worker ends with
its supervisor, however that dies (SIGKILL, the OOM killer): :func:`follow_supervisor`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

if sys.platform.startswith("linux"):
    import ctypes

log = logging.getLogger(__name__)

WORKER_ENV = "SPARKLEM_WORKER"
SUPERVISOR_ENV = "SPARKLEM_SUPERVISOR_PID"  # the pid a worker follows
PARENT_CHECK_EVERY_S = 1.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
RESTART_BACKOFF_S = (1, 2, 5, 10, 30)
STOP_TIMEOUT_S = 9.0


def parse_workers(value: str) -> int:
    """``auto`` (one per core) or a positive integer."""
    if value == "auto":
        return os.cpu_count() or 1
    count = int(value)  # argparse turns the ValueError into a usage error
    if count < 1:
        raise ValueError(value)
    return count


class Supervisor:
    def __init__(
        self,
        count: int,
        worker_args: Sequence[str],
        worker_env: Callable[[int], Mapping[str, str]] = lambda _n: {},
    ) -> None:
        """``worker_env(n)``: environment variables for worker ``n``, asked at each start."""
        self.count = count
        self.worker_env = worker_env
        self.command = [sys.executable, "-m", "sparklem_core.cli", "run", *worker_args]
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.restarts: dict[int, int] = {}
        self._stop = threading.Event()

    def stop(self, *_: object) -> None:
        self._stop.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        log.info("starting %d workers in one consumer group", self.count)
        for n in range(self.count):
            self._spawn(n)
        next_start: dict[int, float] = {}
        while not self._stop.wait(0.2):
            for n, proc in list(self.workers.items()):
                code = proc.poll()
                if code is None:
                    continue
                del self.workers[n]
                tries = self.restarts.get(n, 0)
                delay = RESTART_BACKOFF_S[min(tries, len(RESTART_BACKOFF_S) - 1)]
                log.warning("worker %d exited with code %s; restarting in %d s", n, code, delay)
                self.restarts[n] = tries + 1
                next_start[n] = time.monotonic() + delay
            for n, at in list(next_start.items()):
                if time.monotonic() >= at:
                    del next_start[n]
                    self._spawn(n)
        return self._shutdown()

    def _spawn(self, n: int) -> None:
        # Called from run()'s thread only: Linux sends a worker's PR_SET_PDEATHSIG when the
        # thread that forked it ends, not the process, so a helper thread must not spawn.
        env = {
            **os.environ,
            **self.worker_env(n),
            WORKER_ENV: str(n),
            SUPERVISOR_ENV: str(os.getpid()),
        }
        # A worker ignores SIGINT from the terminal: the parent forwards SIGTERM instead.
        self.workers[n] = subprocess.Popen(
            self.command, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)
        )
        log.info("worker %d started (pid %d)", n, self.workers[n].pid)

    def _shutdown(self) -> int:
        log.info("stopping %d workers", len(self.workers))
        for proc in self.workers.values():
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        failed = 0
        for n, proc in self.workers.items():
            try:
                code = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d did not stop in time; killing it", n)
                proc.kill()
                code = proc.wait()
            failed += code != 0
        log.info("all workers stopped")
        return 0 if not failed else 1


def follow_supervisor(environ: Mapping[str, str] = os.environ, *, kernel: bool = True) -> None:
    """In a worker (``environ`` names its supervisor): SIGTERM to itself once the supervisor
    is gone, so that it stops as on ``kill``: the batch in hand commits, nothing more is read.

    On Linux the kernel sends it (``PR_SET_PDEATHSIG``; ``kernel=False`` leaves that out);
    everywhere a thread compares the parent pid with the supervisor's every
    :data:`PARENT_CHECK_EVERY_S` (reparented: orphaned). Nothing when not a worker.
    """
    supervisor = supervisor_pid(environ)
    if supervisor is None:
        return
    if kernel and sys.platform.startswith("linux"):
        _ask_kernel()
    # Checked after the prctl: a supervisor that died before it sent no signal.
    if orphaned(supervisor, os.getppid()):
        _supervisor_gone(supervisor)
        return
    threading.Thread(
        target=_watch_parent, args=(supervisor,), name="sparklem-supervisor", daemon=True
    ).start()


def supervisor_pid(environ: Mapping[str, str]) -> int | None:
    """The pid in :data:`SUPERVISOR_ENV` of a worker's environment; None if not a worker."""
    value = environ.get(SUPERVISOR_ENV, "") if WORKER_ENV in environ else ""
    return int(value) if value.isascii() and value.isdigit() and 1 < int(value) < 2**31 else None


def orphaned(supervisor: int, parent: int) -> bool:
    """The worker was reparented (to init or a subreaper): its supervisor is gone."""
    return parent != supervisor


def _ask_kernel() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        log.warning("prctl(PR_SET_PDEATHSIG) failed (%s); checking the parent instead", errno)


def _watch_parent(supervisor: int) -> None:
    while not orphaned(supervisor, os.getppid()):
        time.sleep(PARENT_CHECK_EVERY_S)
    _supervisor_gone(supervisor)


def _supervisor_gone(supervisor: int) -> None:
    log.warning("supervisor (pid %d) is gone; stopping", supervisor)
    os.kill(os.getpid(), signal.SIGTERM)
