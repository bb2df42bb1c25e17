"""The light install against the full one: disk size and ``emlive serve`` start time
(``python -m emlive.bench.light_install``).

The light install is ``pip install emlive`` without the ``train`` extra: the base dependencies of pyproject.toml
(no torch, Lightning, ONNX exporter). :func:`light_venv` builds it as a real virtualenv: ``python -m venv``, the
base dependencies from the package index at the versions this (full) environment has (so both run the same
ONNX Runtime and numpy), then this checkout's wheel with ``--no-deps``. It is kept under ``build/light-venv/``,
keyed by the requirement list and the Python version, so reruns reuse it (the tests share it).

Measured, side by side in one run:

* **disk**: ``du`` of the light venv's site-packages; of this environment's (the ``make install`` venv: train,
  dev, bench and the other extras); and the installed size of the dependency closure of ``emlive[train]`` and of
  the base (summed from each distribution's RECORD in this environment: what ``pip install 'emlive[train]'``
  and ``pip install emlive`` put on disk), and of ``emlive[train,dm]`` (the training stack with the Gatan/FEI
  readers, whose ncempy brings matplotlib and hdf5plugin); and each base distribution's own size.
* **serve start**: ``emlive serve MODEL.onnx`` started as a process until its ready line (model loaded, sockets
  bound) and until the first denoised frame reaches a subscriber (this script pushes frames from the moment the
  process starts), in interleaved rounds: the light venv; this environment; and this environment running the
  code of ``--baseline`` (a git commit from before the light install, whose serving path imported torch).

Writes ``--out`` (JSON) and prints one line per variant.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import selectors
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "e7a3064010201c594b1c2ef978037c76a6276ed4"  # the last commit whose `emlive serve` imported torch


# --- the light venv ------------------------------------------------------------------------------------------------
def base_requirements() -> list[str]:
    """pyproject.toml's base dependencies, each pinned to the version installed here when it is installed."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = []
    for dep in deps:
        name = _req_name(dep)
        try:
            pinned.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pinned.append(dep)
    return pinned


def _req_name(requirement: str) -> str:
    from packaging.requirements import Requirement

    return Requirement(requirement).name


def build_wheel(out: Path) -> Path:
    """This checkout as a wheel (no dependencies, no build isolation: seconds)."""
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)]
    _run(cmd, 300)
    return next(out.glob("emlive-*.whl"))


def wheel_inputs_key() -> str:
    """A hash of everything the wheel is built from: pyproject.toml, README.md (its description), the modules of
    the packages pyproject.toml lists and the package data its globs match. Equal keys, equal wheels."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {ROOT / name.removeprefix("emlive").lstrip(".").replace(".", "/") for name in setuptools["packages"]}
    files = {ROOT / "pyproject.toml", ROOT / "README.md", *(p for d in folders for p in d.glob("*.py"))}
    files |= {p for pattern in setuptools["package-data"]["emlive"] for p in ROOT.glob(pattern) if p.is_file()}
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def cached_wheel(root: Path | None = None) -> Path:
    """This checkout's wheel, built once per :func:`wheel_inputs_key` under ``build/wheels/`` (the light venv and
    tests/test_packaging.py share it; a rerun on an unchanged tree builds nothing)."""
    folder = (root or ROOT / "build" / "wheels") / wheel_inputs_key()
    found = sorted(folder.glob("emlive-*.whl"))
    if found:
        return found[0]
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent))
    try:
        wheel = build_wheel(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)  # whole or absent: a killed build leaves no half wheel under the key
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in folder.parent.glob("?" * len(folder.name)):  # the wheels of earlier checkouts: 1 MB each
        if old != folder and not old.name.startswith("tmp"):
            shutil.rmtree(old, ignore_errors=True)
    return folder / wheel.name


def light_venv(root: Path | None = None) -> Path:
    """The light venv's python, built once per requirement list (about a minute, most of it pip unpacking
    onnxruntime and numpy) and updated with this checkout's wheel on every call (seconds)."""
    reqs = base_requirements()
    key = hashlib.sha256("\n".join([sys.version, *reqs]).encode()).hexdigest()[:12]
    venv = (root or ROOT / "build" / "light-venv") / key
    python = venv / "bin" / "python"
    if not (venv / ".complete").is_file():
        shutil.rmtree(venv, ignore_errors=True)
        t0 = time.perf_counter()
        _run([sys.executable, "-m", "venv", str(venv)], 120)
        _run([str(python), "-m", "pip", "install", "-q", *reqs], 600)
        (venv / ".complete").write_text("\n".join(reqs) + "\n")
        log.info("built the light venv %s in %.0f s", venv, time.perf_counter() - t0)
    wheel = cached_wheel()
    stamp = venv / ".wheel"  # the wheel installed last: reinstalled only when the checkout changed
    if not stamp.is_file() or stamp.read_text() != wheel.parent.name:
        _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)], 300)
        stamp.write_text(wheel.parent.name)
    return python


