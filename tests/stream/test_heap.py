"""The allocator tuning for received frames (emlive.stream.heap): applied on glibc, a no-op elsewhere."""

from __future__ import annotations

import platform
import resource

import pytest

from emlive.stream.heap import keep_frame_memory

pytestmark = pytest.mark.timeout(30)
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="tunes glibc's allocator only")
def test_freed_frame_buffers_are_reused_not_faulted_in_again() -> None:
    assert keep_frame_memory(256 << 20) and keep_frame_memory(256 << 20)  # applies, and again
    frame = 512 * 1024  # a 512 x 512 uint16 frame
    for _ in range(3):  # warm: the heap grows to the bursts' size once
        burst = [bytearray(frame) for _ in range(16)]
        del burst
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        burst = [bytearray(frame) for _ in range(16)]  # zeroed: every page is written
        del burst
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 20 * 16 * (frame // 4096) // 10, faults  # untuned: about one fault per page, every burst


def test_elsewhere_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert keep_frame_memory(256 << 20) is False
