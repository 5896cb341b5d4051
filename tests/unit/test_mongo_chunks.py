"""`connectors.mongo.each_chunk`: chunks side by side, results in order, and no chunk still running once it raised."""

from __future__ import annotations

import threading

import pytest

from connectors.mongo import each_chunk


def test_results_come_back_in_chunk_order() -> None:
    assert each_chunk(lambda chunk: sum(chunk), [[1, 2], [3], [4, 5, 6], []]) == [3, 3, 15, 0]


def test_a_failing_chunk_raises_only_after_every_other_chunk_has_ended() -> None:
    failed = threading.Event()
    ended: list[int] = []

    def work(chunk: int) -> int:
        if chunk == 0:
            failed.set()
            raise ValueError("chunk 0 refused")
        assert failed.wait(10)  # the others run on after the failure
        ended.append(chunk)
        return chunk

    with pytest.raises(ValueError, match="chunk 0 refused"):
        each_chunk(work, [0, 1, 2, 3, 4, 5])
    assert sorted(ended) == [1, 2, 3, 4, 5]


def test_one_chunk_runs_on_the_callers_thread() -> None:
    assert each_chunk(lambda _: threading.current_thread().name, [None]) == [threading.current_thread().name]
