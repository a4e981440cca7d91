"""``python3 main.py serve``: the read API (FastAPI, under /api/v1) and the dashboard at /.

Imported only by the ``serve`` command (``sparklem_core.cli.serve``) and the demo: the
processor and the agent never load FastAPI. The queries themselves live in
:mod:`sparklem_core.reading`.
"""
