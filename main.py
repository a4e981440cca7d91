"""Sparkle-M processor: ``python3 main.py [run|init|plugins] --help``."""

import sys

from sparklem_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
