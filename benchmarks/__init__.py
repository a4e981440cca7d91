"""Benchmarks: ``python3 -m benchmarks.NAME --help`` for pipeline, crypto, prune, api (the
read API) and the others here.

Each prints a table or a line on stdout and, last, one JSON object with every figure;
progress goes to stderr. None is part of the processor: they build their own keys,
messages and databases in temporary directories and leave nothing behind.
"""
