"""The inference runtime: same answer from a checkpoint and an ONNX model, exact tiling, movies read once,
input validation and model-file errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from emlive.core.errors import ConfigError, InputDataError, ModelFileError
from emlive.core.pixeltypes import PIXEL_TYPES
from emlive.core.windows import stack_window, window_indices
from emlive.export.errors import BackendUnavailableError
from emlive.export.runtime import BackendName, Denoiser, backend_unavailable_reason

# Runtime vs whole-frame PyTorch, in input units: the ONNX parity bound (1e-4 of the output range) plus a few
# float32 ulps of the values (the center frame's mean is added back in float32).
RUNTIME_BOUND = 1e-4


def _close(got: np.ndarray, ref: np.ndarray, bound: float = RUNTIME_BOUND) -> None:
    assert got.shape == ref.shape and got.dtype == np.float32
    err = float(np.abs(got.astype(np.float64) - ref).max())
    tol = bound * float(np.ptp(ref)) + 4 * float(np.finfo(np.float32).eps) * float(np.abs(ref).max())
    assert err <= tol, f"max error {err:.3g} > {bound} x range {np.ptp(ref):.3g} + 4 ulp"


def test_checkpoint_and_onnx_give_the_same_answer(small, reference, window) -> None:
    win = window(5, 45, 61)
    ref = reference(small.net, win)
    results = {}
    for path, backend in [(small.ckpt, "onnx_cpu"), (small.onnx, "onnx_cpu"), (small.ckpt, "torch_cpu")]:
        den = Denoiser.load(path, backend, threads=1)
        assert den.frames == 5 and den.card == small.card
        assert den.device.startswith("cpu (1 thread")
        results[(path.suffix, den.backend)] = den.denoise_window(win)
        _close(results[(path.suffix, den.backend)], ref)
    assert set(results) == {(".ckpt", "onnx_cpu"), (".onnx", "onnx_cpu"), (".ckpt", "torch_cpu")}
    np.testing.assert_array_equal(results[(".ckpt", "onnx_cpu")], results[(".onnx", "onnx_cpu")])


def test_default_architecture_through_the_runtime(full, reference, window) -> None:
    win = window(5, 70, 67, seed=4)
    den = Denoiser.load(full.onnx, "onnx_cpu")
    _close(den.denoise_window(win), reference(full.net, win))


@pytest.mark.parametrize("backend", ["onnx_cpu", "torch_cpu"])
def test_tiled_equals_whole_frame(small, reference, window, backend: str) -> None:
    # margin = receptive radius 20 px; 150 x 131 with 56-px tiles is 7 x 6 tiles with cores of 16-36 px
    win = window(5, 150, 131, seed=1)
    whole_den = Denoiser.load(small.ckpt, backend)
    tiled_den = Denoiser.load(small.ckpt, backend, tile=56)
    assert tiled_den.tile == 56 and tiled_den.margin == 20
    # The network alone (z-units): float rounding only. Bound 1e-5 of the output range; measured exactly 0 for
    # ONNX Runtime and ~3e-7 of the range for PyTorch (its convolution algorithm depends on the tensor size).
    z = np.random.default_rng(1).standard_normal((5, 150, 131)).astype(np.float32)
    whole_z, tiled_z = whole_den.denoise_normalized(z), tiled_den.denoise_normalized(z)
    assert np.abs(tiled_z - whole_z).max() <= 1e-5 * np.ptp(whole_z)
    if backend == "onnx_cpu":
        np.testing.assert_array_equal(tiled_z, whole_z)
    # End to end, in input units
    tiled = tiled_den.denoise_window(win)
    _close(tiled, whole_den.denoise_window(win), bound=1e-5)
    _close(tiled, reference(small.net, win))


def test_tiled_equals_whole_frame_for_the_default_architecture(full, reference, window) -> None:
    # 4 scales: tiles must start at multiples of 8 and keep 112-px margins (receptive radius 106)
    win = window(5, 260, 250, seed=2)
    den = Denoiser.load(full.onnx, "onnx_cpu", tile=256)
    assert den.margin == 112
    tiled = den.denoise_window(win)
    whole = Denoiser.load(full.onnx, "onnx_cpu").denoise_window(win)
    _close(tiled, whole, bound=1e-5)
    _close(tiled, reference(full.net, win))


def test_normalisation_uses_whole_frame_statistics(small, window) -> None:
    # a bright bottom half: per-tile statistics would differ from the frame's and change the answer
    win = window(5, 150, 131, seed=3).astype(np.float32)
    win[:, 75:] += 500.0
    whole = Denoiser.load(small.onnx, "onnx_cpu").denoise_window(win)
    tiled = Denoiser.load(small.onnx, "onnx_cpu", tile=56).denoise_window(win)
    _close(tiled, whole, bound=1e-5)


class CountingMovie:
    """A (T, H, W) movie that counts how often each frame is read."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.reads = np.zeros(len(data), dtype=int)

    def __len__(self) -> int:
        return len(self.data)

    def frame(self, t: int) -> np.ndarray:
        self.reads[t] += 1
        return self.data[t]


