"""Index images into Qdrant and search them by text or image (`pip install colqwen2-client[qdrant]`).

The collection `visual_embeddings` holds, per image, the original service's single vector
(`pooled`, HNSW-indexed, for a fast first stage) and all of ColQwen2's vectors (`colqwen2`, a
MAX_SIM multivector without HNSW, used only to rerank): the pattern Qdrant recommends for
ColPali-style models. Point ids derive from the image's bytes, so re-indexing adds nothing and
an interrupted run resumes where it stopped. Qdrant runs embedded (a local folder) by default.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._base import progress_callback
from .client import ColQwen2Client
from .errors import ColQwen2Error
from .inputs import ImageInput, image_bytes
from .token_pooling import pool_tokens
from .types import Embedding

COLLECTION = "visual_embeddings"
POOLED, MULTI = "pooled", "colqwen2"


@dataclass(frozen=True)
class IndexSettings:
    collection: str = COLLECTION
    quantization: Literal["none", "scalar", "binary"] = "none"  # on the stored vectors, rescored on search
    pool_factor: int = 1  # hierarchical token pooling of image vectors at index time; 1 = off
    oversampling: int = 10  # first stage keeps limit x oversampling candidates by `pooled`
    upsert_batch: int = 32


@dataclass
class IndexReport:
    indexed: int = 0
    skipped: int = 0  # already in the collection (same bytes)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, error)
    stored_vectors: int = 0
    raw_vectors: int = 0  # before token pooling


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


def point_id(data: bytes) -> str:
    """A UUID from the content hash: the same image always lands on the same point."""
    return str(uuid.UUID(bytes=hashlib.sha256(data).digest()[:16]))


def open_qdrant(path: str | Path | None = "qdrant_data", url: str | None = None, api_key: str | None = None):
    """A Qdrant server at `url`, or embedded Qdrant in the folder `path` (":memory:" for none)."""
    try:
        from qdrant_client import QdrantClient
    except ImportError:
        raise ImportError("Qdrant support needs the extra: pip install 'colqwen2-client[qdrant]'") from None
    if url:
        return QdrantClient(url=url, api_key=api_key)
    if str(path) == ":memory:":
        return QdrantClient(location=":memory:")
    return QdrantClient(path=str(path))


class VisualIndex:
    def __init__(self, embedder: ColQwen2Client, qdrant: Any, settings: IndexSettings | None = None) -> None:
        self.embedder, self.qdrant = embedder, qdrant
        self.settings = settings or IndexSettings()

    def ensure_collection(self) -> None:
        from qdrant_client import models

        if self.qdrant.collection_exists(self.settings.collection):
            return
        quantization = {
            "none": None,
            "scalar": models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, always_ram=True)
            ),
            "binary": models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=True)),
        }[self.settings.quantization]
        self.qdrant.create_collection(
            self.settings.collection,
            vectors_config={
                POOLED: models.VectorParams(size=128, distance=models.Distance.COSINE),
                MULTI: models.VectorParams(
                    size=128,
                    distance=models.Distance.COSINE,
                    multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM),
                    hnsw_config=models.HnswConfigDiff(m=0),  # rerank only: no graph to build
                ),
            },
            quantization_config=quantization,
        )

    def count(self) -> int:
        if not self.qdrant.collection_exists(self.settings.collection):
            return 0
        return self.qdrant.count(self.settings.collection, exact=True).count

    def _existing(self, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        found = self.qdrant.retrieve(self.settings.collection, ids=ids, with_payload=False, with_vectors=False)
        return {str(p.id) for p in found}

    def index(
        self,
        images: Sequence[ImageInput],
        payloads: Sequence[dict[str, Any]] | None = None,
        progress: bool | Callable[[int, int], None] | None = None,
        chunk: int = 64,
    ) -> IndexReport:
        """Embed and upsert images not yet in the collection; payloads get source, kind, size, bytes."""
        from qdrant_client import models

        self.ensure_collection()
        report = IndexReport()
        bar = progress_callback(progress)
        payloads = list(payloads) if payloads is not None else [{} for _ in images]
        for start in range(0, len(images), chunk):
            part = list(range(start, min(start + chunk, len(images))))
            data: dict[int, bytes] = {}
            for i in part:
                try:
                    data[i] = image_bytes(images[i])
                except ColQwen2Error as exc:
                    report.failed.append((_source(images[i], payloads[i]), str(exc)))
            ids = {i: point_id(d) for i, d in data.items()}
            existing = self._existing(list(ids.values()))
            todo = [i for i in data if ids[i] not in existing]
            report.skipped += len(data) - len(todo)
            embedded = self.embedder.embed_batch([data[i] for i in todo], return_exceptions=True)
            points = []
            for i, result in zip(todo, embedded, strict=True):
                if isinstance(result, Exception):
                    report.failed.append((_source(images[i], payloads[i]), str(result)))
                    continue
                stored = pool_tokens(result.vectors, self.settings.pool_factor)
                report.raw_vectors += result.num_vectors
                report.stored_vectors += len(stored)
                payload = {"source": _source(images[i], payloads[i]), "bytes": len(data[i]), **payloads[i]}
                payload.setdefault("kind", "image")
                if "size" not in payload:
                    payload["size"] = _size(data[i])
                points.append(
                    models.PointStruct(
                        id=ids[i], vector={POOLED: result.pooled.tolist(), MULTI: stored.tolist()}, payload=payload
                    )
                )
            for b in range(0, len(points), self.settings.upsert_batch):
                self.qdrant.upsert(self.settings.collection, points=points[b : b + self.settings.upsert_batch])
            report.indexed += len(points)
            if bar:
                bar(min(start + chunk, len(images)), len(images))
        return report

    def search(self, text: str | None = None, image: ImageInput | None = None, limit: int = 10) -> list[Hit]:
        """Text or image query: first stage on `pooled` (limit x oversampling), rerank by MaxSim on `colqwen2`."""
        if (text is None) == (image is None):
            raise ValueError("search needs exactly one of text= or image=")
        query = self.embedder.embed_query(text) if text is not None else self.embedder.embed(image)
        return self.search_embedding(query, limit)

    def search_embedding(self, query: Embedding, limit: int = 10) -> list[Hit]:
        from qdrant_client import models

        result = self.qdrant.query_points(
            self.settings.collection,
            prefetch=models.Prefetch(
                query=query.pooled.tolist(), using=POOLED, limit=limit * self.settings.oversampling
            ),
            query=query.vectors.tolist(),
            using=MULTI,
            limit=limit,
            with_payload=True,
        )
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in result.points]

    def stored_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The `colqwen2` multivectors as stored (after any token pooling), by point id."""
        points = self.qdrant.retrieve(self.settings.collection, ids=list(ids), with_vectors=[MULTI])
        return {str(p.id): np.asarray(p.vector[MULTI], dtype=np.float32) for p in points}


def _source(image: ImageInput, payload: dict[str, Any]) -> str:
    if "source" in payload:
        return str(payload["source"])
    if isinstance(image, (str, Path)) and len(str(image)) < 4096 and Path(image).exists():
        return str(image)
    return "<in-memory image>"


def _size(data: bytes) -> list[int] | None:
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:  # header only
            return [img.width, img.height]
    except Exception:
        return None
