"""``python -m sparklem_core.agent``: the same as ``sparklem-agent``."""

import sys

from sparklem_core.agent.cli import main

sys.exit(main())