@pytest.mark.parametrize(
    ("length", "start", "stop"), [(9, 0, None), (9, 3, 7), (4, 0, None), (3, 0, None), (2, 0, None), (1, 0, None)]
)
def test_movie_reads_each_frame_once_and_uses_leak_free_windows(small, window, length: int, start: int, stop) -> None:
    data = window(length, 24, 30, seed=5)
    movie = CountingMovie(data)
    den = Denoiser.load(small.onnx, "onnx_cpu")
    out = list(den.denoise_movie(movie, start, stop))
    end = length if stop is None else stop
    assert [t for t, _ in out] == list(range(start, end))
    needed = {i for t in range(start, end) for i in window_indices(t, 5, length) if i is not None}
    assert set(np.flatnonzero(movie.reads)) == needed and movie.reads.max() == 1
    for t, frame in out:  # empty slots (a single frame) are zeros: a constant frame, z-scored to 0
        ref = den.denoise_window(stack_window(data, window_indices(t, 5, length)))
        np.testing.assert_allclose(frame, ref, rtol=0, atol=1e-5)
    frames = [f for _, f in out]
    assert all(f.dtype == np.float32 and f.shape == (24, 30) for f in frames)
    assert len({id(f) for f in frames}) == len(frames), "every yielded frame is a new array"


def test_frame_stream_normalises_each_frame_once_and_equals_window_denoising(small_cpu, window) -> None:
    den = small_cpu
    data = window(9, 24, 30, seed=8).astype(np.uint16)
    stream = den.stream((24, 30), np.uint16)
    for t in range(len(data)):  # live order: frame t + 2 arrives, then the window of center t runs
        stream.push(data[t])
        center = t - 2
        if center >= 0:
            indices = window_indices(center, 5, t + 1)
            ref = den.denoise_window(stack_window(data, indices))
            np.testing.assert_array_equal(stream.denoise(indices), ref)  # bit for bit
    for center in range(len(data) - 2, len(data)):  # the end of the run: mirrored windows from the same ring
        indices = window_indices(center, 5, len(data))
        np.testing.assert_array_equal(stream.denoise(indices), den.denoise_window(stack_window(data, indices)))
    assert stream.normalised == len(data)
    with pytest.raises(InputDataError, match=r"frame 3 is not in the stream .*push every frame of a window"):
        stream.denoise([3, 4, 5, 6, 7])
    with pytest.raises(InputDataError, match=r"frame 9 has shape \(24, 29\), this stream takes 24x30 frames"):
        stream.push(data[0][:, :29])
    with pytest.raises(InputDataError, match=r"frame 9 has dtype float32, this stream takes uint16 frames"):
        stream.push(data[0].astype(np.float32))
    with pytest.raises(InputDataError, match=r"needs 5 frame indices with a frame at the center"):
        stream.denoise([5, 6, None, 7, 8])
    stream.reset()
    assert not stream.holds(8)
    one = den.stream((24, 30))  # a single-frame run: empty slots are zeros, as in stack_window
    one.push(data[0], 0)
    np.testing.assert_array_equal(
        one.denoise([None, None, 0, None, None]), den.denoise_window(stack_window(data, [None, None, 0, None, None]))
    )


