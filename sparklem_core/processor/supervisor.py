"""``run --workers N``: N consumer processes in one group, supervised by this one.

Each worker is a plain ``sparklem run`` (one process, its own database engine and
Kafka consumer), so the parent holds no state: it restarts a worker that dies and,
on SIGTERM/SIGINT, forwards the signal and waits for all of them.
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

log = logging.getLogger(__name__)

WORKER_ENV = "SPARKLEM_WORKER"
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
        env = {**os.environ, **self.worker_env(n), WORKER_ENV: str(n)}
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
