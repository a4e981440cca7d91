"""For development, not production: local servers (Tansu, PostgreSQL, MariaDB) and the
demo, behind ``main.py dev-broker`` and ``main.py demo`` (the ``dev`` extra)."""
