"""Work items side by side on a thread pool, ending together: no item is still running once the call returns or raises."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def run_all(pool: ThreadPoolExecutor, work: Callable[[T], R], items: Sequence[T], *, retryable: tuple[type[BaseException], ...] = ()) -> list[R]:
    """`work(item)` of every item, in order: the first on this thread, the others on `pool`.

    Returns once every item ended. If any raised, raises one of those errors: the first that is not `retryable`
    (a bug must stop the caller, not be retried), else the first.

    >>> with ThreadPoolExecutor(2) as pool:
    ...     run_all(pool, lambda n: n * n, [1, 2, 3])
    [1, 4, 9]
    """
    futures = [pool.submit(work, item) for item in items[1:]]
    errors: list[BaseException] = []
    results: list[R] = []
    if items:
        try:
            results.append(work(items[0]))
        except Exception as exc:  # noqa: BLE001 - raised below, once every item has ended
            errors.append(exc)
    for future in futures:
        if (error := future.exception()) is not None:
            errors.append(error)
    if errors:
        raise next((e for e in errors if not isinstance(e, retryable)), errors[0])
    return results + [future.result() for future in futures]
