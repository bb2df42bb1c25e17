"""The rolling window: emission timing, leak-free ends, resets, bounded memory; equal to offline windows."""

from __future__ import annotations

import numpy as np
import pytest

from emlive.core.errors import ConfigError
from emlive.core.protocol import frame_header
from emlive.core.windows import window_indices
from emlive.stream.window import FrameRecord, WindowAssembler, WindowBuffer, WindowJob, live_selection

pytestmark = pytest.mark.timeout(30)


def rec(index: int, acq: str = "A", shape: tuple[int, int] = (4, 5), dtype: str = "uint16") -> FrameRecord:
    data = np.full(shape, index, dtype=dtype)
    return FrameRecord(frame_header(data, acq, index, timestamp=0.0), data, float(index), 0.0)


@pytest.mark.parametrize("n", [1, 3, 5, 7, 9])
@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 6, 11])
def test_run_windows_equal_offline_windows(n: int, length: int) -> None:
    asm = WindowAssembler(n)
    jobs: list[WindowJob] = []
    for i in range(length):
        ready, reason = asm.push(rec(i))
        assert reason is None
        # the center frame t is emitted exactly when frame t + n//2 arrives
        assert [j.center.index for j in ready] == ([i - n // 2] if i >= n // 2 else [])
        jobs += ready
        assert len(asm._buffer) <= n  # memory stays bounded by the window
    tail = asm.flush(99.0)
    assert all(j.flushed for j in tail)
    jobs += tail
    assert [j.center.index for j in jobs] == list(range(length))
    for j in jobs:
        assert j.indices == window_indices(j.center.index, n, length)
        # an empty slot (a single-frame run) stacks as zeros; no neighbour slot holds the center frame
        expected = [0 if i is None else i for i in j.indices]
        np.testing.assert_array_equal(j.stack()[:, 0, 0], expected)
        np.testing.assert_array_equal(WindowBuffer().window(j)[:, 0, 0], expected)
        assert j.center.index not in j.indices[: n // 2] + j.indices[n // 2 + 1 :]
    assert asm.acquisition is None


def test_first_frames_use_windows_mirrored_about_the_center() -> None:
    asm = WindowAssembler(5)
    out = [asm.push(rec(i))[0] for i in range(4)]
    assert [[j.indices for j in o] for o in out] == [[], [], [[2, 1, 0, 1, 2]], [[3, 0, 1, 2, 3]]]


def test_runs_may_start_at_any_index() -> None:
    asm = WindowAssembler(5)
    jobs = [j for i in range(10, 16) for j in asm.push(rec(i))[0]] + asm.flush(0.0)
    assert [j.indices for j in jobs][:2] == [[12, 11, 10, 11, 12], [13, 10, 11, 12, 13]]
    assert jobs[-1].indices == [13, 14, 15, 14, 13]


@pytest.mark.parametrize(
    ("second", "reason"),
    [
        (rec(4, acq="B"), "acquisition"),
        (rec(7), "gap"),
        (rec(2), "restart"),
        (rec(4, shape=(4, 6)), "shape"),
        (rec(4, dtype="float32"), "dtype"),
    ],
)
def test_a_new_run_flushes_the_old_one_and_never_mixes_them(second: FrameRecord, reason: str) -> None:
    asm = WindowAssembler(5)
    for i in range(4):
        asm.push(rec(i))
    jobs, why = asm.push(second)
    assert why == reason
    # the old run's last two frames, with the windows of its end (never the center twice)
    assert [j.indices for j in jobs] == [[0, 1, 2, 3, 0], [1, 2, 3, 2, 1]]
    assert all(j.flushed and j.center.header.acquisition == "A" for j in jobs)
    assert asm.acquisition == second.header.acquisition
    assert asm.last_index == second.index
    more = [
        j
        for k in range(1, 3)
        for j in asm.push(
            rec(second.index + k, second.header.acquisition, second.header.shape or (4, 5), second.header.dtype or "")
        )[0]
    ]
    assert all(f.header.acquisition == second.header.acquisition for j in more for f in j.frames)
    assert more[0].indices == [second.index + 2, second.index + 1, second.index, second.index + 1, second.index + 2]


def test_resize_flushes_with_the_old_window() -> None:
    asm = WindowAssembler(5)
    for i in range(6):
        asm.push(rec(i))
    tail = asm.resize(3, 0.0)
    assert [j.indices for j in tail] == [[2, 3, 4, 5, 2], [3, 4, 5, 4, 3]]
    assert asm.n_frames == 3
    jobs, _ = asm.push(rec(6))
    assert jobs == []
    jobs, _ = asm.push(rec(7))
    assert [j.indices for j in jobs] == [[7, 6, 7]]


@pytest.mark.parametrize("n", [0, 2, -1])
def test_window_length_must_be_odd(n: int) -> None:
    with pytest.raises(ConfigError, match="odd"):
        WindowAssembler(n)


def test_pending_counts_frames_awaiting_output() -> None:
    asm = WindowAssembler(5)
    assert asm.pending == 0
    for i in range(3):
        asm.push(rec(i))
    assert asm.pending == 2
    asm.flush(0.0)
    assert asm.pending == 0


def _centers(jobs: list[WindowJob]) -> list[tuple[str, int]]:
    return [(j.center.header.acquisition, j.center.index) for j in jobs]


def test_live_selection_keeps_the_newest_window_and_a_just_ended_tail() -> None:
    asm = WindowAssembler(5)
    backlog = [j for i in range(8) for j in asm.push(rec(i))[0]]  # windows of 0..5 ready, none denoised yet
    assert _centers(live_selection(backlog)) == [("A", 5)]
    ended = backlog + asm.flush(0.0)  # an end message: the tail 6, 7 belongs to the newest
    assert _centers(live_selection(ended)) == [("A", 5), ("A", 6), ("A", 7)]
    for i in range(3):
        asm.push(rec(i, acq="B"))
    gap = asm.push(rec(9, acq="B"))[0]  # B's run 0..2 is cut by a gap: its tail is old news
    more = [j for i in range(10, 12) for j in asm.push(rec(i, acq="B"))[0]]
    assert _centers(live_selection(gap + more)) == [("B", 9)]
    assert live_selection([]) == []


def test_window_buffer_copies_each_frame_at_most_twice_and_matches_stacking() -> None:
    asm = WindowAssembler(5)
    buf = WindowBuffer()
    jobs = [j for i in range(12) for j in asm.push(rec(i))[0]] + asm.flush(0.0)
    writes = 0
    for job in jobs:
        before = list(buf._slots)
        win = buf.window(job)
        writes += sum(a != b for a, b in zip(before, buf._slots, strict=False)) if before else len(buf._slots)
        np.testing.assert_array_equal(win, job.stack())
        assert buf.owns(win[2]) or job.indices != sorted(job.indices)
    assert writes <= 2 * 12
