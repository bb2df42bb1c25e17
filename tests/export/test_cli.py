"""`emlive export` and `emlive bench` through the entry point (emlive.cli:main, as the console script runs it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import pytest

from emlive.cli import main
from emlive.export.cli import DEFAULT_OPSET
from emlive.export.onnx_export import DEFAULT_OPSET as EXPORTER_DEFAULT_OPSET
from emlive.export.runtime import BackendName, backend_unavailable_reason


def _emlive(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["emlive", *args])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_export_command(
    small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli.onnx"
    assert _emlive(monkeypatch, "export", str(small.ckpt), "-o", str(out), "--opset", "18") == 0
    text = capsys.readouterr().out
    assert f"wrote {out} (fp32, opset 18" in text
    assert "parity onnxruntime vs torch: random 61x83: max |exported - torch|" in text
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["frames"] == "5"
    assert DEFAULT_OPSET == EXPORTER_DEFAULT_OPSET


def test_export_errors_are_one_line(
    small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _emlive(monkeypatch, "export", str(tmp_path / "none.ckpt"), "-o", str(tmp_path / "x.onnx")) == 2
    err = capsys.readouterr().err
    assert "none.ckpt: no such model file" in err and "Traceback" not in err
    if backend_unavailable_reason(BackendName.tensorrt) is not None:
        assert _emlive(monkeypatch, "export", str(small.ckpt), "-o", str(tmp_path / "t.onnx"), "--tensorrt") == 2
        err = capsys.readouterr().err
        assert "TensorRT cannot run here" in err and "pip install emlive[gpu]" in err and "Traceback" not in err
        assert len([line for line in err.splitlines() if "ERROR" in line]) == 1
        assert not (tmp_path / "t.onnx").exists(), "fails before exporting"


def test_bench_command_default_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "bench.json"
    assert _emlive(monkeypatch, "bench", "--sizes", "64", "--repeats", "1", "--json", str(report)) == 0
    out = capsys.readouterr().out
    assert "random-weight default model" in out and "vs eager" in out
    assert "torch eager (reference) [cpu]" in out and "onnx_cpu" in out and "64x64" in out
    data = json.loads(report.read_text())
    rows = {r["backend"]: r for r in data["rows"]}
    assert rows["torch eager (reference) [cpu]"]["speedup_vs_eager"] == pytest.approx(1.0)
    assert rows["onnx_cpu"]["ms_per_frame"] > 0 and rows["onnx_cpu"]["gflops"] > 0
    assert data["macs_per_pixel"] == pytest.approx(517936, rel=0.01)


def test_bench_command_on_an_onnx_model_and_bad_sizes(
    small, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _emlive(monkeypatch, "bench", "--model", str(small.onnx), "--sizes", "48", "--repeats", "1") == 0
    out = capsys.readouterr().out
    assert "onnx_cpu" in out and "n/a" in out
    assert _emlive(monkeypatch, "bench", "--sizes", "5x5") == 2
    assert "--sizes entry '5x5'" in capsys.readouterr().err
