"""Settings shared by the training tests: config overrides that make a training take seconds on a CPU core."""

from __future__ import annotations

TINY_NETWORK = ["network.width=8", "network.scales=3", "network.blocks=1"]
"""A width-8, 3-scale, 1-block blind-spot network (the trainer's own network; a student has its own keys)."""

TINY_STEPS = ["data.crop_size=32", "data.val_crop_size=32", "optim.batch_size=4", "optim.max_minutes=null"]
"""32-px crops in batches of 4, no wall-clock limit (the step and epoch counts decide)."""

TINY = [*TINY_NETWORK, *TINY_STEPS]
"""The tiny network on tiny steps: add the epochs and logging a test needs."""

SHORT = ["optim.recursive_factor=1", "optim.epochs=2"]
"""Two epochs of one pass each."""
