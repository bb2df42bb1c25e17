"""Where the live service's frame buffers come from: glibc's allocator, tuned once so frames reuse memory.

ZeroMQ allocates a buffer for every received message (512 KiB for a 512 x 512 uint16 frame) and frees it when the
service has published it. With glibc's defaults, a burst of frees hands the top of the heap back to the
operating system (``M_TRIM_THRESHOLD``), and buffers above the mmap threshold are mapped and unmapped one by one;
the next frames then page-fault their memory in again: measured, about a fifth of the receiving thread's time per
512 x 512 frame and of the service's frame rate (``python -m emlive.bench.stream_bench``). A bare receiver that
holds one message at a time never sees this; the service holds a queue, a window and the messages being published.

:func:`keep_frame_memory` serves frame-sized buffers from the heap (up to glibc's largest mmap threshold, 32 MiB)
and keeps freed memory up to a bound (the input queue's share of the memory budget: what received frames may
hold anyway) for the next frames. It changes where memory comes from, not how much the service may hold.
Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

logger = logging.getLogger("emlive.stream.service.heap")

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
MAX_MMAP_THRESHOLD = 32 << 20  # glibc refuses more (HEAP_MAX_SIZE / 2 on 64-bit)
_INT_MAX = 2**31 - 1


def keep_frame_memory(keep_bytes: int) -> bool:
    """Tune glibc so frame buffers come from the heap and up to ``keep_bytes`` of freed memory stays there;
    returns whether it applied (False elsewhere than glibc). Process-wide; calling it again is harmless."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    keep = max(MAX_MMAP_THRESHOLD, min(_INT_MAX, keep_bytes))
    done = mallopt(_M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, keep) == 1
    logger.debug("glibc: frames up to %d bytes from the heap, %d bytes of freed memory kept: %s",
                 MAX_MMAP_THRESHOLD, keep, done)  # fmt: skip
    return done
