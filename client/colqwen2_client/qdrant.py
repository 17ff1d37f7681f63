"""A catalog index in Qdrant: keyed items that refresh, filtered two-stage search (the `[qdrant]` extra).

Each item (see `catalog`) is one point: id = UUID5 of its key, payload = its columns plus `key`,
`sha256` of the content, `source`, `kind`, `size`, `bytes` and `indexed_at`. Vectors per point:

- `colqwen2`: all of ColQwen2's vectors, a MAX_SIM multivector without HNSW (float16, int8 scalar
  quantized by default and rescored with the originals): the exact rerank.
- `pooled`: the mean of them (the original service's single vector), HNSW-indexed.
- `muvera` (first stage `muvera`): a fixed-dimensional encoding of the multivector (MUVERA, see
  `muvera.py`) whose dot product approximates MaxSim, HNSW-indexed.
- `rows` and `cols` (first stage `rows_cols`): the row and column means of the visual tokens, with
  the prompt's other tokens, HNSW-indexed multivectors (Qdrant's ColPali guide).
- `layout`: the means of the image's 2 x 2 regions in one vector (`token_pooling.layout`), HNSW-indexed:
  the first stage of image queries (near-duplicates: a re-encoded photo, a redrawn chart).

First stage `cells` keeps a companion collection `<name>__cells`: each image's visual tokens pooled
CELL_SIZE x CELL_SIZE (2 x 2, `token_pooling.cells`), one point per cell (payload: the item's id and filter
fields), HNSW (with payload subgraphs: without them, recall@10 of text queries fell from 1.000 to 0.92 unfiltered and
0.77 on a narrow filter at 10,000 items, for a build 2.2x faster).
A text query's tokens each take their `cell_hits` nearest cells; items are ranked by the sum of their
tokens' best cell scores (ColBERT's token-level candidate generation over pooled tokens), and the
best `prefetch_limit` are reranked by MaxSim. The item's cells are written before its point.

Search: a first stage over `pooled` (`mean`), `muvera`, `rows` and `cols` (`rows_cols`), cells, or none
(exact MaxSim over every point that passes the filter), then MaxSim on `colqwen2`. Image queries
(more than LONG_QUERY_TOKENS vectors, with a grid) take `layout` and few candidates instead. A `where`
filter applies to both stages. The collection remembers its first stage, quantization and
filterable fields in its metadata, so every client searching it agrees.

The index lives in a local folder on Qdrant's own engine in this process (qdrant-edge) by default,
or on a Qdrant server or cluster (`url`): `stores.py`. The choice of defaults is measured by
`make bench-scale` (README, "Catalog search at scale").
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import numpy as np

from ._base import progress_callback
from ._constants import EMBEDDING_DIM
from .catalog import CatalogItem, memory_items, point_id, sha256_hex
from .client import ColQwen2Client
from .errors import ColQwen2Error, InvalidInputError
from .fetch import FetchPolicy
from .inputs import ImageInput
from .muvera import Muvera
from .stores import DENSE, MULTIVECTOR, CollectionSpec, Record, Stage, Store, VectorSpec, open_store
from .token_pooling import cells, layout, pool_tokens, rows_cols
from .types import Embedding

COLLECTION = "visual_embeddings"
POOLED, MULTI, ROWS, COLS, FDE, LAYOUT = "pooled", "colqwen2", "rows", "cols", "muvera", "layout"
FirstStage = Literal["mean", "muvera", "rows_cols", "cells", "none"]
FIRST_STAGES: tuple[str, ...] = ("mean", "muvera", "rows_cols", "cells", "none")
CELL, ITEM = "cell", "item"  # first stage `cells`: the companion collection's vector, and its point's item id
CELLS_SUFFIX = "__cells"  # the companion collection: `<name>__cells`
# Visual tokens per side pooled into one cell. 2, not 3: with 3 x 3 cells (about 52 per item, against 116) the build
# was 5.7x faster at 10,000 items, but text recall@10 at 200 candidates fell from 1.000 to 0.74 there and to 0.17 at
# 100,000 items (`make bench-scale`, README "Catalog search at scale"): a cell's mean keeps a ninth of a token's own
# signal. A collection keeps the size it was created with (its companion's metadata).
CELL_SIZE = 2
# From `make bench-scale` (README, "Catalog search at scale"): recall@10 against exact MaxSim and latency at 10,000
# items. Cells find text queries' neighbours (a few tokens) token by token, where one vector per item, or the rows'
# and columns' means, lose them (0.94-1.0 at 100 and 200 candidates, against 0.52-0.65 for rows/cols);
# long queries (images) go through `layout` (one vector of the image's regions; `pooled` where the collection or the
# query has no grid): an image's hundreds of tokens against every rows/cols vector of each HNSW node cost seconds,
# and each candidate's rerank costs query vectors x item vectors MACs, so few candidates, found well.
DEFAULT_FIRST_STAGE: FirstStage = "cells"
LONG_QUERY_TOKENS = 64  # queries with more vectors than this (images) take the long-query route
LONG_QUERY_STAGE, LONG_QUERY_FALLBACK = "layout", "mean"
LAYOUT_CELLS = 2  # regions per side of the `layout` vector: 2 x 2 x 128 = 512 dims
QUANTIZATIONS: tuple[str, ...] = ("none", "scalar", "binary")
DEFAULT_QUANTIZATION = "scalar"  # int8 on the stored multivector, in RAM; rescored with the float16 originals
FILTER_TYPES: dict[str, tuple[type, ...]] = {"keyword": (str,), "integer": (int,), "bool": (bool,)}
DEFAULT_FILTER_FIELDS: dict[str, str] = {
    "key": "keyword",
    "kind": "keyword",
    "marketplace": "keyword",
    "asin": "keyword",
    "category": "keyword",
}
METADATA = "colqwen2"  # the collection metadata entry that holds its schema
VOLATILE = ("indexed_at",)  # payload that changes on every write, not a change of the item


@dataclass(frozen=True)
class IndexSettings:
    collection: str = COLLECTION
    # None: the collection's own (from its metadata), or DEFAULT_FIRST_STAGE for a new one.
    first_stage: FirstStage | None = None
    prefetch_limit: int = 200  # candidates the first stage passes to the rerank (each, for rows_cols)
    # Long queries (images: hundreds of vectors): the `layout` first stage and at most this many candidates, each of
    # which costs the rerank (query vectors x item vectors) MACs: ~26 M for a 450-vector image against such an item.
    long_query_prefetch: int = 16
    layout_cells: int = LAYOUT_CELLS  # a new collection's `layout` vector (0: none; image queries then use `pooled`)
    cell_hits: int = 32  # first stage `cells`: nearest cells each query token takes
    quantization: str = DEFAULT_QUANTIZATION  # on the stored multivector (none, scalar, binary), rescored on search
    pool_factor: int = 1  # hierarchical token pooling of image vectors at index time; 1 = off
    filter_fields: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_FILTER_FIELDS))
    chunk: int = 64  # items read, embedded and written together
    upsert_batch: int = 64
    checkpoint_every: int = 8  # chunks between writes that wait for Qdrant to apply them
    # Cluster settings, used when the collection is created (a server honours them all).
    shard_number: int | None = None
    replication_factor: int | None = None
    write_consistency_factor: int | None = None
    on_disk: bool = False  # the `colqwen2` multivectors and the payload on disk, not in RAM
    fetch: FetchPolicy = field(default_factory=FetchPolicy)  # what items' `url`s may be fetched from (`fetch.py`)


@dataclass(frozen=True)
class Schema:
    """What a collection was created with, from its metadata."""

    first_stage: str
    filter_fields: dict[str, str]
    quantization: str = "none"
    muvera: dict[str, Any] = field(default_factory=dict)  # the MUVERA parameters (first stage `muvera`)
    layout: int = 0  # cells per side of the `layout` vector; 0: the collection has none


@dataclass
class IndexReport:
    new: int = 0
    replaced: int = 0  # the key was there with other content: vectors and payload replaced
    updated: int = 0  # same content, other payload: payload replaced, nothing embedded
    unchanged: int = 0  # same content and payload: nothing done
    failed: list[tuple[str, str]] = field(default_factory=list)  # (item, reason)
    pruned: int = 0
    stored_vectors: int = 0
    raw_vectors: int = 0  # before token pooling
    embedded: int = 0
    seconds: float = 0.0

    @property
    def indexed(self) -> int:
        """Points written with new vectors."""
        return self.new + self.replaced

    def summary(self) -> dict[str, Any]:
        return {
            "new": self.new,
            "replaced": self.replaced,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "failed": len(self.failed),
            "pruned": self.pruned,
            "stored_vectors": self.stored_vectors,
            "raw_vectors": self.raw_vectors,
            "seconds": round(self.seconds, 2),
            "images_per_s": round(self.embedded / self.seconds, 2) if self.seconds else None,
        }


Status = Literal["new", "replaced", "updated", "unchanged"]


@dataclass(frozen=True)
class Change:
    """One item as indexing finds it (`VisualIndex.plan`): its bytes, its new payload and what writing it takes:
    "new" or "replaced" (embed it, then write its whole point), "updated" (same content, other payload: write the
    payload) or "unchanged" (nothing)."""

    item: CatalogItem
    data: bytes = field(repr=False)
    payload: dict[str, Any]
    status: Status

    @property
    def embeds(self) -> bool:
        return self.status in ("new", "replaced")


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


# Scores this close (relative) are a tie: vectors computed in different dynamic batches differ in the last
# float bits, which must not reorder a ranking between runs.
TIE_TOLERANCE = 1e-5
TIE_LOOKAHEAD = 8  # hits fetched beyond `limit`, to see whether the limit-th one ties with more


def _tie_groups(hits: Iterable[Hit]) -> list[list[Hit]]:
    """Hits by falling score, in groups whose scores are within TIE_TOLERANCE of the group's best."""
    groups: list[list[Hit]] = []
    for hit in sorted(hits, key=lambda h: -h.score):
        if groups and groups[-1][0].score - hit.score <= TIE_TOLERANCE * max(1.0, abs(groups[-1][0].score)):
            groups[-1].append(hit)
        else:
            groups.append([hit])
    return groups


