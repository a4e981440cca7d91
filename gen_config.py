"""Enroll an agent and write its bundle: ``python3 gen_config.py --help``.

The checkout's entry point; installed, the same command is ``sparklem-enroll``.
"""

import sys

from sparklem_core.admin.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="gen_config.py"))
