"""What a catalog index holds: keyed items from a manifest, a folder or memory, and their point ids.

A user thinks in items: the Keepa chart of ASIN B0C1234567 on amazon.de, the main photo of a
product. An item has a *key* that stays the same when its content is redrawn or replaced, a
*source* (a file, an http(s) URL or bytes in memory) and *payload* (any other columns). The Qdrant
point id is the UUID5 of the key, so a refresh of the same key lands on the same point; the
content's SHA-256 sits in the payload, so unchanged content is never embedded again.

Manifests are JSONL (one object per line) or CSV (a header row), picked by the file's suffix:

    {"asin": "B0C1234567", "marketplace": "DE", "kind": "keepa_chart", "path": "charts/B0C1234567.png"}
    key,url,category
    photo-42,https://example.com/42.jpg,toys

The key is the `key` column, or else `marketplace:asin:kind` from the fields present (`asin`
required). A relative `path` is relative to the manifest's folder. CSV values stay strings; JSONL
values keep their JSON types. Problems (a malformed line, no key, no source, a duplicate key, a
column the indexer writes itself) name the line and skip it; the good lines are indexed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidInputError
from .fetch import FetchPolicy, fetch_image, is_url
from .inputs import ImageInput, image_bytes

# Point ids are uuid5(NAMESPACE, key): stable across runs, machines and versions of this package.
NAMESPACE = uuid.UUID("6f1c2a8e-5b7d-4c3e-9a41-0c2d7e9b3f15")
KEY_FIELDS = ("marketplace", "asin", "kind")  # joined with ":" when a line has no `key`
SOURCE_FIELDS = ("path", "url")
WRITTEN = ("sha256", "bytes", "size", "source", "indexed_at")  # payload the indexer writes itself
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class CatalogItem:
    """One thing to index: its key, where its bytes come from, and its payload."""

    key: str
    source: str  # a file path, an http(s) URL, or a label for bytes in memory
    payload: dict[str, Any] = field(default_factory=dict)
    line: int = 0  # the manifest line (1-based), 0 when not from a manifest
    data: bytes | None = None  # the bytes, for items given in memory
    error: str = ""  # why the bytes cannot be had, for an item given in memory that is unusable

    @property
    def id(self) -> str:
        return point_id(self.key)

    @property
    def where(self) -> str:
        """How to name this item in a message: its manifest line and key."""
        return f"line {self.line} (key {self.key})" if self.line else f"key {self.key}"

    def read(self, policy: FetchPolicy | None = None) -> bytes:
        """The item's encoded image bytes (a URL's fetched under `policy`: `fetch.py`); InvalidInputError naming
        the source when they cannot be had."""
        if self.error:
            raise InvalidInputError(self.error)
        if self.data is not None:
            return self.data
        if is_url(self.source):
            return fetch_image(self.source, policy)
        path = Path(self.source)
        if not path.is_file():
            raise InvalidInputError(f"no such file: {self.source}")
        return image_bytes(path)


@dataclass(frozen=True)
class Problem:
    """A manifest line (or item) that cannot be indexed, and why."""

    line: int
    message: str
    key: str | None = None

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "item"
        return f"{where}{f' (key {self.key})' if self.key else ''}: {self.message}"


@dataclass
class Manifest:
    items: list[CatalogItem]
    problems: list[Problem]
    complete: bool  # every line parsed to a key: safe to prune keys that are not in it


def point_id(key: str) -> str:
    """The point id of a key: UUID5, so the same key always lands on the same point."""
    return str(uuid.uuid5(NAMESPACE, key))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def item_key(row: dict[str, Any]) -> str:
    """A row's key: its `key`, or `marketplace:asin:kind` from the fields it has; ValueError if neither."""
    key = row.get("key")
    if key not in (None, ""):
        if not isinstance(key, (str, int)) or isinstance(key, bool):
            raise ValueError(f"`key` must be a string, not {type(key).__name__}")
        return str(key)
    if row.get("asin") in (None, ""):
        raise ValueError("no key: give a `key` column, or `asin` (with `marketplace` and `kind` if you have them)")
    parts = [row.get(name) for name in KEY_FIELDS]
    bad = [name for name, v in zip(KEY_FIELDS, parts, strict=True) if v is not None and not isinstance(v, str)]
    if bad:
        raise ValueError(f"`{bad[0]}` must be a string to build a key")
    return ":".join(str(value) for value in parts if value not in (None, ""))


