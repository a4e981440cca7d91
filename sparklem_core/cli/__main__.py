"""``python -m sparklem_core.cli``: how ``run --workers N`` starts its workers."""

import sys

from sparklem_core.cli import main

sys.exit(main())