def _run(cmd: list[str], timeout: float, **kwargs: Any) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


# --- disk ----------------------------------------------------------------------------------------------------------
def site_packages(python: Path) -> Path:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(_run([str(python), "-c", code], 60).strip())


def du_mb(path: Path) -> float:
    """Disk usage (``du -sk``) in MB."""
    return int(_run(["du", "-sk", str(path)], 300).split()[0]) / 1024


def closure(requirements: list[str], extras: tuple[str, ...] = ()) -> set[str]:
    """Normalised names of the distributions installed here that ``requirements`` pull in (transitively)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [(Requirement(r), extras) for r in requirements]
    while todo:
        req, wanted = todo.pop()
        env = [{"extra": e} for e in wanted] or [{"extra": ""}]
        if req.marker is not None and not any(req.marker.evaluate(e) for e in env):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        todo += [(Requirement(r), tuple(req.extras)) for r in dist.requires or []]
    return seen


def installed_mb(names: set[str]) -> float:
    """Installed size of these distributions (the files their RECORD lists), MB."""
    from packaging.utils import canonicalize_name

    total = 0
    for dist in metadata.distributions():
        if canonicalize_name(dist.metadata["Name"]) in names:
            for f in dist.files or []:
                path = Path(str(dist.locate_file(f)))
                total += path.stat().st_size if path.is_file() else 0
    return total / 2**20


def disk_report(light_python: Path) -> dict[str, Any]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = list(project["dependencies"])
    extras = project["optional-dependencies"]
    train = base + list(extras["train"])
    train_dm = train + list(extras["dm"])
    light_site = site_packages(light_python)
    report: dict[str, Any] = {
        "light_venv_site_packages_mb": du_mb(light_site),
        "full_venv_site_packages_mb": du_mb(site_packages(Path(sys.executable))),
        "train_closure_mb": installed_mb(closure(train)),
        "train_dm_closure_mb": installed_mb(closure(train_dm)),
        "base_closure_mb": installed_mb(closure(base)),
        "light_largest_mb": _largest(light_site),
        "base_distributions_mb": _each_mb(closure(base)),
    }
    light = report["light_venv_site_packages_mb"]
    report["ratio_full_venv_over_light"] = report["full_venv_site_packages_mb"] / light
    report["ratio_train_over_light"] = report["train_closure_mb"] / light
    report["ratio_train_dm_over_light"] = report["train_dm_closure_mb"] / light
    # like for like: both closures summed from RECORDs (the light venv also holds pip and setuptools)
    report["ratio_train_dm_over_base_closure"] = report["train_dm_closure_mb"] / report["base_closure_mb"]
    return report


def _each_mb(names: set[str]) -> dict[str, float]:
    """Installed MB of each distribution (the candidates for leaving the base dependencies), largest first."""
    sizes = {name: round(installed_mb({name}), 2) for name in names}
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1]))


def _largest(site: Path, n: int = 8) -> dict[str, float]:
    sizes = {p.name: du_mb(p) for p in site.iterdir() if p.is_dir() and not p.name.endswith("-info")}
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:n])


# --- serve start ---------------------------------------------------------------------------------------------------
@dataclass
class Variant:
    """One way of running ``emlive serve``: an interpreter and, for the baseline, a PYTHONPATH with old code."""

    name: str
    python: Path
    pythonpath: str | None = None


def serve_start(variant: Variant, model: Path, size: int, timeout: float = 120.0) -> dict[str, float]:
    """Seconds from process start to the ready line and to the first denoised frame at a subscriber."""
    import zmq

    from emlive.core.protocol import decode, encode_frame

    ctx: zmq.Context[Any] = zmq.Context.instance()
    push, sub = ctx.socket(zmq.PUSH), ctx.socket(zmq.SUB)
    in_port = push.bind_to_random_port("tcp://127.0.0.1")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if variant.pythonpath:
        env["PYTHONPATH"] = variant.pythonpath
    args = ["serve", "--model", str(model), "--input", f"tcp://127.0.0.1:{in_port}", "--input-mode", "pull"]
    args += ["--output", "tcp://127.0.0.1:0", "--threads", "1"]
    frames = np.random.default_rng(0).poisson(5.0, (64, size, size)).astype(np.uint16)
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        cmd = [str(variant.python), "-m", "emlive", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
        try:
            ready, endpoints = _ready(proc, t0, timeout)
            sub.connect(endpoints["output"])
            first = _first_denoised(push, sub, frames, t0, timeout, encode_frame, decode)
        except RuntimeError as exc:
            err.seek(0)
            raise RuntimeError(f"{variant.name}: {exc}; its log:\n{err.read()[-3000:]}") from exc
        finally:
            proc.terminate()
            proc.wait(30)
            push.close(linger=0)
            sub.close(linger=0)
    return {"ready_s": ready, "first_denoised_s": first}


def _ready(proc: subprocess.Popen[bytes], t0: float, timeout: float) -> tuple[float, dict[str, str]]:
    """Seconds to the ready line, and the endpoints it names."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise RuntimeError(f"emlive serve printed no ready line in {timeout} s")
        line = proc.stdout.readline()
    if not line.startswith(b"{"):
        raise RuntimeError(f"emlive serve exited with {proc.wait(10)} before it was ready")
    return time.perf_counter() - t0, json.loads(line)["endpoints"]


