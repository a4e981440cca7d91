"""Sparkle-M processor: ``python3 main.py [run|init|plugins] --help``.

The checkout's entry point; installed, the same command is ``sparklem``.
"""

import sys

from sparklem_core.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="main.py"))
