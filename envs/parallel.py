"""Recording episodes in worker processes, the one way both env packages do it."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def ordered_map(fn: Callable[[Any], T], tasks: Iterable[Any], workers: int) -> Iterator[T]:
    """``fn(task)`` for every task, in task order, from ``workers`` processes (inline for one worker).

    spawn, not fork: safe whatever threads (zarr, torch) or OpenGL contexts the caller holds, and the
    same on every platform. ``fn`` must be importable by name (a module-level function).
    """
    tasks = list(tasks)
    if workers <= 1:
        for task in tasks:
            yield fn(task)
        return
    with mp.get_context("spawn").Pool(processes=workers) as pool:
        yield from pool.imap(fn, tasks, chunksize=1)
