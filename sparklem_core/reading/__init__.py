"""The read side, shared by ``serve`` and ``tail``: what can be read, and the queries.

Imports no web framework and no Kafka: the API (:mod:`sparklem_core.http`) and the
terminal feed are thin layers over it.
"""
