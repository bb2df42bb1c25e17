"""Batch denoising on Dask (`emlive denoise ... --cluster/--shard`): the grammars, bit-identical outputs, the
manifest, resume after the whole job or one worker is killed, and the model loaded once per worker by path.

One LocalCluster of 2 worker processes (1 thread each) is shared by the module; the references are
single-process `denoise_path` runs of the same inputs with the same thread count.
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from emlive.analysis.batch import (
    MANIFEST_NAME,
    PARTS_DIR,
    WORKER_TUNING,
    ClusterKind,
    ClusterSpec,
    ModelRef,
    ShardSpec,
    denoise_batch,
    model_loads,
    open_client,
    split_jobs,
    tuning_exports,
)
from emlive.analysis.denoise import denoise_path
from emlive.cli import app
from emlive.core.errors import ConfigError, InputFileError
from emlive.core.writers import write_movie

pytestmark = pytest.mark.timeout(120)

NAMES = ("a.tif", "b.mrc", "c.tif")
BACKEND = "onnx_cpu"  # what auto picks here; named, so no worker imports the GPU backends' torch
OPTS: dict[str, Any] = {"backend": BACKEND, "threads": 1, "progress": False}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    from emlive.core.modelcard import ModelCard, save_model
    from emlive.core.network import BlindSpotNet, NetworkConfig
    from emlive.export.onnx_export import export_onnx

    torch.manual_seed(0)
    cfg = NetworkConfig(width=8, scales=2, blocks=1)
    net = BlindSpotNet(cfg).eval()
    with torch.no_grad():  # random weights give an almost constant output; this makes it vary with the input
        net.head[-1].weight.mul_(1000.0)
    root = tmp_path_factory.mktemp("model")
    return export_onnx(save_model(root / "m.ckpt", net, ModelCard(network=cfg)), root / "m.onnx").path


def _counts(frames: int, shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).poisson(20.0, (frames, *shape)).astype(np.uint16)


@pytest.fixture(scope="module")
def movies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small movies of two formats: 23 and 9 frames (several shards) and 3 (fewer than the window)."""
    folder = tmp_path_factory.mktemp("movies")
    write_movie(folder / "a.tif", _counts(23, (40, 48), 1), 0.5)
    write_movie(folder / "b.mrc", _counts(9, (32, 40), 2), 0.25)
    write_movie(folder / "c.tif", _counts(3, (24, 32), 3))
    return folder


