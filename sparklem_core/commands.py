"""Sparkle-M's commands as hints should name them: as the user runs them.

Installed (a wheel, or ``pip install -e``), they are console scripts; a checkout's
``python3 main.py`` and ``python3 gen_config.py`` are the same commands, and are the
only ones a user of them may have on PATH. A command's ``main(prog=...)`` says which:
the checkout's entry points pass their file name.
"""

from __future__ import annotations

PROCESSOR = "sparklem"
ENROLL = "sparklem-enroll"
_IN_A_CHECKOUT = {PROCESSOR: "python3 main.py", ENROLL: "python3 gen_config.py"}
_CHECKOUT_PROGS = {"main.py", "gen_config.py"}

_checkout = False  # until a command says it runs from a checkout


def invoked_as(prog: str) -> None:
    """Record the name the running command was started by (its ``main``'s ``prog``)."""
    global _checkout
    _checkout = prog in _CHECKOUT_PROGS


def command(name: str) -> str:
    """``name`` (:data:`PROCESSOR`, :data:`ENROLL`) as the user of this process runs it."""
    return _IN_A_CHECKOUT[name] if _checkout else name