def test_movie_equals_window_denoising_bit_for_bit(small_cpu, window) -> None:
    data = window(7, 20, 22, seed=9)
    for t, frame in small_cpu.denoise_movie(data):
        ref = small_cpu.denoise_window(stack_window(data, window_indices(t, 5, len(data))))
        np.testing.assert_array_equal(frame, ref)
    mixed = [data[0], data[1].astype(np.float32), data[2].astype(np.int32)]  # each frame's type on its own
    assert [t for t, _ in small_cpu.denoise_movie(mixed)] == [0, 1, 2]


def test_movie_from_a_plain_array_and_bad_ranges(small, window) -> None:
    den = Denoiser.load(small.onnx)
    data = window(6, 16, 16, dtype=np.uint8)
    assert [t for t, _ in den.denoise_movie(data)] == list(range(6))
    with pytest.raises(InputDataError, match=r"start=4, stop=2 .* T=6 frames: need 0 <= start < stop <= T"):
        den.denoise_movie(data, 4, 2)
    ragged = [data[0], data[1][:8]]
    with pytest.raises(InputDataError, match=r"movie frame 1 is 8x16.*same size"):
        list(den.denoise_movie(ragged))


ALL_TYPES = [np.dtype(name) for name in PIXEL_TYPES]
BOTH_ORDERS = ALL_TYPES + [d.newbyteorder("S") for d in ALL_TYPES if d.itemsize > 1]  # native, then swapped


@pytest.fixture(scope="module")
def small_cpu(small) -> Denoiser:
    return Denoiser.load(small.onnx, "onnx_cpu", threads=1)


@pytest.mark.parametrize("dtype", BOTH_ORDERS, ids=str)
def test_every_pixel_type_of_the_policy_in_both_byte_orders(small, small_cpu, reference, window, dtype) -> None:
    win = window(5, 20, 28, seed=6)
    if dtype.kind == "i":
        win = win.astype(np.int64) - 12  # signed types get negative values too
    win = win.astype(dtype)
    den = small_cpu
    out = den.denoise_window(win)
    assert out.dtype == np.float32 and out.shape == (20, 28)
    _close(out, reference(small.net, win.astype(np.float64)))
    as_float32 = den.denoise_window(win.astype(np.float32))
    if PIXEL_TYPES[dtype.newbyteorder("=").name].exact_float32:
        np.testing.assert_array_equal(out, as_float32)  # the same arithmetic as float32 frames, bit for bit
    else:
        _close(out, as_float32, bound=1e-5)


def test_huge_finite_float64_values_are_normalised_not_reported_as_nan(small_cpu, window) -> None:
    den = small_cpu
    win = window(5, 20, 28, seed=7).astype(np.float64)
    huge = win.copy()
    huge[[0, 1, 3]] *= 2.0**1015  # ~1e307: the float64 sums and squares of these frames overflow
    with np.errstate(over="ignore"):
        assert not np.isfinite(huge[0].sum())
    # a power of two scales the z-scores exactly: the same answer as the unscaled frames
    np.testing.assert_array_equal(den.denoise_window(huge), den.denoise_window(win))
    center = win.copy()
    center[2] *= 2.0**1000  # the denoised center frame (float32, input units) cannot hold 1e301
    with pytest.raises(
        InputDataError, match=r"denoised values reach [\d.]+e\+30\d, beyond \+-3.4e\+38.*multiply"
    ) as err:
        den.denoise_window(center)
    assert "NaN" not in str(err.value) and "inf" not in str(err.value)


