"""The agents as the server knows them: the key registry (files and database) and each
agent's state, the one rule ``agents``, ``/metrics`` and ``serve``'s ``/agents`` share."""
