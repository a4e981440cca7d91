"""The read side, shared by ``serve`` and ``tail``: the feed (``feed``), what can be read
(``catalog``), the queries (``queries``) and times as people write them (``timeparse``).

Imports no web framework and no Kafka: the API (:mod:`sparklem_core.http`) and the
terminal feed are thin layers over it.
"""