def _first_denoised(push: Any, sub: Any, frames: np.ndarray, t0: float, timeout: float, enc: Any, dec: Any) -> float:
    """Push frames (one every 20 ms, repeating the movie) until a denoised frame arrives at ``sub``."""
    import zmq

    i = 0
    while time.perf_counter() - t0 < timeout:
        try:
            push.send_multipart(enc(frames[i % len(frames)], "start", i), flags=zmq.NOBLOCK, copy=False)
            i += 1
        except zmq.Again:  # the service has not connected yet, or is busy: try again next turn
            pass
        if sub.poll(20):
            msg = dec(sub.recv_multipart(copy=False))
            if msg.header.type == "frame" and msg.header.kind == "denoised":
                return time.perf_counter() - t0
    raise RuntimeError(f"no denoised frame within {timeout} s")


def baseline_tree(ref: str, dest: Path) -> Path:
    """The code of git commit ``ref`` as an importable ``emlive`` package under ``dest`` (for PYTHONPATH)."""
    archive = dest / "baseline.tar"
    _run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), ref], 120)
    pkg = dest / "emlive"
    pkg.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(pkg, filter="data")
    return dest


def export_model(model: Path, out: Path) -> Path:
    """An ONNX model: ``model`` itself when it is one, else its export (full environment)."""
    if model.suffix.lower() == ".onnx":
        return model
    from emlive.export.onnx_export import export_onnx

    return export_onnx(model, out / f"{model.stem}.onnx").path


def _summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    return {
        key: {"median": statistics.median(r[key] for r in runs), "all": [round(r[key], 3) for r in runs]}
        for key in ("ready_s", "first_denoised_s")
    }


def start_report(variants: list[Variant], model: Path, size: int, rounds: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants}
    for v in variants:  # unmeasured: compiles the baseline's bytecode, fills the page cache for every variant
        serve_start(v, model, size)
    for r in range(rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            runs[v.name].append(serve_start(v, model, size))
            log.info("round %d %s: %s", r, v.name, runs[v.name][-1])
    return {name: _summary(result) for name, result in runs.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "cpu-live-student.pt")
    parser.add_argument("--size", type=int, default=512, help="Frame size pushed to the service.")
    parser.add_argument("--rounds", type=int, default=5, help="Interleaved start-ups per variant.")
    parser.add_argument("--baseline", default=BASELINE, help="Git commit of the before code ('' skips it).")
    parser.add_argument("--out", type=Path, default=Path("bench_out/light_install/light_install.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        light = light_venv()
        model = export_model(args.model, Path(tmp))
        variants = [Variant("light", light), Variant("full", Path(sys.executable))]
        if args.baseline:
            before = baseline_tree(args.baseline, Path(tmp))
            variants.append(Variant(f"full_before_{args.baseline[:8]}", Path(sys.executable), str(before)))
        report = {
            "model": str(args.model),
            "size": args.size,
            "disk": disk_report(light),
            "serve_start": start_report(variants, model, args.size, args.rounds),
            "load_average": os.getloadavg(),
        }
    starts = report["serve_start"]
    for name, s in starts.items():
        log.info("%-24s ready %.2f s, first denoised frame %.2f s", name, s["ready_s"]["median"],
                 s["first_denoised_s"]["median"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    log.info("disk: %s", {k: v for k, v in report["disk"].items() if k != "light_largest_mb"})
    return report


if __name__ == "__main__":
    main()
