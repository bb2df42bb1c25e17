"""`emlive export` and `emlive bench` through the entry point (emlive.cli:main, as the console script runs it)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from emlive.export.cli import DEFAULT_OPSET
from emlive.export.onnx_export import DEFAULT_OPSET as EXPORTER_DEFAULT_OPSET
from emlive.export.runtime import BackendName, backend_unavailable_reason

from ..entry import run_emlive


def test_export_command(
    small, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli.onnx"
    assert run_emlive("export", str(small.ckpt), "-o", str(out), "--opset", "18") == 0
    text = capsys.readouterr().out
    assert f"wrote {out} (fp32, opset 18" in text
    assert "parity onnxruntime vs torch: random 61x83: max |exported - torch|" in text
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["frames"] == "5"
    assert DEFAULT_OPSET == EXPORTER_DEFAULT_OPSET


def test_export_errors_are_one_line(
    small, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_emlive("export", str(tmp_path / "none.ckpt"), "-o", str(tmp_path / "x.onnx")) == 2
    err = capsys.readouterr().err
    assert "none.ckpt: no such model file" in err and "Traceback" not in err
    if backend_unavailable_reason(BackendName.tensorrt) is not None:
        assert run_emlive("export", str(small.ckpt), "-o", str(tmp_path / "t.onnx"), "--tensorrt") == 2
        err = capsys.readouterr().err
        assert "TensorRT cannot run here" in err and "pip install emlive[gpu]" in err and "Traceback" not in err
        assert len([line for line in err.splitlines() if "ERROR" in line]) == 1
        assert not (tmp_path / "t.onnx").exists(), "fails before exporting"


def test_bench_command_default_models_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Default: the shipped teacher and CPU-live student in one run, each with its multiply-adds and speed-up."""
    report = tmp_path / "bench.json"
    args = ["bench", "--sizes", "48", "--repeats", "1", "--backends", "onnx_cpu", "--json", str(report)]
    assert run_emlive(*args) == 0
    out = capsys.readouterr().out
    assert "model teacher: " in out and "model student: " in out and "vs teacher" in out and "vs eager" in out
    data = json.loads(report.read_text())
    assert [m["label"] for m in data["models"]] == ["teacher", "student"]
    assert [m["kind"] for m in data["models"]] == ["blindspot", "student"]
    teacher_macs, student_macs = (m["macs_per_pixel"] for m in data["models"])
    assert data["macs_per_pixel"] == teacher_macs and data["model"].endswith("synthetic-small.pt")  # old fields
    assert student_macs < teacher_macs / 4
    rows = {(r["model"], r["backend"]): r for r in data["rows"]}
    assert set(rows) == {(m, b) for m in ("teacher", "student") for b in ("onnx_cpu", "torch eager (reference) [cpu]")}
    assert rows[("teacher", "onnx_cpu")]["speedup_vs_first"] == pytest.approx(1.0)
    student = rows[("student", "onnx_cpu")]
    assert student["speedup_vs_first"] == pytest.approx(
        rows[("teacher", "onnx_cpu")]["ms_per_frame"] / student["ms_per_frame"]
    )
    assert student["macs_per_pixel"] == student_macs and student["gflops"] > 0


def test_bench_command_random_width64_against_a_labelled_model(
    small, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "bench.json"
    args = ["bench", "-m", "w64=random", "-m", str(small.ckpt), "--sizes", "48", "--repeats", "1"]
    assert run_emlive(*args, "--backends", "onnx_cpu", "--json", str(report)) == 0
    data = json.loads(report.read_text())
    assert [m["label"] for m in data["models"]] == ["w64", "small"]
    assert data["macs_per_pixel"] == pytest.approx(517936)  # the default width-64 network (method.md)
    assert "random-weight default model" in capsys.readouterr().out
    assert run_emlive("bench", "-m", "=x.pt") == 2
    assert "-m '=x.pt': the label before '=' is empty" in capsys.readouterr().err


def test_bench_command_on_an_onnx_model_and_bad_sizes(
    small, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_emlive("bench", "--model", str(small.onnx), "--sizes", "48", "--repeats", "1") == 0
    out = capsys.readouterr().out
    assert "onnx_cpu" in out and "n/a" in out
    assert run_emlive("bench", "--sizes", "5x5") == 2
    assert "--sizes entry '5x5'" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_every_backend_is_registered_and_in_every_commands_help() -> None:
    from typer.testing import CliRunner

    from emlive.cli import app
    from emlive.export.runtime import BACKENDS

    assert set(BACKENDS) == set(BackendName), "every BackendName needs its registry entry (export/backendnames.py)"
    runner = CliRunner()
    for command in ("serve", "denoise", "bench"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "4000", "NO_COLOR": "1"})
        assert result.exit_code == 0, result.output
        names = [b for b in BackendName if command != "bench" or b is not BackendName.auto]
        missing = [b.value for b in names if f"{b.value} ({BACKENDS[b].device}:" not in result.output]
        assert not missing, f"emlive {command} --help lacks {missing}:\n{result.output}"