def test_window_validation_errors_name_value_rule_and_fix(small, window) -> None:
    den = Denoiser.load(small.onnx)
    good = window(5, 16, 16).astype(np.float32)
    with pytest.raises(InputDataError, match=r"window of 3 frames: this model needs exactly N=5 .*pass 5 frames"):
        den.denoise_window(good[:3])
    with pytest.raises(InputDataError, match=r"window of shape \(16, 16\): expected 3 dimensions \(N, H, W\)"):
        den.denoise_window(good[0])
    with pytest.raises(InputDataError, match=r"dtype complex64: supported .*uint16.*astype"):
        den.denoise_window(good.astype(np.complex64))
    with pytest.raises(InputDataError, match=r"dtype bool: supported pixel types are uint8, int8, .*either byte order"):
        den.denoise_window(good > 0)
    bad = good.copy()
    bad[1, 3, 4] = np.nan
    bad[1, 5, 5] = np.inf
    with pytest.raises(InputDataError, match=r"frame 1 of the window contains 1 NaN and 1 inf.*finite.*nan_to_num"):
        den.denoise_window(bad)
    inf_center = good.copy()
    inf_center[2, 0, 0] = -np.inf
    with pytest.raises(InputDataError, match=r"frame 2 of the window contains 0 NaN and 1 inf"):
        den.denoise_window(inf_center)


def test_model_file_errors_name_the_file(small, tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"nothing\.onnx: no such model file"):
        Denoiser.load(tmp_path / "nothing.onnx")
    rng = np.random.default_rng(0)
    for name in ("junk.onnx", "junk.ckpt"):
        (tmp_path / name).write_bytes(rng.bytes(2048))
        with pytest.raises(ModelFileError, match=name.replace(".", r"\.")):
            Denoiser.load(tmp_path / name)
    (tmp_path / "model.h5").write_bytes(b"x")
    with pytest.raises(ModelFileError, match=r"model\.h5: unknown model file type '\.h5'"):
        Denoiser.load(tmp_path / "model.h5")
    # a valid ONNX model that emlive did not write
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(foreign))
    with pytest.raises(ModelFileError, match=r"foreign\.onnx: an ONNX model without emlive metadata"):
        Denoiser.load(foreign)
    engine = tmp_path / "m.engine"
    engine.write_bytes(rng.bytes(256))
    with pytest.raises(ModelFileError, match=r"m\.engine: no model card for this engine"):
        Denoiser.load(engine)


def test_engine_with_sidecar_needs_tensorrt(small, tmp_path: Path) -> None:
    if backend_unavailable_reason(BackendName.tensorrt, "engine") is None:
        pytest.skip("TensorRT is available here; the GPU tests cover engines")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not really an engine")
    (tmp_path / "m.engine.json").write_text('{"card": ' + small.card.to_json() + ', "build": {}}')
    with pytest.raises(
        BackendUnavailableError, match=r"m\.engine .*tensorrt: .*not installed.*pip install emlive\[gpu\]"
    ):
        Denoiser.load(engine)
    with pytest.raises(BackendUnavailableError, match=r"backend onnx_cpu for .*m\.engine: a TensorRT engine file runs"):
        Denoiser.load(engine, "onnx_cpu")


@pytest.mark.parametrize("backend", ["onnx_cuda", "onnx_tensorrt", "tensorrt", "torch_cuda"])
def test_missing_gpu_backends_are_one_clear_error(small, backend: str) -> None:
    if backend_unavailable_reason(BackendName(backend)) is None:
        pytest.skip(f"{backend} is available here; the GPU tests cover it")
    with pytest.raises(
        BackendUnavailableError, match=rf"backend {backend} for .*: .*pip install emlive\[gpu\]"
    ) as info:
        Denoiser.load(small.ckpt, backend)
    assert "\n" not in str(info.value)