def ordered(hits: Iterable[Hit]) -> list[Hit]:
    """Best score first; tied scores by key (then id), so a ranking with ties is the same on every run."""
    return [
        h for group in _tie_groups(hits) for h in sorted(group, key=lambda h: (str(h.payload.get("key", "")), h.id))
    ]


def tied(hits: Sequence[Hit]) -> set[int]:
    """Positions in `hits` whose score another hit shares (within TIE_TOLERANCE)."""
    size = {id(h): len(group) for group in _tie_groups(hits) for h in group}
    return {i for i, hit in enumerate(hits) if size[id(hit)] > 1}


def open_qdrant(path: str | Path | None = None, url: str | None = None, api_key: str | None = None) -> Store:
    """A Qdrant server at `url`, or Qdrant's engine in this process in the folder `path` (":memory:": a
    temporary folder; default: the per-user folder, $COLQWEN2_QDRANT_PATH or ~/.local/share/colqwen2/qdrant)."""
    return open_store(path, url, api_key)


def check_where(where: Mapping[str, Any] | None, fields: Mapping[str, str]) -> dict[str, Any]:
    """`where` checked against the collection's filterable fields: InvalidInputError naming the field."""
    out: dict[str, Any] = {}
    for name, value in (where or {}).items():
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise InvalidInputError(f"unknown filter field {name!r}: this collection filters on {known}")
        kind = fields[name]
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values:
            raise InvalidInputError(f"filter {name!r}: an empty list matches nothing")
        for v in values:
            ok = isinstance(v, FILTER_TYPES[kind]) and not (kind != "bool" and isinstance(v, bool))
            if not ok:
                raise InvalidInputError(f"filter {name!r} is a {kind} field: {v!r} is a {type(v).__name__}")
        out[name] = list(values) if isinstance(value, (list, tuple)) else value
    return out


