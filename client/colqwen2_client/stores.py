"""Where a catalog index lives: Qdrant's own engine in this process (a folder), or a Qdrant server or cluster.

`VisualIndex` (`qdrant.py`) decides what to write and how to search; a store carries it out, with the
same semantics on both engines:

- `EdgeStore`: `qdrant-edge`, the Rust segment code of the Qdrant server as an in-process library:
  HNSW, multivector MaxSim, scalar/binary quantization, payload indexes, the prefetch-then-rerank
  Query API, vectors memory-mapped from disk. One shard per collection in `<folder>/<collection>/`,
  the collection's schema beside it in `<collection>.colqwen2.json`. One process opens a folder at a
  time (a lock file says which); qdrant-edge has no background optimizer, so new points wait in an
  appendable segment, searched exactly, until `optimize()` indexes them.
- `ServerStore`: `qdrant-client` against a server or cluster URL (its local mode too, which tests
  use to cover this code path without a server).

Vectors travel as float32 numpy arrays: 1-D for a single vector, 2-D for a multivector.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import ColQwen2Error, InvalidInputError

# The collection's vectors: what each named vector is, for both engines.
DENSE, MULTIVECTOR = "dense", "multi"


@dataclass(frozen=True)
class VectorSpec:
    size: int
    kind: str  # DENSE or MULTIVECTOR
    distance: str = "cosine"  # "cosine" or "dot"
    hnsw: bool = True  # False: stored for scoring only (m=0), no graph to build
    float16: bool = False  # stored as float16: half the bytes, scores within 1e-3 relative of float32
    quantization: str = "none"  # none | scalar | binary, rescored with the originals on search
    on_disk: bool = False  # the originals memory-mapped from disk instead of held in RAM


@dataclass(frozen=True)
class CollectionSpec:
    vectors: Mapping[str, VectorSpec]
    filter_fields: Mapping[str, str]  # payload field -> keyword | integer | bool, indexed for filters
    metadata: Mapping[str, Any]  # kept with the collection (VisualIndex's schema)
    # Cluster settings (a server honours them; one process has one shard)
    shard_number: int | None = None
    replication_factor: int | None = None
    write_consistency_factor: int | None = None
    on_disk_payload: bool = False


@dataclass
class Record:
    id: str
    payload: dict[str, Any] = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Scored:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class Stage:
    """One candidate search: `vector` against the named vector `using`, `limit` candidates."""

    using: str
    vector: np.ndarray
    limit: int


QUANTIZED_OVERSAMPLING = 2.0  # quantized candidates per result, rescored with the original vectors
HNSW_M, HNSW_EF_CONSTRUCT, HNSW_PAYLOAD_M = 16, 100, 16
FULL_SCAN_KB = 10_000  # below this much vector data (after filtering), search without the graph


class Store(Protocol):
    """What VisualIndex needs of an engine. `where` is a checked filter: {field: value or [any of]}; `quantized`:
    "rescore" (quantized candidates rescored with the originals), "ignore" (the originals only) or "default"."""

    kind: str  # "edge" or "server"

    def metadata(self, collection: str) -> dict[str, Any] | None: ...  # None: no such collection
    def create(self, collection: str, spec: CollectionSpec) -> None: ...
    def retrieve(
        self, collection: str, ids: Sequence[str], payload: bool = True, vectors: Sequence[str] = ()
    ) -> list[Record]: ...
    def upsert(self, collection: str, points: Sequence[Record], wait: bool = True) -> None: ...
    def overwrite_payload(self, collection: str, id: str, payload: dict[str, Any], wait: bool = True) -> None: ...
    def set_payload_where(self, collection: str, where: Mapping[str, Any], payload: dict[str, Any]) -> None: ...
    def delete_ids(self, collection: str, ids: Sequence[str]) -> None: ...
    def delete_where(self, collection: str, where: Mapping[str, Any]) -> None: ...
    def count(self, collection: str, where: Mapping[str, Any] | None = None) -> int: ...
    def ids(self, collection: str) -> Iterator[str]: ...
    def query(
        self,
        collection: str,
        vector: np.ndarray,
        using: str,
        limit: int,
        where: Mapping[str, Any] | None = None,
        prefetch: Sequence[Stage] = (),
        quantized: str = "default",
        ids: Sequence[str] | None = None,  # only these points (and `where`)
    ) -> list[Scored]: ...
    def optimize(self, collection: str) -> bool: ...
    def close(self) -> None: ...


def _list(vector: np.ndarray) -> list:
    return np.asarray(vector, dtype=np.float32).tolist()


def _search_params(api: Any, quantized: str):
    """`quantized` as search parameters of either client (both name the classes and their fields alike)."""
    if quantized == "rescore":
        return api.SearchParams(
            quantization=api.QuantizationSearchParams(rescore=True, oversampling=QUANTIZED_OVERSAMPLING)
        )
    if quantized == "ignore":
        return api.SearchParams(quantization=api.QuantizationSearchParams(ignore=True))
    return None


def _record(point: Any, payload: bool, vectors: Sequence[str]) -> Record:
    """A point of either client as a Record: payload and named vectors as float32 arrays."""
    return Record(
        str(point.id),
        dict(point.payload or {}) if payload else {},
        {n: np.asarray(v, dtype=np.float32) for n, v in (point.vector or {}).items()} if vectors else {},
    )


# -- Qdrant's engine in process --------------------------------------------------------------------

LEGACY_MARKER = "meta.json"  # what qdrant-client's local mode (this project's embedded index before) wrote


class LegacyIndexError(InvalidInputError):
    """The folder holds an index written by qdrant-client's local mode."""