@pytest.fixture(scope="module")
def long_movie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Long enough (10 shards of ~0.1 s) for a kill to land mid-run."""
    folder = tmp_path_factory.mktemp("long")
    write_movie(folder / "long.mrc", _counts(40, (160, 160), 4), 1.0)
    return folder


def _reference(root: Path, inputs: Path, model: Path, **kw: Any) -> Path:
    out = root / "reference"
    denoise_path(inputs, out, model, **OPTS, **kw)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, movies: Path, model: Path) -> Path:
    return _reference(tmp_path_factory.mktemp("ref"), movies, model)


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory: pytest.TempPathFactory, long_movie: Path, model: Path) -> Path:
    return _reference(tmp_path_factory.mktemp("longref"), long_movie, model)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """The local cluster `--cluster local:2` starts (open_client: its workers' settings included)."""
    pytest.importorskip("dask.distributed")
    with open_client(ClusterSpec.parse("local:2")) as c:
        c.run(lambda: __import__("emlive.analysis.batch"))  # the task module's imports, once, in parallel
        yield c


def _same_bytes(a: Path, b: Path, names: tuple[str, ...] = NAMES) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _shard_lines(outdir: Path) -> list[dict[str, Any]]:
    lines = (outdir / MANIFEST_NAME).read_text().splitlines()
    return [r for r in (json.loads(line) for line in lines if line.strip()) if r["kind"] == "shard"]


# --- grammars and planning ---------------------------------------------------------------------------------------
def test_cluster_and_shard_grammars() -> None:
    assert ClusterSpec.parse("local:4") == ClusterSpec(ClusterKind.LOCAL, workers=4)
    assert ClusterSpec.parse("SLURM:2").kind is ClusterKind.SLURM
    assert ClusterSpec.parse("pbs:3") == ClusterSpec(ClusterKind.PBS, workers=3)
    assert ClusterSpec.parse("tcp://10.0.0.5:8786") == ClusterSpec(ClusterKind.ADDRESS, address="tcp://10.0.0.5:8786")
    for bad in ("local", "local:0", "local:x", "yarn:2", "10.0.0.5:8786"):
        with pytest.raises(ConfigError, match="local:N") as err:
            ClusterSpec.parse(bad)
        assert repr(bad) in str(err.value) and "e.g. --cluster local:4" in str(err.value)
    assert ShardSpec.parse("1/3") == ShardSpec(1, 3) and ShardSpec(1, 3).takes(4) and not ShardSpec(1, 3).takes(3)
    for bad in ("2/2", "-1/2", "a/b", "1", "0/0"):
        with pytest.raises(ConfigError, match="i/N") as err:
            ShardSpec.parse(bad)
        assert repr(bad) in str(err.value)


def test_shards_are_k_to_2k_frames_and_short_movies_are_whole(movies: Path, tmp_path: Path) -> None:
    from emlive.analysis.batch import plan_inputs
    from emlive.analysis.denoise import OutputDtype

    jobs = plan_inputs([movies], tmp_path / "out", None, OutputDtype.FLOAT32, (None, None), None)
    shards = split_jobs(jobs, 4, tmp_path)
    ranges = {name: [(s.start, s.stop) for s in shards if Path(s.input).name == name] for name in NAMES}
    assert ranges["a.tif"] == [(0, 4), (4, 9), (9, 13), (13, 18), (18, 23)]
    assert ranges["b.mrc"] == [(0, 4), (4, 9)]
    assert ranges["c.tif"] == [(0, 3)]
    assert [s.index for s in shards] == list(range(len(shards)))
    whole = split_jobs(jobs, 12, tmp_path)  # a.tif: 23 < 2 * 12 frames
    assert [(s.start, s.stop) for s in whole] == [(0, 23), (0, 9), (0, 3)]
    with pytest.raises(InputFileError, match="folder"):
        plan_inputs([movies], tmp_path / "out.tif", None, OutputDtype.FLOAT32, (None, None), None)


# --- on the cluster ----------------------------------------------------------------------------------------------
def test_local_cluster_equals_single_process_and_loads_the_model_once_per_worker(
    client: Any, movies: Path, model: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    report = denoise_batch([movies], out, model, client=client, **OPTS, shard_frames=4)
    _same_bytes(out, reference)
    assert sorted(report.ran) == sorted(r["key"] for r in _shard_lines(out)) and len(report.ran) == 8
    assert not any((out / PARTS_DIR).glob("*.part")), "the parts are removed once the movies are assembled"
    # twice more on the same workers (frame ranges, another folder): each worker still loaded the model once
    ranged = tmp_path / "ranged"
    denoise_batch([movies], ranged, model, client=client, **OPTS, shard_frames=3, frames="1:-1")
    _same_bytes(ranged, _reference(tmp_path, movies, model, frames="1:-1"))
    loads = client.run(model_loads)
    assert all(counts.get(str(model.resolve()), 0) <= 1 for counts in loads.values()), loads
    assert sum(counts.get(str(model.resolve()), 0) for counts in loads.values()) >= 1
    # the workers run without Dask's 10 ms statistical profiler and its fast health polls (WORKER_TUNING)
    settings = client.run(lambda: {key: __import__("dask").config.get(key) for key in WORKER_TUNING})
    assert all(found == WORKER_TUNING for found in settings.values()), settings
    # what goes through the scheduler is the model's path, not the model
    ref = ModelRef(str(model.resolve()), BACKEND, threads=1)
    assert len(pickle.dumps(ref)) < 512 < model.stat().st_size // 50


def test_in_process_shards_with_gain_integer_output_and_mrc_equal_single_process(
    movies: Path, model: Path, tmp_path: Path
) -> None:
    gain = tmp_path / "gain.npy"
    np.save(gain, np.random.default_rng(5).uniform(0.8, 1.2, (40, 48)).astype(np.float32))
    inputs = [movies / "a.tif"]
    kw: dict[str, Any] = {"dtype": "input", "fmt": "mrc", "gain": gain, "frames": "2:"}
    report = denoise_batch(inputs, tmp_path / "out", model, **OPTS, shard_frames=5, **kw)
    denoise_path(inputs[0], tmp_path / "ref", model, **OPTS, **kw)
    assert report.outputs == [str(tmp_path / "out" / "a.mrc")] and len(report.ran) == 4
    _same_bytes(tmp_path / "out", tmp_path / "ref", ("a.mrc",))
    again = denoise_batch(inputs, tmp_path / "out", model, **OPTS, shard_frames=5, **kw)
    assert again.ran == [] and len(again.skipped) == 4 and again.outputs == []  # nothing left to do


def test_a_killed_worker_does_not_stop_the_job(
    client: Any, long_movie: Path, model: Path, long_reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    pids = client.run(os.getpid)
    done: dict[str, Any] = {}

    def job() -> None:
        done["report"] = denoise_batch([long_movie], out, model, client=client, **OPTS, shard_frames=4)

    worker = threading.Thread(target=job)
    worker.start()
    deadline = time.monotonic() + 60
    while not ((out / MANIFEST_NAME).exists() and _shard_lines(out)) and time.monotonic() < deadline:
        time.sleep(0.02)
    busy = [addr for addr, keys in client.processing().items() if keys and addr in pids]
    assert busy, "no worker was running a shard after the first one finished: the kill would test nothing"
    os.kill(pids[busy[0]], signal.SIGKILL)  # a worker process this test's cluster started
    worker.join(timeout=90)
    assert not worker.is_alive()
    _same_bytes(out, long_reference, ("long.mrc",))
    assert len(done["report"].ran) == 10


def test_shard_0_of_2_then_1_of_2_equal_the_whole(movies: Path, model: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    inputs = [str(movies / n) for n in NAMES]
    base = ["denoise", *inputs, "-o", str(out), "-m", str(model), "--backend", BACKEND, "--threads", "1",
            "--shard-frames", "4"]  # fmt: skip
    first = CliRunner().invoke(app, [*base, "--shard", "0/2", "--json"])
    assert first.exit_code == 0, first.output
    ran0 = json.loads(first.stdout)["ran"]
    assert ran0 == ["0000:0-4", "0000:9-13", "0000:18-23", "0001:4-9"]  # indexes 0, 2, 4, 6
    assert not (out / "a.tif").exists()  # a.tif and b.mrc wait for the other array task
    second = CliRunner().invoke(app, [*base, "--shard", "1/2"])
    assert second.exit_code == 0, second.output
    _same_bytes(out, reference)
    assert len(_shard_lines(out)) == 8
    other = CliRunner().invoke(app, ["denoise", *inputs, "-o", str(out), "-m", str(model), "--shard", "0/2",
                                     "--shard-frames", "5"])  # fmt: skip
    assert other.exit_code != 0 and "shard_frames" in str(other.exception) and "--overwrite" in str(other.exception)


def test_resume_after_the_whole_job_is_killed(
    client: Any, long_movie: Path, model: Path, long_reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "emlive", "denoise", str(long_movie), "-o", str(out), "-m", str(model), "--backend",
           BACKEND, "--threads", "1", "--shard-frames", "4", "--cluster", "local:1", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / MANIFEST_NAME).exists() and len(_shard_lines(out)) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the job ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the job's client, scheduler and workers: this test's process group
        proc.wait(timeout=30)
    before = {r["key"] for r in _shard_lines(out)}
    assert 3 <= len(before) < 10 and not (out / "long.mrc").exists()
    victim = sorted((out / PARTS_DIR).glob("*.part"))[0]  # a recorded part cut short on disk is redone
    victim.write_bytes(victim.read_bytes()[:100])
    report = denoise_batch([long_movie], out, model, client=client, **OPTS, shard_frames=4)
    movie, frames = victim.name.split(".")[0].split("-")[0], victim.name.split(".")[-2]  # 0000-long.mrc.a-b.part
    cut = f"{movie}:{int(frames.split('-')[0])}-{int(frames.split('-')[1])}"
    assert cut in before
    assert set(report.skipped) == before - {cut}, "the re-run redoes only what was not recorded, and the cut part"
    assert not set(report.ran) & set(report.skipped) and len(report.ran) + len(report.skipped) == 10
    _same_bytes(out, long_reference, ("long.mrc",))


def test_dask_is_imported_only_when_a_cluster_is_asked_for() -> None:
    code = "import sys, emlive.analysis.batch, emlive.cli; print(sorted({'dask', 'distributed'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_ome_zarr_shards_write_in_place_and_equal_single_process(
    client: Any, movies: Path, model: Path, tmp_path: Path
) -> None:
    pytest.importorskip("zarr")
    out, ref, movie = tmp_path / "out", tmp_path / "ref", movies / "a.tif"
    report = denoise_batch([movie], out, model, client=client, **OPTS, shard_frames=4, fmt="zarr")  # 5 shards
    denoise_path(movie, ref, model, **OPTS, fmt="zarr")
    assert len(report.ran) == 5 and len(report.workers) >= 1
    assert _tree(out / "a.ome.zarr") == _tree(ref / "a.ome.zarr")  # chunks, completion records and metadata
    assert not list((out / PARTS_DIR).glob("*.part"))  # written in place
    again = denoise_batch([movie], out, model, client=client, **OPTS, shard_frames=4, fmt="zarr")
    assert again.ran == [] and len(again.skipped) == 5


def _ready_scheduler(scheduler_file: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> str:
    """The address a `dask scheduler` process wrote to its scheduler file, once it is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"dask scheduler exited with {proc.returncode}"
        if scheduler_file.exists():
            try:
                return str(json.loads(scheduler_file.read_text())["address"])
            except (json.JSONDecodeError, KeyError):
                pass  # written but not yet complete: read it again
        time.sleep(0.2)
    raise AssertionError(f"no scheduler file {scheduler_file} within {timeout} s")


@pytest.mark.timeout(180)
def test_a_running_scheduler_at_an_address_gives_the_same_bytes(
    movies: Path, model: Path, reference: Path, tmp_path: Path
) -> None:
    """`--cluster tcp://HOST:PORT`: a real `dask scheduler` and `dask worker` (their own processes, as on a facility's
    head node), the job submitted through the CLI."""
    pytest.importorskip("dask.distributed")
    dask = Path(sys.executable).parent / "dask"
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    procs = [subprocess.Popen([str(dask), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(sched_file)], env=env, stderr=subprocess.DEVNULL,
                              start_new_session=True)]
    try:
        address = _ready_scheduler(sched_file, procs[0])
        assert address.startswith("tcp://127.0.0.1:")
        procs.append(subprocess.Popen([str(dask), "worker", address, "--nworkers", "1", "--nthreads", "1",
                                       "--no-dashboard", "--host", "127.0.0.1"], env=env, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
        out = tmp_path / "out"
        args = ["denoise", str(movies), "-o", str(out), "-m", str(model), "--cluster", address, "--backend", BACKEND,
                "--threads", "1", "--shard-frames", "4", "--no-progress"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        _same_bytes(out, reference)
        assert len(_shard_lines(out)) == 8
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.mark.parametrize("kind", ["slurm", "pbs"])
def test_the_shipped_jobqueue_settings_make_a_job_script(kind: str) -> None:
    """docs/cluster/jobqueue.yaml as dask-jobqueue reads it: one worker process per job, the emlive venv sourced
    (the script is generated, not submitted: there is no scheduler here)."""
    jobqueue = pytest.importorskip("dask_jobqueue")
    import dask.config
    import yaml

    docs = Path(__file__).resolve().parents[2] / "docs" / "cluster" / "jobqueue.yaml"
    settings = yaml.safe_load(docs.read_text())["jobqueue"][kind]  # over dask-jobqueue's defaults, key by key
    with dask.config.set({f"jobqueue.{kind}.{key}": value for key, value in settings.items()}):
        make = jobqueue.SLURMCluster if kind == "slurm" else jobqueue.PBSCluster
        with make(scheduler_options={"host": "127.0.0.1", "dashboard_address": ":0"}) as cluster:
            script = cluster.job_script()
    assert "source $HOME/emlive/.venv/bin/activate" in script
    assert "--nthreads 1" in script and "--nworkers" not in script  # one worker, one task at a time, per job
    assert ("#SBATCH --cpus-per-task=8" if kind == "slurm" else "#PBS -l select=1:ncpus=8:ngpus=1") in script


def test_a_batch_job_script_keeps_its_prologue_and_adds_the_worker_tuning() -> None:
    """slurm:N / pbs:N: the workers run in batch jobs that read no config of ours, so the tuning goes into the
    job script as Dask's environment variables, after the site's own prologue (generated, not submitted)."""
    pytest.importorskip("dask_jobqueue")
    import dask.config

    from emlive.analysis.batch import _jobqueue_cluster

    site = {
        "jobqueue.slurm.job-script-prologue": ["module load cuda"],
        "jobqueue.slurm.cores": 1,
        "jobqueue.slurm.memory": "1GB",
        "jobqueue.slurm.scheduler-options": {"host": "127.0.0.1", "dashboard_address": ":0"},
    }
    with dask.config.set(site), _jobqueue_cluster(ClusterSpec(ClusterKind.SLURM, workers=0)) as cluster:
        script = cluster.job_script()
    lines = script.splitlines()
    exports = tuning_exports()
    assert lines.index("module load cuda") < lines.index(exports[0]) and all(e in lines for e in exports)
    # a shell that runs those lines gives a Dask that reads exactly WORKER_TUNING
    keys = list(WORKER_TUNING)
    code = f"import dask, json; print(json.dumps({{k: dask.config.get(k) for k in {keys!r}}}))"
    shell = "\n".join([*exports, f"{sys.executable} -c {shlex.quote(code)}"])
    out = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if not k.startswith("DASK_")})  # fmt: skip
    assert json.loads(out.stdout) == WORKER_TUNING, out.stderr


# --- a probabilistic model: the per-movie estimate (the noise check) is the single-process one -------------------
GAIN, OFFSET, READ = 2.0, 100.0, 3.0  # the integrating detector the movie is simulated with


@pytest.fixture(scope="module")
def wrong_noise_model(gaussian_checkpoint: Callable[..., Path]) -> Path:
    """A head=gaussian model (constant prior) whose card says gain x10: the movie is quieter than it claims, so the
    noise check fails and single-process `emlive denoise` falls back to blind."""
    from emlive.export.onnx_export import export_onnx

    ckpt = gaussian_checkpoint("wrong", seed=1, scales=2, gain=10 * GAIN, offset=OFFSET, read_noise=READ,
                               constant_prior=True)  # fmt: skip
    return export_onnx(ckpt, ckpt.with_suffix(".onnx")).path


@pytest.fixture(scope="module")
def integrating(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """9 frames of a static scene on an integrating detector (Poisson x GAIN + OFFSET + read noise), uint16."""
    rng = np.random.default_rng(0)
    scene = 50.0 + 36.0 * rng.choice([-1.0, 1.0], (40, 52))
    frames = [OFFSET + GAIN * rng.poisson(scene) + rng.normal(0, READ, scene.shape) for _ in range(9)]
    folder = tmp_path_factory.mktemp("integrating")
    write_movie(folder / "g.tif", np.clip(np.rint(frames), 0, 65535).astype(np.uint16))
    return folder / "g.tif"


def test_a_failed_noise_check_gives_the_single_process_estimate_on_a_cluster_and_in_array_tasks(
    client: Any, wrong_noise_model: Path, integrating: Path, tmp_path: Path
) -> None:
    """Single process: the check fails on the movie, its output is the blind one. `--cluster` and `--shard 0/2`
    + `1/2` (2 shards: each decides from the movie's whole range, not its own) give the same bytes; forcing
    `--estimate posterior` gives the single-process forced output, which differs (the test can tell)."""
    names = ("g.tif",)
    single = denoise_path(integrating, tmp_path / "ref", wrong_noise_model, **OPTS)
    assert single.movies[0].estimate == "blind" and not single.movies[0].noise_check["ok"]
    on_dask = denoise_batch([integrating], tmp_path / "dask", wrong_noise_model, client=client, **OPTS, shard_frames=4)
    assert len(on_dask.ran) == 2 and on_dask.estimates == {str(tmp_path / "dask" / "g.tif"): "blind"}
    _same_bytes(tmp_path / "dask", tmp_path / "ref", names)
    assert {r["estimate"] for r in _shard_lines(tmp_path / "dask")} == {"blind"}
    for i in (0, 1):
        denoise_batch([integrating], tmp_path / "array", wrong_noise_model, shard=f"{i}/2", **OPTS, shard_frames=4)
    _same_bytes(tmp_path / "array", tmp_path / "ref", names)
    forced = {"estimate": "posterior", **OPTS}
    denoise_path(integrating, tmp_path / "forced-ref", wrong_noise_model, **forced)
    denoise_batch([integrating], tmp_path / "forced", wrong_noise_model, shard="0/1", **forced, shard_frames=4)
    _same_bytes(tmp_path / "forced", tmp_path / "forced-ref", names)
    assert (tmp_path / "forced" / "g.tif").read_bytes() != (tmp_path / "ref" / "g.tif").read_bytes()


# --- uncertainty maps (--uncertainty): the single-process maps, from shards --------------------------------------
MAP_NAMES = ("g.tif", "h.mrc")


@pytest.fixture(scope="module")
def varied_model(gaussian_checkpoint: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A head=gaussian model with the integrating detector's noise model whose prior mean and variance vary with
    the input (its head's last weights x 30: random weights alone give an almost constant output), as ONNX: maps
    whose pixels and frames differ, so a frame or a pixel out of place shows."""
    torch = pytest.importorskip("torch")
    from emlive.core.modelcard import load_checkpoint, save_model
    from emlive.export.onnx_export import export_onnx

    net, card = load_checkpoint(gaussian_checkpoint("varied", seed=2, scales=2, gain=GAIN, offset=OFFSET,
                                                    read_noise=READ))  # fmt: skip
    with torch.no_grad():
        net.head[-1].weight.mul_(30.0)
    ckpt = save_model(tmp_path_factory.mktemp("varied") / "varied.pt", net, card)
    return export_onnx(ckpt, ckpt.with_suffix(".onnx")).path


@pytest.fixture(scope="module")
def two_integrating(integrating: Path) -> list[Path]:
    """g.tif (9 frames) and an MRC of 7 frames of another size, same detector: both map formats."""
    rng = np.random.default_rng(1)
    scene = 40.0 + 30.0 * rng.choice([-1.0, 1.0], (32, 36))
    frames = [OFFSET + GAIN * rng.poisson(scene) + rng.normal(0, READ, scene.shape) for _ in range(7)]
    second = integrating.parent / "h.mrc"
    write_movie(second, np.clip(np.rint(frames), 0, 65535).astype(np.uint16), 0.8)
    return [integrating, second]


def _read(path: Path) -> np.ndarray:
    from emlive.core.readers import open_movie

    with open_movie(path) as movie:
        return np.asarray(movie[:])


def _single_maps(inputs: list[Path], model: Path, root: Path, **kw: Any) -> tuple[Path, Path, set[str]]:
    """Single-process `denoise_path` of each input with --uncertainty: (outputs, maps, the estimates it chose)."""
    out, maps = root / "single", root / "single-maps"
    reports = [denoise_path(p, out, model, **OPTS, uncertainty=maps, **kw) for p in inputs]
    return out, maps, {m.estimate for r in reports for m in r.movies}


def test_uncertainty_maps_from_a_cluster_array_tasks_and_one_process_equal_single_process(
    client: Any, varied_model: Path, two_integrating: list[Path], tmp_path: Path
) -> None:
    """`--uncertainty FOLDER`: `--cluster` (here its client), `--shard 0/2` + `1/2` through the CLI, and a plain
    several-input job in one process write each movie's map under its output's name, byte for byte the map of a
    single-process run, and the same denoised movies; the estimate the noise check did not choose gives other maps
    (the comparison can tell)."""
    ref, ref_maps, (decided,) = _single_maps(two_integrating, varied_model, tmp_path)
    for name in MAP_NAMES:
        stack = _read(ref_maps / name)
        assert stack.dtype == np.float32 and np.isfinite(stack).all()
        assert np.ptp(stack[0]) > 0 and not np.array_equal(stack[0], stack[-1]), "a map too flat to tell anything"
    on_dask = denoise_batch(two_integrating, tmp_path / "dask", varied_model, client=client, **OPTS, shard_frames=3,
                            uncertainty=tmp_path / "dask-maps")  # fmt: skip
    assert sorted(on_dask.maps) == [str(tmp_path / "dask-maps" / n) for n in MAP_NAMES] and len(on_dask.ran) == 5
    assert set(on_dask.estimates.values()) == {decided}
    _same_bytes(tmp_path / "dask-maps", ref_maps, MAP_NAMES)
    _same_bytes(tmp_path / "dask", ref, MAP_NAMES)
    lines = _shard_lines(tmp_path / "dask")
    assert all(r["map_bytes"] == r["bytes"] and len(r["map_blake2b"]) == 40 for r in lines), lines
    assert not list((tmp_path / "dask" / PARTS_DIR).glob("*.part")), "the map parts are removed with the movie's"
    base = ["denoise", *map(str, two_integrating), "-o", str(tmp_path / "array"), "-m", str(varied_model),
            "--backend", BACKEND, "--threads", "1", "--shard-frames", "3", "--uncertainty", str(tmp_path / "a-maps")]
    for i in (0, 1):
        result = CliRunner().invoke(app, [*base, "--shard", f"{i}/2"])
        assert result.exit_code == 0, result.output
    assert f"uncertainty map: {tmp_path / 'a-maps' / 'g.tif'}" in result.output
    _same_bytes(tmp_path / "a-maps", ref_maps, MAP_NAMES)
    other = "blind" if decided == "posterior" else "posterior"
    forced_ref, forced_maps, _ = _single_maps(two_integrating, varied_model, tmp_path / "forced", estimate=other)
    denoise_batch(two_integrating, tmp_path / "one", varied_model, **OPTS, shard_frames=3, estimate=other,
                  uncertainty=tmp_path / "one-maps")  # fmt: skip
    _same_bytes(tmp_path / "one-maps", forced_maps, MAP_NAMES)
    _same_bytes(tmp_path / "one", forced_ref, MAP_NAMES)
    assert (forced_maps / "g.tif").read_bytes() != (ref_maps / "g.tif").read_bytes()


def test_a_changed_map_part_is_redone_a_missing_map_rewritten_and_another_path_refused(
    varied_model: Path, integrating: Path, tmp_path: Path
) -> None:
    """Array task 0/2 writes its shards' map parts, hashed in the manifest; one flipped byte in a map part (same
    size) makes its re-run redo that shard only; task 1/2 assembles the single-process map; a map removed after
    the job is written again; another --uncertainty PATH, or none, is another job (refused)."""
    _, ref_maps, _ = _single_maps([integrating], varied_model, tmp_path)
    out, maps = tmp_path / "out", tmp_path / "maps"
    kw: dict[str, Any] = {**OPTS, "shard_frames": 2, "uncertainty": maps}  # 4 shards: 0-2, 2-4, 4-6, 6-9
    first = denoise_batch([integrating], out, varied_model, shard="0/2", **kw)
    assert first.ran == ["0000:0-2", "0000:4-6"] and not (maps / "g.tif").exists()
    victim = out / PARTS_DIR / "0000-g.tif.000000000-000000002.std.part"
    flipped = bytearray(victim.read_bytes())
    flipped[1000] ^= 0xFF
    victim.write_bytes(bytes(flipped))
    again = denoise_batch([integrating], out, varied_model, shard="0/2", **kw)
    assert again.ran == ["0000:0-2"] and again.skipped == ["0000:4-6"]
    last = denoise_batch([integrating], out, varied_model, shard="1/2", **kw)
    assert last.ran == ["0000:2-4", "0000:6-9"] and last.maps == [str(maps / "g.tif")]
    _same_bytes(maps, ref_maps, ("g.tif",))
    movie_line = [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()][-1]
    assert movie_line["map"] == str(maps / "g.tif") and movie_line["map_bytes"] == (maps / "g.tif").stat().st_size
    assert denoise_batch([integrating], out, varied_model, **kw).ran == []  # all done
    (maps / "g.tif").unlink()
    redo = denoise_batch([integrating], out, varied_model, **kw)
    assert len(redo.ran) == 4 and redo.maps == [str(maps / "g.tif")]
    _same_bytes(maps, ref_maps, ("g.tif",))
    for other in ({**kw, "uncertainty": tmp_path / "elsewhere"}, {**OPTS, "shard_frames": 2}):
        with pytest.raises(ConfigError, match=r"differs in: uncertainty\)") as err:
            denoise_batch([integrating], out, varied_model, **other)
        assert "--overwrite" in str(err.value)
    with pytest.raises(InputFileError, match=r"the uncertainty map exists.*--overwrite"):  # a new job's map in the way
        denoise_batch([integrating], tmp_path / "new", varied_model, **kw)


def test_a_model_without_a_variance_head_is_refused_before_any_work(
    model: Path, movies: Path, tmp_path: Path
) -> None:
    """The single-process message, word for word, from the API and from `--cluster` through the CLI, before a
    folder, a manifest or a cluster exists."""
    with pytest.raises(ConfigError, match="variance head") as single:
        denoise_path(movies / "a.tif", tmp_path / "single", model, **OPTS, uncertainty=tmp_path / "m.tif")
    inputs = [movies / "a.tif", movies / "b.mrc"]
    with pytest.raises(ConfigError) as batch:
        denoise_batch(inputs, tmp_path / "out", model, shard="0/1", **OPTS, uncertainty=tmp_path / "maps")
    assert str(batch.value) == str(single.value)
    args = ["denoise", *map(str, inputs), "-o", str(tmp_path / "out"), "-m", str(model), "--cluster", "local:1",
            "--uncertainty", str(tmp_path / "maps")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, ConfigError) and str(result.exception) == str(single.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "maps").exists()