def parse_where(terms: Sequence[str], fields: Mapping[str, str]) -> dict[str, Any]:
    """CLI terms `field=value` or `field=a,b` (any of) -> a checked `where`."""
    where: dict[str, Any] = {}
    for term in terms:
        name, sep, raw = term.partition("=")
        if not sep or not name:
            raise InvalidInputError(f"--where {term!r}: use FIELD=VALUE or FIELD=A,B")
        kind = fields.get(name)
        values: list[Any] = raw.split(",")
        try:
            if kind == "integer":
                values = [int(v) for v in values]
            elif kind == "bool":
                values = [{"true": True, "false": False}[v.lower()] for v in values]
        except (ValueError, KeyError):
            raise InvalidInputError(f"--where {term!r}: {name} is a {kind} field") from None
        where[name] = values if len(values) > 1 else values[0]
    return check_where(where, fields)


class VisualIndex:
    """Index catalog items into a collection and search them. `embedder` may be None for a caller that
    embeds itself (the gateway): then pass `visual_token_offset` for a `rows_cols` collection."""

    def __init__(
        self,
        embedder: ColQwen2Client | None,
        store: Store,
        settings: IndexSettings | None = None,
        visual_token_offset: int | None = None,
    ) -> None:
        self.embedder, self.store = embedder, store
        self.settings = settings or IndexSettings()
        self._offset = visual_token_offset
        self._schema: Schema | None = None
        self._muvera: Muvera | None = None
        self._cell_size: int | None = None

    # -- the collection ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.settings.collection

    def exists(self) -> bool:
        return self.store.metadata(self.name) is not None

    def close(self) -> None:
        self.store.close()

    @property
    def schema(self) -> Schema:
        """The collection's first stage and filterable fields (what these settings would create if none)."""
        if self._schema is None:
            wanted = self.settings.first_stage
            metadata = self.store.metadata(self.name)
            if metadata is not None:
                stored = metadata.get(METADATA)
                # A collection from before the schema was stored: mean first stage, the default fields.
                stored = stored or {"first_stage": "mean", "filter_fields": dict(DEFAULT_FILTER_FIELDS)}
                schema = Schema(
                    stored["first_stage"], dict(stored["filter_fields"]), stored.get("quantization", "none"),
                    dict(stored.get("muvera") or {}), int(stored.get("layout", 0)),
                )  # fmt: skip
                if wanted and wanted != schema.first_stage:
                    raise InvalidInputError(
                        f"collection {self.name!r} was created with first stage {schema.first_stage!r}, not "
                        f"{wanted!r}: index into a new collection to change it"
                    )
            else:
                stage = wanted or DEFAULT_FIRST_STAGE
                muvera = _params(Muvera()) if stage == "muvera" else {}
                cells = self.settings.layout_cells if stage != "none" else 0
                schema = Schema(stage, dict(self.settings.filter_fields), self.settings.quantization, muvera, cells)
            if schema.first_stage not in FIRST_STAGES:
                raise InvalidInputError(f"first stage must be one of {', '.join(FIRST_STAGES)}")
            if metadata is None:
                return schema  # not cached: another client may create the collection first
            self._schema = schema
        return self._schema

    @property
    def muvera(self) -> Muvera:
        if self._muvera is None or _params(self._muvera) != self.schema.muvera:
            self._muvera = Muvera(**self.schema.muvera)
        return self._muvera

    def spec(self) -> CollectionSpec:
        """The collection these settings create: its vectors, payload indexes, schema and cluster settings."""
        schema, s = self.schema, self.settings
        vectors = {
            POOLED: VectorSpec(EMBEDDING_DIM, DENSE),
            # the exact rerank: every vector, no graph, float16 (half the bytes; MaxSim within 1e-4 relative)
            MULTI: VectorSpec(EMBEDDING_DIM, MULTIVECTOR, hnsw=False, float16=True,
                              quantization=schema.quantization, on_disk=s.on_disk),
        }  # fmt: skip
        if schema.first_stage == "rows_cols":
            for name in (ROWS, COLS):
                vectors[name] = VectorSpec(EMBEDDING_DIM, MULTIVECTOR)
        if schema.first_stage == "muvera":
            vectors[FDE] = VectorSpec(self.muvera.fde_dim, DENSE, distance="dot")
        if schema.layout:
            vectors[LAYOUT] = VectorSpec(schema.layout**2 * EMBEDDING_DIM, DENSE)
        metadata = {
            METADATA: {
                "first_stage": schema.first_stage,
                "filter_fields": schema.filter_fields,
                "quantization": schema.quantization,
                **({"muvera": schema.muvera} if schema.muvera else {}),
                **({"layout": schema.layout} if schema.layout else {}),
            }
        }
        return CollectionSpec(
            vectors, schema.filter_fields, metadata, s.shard_number, s.replication_factor,
            s.write_consistency_factor, on_disk_payload=s.on_disk,
        )  # fmt: skip

    def ensure_collection(self) -> None:
        schema = self.schema
        if self.exists():
            return
        unknown = {k: v for k, v in schema.filter_fields.items() if v not in FILTER_TYPES}
        if unknown:
            raise InvalidInputError(f"filter field types must be one of {', '.join(FILTER_TYPES)}: {unknown}")
        if schema.quantization not in QUANTIZATIONS:
            raise InvalidInputError(
                f"quantization must be one of {', '.join(QUANTIZATIONS)}, not {schema.quantization!r}"
            )
        if schema.first_stage == "cells" and self.store.metadata(self.cells_name) is None:
            self.store.create(self.cells_name, self.cells_spec())  # first: the collection exists once both do
        self.store.create(self.name, self.spec())

    @property
    def cells_name(self) -> str:
        return self.name + CELLS_SUFFIX

    def cells_spec(self) -> CollectionSpec:
        """First stage `cells`' companion collection: one float16 vector per cell, HNSW; the filter fields and the
        item's id indexed."""
        s = self.settings
        return CollectionSpec(
            {CELL: VectorSpec(EMBEDDING_DIM, DENSE, float16=True)}, {**self.schema.filter_fields, ITEM: "keyword"},
            {METADATA: {"cells_of": self.name, "cell_size": CELL_SIZE}}, s.shard_number, s.replication_factor,
            s.write_consistency_factor,
        )  # fmt: skip

    @property
    def cell_size(self) -> int:
        """First stage `cells`: tokens per side of a cell, as the companion collection was created (CELL_SIZE for a
        new one; a collection made with another size keeps it)."""
        if self._cell_size is None:
            stored = self.store.metadata(self.cells_name)
            if stored is None:
                return CELL_SIZE  # not cached: another client may create the collection first
            self._cell_size = int((stored.get(METADATA) or {}).get("cell_size", CELL_SIZE))
        return self._cell_size

    def count(self, where: Mapping[str, Any] | None = None) -> int:
        if not self.exists():
            return 0
        return self.store.count(self.name, check_where(where, self.schema.filter_fields))

    def optimize(self) -> bool:
        """Build what waits: the HNSW graphs and quantized vectors of new points once enough wait (qdrant-edge:
        20 MB of vectors, about 175 items; fewer are searched exactly, and fast), vacuum of replaced ones; whether
        anything was built. qdrant-edge builds in this process and blocks its Python threads while it runs (so
        the gateway never calls it: `colqwen2 index` does); a server builds by itself (False)."""
        changed = False
        for name in self.collections() if self.exists() else []:
            changed = self.store.optimize(name) or changed
        return changed

    def collections(self) -> list[str]:
        """The store's collections this index keeps: its own, and first stage `cells`' companion."""
        return [self.name] + ([self.cells_name] if self.schema.first_stage == "cells" else [])

    def visual_token_offset(self) -> int:
        if self._offset is None:
            if self.embedder is None:
                raise ValueError("a rows_cols collection needs visual_token_offset when there is no embedder")
            self._offset = int(self.embedder.server_info()["visual_token_offset"])
        return self._offset

    # -- writing -------------------------------------------------------------------------------

    def _stored(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Payload of the points that exist among `ids`."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 256):
            found |= {r.id: r.payload for r in self.store.retrieve(self.name, ids[start : start + 256])}
        return found

    def payload(self, item: CatalogItem, data: bytes, sha: str) -> dict[str, Any]:
        payload = {**item.payload, "key": item.key, "sha256": sha, "source": item.source, "bytes": len(data)}
        payload.setdefault("kind", "image")
        payload["size"] = _size(data)
        payload["indexed_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return payload

    def vectors(self, embedding: Embedding, where: str = "the image") -> dict[str, np.ndarray]:
        """Every named vector of a point from its embedding: the stored multivector (after any token pooling),
        the mean, the layout, and the first stage's own (rows/cols from the grid, or the MUVERA encoding)."""
        stored = pool_tokens(embedding.vectors, self.settings.pool_factor)
        arrays: dict[str, np.ndarray] = {POOLED: embedding.pooled, MULTI: stored}
        schema = self.schema
        stage = schema.first_stage
        if (stage == "rows_cols" or schema.layout) and embedding.grid is None:
            needs = "rows_cols" if stage == "rows_cols" else "its layout vector"
            raise InvalidInputError(f"{where}: the server returned no grid: {needs} needs it")
        if schema.layout:
            arrays[LAYOUT] = layout(embedding.vectors, embedding.grid, self.visual_token_offset(), schema.layout)
        if stage == "rows_cols":
            arrays[ROWS], arrays[COLS] = rows_cols(embedding.vectors, embedding.grid, self.visual_token_offset())
        elif stage == "cells":
            if embedding.grid is None:
                raise InvalidInputError(f"{where}: the server returned no grid: cells needs it")
            arrays[CELL] = cells(embedding.vectors, embedding.grid, self.visual_token_offset(), self.cell_size)
        elif stage == "muvera":
            arrays[FDE] = self.muvera.encode_document(embedding.vectors)
        return arrays

    def point(self, item: CatalogItem, payload: dict[str, Any], embedding: Embedding) -> tuple[Record, int]:
        """The point for an item: all its vectors and its payload, written in one upsert; and its stored count."""
        arrays = self.vectors(embedding, item.where)
        return Record(item.id, payload, arrays), len(arrays[MULTI])

    def index(
        self,
        items: Sequence[CatalogItem] | Sequence[ImageInput],
        payloads: Sequence[dict[str, Any]] | None = None,
        progress: bool | Callable[[int, int], None] | None = None,
        prune: bool = False,
    ) -> IndexReport:
        """Embed and write the items whose content is new or changed; update payload-only changes.

        Reading, embedding and writing overlap: the next chunk's files are read while this one is
        embedded, and a writer thread upserts the previous chunk (waiting for Qdrant to apply the
        writes every `checkpoint_every` chunks and at the end). Progress counts items written.
        Each point's vectors and payload go in one upsert, so a killed run leaves whole points; run
        it again to finish. Each chunk goes the way one item goes through `plan` and `apply` (the gateway's
        /index): `plan` decides, the changes that `embeds` are embedded, `_points` and `_write` write them.
        `prune`: afterwards delete every point whose key is not among `items` (a full catalog).
        """
        started = time.monotonic()
        catalog = list(items) if all(isinstance(i, CatalogItem) for i in items) else memory_items(items, payloads)  # type: ignore[arg-type]
        if self.embedder is None:
            raise ValueError("indexing needs an embedder")
        self.ensure_collection()
        report = IndexReport()
        catalog = _unique(catalog, report)
        stored = self._stored([i.id for i in catalog])
        bar = progress_callback(progress)
        size = max(self.settings.chunk, 1)
        chunks = [catalog[i : i + size] for i in range(0, len(catalog), size)]
        with ThreadPoolExecutor(8, "colqwen2-read") as reader, ThreadPoolExecutor(1, "colqwen2-write") as writer:
            writes: list[tuple[Future[_Written], int]] = []  # a chunk being written, and its size
            finished = 0
            loads = [reader.submit(item.read, self.settings.fetch) for item in chunks[0]] if chunks else []
            for n, chunk in enumerate(chunks):
                current = loads
                if n + 1 < len(chunks):
                    loads = [reader.submit(item.read, self.settings.fetch) for item in chunks[n + 1]]
                changes = self.plan(*_read(chunk, current, report), stored)
                report.unchanged += sum(c.status == "unchanged" for c in changes)
                todo = [c for c in changes if c.embeds]
                embedded = self.embedder.embed_batch([c.data for c in todo], return_exceptions=True)
                report.embedded += len(todo)
                points = self._points(changes, embedded, report)
                last = n + 1 == len(chunks)
                wait = last or (n + 1) % self.settings.checkpoint_every == 0
                writes.append((writer.submit(self._write, points, _updates(changes), wait), len(chunk)))
                while len(writes) > 1 or (last and writes):  # one chunk written while the next is embedded
                    write, count = writes.pop(0)
                    _collect(write.result(), report)
                    finished += count
                    if bar:
                        bar(finished, len(catalog))
        if prune:
            report.pruned = self.prune({item.key for item in catalog})
        report.seconds = time.monotonic() - started
        return report

    def plan(
        self,
        items: Sequence[CatalogItem],
        data: Sequence[bytes],
        stored: Mapping[str, dict[str, Any]] | None = None,
    ) -> list[Change]:
        """What writing each item (with its bytes) takes, given the stored payloads by point id (None: read
        them from the collection, which must exist). The first step of `index`, and of a caller that embeds
        itself (the gateway): plan, embed the changes that `embeds`, then `apply`."""
        if stored is None:
            stored = self._stored([item.id for item in items])
        return [self.decide(item, blob, stored.get(item.id)) for item, blob in zip(items, data, strict=True)]

    def decide(self, item: CatalogItem, data: bytes, stored: dict[str, Any] | None) -> Change:
        """What writing `item` takes, given its stored payload (None: no point yet): new or changed content is
        embedded, the same content with another payload is updated in place, the same payload is left alone."""
        sha = sha256_hex(data)
        payload = self.payload(item, data, sha)
        if stored is None:
            status: Status = "new"
        elif stored.get("sha256") != sha:
            status = "replaced"
        else:
            status = "unchanged" if _same(stored, payload) else "updated"
        return Change(item, data, payload, status)

    def apply(self, changes: Sequence[Change], embeddings: Sequence[Embedding]) -> None:
        """Write planned changes now, waiting for Qdrant: the whole point of each change that `embeds`, from
        `embeddings` (theirs, in order), the payload of each "updated" one. Raises the first failure."""
        points = self._points(changes, embeddings)
        error = self._write(points, _updates(changes), wait=True).error
        if error is not None:
            raise error

    def write(self, item: CatalogItem, payload: dict[str, Any], embedding: Embedding | None = None) -> None:
        """Write one item now, waiting for Qdrant: its whole point from `embedding`, or only its payload."""
        if embedding is None:
            self.update_payload(item.id, payload)
        else:
            point, _ = self.point(item, payload, embedding)
            self.upsert([point])

    def upsert(self, points: Sequence[Record], wait: bool = True) -> None:
        """Write whole points (as `point` or `vectors` make them). First stage `cells`: each point's cells first, its
        old ones deleted before, so a run killed in between leaves the point as it was (found by its old cells, or
        by none if it is new: the rerun writes it again, its content being new to the index)."""
        records = list(points)
        if self.schema.first_stage == "cells":
            fields_ = self.schema.filter_fields
            parts = [(r, r.vectors.get(CELL)) for r in records]
            missing = [r.id for r, c in parts if c is None]
            if missing:
                raise ValueError(f"points without cells in a cells collection: {missing[:3]}")
            self.store.delete_where(self.cells_name, {ITEM: [r.id for r in records]})
            self.store.upsert(self.cells_name, [
                Record(str(uuid.uuid5(uuid.UUID(r.id), str(i))), {ITEM: r.id} | _filter_payload(r.payload, fields_),
                       {CELL: cell})
                for r, c in parts for i, cell in enumerate(c)
            ], wait=wait)  # fmt: skip
            records = [Record(r.id, r.payload, {n: v for n, v in r.vectors.items() if n != CELL}) for r in records]
        self.store.upsert(self.name, records, wait=wait)

    def update_payload(self, id: str, payload: dict[str, Any], wait: bool = True) -> None:
        """Replace a point's payload (its vectors stay); first stage `cells`: its cells' filter fields too."""
        if self.schema.first_stage == "cells":
            fields_ = self.schema.filter_fields
            self.store.set_payload_where(self.cells_name, {ITEM: id}, {f: payload.get(f) for f in fields_})
        self.store.overwrite_payload(self.name, id, payload, wait=wait)

    def _points(
        self,
        changes: Sequence[Change],
        embeddings: Sequence[Embedding | Exception],
        report: IndexReport | None = None,
    ) -> list[tuple[Record, Change]]:
        """The whole points of the changes that embed, from their embeddings in order (an exception: that item's
        embedding failed). A failure (no embedding, or no point from it) goes to `report`; with none, it is raised."""
        points = []
        for change, embedding in zip([c for c in changes if c.embeds], embeddings, strict=True):
            built = self._built(change, embedding)
            if isinstance(built, Exception):
                if report is None:
                    raise built
                report.failed.append((change.item.where, str(built)))
                continue
            point, kept, raw = built
            if report is not None:
                report.raw_vectors += raw
                report.stored_vectors += kept
            points.append((point, change))
        return points

    def _built(self, change: Change, embedding: Embedding | Exception) -> tuple[Record, int, int] | Exception:
        """A change's point with its stored and raw vector counts, or why there is none: its embedding failed,
        or its point cannot be built from it."""
        if isinstance(embedding, Exception):
            return embedding
        try:
            point, kept = self.point(change.item, change.payload, embedding)
        except (ColQwen2Error, ValueError) as exc:
            return exc
        return point, kept, embedding.num_vectors

    def _write(self, points: Sequence[tuple[Record, Change]], updates: Sequence[Change], wait: bool) -> _Written:
        """Upsert whole points, then the payload-only updates; stops at the first error (Qdrant refused or went
        away) and says what was written and what was not."""
        batch = self.settings.upsert_batch
        done: list[tuple[Record, Change]] = []
        updated = 0
        try:
            for start in range(0, len(points), batch):
                part = points[start : start + batch]
                self.upsert([point for point, _ in part], wait=wait)
                done.extend(part)
            for change in updates:
                self.update_payload(change.item.id, change.payload, wait=wait)
                updated += 1
        except Exception as exc:  # what was not written is reported failed
            return _Written(done, list(points[len(done) :]), updated, exc)
        return _Written(done, [], updated, None)

    def prune(self, keep: Iterable[str]) -> int:
        """Delete every point whose key is not in `keep`; how many."""
        keep_ids = {point_id(key) for key in keep}
        stale = [pid for pid in self.store.ids(self.name) if pid not in keep_ids]
        for start in range(0, len(stale), 1024):
            self._delete_ids(stale[start : start + 1024])
        return len(stale)

    def _delete_ids(self, ids: Sequence[str]) -> None:
        self.store.delete_ids(self.name, ids)  # the point first: its cells alone find nothing
        if self.schema.first_stage == "cells":
            self.store.delete_where(self.cells_name, {ITEM: list(ids)})

    def delete(self, keys: Sequence[str] = (), where: Mapping[str, Any] | None = None) -> int:
        """Delete points by key and/or by filter; how many were deleted."""
        if not keys and not where:
            raise InvalidInputError("delete needs keys or a filter (deleting everything is `drop the collection`)")
        if not self.exists():
            return 0
        deleted = 0
        if keys:
            ids = [point_id(k) for k in keys]
            deleted += len(self._stored(ids))
            self._delete_ids(ids)
        if where:
            checked = check_where(where, self.schema.filter_fields)
            deleted += self.store.count(self.name, checked)
            self.store.delete_where(self.name, checked)
            if self.schema.first_stage == "cells":  # the cells carry the filter fields
                self.store.delete_where(self.cells_name, checked)
        return deleted

    # -- searching -----------------------------------------------------------------------------

    def search(
        self,
        text: str | None = None,
        image: ImageInput | None = None,
        limit: int = 10,
        where: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        """Text or image query, restricted to the points matching `where` in both stages."""
        if (text is None) == (image is None):
            raise ValueError("search needs exactly one of text= or image=")
        if self.embedder is None:
            raise ValueError("search by text or image needs an embedder; use search_embedding")
        checked = check_where(where, self.schema.filter_fields)  # before embedding: a bad filter costs nothing
        query = self.embedder.embed_query(text) if text is not None else self.embedder.embed(image)
        return self.search_embedding(query, limit, checked)

    def search_embedding(
        self,
        query: Embedding,
        limit: int = 10,
        where: Mapping[str, Any] | None = None,
        prefetch_limit: int | None = None,
        first_stage: str | None = None,
    ) -> list[Hit]:
        """First stage (the collection's, or `first_stage`), then MaxSim over its candidates."""
        checked = check_where(where, self.schema.filter_fields)
        stage, default_prefetch = self.route(query, first_stage)
        candidates = max(prefetch_limit or default_prefetch, limit)
        ids = None
        if stage == "cells":
            ids = [h.id for h in self.cell_candidates(query, candidates, checked)]
        stages = [Stage(name, vector, candidates) for vector, name in self._first_stage_queries(query, stage)]
        quantized = "rescore" if self.schema.quantization != "none" else "default"
        if query.num_vectors > LONG_QUERY_TOKENS and quantized == "rescore":
            quantized = "ignore"  # few candidates: scoring them with int8 first, then again with the originals, is 2x
        # The cut is made here, so tied scores (common with random weights) are ordered by key, not by whatever
        # order the engine returns them in: a few more than `limit` are fetched, more while the last one still
        # ties with the limit-th.
        cap, fetch = max(limit, candidates), limit + TIE_LOOKAHEAD
        while True:
            found = self.store.query(self.name, query.vectors, MULTI, min(fetch, cap), checked, stages, quantized, ids)
            hits = ordered(Hit(p.id, p.score, p.payload) for p in found)
            if len(hits) < min(fetch, cap) or fetch >= cap or len(hits) <= limit:
                return hits[:limit]
            if hits[limit - 1] not in _tie_groups(hits)[-1]:  # the limit-th is clear of the last fetched
                return hits[:limit]
            fetch *= 4

    def route(self, query: Embedding, first_stage: str | None = None) -> tuple[str, int]:
        """The first stage and prefetch a query takes: `first_stage` if given, else the collection's for short
        (text) queries and, for long ones (images), LONG_QUERY_STAGE (LONG_QUERY_FALLBACK where the collection
        or the query has no layout) with `long_query_prefetch`."""
        if first_stage:
            return first_stage, self.settings.prefetch_limit
        stage = self.schema.first_stage
        if stage != "none" and query.num_vectors > LONG_QUERY_TOKENS:
            long = LONG_QUERY_STAGE if self.schema.layout and query.grid is not None else LONG_QUERY_FALLBACK
            return long, min(self.settings.long_query_prefetch, self.settings.prefetch_limit)
        return stage, self.settings.prefetch_limit

    def _first_stage_queries(self, query: Embedding, first_stage: str | None) -> list[tuple[np.ndarray, str]]:
        """(query vector, named vector) pairs of a first stage (the collection's, or `first_stage`); [] for none."""
        stage = first_stage or self.schema.first_stage
        if stage in ("none", "cells"):  # cells: the candidates come as ids (cell_candidates)
            return []
        if stage == "mean":
            return [(query.pooled, POOLED)]
        if stage == "layout" and self.schema.layout:
            if query.grid is None:
                raise InvalidInputError("first stage 'layout' needs an image query (one with a grid)")
            return [(layout(query.vectors, query.grid, self.visual_token_offset(), self.schema.layout), LAYOUT)]
        if stage == self.schema.first_stage == "rows_cols":
            return [(query.vectors, ROWS), (query.vectors, COLS)]
        if stage == self.schema.first_stage == "muvera":
            return [(self.muvera.encode_query(query.vectors), FDE)]
        raise InvalidInputError(f"collection {self.name!r} has no {stage!r} first stage")

    def first_stage_hits(
        self,
        query: Embedding,
        limit: int | None = None,
        where: Mapping[str, Any] | None = None,
        first_stage: str | None = None,
    ) -> list[Hit]:
        """What the first stage hands the rerank, with its own scores: the pooled vector's cosine (`mean`), the
        best of the rows' and the columns' MaxSim (`rows_cols`, the union of both candidate lists), the MUVERA
        dot product (`muvera`), the layout's cosine (`layout`, image queries). `none`: []."""
        checked = check_where(where, self.schema.filter_fields)
        stage, prefetch = self.route(query, first_stage)
        limit = limit or prefetch
        if stage == "cells":
            found = self.cell_candidates(query, limit, checked)
            payloads = {r.id: r.payload for r in self.records([h.id for h in found])}
            return ordered(Hit(h.id, h.score, payloads.get(h.id, {})) for h in found)
        best: dict[str, Hit] = {}
        for vector, name in self._first_stage_queries(query, stage):
            for p in self.store.query(self.name, vector, name, limit, checked):
                if p.id not in best or p.score > best[p.id].score:
                    best[p.id] = Hit(p.id, p.score, p.payload)
        return ordered(best.values())

    def cell_candidates(self, query: Embedding, limit: int, where: Mapping[str, Any] | None = None) -> list[Hit]:
        """First stage `cells`: each query vector's `cell_hits` nearest cells (within `where`); an item scores the
        sum over query vectors of its best cell (MaxSim over the cells found); the best `limit` items (no
        payload). A query vector that finds none of an item's cells adds nothing to it."""
        if self.schema.first_stage != "cells":
            raise InvalidInputError(f"collection {self.name!r} has no 'cells' first stage")
        hits = self.settings.cell_hits
        found = (
            ((str(p.payload[ITEM]), p.score) for p in self.store.query(self.cells_name, v, CELL, hits, where))
            for v in query.vectors
        )
        return [Hit(pid, score, {}) for score, pid in rank_by_cells(found)[:limit]]

    def stored_vectors(self, ids: Sequence[str], name: str = MULTI) -> dict[str, np.ndarray]:
        """A named vector as stored (`colqwen2`: after any token pooling, in float16), by point id."""
        return {r.id: r.vectors[name] for r in self.store.retrieve(self.name, list(ids), False, [name])}

    def records(self, ids: Sequence[str], vectors: Sequence[str] = ()) -> list[Record]:
        """Stored points (payload, and the named vectors asked for)."""
        return self.store.retrieve(self.name, list(ids), True, vectors)


K = TypeVar("K")  # an item's key: its point id, or an index in the benchmarks


def rank_by_cells(found: Iterable[Iterable[tuple[K, float]]]) -> list[tuple[float, K]]:
    """First stage `cells`' item score from the cells each query vector found, as (item, cosine) pairs: the sum over
    query vectors of the item's best cell among them (one that found none of its cells adds nothing); best first."""
    best: dict[K, dict[int, float]] = {}
    for t, hits in enumerate(found):
        for item, score in hits:
            slot = best.setdefault(item, {})
            slot[t] = max(slot.get(t, score), score)
    return sorted(((sum(v.values()), item) for item, v in best.items()), reverse=True)


def migrate(old: str | Path, index: VisualIndex, batch: int = 256) -> int:
    """Copy the collection `index.name` of an index written by qdrant-client's local mode (this project's
    embedded index before qdrant-edge) into `index`, without embedding anything again; how many points.

    The stored vectors, payloads and filter fields are kept, and the first stage unless `index.settings` name
    another; its vectors are computed from the stored ones (MUVERA) or copied (the mean; rows/cols, which
    need the old collection to have them: the grid is not stored). `old` is only read."""
    from dataclasses import replace

    from qdrant_client import QdrantClient

    if index.exists() and index.count():
        raise InvalidInputError(f"collection {index.name!r} is not empty here: migrate into a new folder")
    source = QdrantClient(path=str(old))
    try:
        if not source.collection_exists(index.name):
            raise InvalidInputError(f"{old} has no collection {index.name!r}")
        meta = (source.get_collection(index.name).config.metadata or {}).get(METADATA) or {}
        fields_ = dict(meta.get("filter_fields") or DEFAULT_FILTER_FIELDS)
        stage = index.settings.first_stage or meta.get("first_stage", "mean")  # unless asked: the one it had
        # no layout: the old points have no grid to compute it from (image queries then take `pooled`)
        index.settings = replace(index.settings, filter_fields=fields_, first_stage=stage, layout_cells=0)
        index._schema = None
        stage = index.schema.first_stage
        if stage == "rows_cols" and meta.get("first_stage") != "rows_cols":
            raise InvalidInputError(f"{old} has no rows/cols vectors: migrate with first stage muvera or mean")
        if stage == "cells":
            raise InvalidInputError(f"{old} keeps no grids to pool cells from: migrate with first stage muvera or mean")
        index.ensure_collection()
        names = [POOLED, MULTI] + ([ROWS, COLS] if stage == "rows_cols" else [])
        copied, offset = 0, None
        while True:
            points, offset = source.scroll(
                index.name, limit=batch, offset=offset, with_payload=True, with_vectors=names
            )
            records = []
            for p in points:
                arrays = {n: np.asarray(p.vector[n], dtype=np.float32) for n in names}
                if stage == "muvera":
                    arrays[FDE] = index.muvera.encode_document(arrays[MULTI])
                records.append(Record(str(p.id), dict(p.payload or {}), arrays))
            if records:
                index.upsert(records)
            copied += len(records)
            if offset is None:
                return copied
    finally:
        source.close()


def _params(encoder: Muvera) -> dict[str, Any]:
    """An encoder's parameters, as a collection's schema keeps them (the same ones rebuild the same encoder)."""
    return {f.name: getattr(encoder, f.name) for f in fields(encoder) if f.init}


def _filter_payload(payload: Mapping[str, Any], fields_: Mapping[str, str]) -> dict[str, Any]:
    return {f: payload[f] for f in fields_ if f in payload}


def _unique(items: list[CatalogItem], report: IndexReport) -> list[CatalogItem]:
    seen: dict[str, CatalogItem] = {}
    for item in items:
        if item.key in seen:
            report.failed.append((item.where, f"duplicate key: {seen[item.key].where} has it too (the first is kept)"))
        else:
            seen[item.key] = item
    return list(seen.values())


class _Written(NamedTuple):
    """What one write of `_write` did: points written, points not written, payloads updated, the error."""

    done: list[tuple[Record, Change]]
    lost: list[tuple[Record, Change]]
    updated: int
    error: Exception | None


def _read(
    chunk: Sequence[CatalogItem], loads: Sequence[Future[bytes]], report: IndexReport
) -> tuple[list[CatalogItem], list[bytes]]:
    """The items of a chunk whose bytes could be read, and their bytes; each failed read goes to `report`."""
    items: list[CatalogItem] = []
    data: list[bytes] = []
    for item, load in zip(chunk, loads, strict=True):
        try:
            blob = load.result()
        except ColQwen2Error as exc:
            report.failed.append((item.where, str(exc)))
        except Exception as exc:  # an unexpected read failure is this item's alone
            report.failed.append((item.where, f"{type(exc).__name__}: {exc}"))
        else:
            items.append(item)
            data.append(blob)
    return items, data


def _updates(changes: Sequence[Change]) -> list[Change]:
    """The payload-only changes."""
    return [c for c in changes if c.status == "updated"]


def _collect(written: _Written, report: IndexReport) -> None:
    """Count a write into `report`: its new and replaced points, its payload updates, what it failed to write."""
    for _point, change in written.done:
        if change.status == "replaced":
            report.replaced += 1
        else:
            report.new += 1
    report.updated += written.updated
    for _point, change in written.lost:
        report.failed.append((change.item.where, f"Qdrant: {written.error}"))
    if written.error is not None and not written.lost:  # the payload-only updates failed; the next run finds them
        report.failed.append(("payload updates", f"Qdrant: {written.error}"))


def _same(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return {k: v for k, v in old.items() if k not in VOLATILE} == {k: v for k, v in new.items() if k not in VOLATILE}


def _size(data: bytes) -> list[int] | None:
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:  # header only
            return [img.width, img.height]
    except Exception:
        return None
