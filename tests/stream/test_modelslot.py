"""The model slot alone: loads real small models, warms the loaded one up in the background, swaps."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emlive.core.errors import ConfigError
from emlive.stream.budget import MIN_MEMORY_BUDGET, MemoryBudget
from emlive.stream.modelslot import ModelSlot
from emlive.stream.telemetry import Telemetry


def _wait_state(slot: ModelSlot, state: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while slot.swap_state()["state"] != state and time.monotonic() < deadline:
        time.sleep(0.02)
    return slot.swap_state()


@pytest.mark.timeout(60)
def test_a_model_loaded_in_the_background_is_warmed_then_swapped_in(
    model_path: Path, model3_path: Path, load_model: Callable[[Path], Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="emlive.stream.service")
    telemetry = Telemetry()
    slot = ModelSlot(load_model, MemoryBudget(MIN_MEMORY_BUDGET), telemetry)
    slot.load_now(model_path)
    assert slot.info()["frames"] == 5 and slot.out_extra["model"] == "tiny-5"
    slot.last_shape = ((40, 48), np.dtype(np.uint16))
    slot.load(model3_path)
    assert _wait_state(slot, "ready") == {"state": "ready", "path": str(model3_path)}
    assert any(r.getMessage().startswith("model warmed up for 40x48 uint16") for r in caplog.records)
    seen: list[tuple[int, int]] = []

    def before_switch(new: Any) -> bool:  # runs while the old model is still current
        assert slot.denoiser is not None
        seen.append((slot.denoiser.frames, new.frames))
        return True

    assert slot.maybe_swap(before_switch)
    assert seen == [(5, 3)]
    assert slot.info()["frames"] == 3 and slot.info()["path"] == str(model3_path)
    assert slot.swap_state()["state"] == "done" and telemetry.get("model_swaps") == 1
    assert telemetry.snapshot()["model"]["name"] == "tiny-3"
    assert not slot.maybe_swap(before_switch)  # nothing pending any more


@pytest.mark.timeout(30)
def test_a_failed_load_keeps_the_current_model_and_says_why(
    model_path: Path, load_model: Callable[[Path], Any], tmp_path: Path
) -> None:
    slot = ModelSlot(load_model, MemoryBudget(MIN_MEMORY_BUDGET), Telemetry())
    slot.load_now(model_path)
    with pytest.raises(ConfigError, match="does not exist"):
        slot.load(tmp_path / "missing.pt")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model")
    slot.load(broken)
    state = _wait_state(slot, "failed")
    assert state["state"] == "failed" and "broken.pt" in state["error"]
    assert not slot.maybe_swap(lambda new: False)
    assert slot.info()["frames"] == 5


@pytest.mark.timeout(30)
def test_warm_ups_run_once_per_size_and_never_beyond_the_budget(
    denoiser: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="emlive.stream.service")
    slot = ModelSlot(lambda p: denoiser, MemoryBudget(MIN_MEMORY_BUDGET), Telemetry())
    slot.set(denoiser, None)
    assert slot.frame_problem((4096, 4096), 2) is not None  # 16 MiB budget: far too small for 4096 px
    for shape in [(32, 40), (32, 40), (4096, 4096)]:
        slot.warm_up(shape, np.dtype(np.uint16))
    warmed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model warmed up")]
    assert len(warmed) == 1 and "32x40" in warmed[0]
