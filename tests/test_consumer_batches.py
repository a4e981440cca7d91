"""How the consumer cuts what it consumed into database transactions."""

from __future__ import annotations

import pytest

from sparklem_core.processor.consumer import records_that_fit
from sparklem_core.processor.pipeline import Record


def records(*sizes: int) -> list[Record]:
    return [Record("t", 0, n, b"x" * size) for n, size in enumerate(sizes)]


@pytest.mark.parametrize(
    ("sizes", "limit", "fit"),
    [
        ((10, 10, 10), 30, 3),  # all of them: exactly the limit
        ((10, 10, 10), 25, 2),
        ((40, 1), 30, 1),  # one record larger than the limit still goes alone
        ((1, 40), 30, 1),
        ((0, 0, 0), 1, 3),  # empty values (tombstones) cost nothing
    ],
)
def test_a_transaction_holds_at_most_max_bytes_of_records(sizes, limit, fit) -> None:
    assert records_that_fit(records(*sizes), limit) == fit


def test_a_record_without_value_counts_as_empty() -> None:
    assert records_that_fit([Record("t", 0, 0, None), *records(5)], 5) == 2