class EdgeStore:
    """Collections in a local folder, on Qdrant's engine in this process."""

    kind = "edge"

    def __init__(self, folder: str | Path, temporary: bool = False, indexing_threshold_kb: int | None = None) -> None:
        import qdrant_edge

        self._edge = qdrant_edge
        self.folder = Path(folder)
        self._temporary = temporary
        self._threshold = indexing_threshold_kb or EDGE_INDEXING_THRESHOLD_KB  # for collections created here
        self.folder.mkdir(parents=True, exist_ok=True)
        self._refuse_legacy()
        self._lock = _lock_folder(self.folder)
        self._shards: dict[str, Any] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    @classmethod
    def in_memory(cls, indexing_threshold_kb: int | None = None) -> EdgeStore:
        """A store in a temporary folder, removed on close (qdrant-edge always keeps files)."""
        return cls(tempfile.mkdtemp(prefix="colqwen2-qdrant-"), True, indexing_threshold_kb)

    def _refuse_legacy(self) -> None:
        meta = self.folder / LEGACY_MARKER
        if not meta.is_file():
            return
        try:
            names = sorted(json.loads(meta.read_text()).get("collections", {}))
        except (OSError, ValueError):
            names = []
        raise LegacyIndexError(
            f"{self.folder} holds an index written by an earlier version (qdrant-client's local mode"
            f"{': ' + ', '.join(names) if names else ''}), which this version does not read. Nothing was changed. "
            f"Copy it into the new engine with `colqwen2 migrate {self.folder} --qdrant-path NEW_FOLDER` (no "
            "re-embedding), or index your catalog again into another folder (--qdrant-path)"
        )

    def _meta_path(self, collection: str) -> Path:
        return self.folder / f"{collection}.colqwen2.json"

    def _shard(self, collection: str):
        if collection not in self._shards:
            path = self.folder / collection
            if not (path / "edge_config.json").exists() and not self._meta_path(collection).exists():
                raise InvalidInputError(f"no collection {collection!r} in {self.folder}")
            self._shards[collection] = self._edge.EdgeShard.load(str(path))
        return self._shards[collection]

    def metadata(self, collection: str) -> dict[str, Any] | None:
        if collection not in self._meta:
            path = self._meta_path(collection)
            if not path.is_file():
                return None
            self._meta[collection] = json.loads(path.read_text())
        return self._meta[collection]

    def create(self, collection: str, spec: CollectionSpec) -> None:
        e = self._edge
        vectors = {}
        for name, v in spec.vectors.items():
            vectors[name] = e.EdgeVectorParams(
                size=v.size,
                distance=e.Distance.Dot if v.distance == "dot" else e.Distance.Cosine,
                multivector_config=e.MultiVectorConfig(e.MultiVectorComparator.MaxSim)
                if v.kind == MULTIVECTOR
                else None,
                datatype=e.VectorStorageDatatype.Float16 if v.float16 else None,
                quantization_config=_edge_quantization(e, v.quantization),
                hnsw_config=e.HnswIndexConfig(
                    m=HNSW_M if v.hnsw else 0,
                    ef_construct=HNSW_EF_CONSTRUCT,
                    full_scan_threshold=FULL_SCAN_KB,
                    payload_m=HNSW_PAYLOAD_M if v.hnsw else None,
                ),
                on_disk=v.on_disk or None,
            )
        config = e.EdgeConfig(
            vectors=vectors,
            on_disk_payload=spec.on_disk_payload,
            optimizers=e.EdgeOptimizersConfig(indexing_threshold=self._threshold),
        )
        path = self.folder / collection
        if path.exists():  # a shard whose schema was never written (killed while creating): nothing in it yet
            shutil.rmtree(path)
        shard = e.EdgeShard.create(str(path), config)
        kinds = {"keyword": e.PayloadSchemaType.Keyword, "integer": e.PayloadSchemaType.Integer,
                 "bool": e.PayloadSchemaType.Bool}  # fmt: skip
        for name, kind in spec.filter_fields.items():
            shard.update(e.UpdateOperation.create_field_index(name, kinds[kind]))
        shard.update(e.UpdateOperation.create_field_index("sha256", e.PayloadSchemaType.Keyword))
        shard.flush()
        self._shards[collection] = shard
        meta = {**spec.metadata, "vectors": sorted(spec.vectors)}
        tmp = self._meta_path(collection).with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
        tmp.replace(self._meta_path(collection))  # the schema last: a collection exists once it is there
        self._meta[collection] = meta

    def retrieve(self, collection, ids, payload=True, vectors=()):
        if not ids:
            return []
        found = self._shard(collection).retrieve(list(ids), payload, list(vectors) if vectors else False)
        return [_record(r, payload, vectors) for r in found]

    def upsert(self, collection, points, wait=True):
        e = self._edge
        shard = self._shard(collection)
        shard.update(
            e.UpdateOperation.upsert_points(
                [e.Point(p.id, {n: _list(v) for n, v in p.vectors.items()}, p.payload) for p in points]
            )
        )
        if wait:
            shard.flush()

    def overwrite_payload(self, collection, id, payload, wait=True):
        shard = self._shard(collection)
        shard.update(self._edge.UpdateOperation.overwrite_payload([id], payload))
        if wait:
            shard.flush()

    def set_payload_where(self, collection, where, payload):
        shard = self._shard(collection)
        shard.update(self._edge.UpdateOperation.set_payload_by_filter(self._filter(where), payload))
        shard.flush()

    def delete_ids(self, collection, ids):
        shard = self._shard(collection)
        shard.update(self._edge.UpdateOperation.delete_points(list(ids)))
        shard.flush()

    def delete_where(self, collection, where):
        shard = self._shard(collection)
        shard.update(self._edge.UpdateOperation.delete_points_by_filter(self._filter(where)))
        shard.flush()

    def count(self, collection, where=None):
        return self._shard(collection).count(self._edge.CountRequest(exact=True, filter=self._filter(where)))

    def ids(self, collection):
        shard, offset = self._shard(collection), None
        while True:
            records, offset = shard.scroll(self._edge.ScrollRequest(offset=offset, limit=1024, with_payload=False))
            yield from (str(r.id) for r in records)
            if offset is None:
                return

    def _filter(self, where, ids=None):
        e = self._edge
        if not where and ids is None:
            return None
        must = [
            e.FieldCondition(name, match=e.MatchAny(value) if isinstance(value, list) else e.MatchValue(value))
            for name, value in (where or {}).items()
        ]
        return e.Filter(must=must + ([e.HasIdCondition(set(ids))] if ids is not None else []))

    def query(self, collection, vector, using, limit, where=None, prefetch=(), quantized="default", ids=None):
        e = self._edge
        flt = self._filter(where, ids)
        params = _search_params(e, quantized)
        prefetches = [
            e.Prefetch(limit=s.limit, query=e.Query.Nearest(_list(s.vector), using=s.using), filter=flt, params=params)
            for s in prefetch
        ]
        request = e.QueryRequest(
            limit=limit, query=e.Query.Nearest(_list(vector), using=using), prefetches=prefetches or None,
            filter=flt, params=params, with_payload=True,
        )  # fmt: skip
        return [
            Scored(str(p.id), float(p.score), dict(p.payload or {})) for p in self._shard(collection).query(request)
        ]

    def optimize(self, collection):
        """Index what waits (HNSW, quantization, vacuum) where Qdrant's optimizers find it due: the appendable
        segment once it holds EDGE_INDEXING_THRESHOLD_KB of vectors (fewer are searched exactly), segments with
        many replaced points. It blocks this process's Python threads until done."""
        shard = self._shard(collection)
        changed = shard.optimize()
        shard.flush()
        return changed

    def optimize_in_child(self, collection: str, tick: Callable[[float], None] | None = None) -> bool:
        """optimize() in a child process, so that this one stays free to show progress (optimize holds the GIL):
        the shard is closed here meanwhile (this process keeps the folder's lock) and reopened on next use."""
        shard = self._shards.pop(collection, None)
        if shard is not None:
            shard.flush()
            shard.close()
        command = [sys.executable, "-m", "colqwen2_client.stores", "optimize", str(self.folder / collection)]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started = time.monotonic()
        while child.poll() is None:
            if tick:
                tick(time.monotonic() - started)
            time.sleep(0.5)
        out, err = child.communicate()
        if child.returncode:
            raise ColQwen2Error(f"building the index in {self.folder / collection} failed: {err.decode()[-500:]}")
        return out.strip() == b"changed"

    def segments(self, collection) -> int:
        return self._shard(collection).info().segments_count

    def close(self) -> None:
        for shard in self._shards.values():
            shard.flush()
            shard.close()
        self._shards.clear()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if self._temporary:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __del__(self) -> None:  # a forgotten close must not keep the folder locked
        try:
            self.close()
        except Exception:
            pass


