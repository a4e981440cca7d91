"""``run --workers``: a worker follows its supervisor (the e2e side: test_e2e_processor)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from harness import pid_alive
from hypothesis import given
from hypothesis import strategies as st
from waiting import wait_for

from sparklem_core.processor.supervisor import (
    SUPERVISOR_ENV,
    WORKER_ENV,
    follow_supervisor,
    orphaned,
    supervisor_pid,
)

# A stand-in worker: follows its parent without the kernel's help, stops on SIGTERM.
WORKER = """
import os, signal, sys, threading
from sparklem_core.processor.supervisor import follow_supervisor
stopped = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stopped.set())
follow_supervisor({"SPARKLEM_WORKER": "0", "SPARKLEM_SUPERVISOR_PID": str(os.getppid())},
                  kernel=False)
print("following", flush=True)
print("stopped cleanly" if stopped.wait(60) else "still running", flush=True)
"""

# A stand-in supervisor: starts the worker, says its pid, waits to be killed.
SUPERVISOR = """
import subprocess, sys, time
out = open(sys.argv[1], "wb")
worker = subprocess.Popen([sys.executable, "-c", sys.argv[2]], stdout=out, stderr=out)
print(worker.pid, flush=True)
time.sleep(120)
"""


def test_the_parent_check_alone_stops_a_worker_whose_supervisor_was_killed(
    tmp_path: Path,
) -> None:
    """The fallback of systems without PR_SET_PDEATHSIG (macOS, BSD)."""
    out = tmp_path / "worker.out"
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(out), WORKER], stdout=subprocess.PIPE
    )
    try:
        assert supervisor.stdout is not None
        worker = int(supervisor.stdout.readline())
        wait_for(lambda: b"following" in out.read_bytes(), 30, message="worker not started")
        supervisor.kill()
        supervisor.wait()
        wait_for(lambda: not pid_alive(worker), 10, message="the worker outlived its supervisor")
        said = out.read_text()
        assert "is gone; stopping" in said and said.endswith("stopped cleanly\n"), said
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()


def test_a_worker_is_orphaned_once_reparented() -> None:
    assert not orphaned(4242, 4242)
    assert orphaned(4242, 1)  # init
    assert orphaned(4242, 777)  # a subreaper


def test_only_a_worker_with_a_valid_supervisor_pid_follows_one() -> None:
    assert supervisor_pid({WORKER_ENV: "1", SUPERVISOR_ENV: "4242"}) == 4242
    assert supervisor_pid({SUPERVISOR_ENV: "4242"}) is None  # not a worker
    for bad in ("", "1", "0", "-5", "12a", "٣٤", "9" * 30, " 42"):
        assert supervisor_pid({WORKER_ENV: "0", SUPERVISOR_ENV: bad}) is None, bad


@given(st.text(max_size=40))
def test_any_supervisor_pid_text_is_a_pid_or_none(value: str) -> None:
    pid = supervisor_pid({WORKER_ENV: "0", SUPERVISOR_ENV: value})
    assert pid is None or (1 < pid < 2**31 and value.isascii() and int(value) == pid)


def test_not_a_worker_follows_nothing() -> None:
    follow_supervisor({})
    assert "sparklem-supervisor" not in {t.name for t in threading.enumerate()}
