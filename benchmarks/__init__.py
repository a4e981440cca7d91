"""Benchmarks of the processor: ``python3 -m benchmarks.pipeline --help`` and
``python3 -m benchmarks.crypto --help``.

Both print a table on stdout and, as their last line, one JSON object with every figure;
progress goes to stderr. Neither is part of the processor: they build their own keys and
messages in a temporary directory and leave nothing behind.
"""
