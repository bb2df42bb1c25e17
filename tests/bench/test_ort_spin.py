"""bench/ort_spin.py: both sessions run, paced and back to back, and differ only in the spin setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from emlive.bench.ort_spin import SPIN_KEY, _session, onnx_file, run

STUDENT = Path(__file__).resolve().parents[2] / "models" / "cpu-live-student.pt"


@pytest.mark.timeout(120)
def test_spin_ab_reports_cpu_and_run_times_for_both_settings(tmp_path: Path) -> None:
    result = run(STUDENT, size=64, threads=2, fps=200.0, frames=4, rounds=1)
    for name in ("spin", "no_spin"):
        assert set(result[name]) == {"cpu", "run", "b2b"}
        assert all(v > 0 for v in result[name].values())
    path = onnx_file(STUDENT, tmp_path)
    for spin, entry in ((True, "1"), (False, "0")):
        options = _session(path, 1, spin).get_session_options()
        assert options.get_session_config_entry(SPIN_KEY) == entry
