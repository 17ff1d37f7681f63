"""Run a batch of Triton requests through an exported encoder and shape each request's answer.

Triton's dynamic batcher hands the Python backend a list of requests; here they become one ONNX
Runtime call. If that call fails, each request is retried alone so that one bad request cannot
fail its neighbours. Every request gets back the service's three outputs:
`embeddings` [n, rows, 128] (valid vectors first, zero rows after), `num_vectors` [n, 1] and
`pooled` [n, 128] (the mean of the valid vectors, L2-normalised).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .queries import left_pad

log = logging.getLogger(__name__)

EMBEDDING_DIM = 128
IMAGE_INPUT = "pixel_values"  # names fixed by export/spec.py
QUERY_INPUTS = ("input_ids", "attention_mask")


@dataclass(frozen=True)
class Embedded:
    """One request's outputs."""

    embeddings: np.ndarray  # float32 [n, rows, 128]
    num_vectors: np.ndarray  # int32 [n, 1]
    pooled: np.ndarray  # float32 [n, 128]


Result = Embedded | Exception


def pooled_vectors(vectors: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean of each item's first `count` vectors, L2-normalised: float32 [n, 128]."""
    rows = np.arange(vectors.shape[1])[None, :, None] < counts[:, None, None]
    mean = (vectors * rows).sum(axis=1) / np.maximum(counts, 1)[:, None]
    norm = np.linalg.norm(mean, axis=1, keepdims=True)
    return (mean / np.maximum(norm, 1e-12)).astype(np.float32)


def pack(rows: Sequence[np.ndarray]) -> Embedded:
    """Per-item vectors of different lengths -> one request's padded outputs."""
    counts = np.array([len(r) for r in rows], dtype=np.int32)
    out = np.zeros((len(rows), int(counts.max()), EMBEDDING_DIM), dtype=np.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return Embedded(out, counts[:, None], pooled_vectors(out, counts))


def run_isolated(items: Sequence, run: Callable[[list], list[Result]]) -> list[Result]:
    """`run` over all items at once; if it raises, over each item alone, keeping the failures per item."""
    try:
        return run(list(items))
    except Exception as exc:
        if len(items) == 1:
            log.warning("encoder run failed: %s", exc)
            return [exc]
        log.warning("batched encoder run of %d requests failed (%s); retrying one by one", len(items), exc)
    results: list[Result] = []
    for item in items:
        try:
            results.extend(run([item]))
        except Exception as exc:
            results.append(exc)
    return results


class ImageEncoder:
    """uint8 pixels [n, S, S, 3] per request -> Embedded per request."""

    def __init__(self, session, image_size: int, max_session_batch: int = 0) -> None:
        self.session = session
        self.image_size = image_size
        # Triton may hand over 32 images at once; on a CPU, attention over 1024 patches for all of
        # them at once costs gigabytes and no speed, so the session sees at most this many (0: all).
        self.max_session_batch = max_session_batch

    def check(self, pixels: np.ndarray) -> InputError | None:
        s = self.image_size
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (s, s, 3):
            return InputError(f"PIXEL_VALUES must be uint8 [n, {s}, {s}, 3], got {pixels.dtype} {list(pixels.shape)}")
        return None

    def _vectors(self, pixels: np.ndarray) -> np.ndarray:
        step = self.max_session_batch or len(pixels)
        parts = [self.session.run(None, {IMAGE_INPUT: pixels[i : i + step]})[0] for i in range(0, len(pixels), step)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _run(self, batch: list[np.ndarray]) -> list[Result]:
        vectors = self._vectors(np.concatenate(batch))
        results: list[Result] = []
        start = 0
        for pixels in batch:
            part = vectors[start : start + len(pixels)]
            start += len(pixels)
            counts = np.full(len(part), part.shape[1], dtype=np.int32)
            results.append(Embedded(part, counts[:, None], pooled_vectors(part, counts)))
        return results

    def embed(self, requests: Sequence[np.ndarray]) -> list[Result]:
        return _embed_valid(requests, self.check, self._run)


class QueryEncoder:
    """(input_ids, attention_mask) int64 [n, T] per request, T free per request -> Embedded per request."""

    def __init__(self, session, pad_id: int) -> None:
        self.session = session
        self.pad_id = pad_id

    @staticmethod
    def check(request: tuple[np.ndarray, np.ndarray]) -> InputError | None:
        ids, mask = request
        if ids.shape != mask.shape or ids.ndim != 2:
            return InputError(f"INPUT_IDS {list(ids.shape)} and ATTENTION_MASK {list(mask.shape)} must both be [n, T]")
        if not np.isin(mask, (0, 1)).all() or (np.diff(mask, axis=1) < 0).any():
            return InputError("ATTENTION_MASK must be 0/1 with padding on the left (as the preprocess model emits)")
        if (mask.sum(axis=1) == 0).any():
            return InputError("a query has no tokens")
        return None

    def _run(self, batch: list[tuple[np.ndarray, np.ndarray]]) -> list[Result]:
        # Re-pad every query to the longest in the whole batch (left padding keeps positions intact).
        rows = [ids[i][mask[i] == 1] for ids, mask in batch for i in range(len(ids))]
        ids, mask = left_pad(rows, self.pad_id)
        vectors = self.session.run(None, {QUERY_INPUTS[0]: ids, QUERY_INPUTS[1]: mask})[0].astype(np.float32)
        longest = ids.shape[1]
        per_row = [vectors[i, longest - len(r) :] for i, r in enumerate(rows)]
        results: list[Result] = []
        start = 0
        for request_ids, _ in batch:
            results.append(pack(per_row[start : start + len(request_ids)]))
            start += len(request_ids)
        return results

    def embed(self, requests: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[Result]:
        return _embed_valid(requests, self.check, self._run)


def _embed_valid(requests: Sequence, check: Callable, run: Callable[[list], list[Result]]) -> list[Result]:
    """Refuse malformed requests individually, run the rest together, answer in request order."""
    results: list[Result | None] = [check(r) for r in requests]
    valid = [i for i, r in enumerate(results) if r is None]
    if valid:
        for i, result in zip(valid, run_isolated([requests[i] for i in valid], run), strict=True):
            results[i] = result
    return results  # type: ignore[return-value]
