"""Where emlive keeps files it can rebuild (built TensorRT engines, the demo's movie): one root for all of them."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$EMLIVE_CACHE_DIR``, else ``~/.cache/emlive``."""
    return Path(os.environ.get("EMLIVE_CACHE_DIR") or Path.home() / ".cache" / "emlive")
