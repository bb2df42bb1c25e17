"""Patch preparation for large frames: cut every movie once into (T, P, P) stacks, in parallel.

Training crops then come from small memory-mapped MRC stacks instead of 4k x 4k frames (reference:
``prepare_patch``, ``patch_size``, ``patch_stride``, ``patch_ratio``, ``processor_num``, ``subset_size``).
The gain reference is applied here, once.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from emlive.core.readers import find_movies, open_movie
from emlive.core.writers import write_movie
from emlive.train.config import PatchConfig

log = logging.getLogger(__name__)

MANIFEST = "patches.json"


def _grid(length: int, size: int, stride: int) -> list[int]:
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def _cut_one(file: str, gain: str | None, cfg_json: str, out_dir: str, seed: int) -> list[str]:
    cfg = PatchConfig.model_validate_json(cfg_json)
    rng = np.random.default_rng(seed)
    written = []
    with open_movie(file, gain=gain) as movie:
        t, h, w = movie.shape
        size = min(cfg.size, h, w)
        per_stack = cfg.frames_per_stack or t
        for t0 in range(0, t, per_stack):
            t1 = min(t, t0 + per_stack)
            for y in _grid(h, size, cfg.stride):
                for x in _grid(w, size, cfg.stride):
                    if rng.random() >= cfg.ratio:
                        continue
                    stack = np.stack([movie.crop(i, y, x, size, size) for i in range(t0, t1)])
                    name = Path(out_dir) / f"{Path(file).stem}_t{t0:05d}_y{y:05d}_x{x:05d}.mrc"
                    write_movie(name, stack.astype(np.float32), pixel_size_nm=movie.pixel_size_nm)
                    written.append(str(name))
    return written


def patches_ready(source: Path, cfg: PatchConfig, gain: Path | None, default_dir: Path) -> bool:
    """Whether the patch folder holds the patches of exactly these movies and settings (its manifest matches)."""
    manifest = (cfg.folder or default_dir) / MANIFEST
    key = {"source": str(source), "gain": str(gain) if gain else None, "config": cfg.model_dump(mode="json")}
    return manifest.is_file() and json.loads(manifest.read_text()).get("key") == key


def prepare_patches(source: Path, cfg: PatchConfig, gain: Path | None, default_dir: Path) -> Path:
    """Cut the movies under ``source`` into patch stacks (skipped if the folder already holds them)."""
    out_dir = cfg.folder or default_dir
    manifest = out_dir / MANIFEST
    key = {"source": str(source), "gain": str(gain) if gain else None, "config": cfg.model_dump(mode="json")}
    if patches_ready(source, cfg, gain, default_dir):
        log.info("patches already prepared in %s", out_dir)
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    files = find_movies(source)
    log.info(
        "preparing patches of %d px (stride %d, keep %.0f%%) from %d movies with %d workers",
        cfg.size,
        cfg.stride,
        100 * cfg.ratio,
        len(files),
        cfg.workers,
    )
    written: list[str] = []
    with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
        futures = [
            pool.submit(_cut_one, str(f), str(gain) if gain else None, cfg.model_dump_json(), str(out_dir), i)
            for i, f in enumerate(files)
        ]
        for done, fut in enumerate(as_completed(futures), 1):
            written += fut.result()
            log.info("patches: %d/%d movies done, %d stacks", done, len(files), len(written))
    manifest.write_text(json.dumps({"key": key, "patches": sorted(written)}, indent=1))
    return out_dir
