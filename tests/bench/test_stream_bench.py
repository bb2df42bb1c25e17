"""The live-service benchmark's overhead part, tiny: both baselines and the service, side by side in one run."""

from __future__ import annotations

from pathlib import Path

import pytest

from emlive.bench.stream_bench import main


@pytest.mark.timeout(120)
def test_overhead_only_compares_the_service_with_bare_pull_and_bare_relay(tmp_path: Path) -> None:
    results = main(["--sizes", "32", "--seconds", "0.02", "--rounds", "1", "--no-model", "--out", str(tmp_path)])
    [row] = results["overhead"]
    assert "real_model" not in results and (tmp_path / "stream.json").is_file()
    for name in ("bare_pyzmq", "bare_pyzmq_relay", "service_identity", "service_identity_to_subscriber"):
        assert row[name]["fps"] > 0, name
    assert row["service_identity"]["published"] == row["frames"]  # lossless: every frame went out
    cpu = row["service_identity"]["cpu_us_per_frame"]  # the service's CPU per frame, per thread (Linux /proc)
    assert {"emlive-pipeline", "emlive-receiver", "total"} <= set(cpu) and cpu["total"] >= 0
    assert row["ratio"] == round(row["service_identity"]["fps"] / row["bare_pyzmq"]["fps"], 3)
    assert row["ratio_to_relay"] == round(row["service_identity"]["fps"] / row["bare_pyzmq_relay"]["fps"], 3)