def test_openvino_backend(full, reference, window) -> None:
    """Optional backend (``pip install openvino``): bfloat16 on AMX/AVX512-BF16 CPUs. Bound 1e-2 of the output
    range (measured 2.5e-3 on a trained model, 4e-3 on random weights; the paper PSNR changed by 0.01 dB)."""
    reason = backend_unavailable_reason(BackendName.openvino_cpu)
    if reason:
        with pytest.raises(BackendUnavailableError, match=r"backend openvino_cpu .*pip install openvino"):
            Denoiser.load(full.onnx, "openvino_cpu")
        pytest.skip(f"openvino_cpu unavailable: {reason}")
    win = window(5, 90, 77, seed=9)
    den = Denoiser.load(full.onnx, "openvino_cpu")
    assert den.backend == "openvino_cpu" and "OpenVINO" in den.device
    _close(den.denoise_window(win), reference(full.net, win), bound=1e-2)
    assert Denoiser.load(full.onnx).backend == "openvino_cpu", "auto prefers it on the CPU"
    tiled = Denoiser.load(full.onnx, "openvino_cpu", tile=256).denoise_window(window(5, 260, 250, seed=2))
    _close(tiled, reference(full.net, window(5, 260, 250, seed=2)), bound=1e-2)


def test_backend_and_tile_arguments_are_checked(small) -> None:
    with pytest.raises(ConfigError, match=r"backend 'cuda': not a known backend; use one of auto, tensorrt"):
        Denoiser.load(small.onnx, "cuda")
    with pytest.raises(BackendUnavailableError, match=r"torch_cpu needs a PyTorch checkpoint"):
        Denoiser.load(small.onnx, BackendName.torch_cpu)
    with pytest.raises(ConfigError, match=r"tile=41: .*multiple of 2.*at least 42 px.*use tile=42"):
        Denoiser.load(small.onnx, tile=41)
    with pytest.raises(ConfigError, match=r"threads=0: must be at least 1"):
        Denoiser.load(small.onnx, threads=0)
    den = Denoiser.load(small.onnx, "onnx_cpu")
    assert den.backend == "onnx_cpu" and "onnx_cpu" in repr(den)
    den.close()


@pytest.mark.timeout(60)
def test_a_live_service_loads_onnx_runtime_without_spin_waiting(small) -> None:
    """Frames paced by a detector: the CPU threads sleep between runs (bench/ort_spin.py: -29 % CPU per frame)."""
    from emlive.export.backends import OrtEngine
    from emlive.stream.service import load_denoiser

    key = "session.intra_op.allow_spinning"
    live = load_denoiser(small.onnx, "onnx_cpu", threads=2)
    offline = Denoiser.load(small.onnx, "onnx_cpu", threads=2)
    for den, spins in ((live, False), (offline, True)):
        engine = den._engine
        assert isinstance(engine, OrtEngine)
        options = engine._session((64, 64)).get_session_options()
        try:
            entry = options.get_session_config_entry(key)
        except RuntimeError:  # not set: ONNX Runtime's default, spinning
            entry = "1"
        assert (entry != "0") is spins
        den.close()


@pytest.mark.timeout(60)
def test_one_denoiser_used_by_two_threads_at_once_gives_each_its_own_answer(small_cpu, window) -> None:
    """A service's idle warm-up beside a caller's own run (or a GUI beside a worker) share one Denoiser: its buffers
    are shared, so without its lock one thread's window overwrote the other's mid-inference."""
    import threading

    movies = [window(7, 40, 44, seed=s) for s in (11, 12)]
    expected = [np.stack([f for _, f in small_cpu.denoise_movie(m)]) for m in movies]
    singles = [small_cpu.denoise_window(stack_window(m, window_indices(3, 5, 7))) for m in movies]
    got: dict[int, list[np.ndarray]] = {0: [], 1: []}
    start = threading.Barrier(2)

    def run(k: int) -> None:
        start.wait()
        for _ in range(6):
            got[k].append(np.stack([f for _, f in small_cpu.denoise_movie(movies[k])]))
            got[k].append(small_cpu.denoise_window(stack_window(movies[k], window_indices(3, 5, 7)))[None])

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    for k in (0, 1):
        assert len(got[k]) == 12
        for i, out in enumerate(got[k]):
            np.testing.assert_array_equal(out, expected[k] if i % 2 == 0 else singles[k][None])
