"""The worker pool: results in input order, same as one process, clear error when it breaks."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

import pytest

from otrain.io.parallel import MIN_ITEMS_FOR_POOL, map_chunks


def square_all(chunk: Sequence[int]) -> list[int]:
    return [value * value for value in chunk]


@pytest.mark.parametrize("workers", [1, 2])
def test_results_come_back_in_input_order(workers: int) -> None:
    items = list(range(MIN_ITEMS_FOR_POOL + 57))
    chunks = list(map_chunks(square_all, items, workers=workers, description="squaring", chunk_size=16))
    assert [value for _, result in chunks for value in result] == [value * value for value in items]
    assert [item for chunk, _ in chunks for item in chunk] == items


def test_a_broken_pool_is_one_clear_error() -> None:
    # A script read from standard input cannot be re-imported by the workers, which then die.
    script = (
        "from otrain.io.parallel import map_chunks\n"
        "from otrain.errors import OtrainError\n"
        "try:\n"
        "    list(map_chunks(sorted, list(range(400)), workers=2, description='sorting'))\n"
        "except OtrainError as error:\n"
        "    print('error:', error)\n"
    )
    result = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120)
    assert "error: a worker process died while sorting" in result.stdout
    assert "--workers 1" in result.stdout
