"""bench/gpu_check.py without a GPU: the no-CUDA answer, and ``--cpu-smoke`` (the same code paths on the CPU at
32 px) writing a JSON of the documented structure with finite parity numbers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from emlive.bench.gpu_check import (
    VARIANTS,
    Budget,
    CheckConfig,
    ModelEntry,
    SpeedState,
    config_from,
    junit_counts,
    main,
    parse_args,
    relative_error,
    size_order,
    speed_phase,
    targets,
)
from emlive.core.errors import ConfigError
from emlive.core.modelcard import ModelCard
from emlive.core.network import BlindSpotNet, NetworkConfig

pytestmark = pytest.mark.timeout(120)

SPEED_KEYS = {"model", "role", "size", "variant", "fps", "p50_ms", "p99_ms", "parity_vs_fp32", "peak_memory_mib"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    out = tmp_path_factory.mktemp("gpu_check")
    threads = torch.get_num_threads()
    returned = main(["--cpu-smoke", "--out", str(out)])
    assert torch.get_num_threads() == threads  # the smoke run's one thread is not left to the next tests
    return returned, json.loads((out / "gpu_check.json").read_text())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without CUDA")
def test_without_cuda_it_exits_0_with_the_reason_and_runs_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "emlive.bench.gpu_check", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["cuda"] is False and "CUDA" in saved["reason"]
    assert "speed" not in saved and "service" not in saved  # nothing heavy ran


def test_smoke_writes_every_model_size_and_variant_with_finite_parity(smoke) -> None:
    returned, saved = smoke
    assert saved == json.loads(json.dumps(returned, default=str))
    assert saved["smoke"] is True and saved["cuda"] is torch.cuda.is_available()
    names = [m["name"] for m in saved["models"]]
    assert any(n.startswith("teacher width") for n in names) and "synthetic-small" in names
    assert len(saved["speed"]) == len(names) * len(VARIANTS)  # one row per (model, size, variant), none lost
    ran = [r for r in saved["speed"] if "fps" in r]
    assert {r["variant"] for r in ran} == {"fp32", "fp16", "fp16_channels_last"}
    for row in ran:
        assert set(row) >= SPEED_KEYS, row
        assert row["size"] == 32 and row["fps"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
        assert math.isfinite(row["parity_vs_fp32"])
        assert row["parity_vs_fp32"] == 0.0 if row["variant"] == "fp32" else 0.0 < row["parity_vs_fp32"] < 1e-2
    skipped = {r["variant"]: r["skipped"] for r in saved["speed"] if "fps" not in r}
    assert set(skipped) == {"fp16_cuda_graph", "fp16_compile"}  # each with its reason
    assert "CUDA" in skipped["fp16_cuda_graph"] and "compile" in skipped["fp16_compile"]


def test_smoke_runs_the_service_path_and_says_where_the_student_is(smoke) -> None:
    _, saved = smoke
    served = [r for r in saved["service"] if "skipped" not in r]
    assert len(served) == 1, saved["service"]
    row = served[0]
    assert row["backend"] == "torch_cpu" and row["output_fps"] > 0 and row["latency_age"]["p99_ms"] > 0
    assert row["target_p99_ms"] == pytest.approx(2000.0 / row["feed_fps"] + 40.0, abs=0.01)
    assert isinstance(row["meets_target"], bool)
    assert saved["gpu_tests"]["skipped"].startswith("not requested")
    for target in saved["targets"]:  # nothing at 2048 px in a smoke run: measured as "not measured", never as met
        assert target["size"] == 2048 and target["best_fps"] is None and target["met"] is None
    has_student = any(m["role"] == "student" for m in saved["models"])
    try:
        import emlive.core.student  # noqa: F401
    except ImportError:
        assert not has_student and any(n.startswith("student: not available in this tree") for n in saved["notes"])
    else:
        assert has_student


def test_parity_is_relative_to_the_output_range_and_infinite_for_nan() -> None:
    ref = torch.tensor([0.0, 2.0, 4.0])
    assert relative_error(ref + torch.tensor([0.0, 0.4, 0.0]), ref) == pytest.approx(0.1)
    assert relative_error(torch.tensor([0.0, float("nan"), 4.0]), ref) == math.inf


def test_a_spent_budget_skips_every_case_with_the_reason_and_runs_none() -> None:
    net_cfg = NetworkConfig(width=8, scales=2, blocks=1)
    tiny = ModelEntry("tiny", "teacher", BlindSpotNet(net_cfg), ModelCard(network=net_cfg), 5)
    cfg = CheckConfig.cpu_smoke(sizes=(32, 2048))
    rows = speed_phase([tiny], ["fp32", "fp16"], 0.0, SpeedState(), cfg, Budget(1.0), torch.device("cpu"))
    assert [(r["size"], r["variant"]) for r in rows] == [(2048, "fp32"), (2048, "fp16"), (32, "fp32"), (32, "fp16")]
    assert all(r["skipped"].startswith("time budget") and "fps" not in r for r in rows)


def test_a_bad_option_names_the_option_the_value_and_the_rule() -> None:
    with pytest.raises(ConfigError, match=r"--budget-s=-5.0: Input should be greater than 0"):
        config_from(parse_args(["--budget-s", "-5"]))
    assert config_from(parse_args(["--sizes", "256,1024"])).sizes == (256, 1024)


def test_targets_take_each_models_best_fp16_variant_at_2048_px() -> None:
    def row(model: str, role: str, variant: str, fps: float, size: int = 2048) -> dict[str, Any]:
        return {"model": model, "role": role, "size": size, "variant": variant, "fps": fps}

    teacher = "teacher width 64 (random weights)"
    speed = [
        row("s", "student", "fp32", 900.0), row("s", "student", "fp16", 250.0),
        row("s", "student", "fp16_cuda_graph", 320.0), row("s", "student", "fp16_compile", 999.0, size=512),
        row(teacher, "teacher", "fp16", 50.0), row("synthetic-small", "teacher", "fp16", 500.0),
        {"model": "t2", "role": "student", "size": 2048, "variant": "fp16", "skipped": "time budget"},
    ]  # fmt: skip
    got = {t["model"]: (t["best_fps"], t["best_variant"], t["met"]) for t in targets(speed)}
    assert got == {"s": (320.0, "fp16_cuda_graph", True), teacher: (50.0, "fp16", False), "t2": (None, None, None)}


def test_the_targets_size_runs_first() -> None:
    assert size_order([512, 4096, 2048]) == [2048, 512, 4096]


def test_junit_counts_reads_pytest_output(tmp_path: Path) -> None:
    target = tmp_path / "test_tiny.py"
    target.write_text(
        "import pytest\n"
        "def test_ok():\n    pass\n"
        "def test_bad():\n    assert False\n"
        "@pytest.mark.skip(reason='x')\ndef test_skip():\n    pass\n"
    )
    xml = tmp_path / "out.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", str(target)]
    # no third-party plugins: napari's, zarr's and pytest-xvfb's cost ~8 s of imports (and an X server) and
    # change nothing in the junit XML this reads
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    subprocess.run(cmd, cwd=tmp_path, capture_output=True, timeout=90, check=False, env=env)
    assert junit_counts(xml) == {"tests": 3, "failures": 1, "errors": 0, "skipped": 1, "passed": 1}