def _rows(path: Path) -> Iterable[tuple[int, dict[str, Any] | str]]:
    """(line, row) per data line; a str instead of a row says why the line could not be read."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        for row in reader:
            line = reader.line_num
            if None in row:
                yield line, f"more fields than the header has ({len(reader.fieldnames or [])})"
            elif any(value is None for value in row.values()):
                yield line, f"fewer fields than the header has ({len(reader.fieldnames or [])})"
            else:
                yield line, {k.strip(): v for k, v in row.items() if k and v != ""}
        return
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield line, f"not valid JSON: {exc.msg} at column {exc.colno}"
            continue
        yield line, row if isinstance(row, dict) else f"a JSON object per line is needed, not {type(row).__name__}"


def read_manifest(path: str | Path) -> Manifest:
    """Parse a JSONL or CSV manifest into items, and the problems of the lines that are not usable."""
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".json", ".ndjson", ".csv"):
        raise InvalidInputError(f"{path}: a manifest is .jsonl or .csv, not {path.suffix or 'no suffix'!r}")
    try:
        rows = list(_rows(path))
    except OSError as exc:
        raise InvalidInputError(f"cannot read the manifest {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    items: list[CatalogItem] = []
    problems: list[Problem] = []
    complete = True
    first_line: dict[str, int] = {}
    for line, row in rows:
        if isinstance(row, str):
            problems.append(Problem(line, row))
            complete = False
            continue
        try:
            key = item_key(row)
        except ValueError as exc:
            problems.append(Problem(line, str(exc)))
            complete = False
            continue
        if key in first_line:
            problems.append(Problem(line, f"duplicate key: line {first_line[key]} has it too (the first is kept)", key))
            continue
        first_line[key] = line
        try:
            items.append(_item(row, key, line, path.parent))
        except ValueError as exc:
            problems.append(Problem(line, str(exc), key))
    return Manifest(items, problems, complete)


def _item(row: dict[str, Any], key: str, line: int, base: Path) -> CatalogItem:
    sources = [name for name in SOURCE_FIELDS if row.get(name) not in (None, "")]
    if len(sources) != 1:
        raise ValueError("give exactly one of `path` or `url`" if sources else "no `path` or `url`")
    source = row[sources[0]]
    if not isinstance(source, str):
        raise ValueError(f"`{sources[0]}` must be a string, not {type(source).__name__}")
    if sources[0] == "url":
        if not source.startswith(("http://", "https://")):
            raise ValueError(f"`url` must start with http:// or https://: {source[:100]!r}")
    else:
        source = str(base / source)  # an absolute path stays itself
    clash = [name for name in WRITTEN if name in row]
    if clash:
        raise ValueError(f"column `{clash[0]}` is written by the indexer; rename it")
    payload = {k: v for k, v in row.items() if k not in SOURCE_FIELDS}
    payload["key"] = key
    return CatalogItem(key=key, source=source, payload=payload, line=line)


def folder_items(paths: Sequence[str | Path], kind: str = "auto") -> Manifest:
    """Image files under folders (and single files): the key is the path relative to the folder given."""
    items: list[CatalogItem] = []
    problems: list[Problem] = []
    first: dict[str, str] = {}
    for given in map(Path, paths):
        if given.is_dir():
            files = sorted(p for p in given.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            base = given
        elif given.is_file():
            files, base = [given], given.parent
        else:
            problems.append(Problem(0, f"no such file or folder: {given}"))
            continue
        for file in files:
            key = file.relative_to(base).as_posix()
            if key in first:
                problems.append(Problem(0, f"duplicate key: {file} and {first[key]} (the first is kept)", key))
                continue
            first[key] = str(file)
            payload = {"key": key, "kind": guess_kind(file) if kind == "auto" else kind}
            items.append(CatalogItem(key=key, source=str(file.resolve()), payload=payload))
    return Manifest(items, problems, complete=not problems)


def memory_items(images: Sequence[ImageInput], payloads: Sequence[dict[str, Any]] | None = None) -> list[CatalogItem]:
    """Images given as paths, URLs, bytes, PIL images or base64. The key is the payload's `key`, else the
    file path for a path, the URL for a URL (fetched when read), else `sha256:<hex>` of the bytes
    (content-addressed, as before keys existed)."""
    payloads = list(payloads) if payloads is not None else [{} for _ in images]
    if len(payloads) != len(images):
        raise ValueError(f"{len(images)} images but {len(payloads)} payloads")
    items = []
    for image, payload in zip(images, payloads, strict=True):
        if is_url(image):
            key = str(payload.get("key") or image)
            extra = {k: v for k, v in payload.items() if k not in WRITTEN}
            items.append(CatalogItem(key=key, source=str(image), payload=extra | {"key": key}))
            continue
        is_path = isinstance(image, Path) or (isinstance(image, str) and len(image) < 4096 and Path(image).is_file())
        source = str(Path(image).resolve()) if is_path else str(payload.get("source", "<in-memory image>"))
        try:
            data = None if is_path else image_bytes(image)
        except InvalidInputError as exc:
            key = str(payload.get("key") or f"<input {len(items)}>")
            items.append(CatalogItem(key=key, source=source, payload={"key": key}, error=str(exc)))
            continue
        key = str(payload.get("key") or (source if is_path else f"sha256:{sha256_hex(data or b'')}"))
        extra = {k: v for k, v in payload.items() if k not in WRITTEN}
        items.append(CatalogItem(key=key, source=source, payload=extra | {"key": key}, data=data))
    return items


def guess_kind(path: Path) -> str:
    name = path.name.lower()
    return "keepa_chart" if "keepa" in name or "chart" in name else "product_image"
