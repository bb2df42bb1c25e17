"""bench/window_leak.py, the per-frame before/after measurement of the window fix, on a tiny movie and model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emlive.bench.window_leak import _old_mirrored, main

pytestmark = pytest.mark.timeout(60)


def test_the_old_windows_are_the_leaky_ones_the_issue_describes() -> None:
    assert _old_mirrored(0, 5, 10) == [2, 1, 0, 1, 2]
    assert _old_mirrored(1, 5, 10) == [1, 0, 1, 2, 3]  # the center frame in a neighbour slot
    assert _old_mirrored(8, 5, 10) == [6, 7, 8, 9, 8]
    assert _old_mirrored(1, 5, 2) == [1, 0, 1, 0, 1]


def test_bench_scores_every_frame_both_ways_and_writes_json_and_png(small, tmp_path: Path) -> None:
    out = tmp_path / "leak"
    result = main(["--model", str(small.onnx), "--out", str(out), "--frames", "4", "--size", "40", "--epochs", "0"])
    saved = json.loads((out / "window_leak.json").read_text())
    assert saved["frames"] == result["frames"] and (out / "window_leak.png").stat().st_size > 0
    assert [r["frame"] for r in saved["frames"]] == [0, 1, 2, 3]
    for row in saved["frames"]:
        assert {"raw", "shipped_old_windows", "shipped_new_windows"} <= set(row)
        assert all(-1.0 <= row[k] <= 1.0 for k in ("raw", "shipped_old_windows", "shipped_new_windows"))
        new = row["new_window"]
        assert row["frame"] not in new[:2] + new[3:]
    assert saved["frames"][1]["old_window"] == [1, 0, 1, 2, 3]
