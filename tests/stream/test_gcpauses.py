"""The service and the garbage collector: pauses counted per generation, the loaded objects frozen out of full scans."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest

from emlive.stream.gcpauses import GcPauses


@pytest.mark.timeout(30)
def test_every_collection_is_counted_and_timed_per_generation_until_removed() -> None:
    pauses = GcPauses()
    pauses.install()
    try:
        pauses.install()  # once only
        gc.collect(0)
        gc.collect(1)
        gc.collect(1)
        snap = pauses.snapshot()
    finally:
        pauses.remove()
    assert snap["collections"][0] >= 1 and snap["collections"][1] >= 2
    assert all(ms >= 0 for ms in snap["total_ms"]) and snap["max_ms"][1] <= snap["total_ms"][1]
    gc.collect(0)
    assert pauses.snapshot()["collections"] == snap["collections"], "removed: no longer counted"
    assert pauses._hook not in gc.callbacks


@pytest.mark.timeout(60)
def test_the_loaded_objects_are_frozen_out_of_full_collections_and_thawed() -> None:
    """In a fresh interpreter (a full collection of the test process would scan all of pytest's objects)."""
    code = (
        "import gc, json\n"
        "from emlive.stream.gcpauses import freeze_loaded, thaw\n"
        "kept = [[i] for i in range(20000)]\n"
        "frozen, seconds = freeze_loaded()\n"
        "tracked_after = len(gc.get_objects())\n"
        "thaw()\n"
        "print(json.dumps([frozen, seconds, tracked_after, gc.get_freeze_count(), len(gc.get_objects())]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50, check=True).stdout
    frozen, seconds, tracked_after, thawed_count, tracked_thawed = json.loads(out.strip().splitlines()[-1])
    assert frozen >= 20000 and seconds >= 0
    assert tracked_after < 5000, "frozen objects are no longer in the generations a collection scans"
    assert thawed_count == 0 and tracked_thawed >= 20000
