"""The database layer: schema, engines, the write path, migrations, plugin tables, the
tables the read side keeps, and database error judgement.

Depends on ``settings``, ``wire`` and the plugin API only; ``fleet``, ``processor``,
``reading``, ``http`` and ``admin`` depend on it (tests/test_layout.py checks the direction).
"""
