"""Where the CLI keeps what it writes when no path is given: a per-user data folder, never the current one.

$COLQWEN2_DATA_DIR, else $XDG_DATA_HOME/colqwen2, else ~/.local/share/colqwen2
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    if os.environ.get("COLQWEN2_DATA_DIR"):
        return Path(os.environ["COLQWEN2_DATA_DIR"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "colqwen2"


def default_qdrant_path() -> str:
    """The embedded Qdrant folder: $COLQWEN2_QDRANT_PATH, else `<data dir>/qdrant`."""
    return os.environ.get("COLQWEN2_QDRANT_PATH") or str(data_dir() / "qdrant")


def default_page_path() -> str:
    """`colqwen2 search --html` without a file: `<data dir>/results.html`."""
    return str(data_dir() / "results.html")
