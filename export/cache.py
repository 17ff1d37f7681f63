"""A content-addressed cache of finished exports: one export per checkpoint, options and sources.

`run_export` looks here first. The key is a SHA-256 over everything the artifacts depend on: the checkpoint's
files (names and bytes), the export options (validation and calibration images, polygraphy), the
sources that produce and validate the graphs (`export/`, `model_repository/colqwen2_serving/`), the pinned
requirement files and the versions of the packages that write and run the graphs. A change to any of them is a
new key, so a stale entry is never found. An entry is written under a temporary name and renamed once complete,
with a seal that lists every file and its size; an entry whose files do not match its seal is not used (and is
removed). Hits are materialised with hard links (a copy across file systems), so the artifact folder a caller
gets is its own: `run_export` replaces folders, it never edits a file in place.

The cache lives in `.cache/exports` at the repository root (ignored by git), or in `$COLQWEN2_EXPORT_CACHE`;
`COLQWEN2_EXPORT_CACHE=off` turns it off. An entry is named by the key and its variants; a request for some of
the variants of an entry is answered by that entry (the artifacts then hold its other variants too, each
validated), so `make serve`'s export of what it serves and a full `make export` of the same checkpoint are one.
A checkpoint that is not a local folder (a hub id) is not cached: its bytes are not known before it is downloaded.
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
    """What an export of `checkpoint` with `options` (a dataclass; `out_dir` and `variants` aside) depends on;
    entries are `<key>-<variants>`."""
    folder = Path(checkpoint)
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    _hash_files(digest, folder, (p for p in folder.rglob("*") if p.is_file()))
    fields = asdict(options) if is_dataclass(options) else dict(options)
    fields = {k: v for k, v in fields.items() if k not in ("checkpoint", "out_dir", "variants")}
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


def entry_name(key: str, variants: Iterable[str]) -> str:
    return f"{key}-{'+'.join(sorted(variants))}"


def find(key: str | None, variants: Iterable[str]) -> Path | None:
    """The sealed entry of `key` holding every one of `variants` (the exact one first, else the one with the
    fewest more: a full export answers a request for one of its variants); unsealed entries are removed."""
    root = cache_root()
    if key is None or root is None or not root.is_dir():
        return None
    wanted = set(variants)
    found = []
    for entry in root.glob(f"{key}-*"):
        held = set(entry.name[len(key) + 1 :].split("+"))
        if not entry.is_dir() or entry.name.endswith(".partial") or not wanted <= held:
            continue
        if not sealed(entry):
            log.warning("export cache: %s is incomplete or altered; removing it", entry)
            shutil.rmtree(entry, ignore_errors=True)
            continue
        found.append((len(held), entry.name, entry))
    return min(found)[2] if found else None


def restore(key: str | None, variants: Iterable[str], out: Path) -> bool:
    """Materialise the entry for `key` and `variants` as `out` (replacing it); False on a miss."""
    entry = find(key, variants)
    if entry is None:
        return False
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    _link_tree(entry, tmp)
    (tmp / SEAL).unlink()
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return True


def store(key: str | None, variants: Iterable[str], artifacts: Path) -> Path | None:
    """Keep a finished export of `variants` under `key`; the entry, or None when the cache is off or the entry
    exists."""
    root = cache_root()
    if key is None or root is None:
        return None
    name = entry_name(key, variants)
    if (root / name).is_dir():
        return None
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{name}.{os.getpid()}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    _link_tree(artifacts, tmp)
    (tmp / SEAL).write_text(json.dumps({"key": key, "variants": sorted(variants), "files": _files(tmp)}, indent=1))
    try:
        tmp.rename(root / name)
    except OSError:  # another process stored the same entry first
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    return root / name


def record(key: str | None, variants: Iterable[str], checkpoint: str | Path, out: Path, hit: bool) -> None:
    """One line per export asked for in the cache's `exports.jsonl`: how CI counts the exports it ran."""
    root = cache_root()
    if root is None:
        return
    root.mkdir(parents=True, exist_ok=True)
    line = {"key": key, "variants": sorted(variants), "checkpoint": str(checkpoint), "out": str(out), "hit": hit,
            "pid": os.getpid()}  # fmt: skip
    with open(root / "exports.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    if hit:  # said, not logged: a user who runs `make export` twice sees why the second took seconds
        print(f"export: {out} from the cache ({root}: the same checkpoint, options and sources)",
              file=sys.stderr)  # fmt: skip


def summary(root: Path | None = None) -> str:
    """How many exports were built and how many taken from the cache, per checkpoint (by its bytes), from
    `exports.jsonl`: what CI prints at the end of a run on a fresh clone (whose cache starts empty)."""
    root = root or cache_root()
    log_file = None if root is None else root / "exports.jsonl"
    if log_file is None or not log_file.exists():
        return "exports: none asked for"
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    built = [line for line in lines if not line["hit"]]
    out = [f"exports: {len(built)} built, {len(lines) - len(built)} taken from the cache ({root})"]
    for key in dict.fromkeys(line["key"] for line in lines):
        mine = [line for line in lines if line["key"] == key]
        names = sorted({Path(line["checkpoint"]).name for line in mine})
        made = [line for line in mine if not line["hit"]]
        out.append(f"  checkpoint {'/'.join(names)} ({key}): built {len(made)}x "
                   f"({', '.join('+'.join(line.get('variants', [])) for line in made) or '-'}), "
                   f"from the cache {len(mine) - len(made)}x")  # fmt: skip
    return "\n".join(out)


if __name__ == "__main__":
    print(summary())