# New points stay in an appendable segment, searched exactly, until it holds this much vector data; then
# optimize() builds its HNSW and quantization. 20 MB: about 175 items of 450 float16 vectors.
EDGE_INDEXING_THRESHOLD_KB = 20_000


def _edge_quantization(e, kind: str):
    if kind == "none":
        return None
    if kind == "scalar":
        return e.ScalarQuantizationConfig(type=e.ScalarType.Int8, always_ram=True)
    if kind == "binary":
        return e.BinaryQuantizationConfig(always_ram=True)
    raise InvalidInputError(f"quantization must be none, scalar or binary, not {kind!r}")


def _lock_folder(folder: Path):
    """An exclusive lock on the folder for this process's life: two processes writing one shard corrupt it."""
    import fcntl

    handle = open(folder / ".lock", "a+")  # held until close()
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise InvalidInputError(
            f"the index in {folder} is open in {holder}: one process at a time uses a local index (stop it, "
            f"or run a Qdrant server and pass --qdrant-url)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}\n")
    handle.flush()
    return handle


# -- a Qdrant server or cluster -------------------------------------------------------------------------


class ServerStore:
    """Collections on a Qdrant server or cluster through qdrant-client (or its local mode, for tests)."""

    kind = "server"

    def __init__(self, client: Any) -> None:
        from qdrant_client import models

        self.client, self._m = client, models
        self._local = _is_local_mode(client)

    def metadata(self, collection):
        if not self.client.collection_exists(collection):
            return None
        return dict(self.client.get_collection(collection).config.metadata or {})

    def create(self, collection, spec):
        m = self._m
        vectors = {}
        for name, v in spec.vectors.items():
            vectors[name] = m.VectorParams(
                size=v.size,
                distance=m.Distance.DOT if v.distance == "dot" else m.Distance.COSINE,
                multivector_config=m.MultiVectorConfig(comparator=m.MultiVectorComparator.MAX_SIM)
                if v.kind == MULTIVECTOR
                else None,
                hnsw_config=None if v.hnsw else m.HnswConfigDiff(m=0),
                datatype=m.Datatype.FLOAT16 if v.float16 else None,
                quantization_config=server_quantization(v.quantization),
                on_disk=v.on_disk or None,
            )
        self.client.create_collection(
            collection,
            vectors_config=vectors,
            shard_number=spec.shard_number,
            replication_factor=spec.replication_factor,
            write_consistency_factor=spec.write_consistency_factor,
            on_disk_payload=spec.on_disk_payload or None,
            metadata=dict(spec.metadata),
        )
        kinds = {"keyword": m.PayloadSchemaType.KEYWORD, "integer": m.PayloadSchemaType.INTEGER,
                 "bool": m.PayloadSchemaType.BOOL}  # fmt: skip
        with warnings.catch_warnings():  # the local mode (tests) warns that it has no payload indexes
            warnings.simplefilter("ignore", UserWarning)
            for name, kind in spec.filter_fields.items():
                self.client.create_payload_index(collection, name, field_schema=kinds[kind])
            self.client.create_payload_index(collection, "sha256", field_schema=m.PayloadSchemaType.KEYWORD)

    def retrieve(self, collection, ids, payload=True, vectors=()):
        found = []
        for start in range(0, len(ids), 256):
            found += self.client.retrieve(
                collection, ids=list(ids[start : start + 256]), with_payload=payload,
                with_vectors=list(vectors) if vectors else False,
            )  # fmt: skip
        return [_record(p, payload, vectors) for p in found]

    def upsert(self, collection, points, wait=True):
        # Built without pydantic's validation (the arrays have the right shapes by construction): validation
        # and list conversion cost most of a point's CPU time. The local mode stores arrays as given (copies:
        # it normalises a replaced point's arrays in place); a server gets lists.
        as_arrays = self._local
        structs = [
            self._m.PointStruct.model_construct(
                id=p.id,
                vector={n: np.array(v, dtype=np.float32) if as_arrays else _list(v) for n, v in p.vectors.items()},
                payload=p.payload,
            )
            for p in points
        ]
        self.client.upsert(collection, points=structs, wait=wait)

    def overwrite_payload(self, collection, id, payload, wait=True):
        self.client.overwrite_payload(collection, payload=payload, points=[id], wait=wait)

    def set_payload_where(self, collection, where, payload):
        selector = self._m.FilterSelector(filter=self._filter(where))
        self.client.set_payload(collection, payload=payload, points=selector, wait=True)

    def delete_ids(self, collection, ids):
        self.client.delete(collection, points_selector=self._m.PointIdsList(points=list(ids)), wait=True)

    def delete_where(self, collection, where):
        self.client.delete(collection, points_selector=self._m.FilterSelector(filter=self._filter(where)), wait=True)

    def count(self, collection, where=None):
        return self.client.count(collection, count_filter=self._filter(where), exact=True).count

    def ids(self, collection):
        offset = None
        while True:
            points, offset = self.client.scroll(collection, limit=1024, offset=offset, with_payload=False)
            yield from (str(p.id) for p in points)
            if offset is None:
                return

    def _filter(self, where, ids=None):
        m = self._m
        if not where and ids is None:
            return None
        must: list = [
            m.FieldCondition(
                key=name, match=m.MatchAny(any=value) if isinstance(value, list) else m.MatchValue(value=value)
            )
            for name, value in (where or {}).items()
        ]
        return m.Filter(must=must + ([m.HasIdCondition(has_id=list(ids))] if ids is not None else []))

    def query(self, collection, vector, using, limit, where=None, prefetch=(), quantized="default", ids=None):
        m = self._m
        flt = self._filter(where, ids)
        params = _search_params(m, quantized)
        stages = [m.Prefetch(query=_list(s.vector), using=s.using, limit=s.limit, filter=flt, params=params)
                  for s in prefetch]  # fmt: skip
        with warnings.catch_warnings():  # the local mode (tests) warns that it searches exactly, params or not
            warnings.simplefilter("ignore", UserWarning)
            result = self.client.query_points(
                collection, prefetch=stages or None, query=_list(vector), using=using, limit=limit,
                query_filter=flt, search_params=params, with_payload=True,
            )  # fmt: skip
        return [Scored(str(p.id), float(p.score), dict(p.payload or {})) for p in result.points]

    def optimize(self, collection):
        return False  # a server's optimizers run by themselves

    def close(self):
        self.client.close()


