"""bench/runtime_bench.py with several models: one run, rounds interleaved, speed-ups over the first model, and the
``-m [LABEL=]PATH[@ENSEMBLE]`` rules (bench/model_specs.py) both benchmarks share."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import pytest
import torch

from emlive.bench.model_specs import (
    DEFAULT_SPECS,
    SHIPPED_STUDENT,
    SHIPPED_TEACHER,
    model_labels,
    parse_model_spec,
    parse_model_specs,
)
from emlive.bench.runtime_bench import REFERENCE, format_table, run_runtime_benchmark
from emlive.core.ensemble import Ensemble
from emlive.core.errors import ConfigError
from emlive.core.modelcard import ModelCard, save_model
from emlive.core.student import StudentConfig, StudentNet

pytestmark = pytest.mark.timeout(120)

TINY_STUDENT = StudentConfig(width=8, depth=2, unshuffle=2)


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    card = ModelCard(name="tiny-student", network=TINY_STUDENT)
    return save_model(tmp_path_factory.mktemp("student") / "student.pt", StudentNet(TINY_STUDENT), card)


def test_models_run_interleaved_and_report_macs_and_speedups_over_the_first(small, student: Path) -> None:
    said: list[str] = []
    specs = parse_model_specs([str(small.ckpt), f"fast={student}"], ensembles=False)
    report = run_runtime_benchmark(specs, [48], repeats=2, backends=["onnx_cpu"], threads=1, progress=said.append)
    timed = [m.group(1, 2) for line in said if (m := re.match(r"48x48: (\S+) (.+?) \d/2: ", line))]
    ref = f"{REFERENCE} [cpu]"
    one_round = [("small", ref), ("fast", ref), ("small", "onnx_cpu"), ("fast", "onnx_cpu")]
    assert timed == one_round * 2  # model A, model B, A, B ... within every round
    assert [m.label for m in report.models] == ["small", "fast"]  # bare path: the card's name
    rows = {(r.model, r.backend): r for r in report.rows}
    assert set(rows) == set(one_round)
    for (model, backend), row in rows.items():
        macs = small.config.macs_per_pixel() if model == "small" else TINY_STUDENT.macs_per_pixel()
        assert row.macs_per_pixel == pytest.approx(macs) and len(row.times_ms) == 2
        first = rows[("small", backend)]
        assert row.speedup_vs_first == pytest.approx(
            statistics.median(first.times_ms) / statistics.median(row.times_ms)
        )
    assert rows[("small", "onnx_cpu")].speedup_vs_first == pytest.approx(1.0)
    assert report.model == str(small.ckpt) and report.macs_per_pixel == pytest.approx(small.config.macs_per_pixel())
    table = "\n".join(format_table(report))
    assert "vs small" in table and "model fast:" in table and "kMAC/px" in table


def test_model_specs_label_path_and_ensemble(tmp_path: Path) -> None:
    spec = parse_model_spec(f"teacher x8={SHIPPED_TEACHER}@dihedral")
    assert (spec.label, spec.path, spec.ensemble) == ("teacher x8", SHIPPED_TEACHER, Ensemble.dihedral)
    assert parse_model_spec(str(SHIPPED_STUDENT)).label is None
    assert parse_model_spec(f"{SHIPPED_STUDENT}@flips").ensemble is Ensemble.flips
    folder = tmp_path / "run@2"  # an '@' inside a folder name is part of the path
    folder.mkdir()
    (folder / "m.pt").write_bytes(b"")
    assert parse_model_spec(str(folder / "m.pt")).path == folder / "m.pt"
    assert [s.label for s in parse_model_specs(None)] == ["teacher", "student"]
    assert len(DEFAULT_SPECS) == 2 and SHIPPED_TEACHER.is_file() and SHIPPED_STUDENT.is_file()
    assert parse_model_spec("w64=random", allow_random=True).path is None
    specs = [parse_model_spec(str(SHIPPED_TEACHER)), parse_model_spec(str(SHIPPED_STUDENT)), spec]
    assert model_labels(specs, ["same", "same", "x"]) == ["same", "same (cpu-live-student)", "teacher x8"]
    unlabelled = parse_model_spec(f"{SHIPPED_TEACHER}@dihedral")
    assert model_labels([unlabelled], ["synthetic-small"]) == ["synthetic-small x8"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("=x.pt", r"-m '=x.pt': the label before '=' is empty; a model is -m PATH or -m LABEL=PATH"),
        ("a=", r"-m 'a=': no model path"),
        ("t=missing.pt", r"-m 't=missing.pt': no such model file missing.pt; a model is -m PATH"),
        ("t=notes.txt", r"notes.txt is no model file \(a .ckpt/.pt/.pth checkpoint"),
        (f"t={SHIPPED_TEACHER}@x16", r"unknown self-ensemble @x16; use @flips or @dihedral"),
        ("random", r"random is no model file"),
    ],
)
def test_bad_model_specs_name_the_value_and_the_rule(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_model_spec(text)


def test_bench_takes_no_ensembles_and_no_label_twice() -> None:
    with pytest.raises(ConfigError, match=r"emlive bench times single passes and takes no @dihedral"):
        parse_model_specs([f"{SHIPPED_TEACHER}@dihedral"], ensembles=False)
    with pytest.raises(ConfigError, match=r"the label 'a' is given twice"):
        parse_model_specs([f"a={SHIPPED_TEACHER}", f"a={SHIPPED_STUDENT}"])
