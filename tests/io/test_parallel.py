"""The worker pool: results in input order, same as one process, clear error when it breaks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence

import pytest

from otrain.io.parallel import MIN_ITEMS_FOR_POOL, map_chunks, map_stream


def square_all(chunk: Sequence[int]) -> list[int]:
    return [value * value for value in chunk]


def square_where(chunk: Sequence[int]) -> tuple[list[int], int]:
    return square_all(chunk), os.getpid()


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


@pytest.mark.parametrize(("n", "workers", "pooled"), [(1000, 2, True), (150, 2, False), (1000, 1, False)])
def test_a_stream_of_chunks_comes_back_in_order_from_a_pool_only_when_long(n: int, workers: int, pooled: bool) -> None:
    taken: list[int] = []

    def stream() -> Iterator[list[int]]:
        for start in range(0, n, 16):
            taken.append(start)
            yield list(range(start, min(start + 16, n)))

    results = map_stream(square_where, stream(), workers=workers, description="squaring")
    chunks = [next(results)]
    if n == 1000:
        assert len(taken) < 20  # read ahead by a window, not whole
    chunks += list(results)
    assert [value for _, (result, _) in chunks for value in result] == [value * value for value in range(n)]
    assert [item for chunk, _ in chunks for item in chunk] == list(range(n))
    assert any(pid != os.getpid() for _, (_, pid) in chunks) is pooled
