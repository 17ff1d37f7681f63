"""Where the CLI keeps what it writes when no path is given: a per-user data folder, never the current one.

$COLQWEN2_DATA_DIR, else $XDG_DATA_HOME/colqwen2, else ~/.local/share/colqwen2
"""

from __future__ import annotations

import os
from pathlib import Path

LEGACY_QDRANT = "qdrant_data"  # where the CLI kept its index before: the folder it ran in


def data_dir() -> Path:
    if os.environ.get("COLQWEN2_DATA_DIR"):
        return Path(os.environ["COLQWEN2_DATA_DIR"]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"  # XDG: absolute only
    return base / "colqwen2"


def default_qdrant_path() -> str:
    """The local index folder (Qdrant in process): $COLQWEN2_QDRANT_PATH, else `./qdrant_data` when an index from
    before the per-user folder is there (so it is not silently left behind), else `<data dir>/qdrant`."""
    if os.environ.get("COLQWEN2_QDRANT_PATH"):
        return os.environ["COLQWEN2_QDRANT_PATH"]
    if Path(LEGACY_QDRANT, "collection").is_dir():
        return LEGACY_QDRANT
    return str(data_dir() / "qdrant")


def default_page_path() -> str:
    """`colqwen2 search --html` without a file: `<data dir>/results.html`."""
    return str(data_dir() / "results.html")