def server_quantization(kind: str):
    """A vector's quantization for a Qdrant server (kept in RAM; searches rescore with the originals)."""
    from qdrant_client import models

    if kind == "none":
        return None
    if kind == "scalar":
        return models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, always_ram=True)
        )
    if kind == "binary":
        return models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=True))
    raise InvalidInputError(f"quantization must be none, scalar or binary, not {kind!r}")


def _is_local_mode(client: Any) -> bool:
    try:
        from qdrant_client.local.qdrant_local import QdrantLocal
    except ImportError:
        return False
    return isinstance(getattr(client, "_client", None), QdrantLocal)


def open_store(path: str | Path | None = None, url: str | None = None, api_key: str | None = None) -> Store:
    """A Qdrant server at `url`, else Qdrant's engine in the folder `path` (":memory:": a temporary folder;
    default: the per-user folder, $COLQWEN2_QDRANT_PATH or ~/.local/share/colqwen2/qdrant)."""
    from ._paths import default_qdrant_path

    if url:
        try:
            from qdrant_client import QdrantClient
        except ImportError:
            raise ImportError("a Qdrant server needs the extra: pip install 'colqwen2-client[qdrant]'") from None
        return ServerStore(QdrantClient(url=url, api_key=api_key))
    try:
        import qdrant_edge  # noqa: F401
    except ImportError:
        raise ImportError("a local index needs the extra: pip install 'colqwen2-client[qdrant]'") from None
    if str(path) == ":memory:":
        return EdgeStore.in_memory()
    return EdgeStore(Path(path) if path else Path(default_qdrant_path()))


def _optimize_shard(path: str) -> None:
    """The child of `EdgeStore.optimize_in_child`: its parent holds the folder's lock and has closed the shard."""
    import qdrant_edge

    shard = qdrant_edge.EdgeShard.load(path)
    changed = shard.optimize()
    shard.flush()
    shard.close()
    print("changed" if changed else "unchanged")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "optimize":
        sys.exit("usage: python -m colqwen2_client.stores optimize SHARD_FOLDER")
    _optimize_shard(sys.argv[2])
