"""A content-addressed cache of finished exports: one export per checkpoint, options and sources.

`run_export` looks here first. The key is a SHA-256 over everything the artifacts depend on: the checkpoint's
files (names and bytes), the export options (variants, validation and calibration images, polygraphy), the
sources that produce and validate the graphs (`export/`, `model_repository/colqwen2_serving/`), the pinned
requirement files and the versions of the packages that write and run the graphs. A change to any of them is a
new key, so a stale entry is never found. An entry is written under a temporary name and renamed once complete,
with a seal that lists every file and its size; an entry whose files do not match its seal is not used (and is
removed). Hits are materialised with hard links (a copy across file systems), so the artifact folder a caller
gets is its own: `run_export` replaces folders, it never edits a file in place.

The cache lives in `.cache/exports` at the repository root (ignored by git), or in `$COLQWEN2_EXPORT_CACHE`;
`COLQWEN2_EXPORT_CACHE=off` turns it off. A checkpoint that is not a local folder (a hub id) is not cached:
its bytes are not known before it is downloaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent  # resolved: a scratch clone of symlinks shares the repository's
ENV = "COLQWEN2_EXPORT_CACHE"
SEAL = ".cache-seal.json"
# What produces, checks and validates the graphs (the serving modules: imaging, grid and prompts are shared).
SOURCES = ("export", "model_repository/colqwen2_serving")
PINS = ("requirements/export.txt", "requirements/colpali.txt", "requirements/serving.txt")
PACKAGES = ("torch", "transformers", "colpali-engine", "onnx", "onnxruntime", "onnxscript", "numpy", "pillow")


def cache_root() -> Path | None:
    """Where entries live; None when the cache is off."""
    value = os.environ.get(ENV, "")
    if value.lower() in ("off", "0", "none"):
        return None
    return Path(value) if value else ROOT / ".cache" / "exports"


def _hash_files(digest: Any, root: Path, files: Iterable[Path]) -> None:
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")


def _package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = ""
    return out


def cache_key(checkpoint: str | Path, options: Any) -> str | None:
    """The entry an export with `options` (a dataclass; `out_dir` ignored) of `checkpoint` is kept under."""
    folder = Path(checkpoint)
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    _hash_files(digest, folder, (p for p in folder.rglob("*") if p.is_file()))
    fields = asdict(options) if is_dataclass(options) else dict(options)
    fields = {k: v for k, v in fields.items() if k not in ("checkpoint", "out_dir")}
    digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
    for name in SOURCES:
        source = ROOT / name
        _hash_files(digest, ROOT, (p for p in source.rglob("*.py") if "__pycache__" not in p.parts))
    _hash_files(digest, ROOT, (ROOT / p for p in PINS if (ROOT / p).is_file()))
    digest.update(json.dumps(_package_versions(), sort_keys=True).encode())
    return digest.hexdigest()[:32]


@contextmanager
def locked(key: str | None) -> Iterator[None]:
    """Hold the entry `key` while it is looked up and, on a miss, built: a second process asking for the same
    export (two pytest workers, `make demo` beside `make serve`) waits and then restores it."""
    root = cache_root()
    if key is None or root is None:
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _files(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != SEAL
    }


def _link_tree(src: Path, dst: Path) -> None:
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def sealed(entry: Path) -> bool:
    """Whether `entry` is complete: its seal names exactly the files present, with their sizes."""
    try:
        seal = json.loads((entry / SEAL).read_text())
    except (OSError, ValueError):
        return False
    return seal.get("files") == _files(entry)


def restore(key: str | None, out: Path) -> bool:
    """Materialise the entry `key` as `out` (replacing it); False on a miss (an unsealed entry is removed)."""
    root = cache_root()
    if key is None or root is None:
        return False
    entry = root / key
    if not entry.is_dir():
        return False
    if not sealed(entry):
        log.warning("export cache: %s is incomplete or altered; removing it", entry)
        shutil.rmtree(entry, ignore_errors=True)
        return False
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    _link_tree(entry, tmp)
    (tmp / SEAL).unlink()
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return True


def store(key: str | None, artifacts: Path) -> Path | None:
    """Keep a finished export under `key`; the entry, or None when the cache is off or the entry exists."""
    root = cache_root()
    if key is None or root is None or (root / key).is_dir():
        return None
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{key}.{os.getpid()}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    _link_tree(artifacts, tmp)
    (tmp / SEAL).write_text(json.dumps({"key": key, "files": _files(tmp)}, indent=1))
    try:
        tmp.rename(root / key)
    except OSError:  # another process stored the same key first
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    return root / key


def record(key: str | None, checkpoint: str | Path, out: Path, hit: bool) -> None:
    """One line per export asked for in the cache's `exports.jsonl`: how CI counts the exports it ran."""
    root = cache_root()
    if root is None:
        return
    root.mkdir(parents=True, exist_ok=True)
    line = {"key": key, "checkpoint": str(checkpoint), "out": str(out), "hit": hit, "pid": os.getpid()}
    with open(root / "exports.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    if hit:  # said, not logged: a user who runs `make export` twice sees why the second took seconds
        print(f"export: {out} from the cache ({root / str(key)}: same checkpoint, options and sources)",
              file=sys.stderr)  # fmt: skip
