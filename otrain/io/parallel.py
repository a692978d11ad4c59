"""Run a function over chunks of work items in worker processes, results in input order."""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TypeVar

from otrain.errors import OtrainError
from otrain.io.progress import progress_bar

__all__ = ["default_workers", "map_chunks", "map_stream"]

T = TypeVar("T")
R = TypeVar("R")

#: Below this many items a pool costs more to start than it saves.
MIN_ITEMS_FOR_POOL = 200


def default_workers() -> int:
    """Return the number of CPU cores this process may use (affinity and cgroup quota)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def map_chunks(
    function: Callable[[Sequence[T]], R],
    items: Sequence[T],
    *,
    workers: int | None,
    description: str,
    preload: Sequence[str] = (),
    chunk_size: int | None = None,
    window_per_worker: int = 3,
) -> Iterator[tuple[Sequence[T], R]]:
    """Apply ``function`` to consecutive chunks of ``items``, in parallel, yielding in order.

    Workers are started with the ``forkserver`` method, so the calling process may hold
    threads (a progress bar, TensorFlow) without risk. Small jobs run in this process.

    Parameters
    ----------
    function : callable
        A module-level function taking a chunk (a sequence of items).
    items : sequence
        The work items.
    workers : int or None
        Number of processes; None means one per core.
    description : str
        Progress bar label.
    preload : sequence of str
        Modules the fork server imports once, so workers start warm.
    chunk_size : int, optional
        Items per task; by default about eight tasks per worker, at most 512 items each.
    window_per_worker : int
        Chunks submitted ahead per worker; bounds the memory held by finished results.

    Yields
    ------
    tuple
        (chunk, function(chunk)) for each chunk, in the order of ``items``.
    """
    n_workers = default_workers() if workers is None else workers
    if chunk_size is None:
        chunk_size = max(16, min(512, -(-len(items) // (8 * n_workers))))
    pooled = n_workers > 1 and len(items) >= MIN_ITEMS_FOR_POOL
    n_processes = min(n_workers, -(-len(items) // chunk_size)) if pooled else 1
    yield from _run(
        function, _chunks(items, chunk_size), len(items), n_processes, description, preload, window_per_worker
    )


def map_stream(
    function: Callable[[Sequence[T]], R],
    chunks: Iterable[Sequence[T]],
    *,
    workers: int | None,
    description: str,
    preload: Sequence[str] = (),
    window_per_worker: int = 3,
) -> Iterator[tuple[Sequence[T], R]]:
    """Apply ``function`` to chunks that arrive as a stream (their number unknown), in parallel, yielding in order.

    As :func:`map_chunks`, for work read as it goes (alert packets from an archive): only a
    window of chunks is taken from ``chunks`` ahead of the caller. A stream of fewer than
    :data:`MIN_ITEMS_FOR_POOL` items is done in this process.

    Parameters
    ----------
    function : callable
        A module-level function taking a chunk.
    chunks : iterable of sequences
        The chunks, in order; none empty.
    workers : int or None
        Number of processes; None means one per core.
    description : str
        Progress bar label.
    preload : sequence of str
        Modules the fork server imports once.
    window_per_worker : int
        Chunks taken ahead per worker.

    Yields
    ------
    tuple
        (chunk, function(chunk)) for each chunk, in order.
    """
    n_workers = default_workers() if workers is None else workers
    stream = iter(chunks)
    head: list[Sequence[T]] = []
    seen = 0
    while n_workers > 1 and seen < MIN_ITEMS_FOR_POOL and (chunk := next(stream, None)) is not None:
        head.append(chunk)
        seen += len(chunk)
    n_processes = n_workers if seen >= MIN_ITEMS_FOR_POOL else 1
    yield from _run(function, itertools.chain(head, stream), 0, n_processes, description, preload, window_per_worker)


def _run(
    function: Callable[[Sequence[T]], R],
    chunks: Iterator[Sequence[T]],
    total: int,
    n_processes: int,
    description: str,
    preload: Sequence[str],
    window_per_worker: int,
) -> Iterator[tuple[Sequence[T], R]]:
    """Apply ``function`` to ``chunks`` in this process (``n_processes`` 1) or a pool, yielding in order."""
    with progress_bar(total, description) as bar:
        if n_processes == 1:
            for chunk in chunks:
                result = function(chunk)
                bar.update(len(chunk))
                yield chunk, result
            return
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(preload))
        pool = ProcessPoolExecutor(max_workers=n_processes, mp_context=context)
        # A bounded window of chunks in flight: workers read ahead while the caller consumes,
        # and memory does not grow with the number of items.
        pending: deque[tuple[Sequence[T], Future[R]]] = deque()
        try:
            for chunk in itertools.islice(chunks, window_per_worker * n_processes):
                pending.append((chunk, pool.submit(function, chunk)))
            while pending:
                chunk, future = pending.popleft()
                result = future.result()
                following = next(chunks, None)
                if following is not None:
                    pending.append((following, pool.submit(function, following)))
                bar.update(len(chunk))
                yield chunk, result
        except BrokenProcessPool as error:
            raise OtrainError(
                f"a worker process died while {description} ({error}); "
                "if otrain was called from a script, guard it with `if __name__ == '__main__':`, "
                "or use one worker (--workers 1)"
            ) from None
        finally:
            # On an early exit (an error, an interrupt) drop the queued chunks instead of
            # finishing them.
            pool.shutdown(wait=True, cancel_futures=True)
