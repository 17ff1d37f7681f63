"""Run a batch of Triton requests through an encoder graph and shape each request's answer.

Triton's dynamic batcher hands a Python model a list of requests, each with one or more items of
its own size. A runner checks each request on its own (a malformed one fails alone), pools the
items of all valid requests, groups them into ONNX Runtime calls of similar size within a token
budget (`feeds.plan_calls`), and answers every request in order. If a call fails, its items are
retried one by one, so one bad item cannot fail its neighbours.

- `VisionRunner`: PATCHES uint8 [n, N, 588] + GRID int32 [n, 2] -> VISUAL float32 [n, V, hidden]
  (each image's visual features, zero rows after its own rows * cols).
- `TextRunner`: INPUT_IDS / ATTENTION_MASK int64 [n, T] (left padded), and for image prompts
  VISUAL + GRID -> the service's three outputs: EMBEDDINGS [n, rows, 128] (valid vectors first,
  zero rows after), NUM_VECTORS [n, 1], POOLED [n, 128] (the mean of the valid vectors,
  L2-normalised).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .feeds import ImageItem, TextItem, plan_calls, split_text, split_visual, text_feed, vision_feed
from .grid import PATCH_VALUES, PATCHES_PER_TOKEN

log = logging.getLogger(__name__)

EMBEDDING_DIM = 128


@dataclass(frozen=True)
class Embedded:
    """One request's outputs."""

    embeddings: np.ndarray  # float32 [n, rows, 128]
    num_vectors: np.ndarray  # int32 [n, 1]
    pooled: np.ndarray  # float32 [n, 128]


def pooled_vectors(vectors: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean of each item's first `count` vectors, L2-normalised: float32 [n, 128]."""
    rows = np.arange(vectors.shape[1])[None, :, None] < counts[:, None, None]
    mean = (vectors * rows).sum(axis=1) / np.maximum(counts, 1)[:, None]
    norm = np.linalg.norm(mean, axis=1, keepdims=True)
    return (mean / np.maximum(norm, 1e-12)).astype(np.float32)


def pad_rows(rows: Sequence[np.ndarray], width: int, dtype=np.float32) -> np.ndarray:
    """Per-item arrays [len_i, width] -> [n, max len, width], zero after each item's rows."""
    out = np.zeros((len(rows), max(len(r) for r in rows), width), dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def pack(rows: Sequence[np.ndarray]) -> Embedded:
    """Per-item vectors of different lengths -> one request's padded outputs."""
    counts = np.array([len(r) for r in rows], dtype=np.int32)
    out = pad_rows(rows, EMBEDDING_DIM)
    return Embedded(out, counts[:, None], pooled_vectors(out, counts))


@dataclass(frozen=True)
class Budget:
    """What one ONNX Runtime call may hold: padded size (items x longest, in patches or tokens) and items."""

    size: int
    items: int = 0  # 0: no limit beyond `size`


def run_calls(items: Sequence, costs: Sequence[int], budget: Budget, call: Callable[[list], list]) -> list:
    """`call` over budget-bounded groups of items; per item its result, or the exception it raised alone."""
    results: list = [None] * len(items)
    for group in plan_calls(costs, budget.size, budget.items):
        try:
            outputs = call([items[i] for i in group])
        except Exception as exc:
            if len(group) == 1:
                log.warning("encoder call failed: %s", exc)
                results[group[0]] = exc
                continue
            log.warning("encoder call over %d items failed (%s); retrying one by one", len(group), exc)
            outputs = []
            for i in group:
                try:
                    outputs.extend(call([items[i]]))
                except Exception as single:
                    outputs.append(single)
        for i, out in zip(group, outputs, strict=True):
            results[i] = out
    return results


def answer(requests: Sequence, check: Callable, split: Callable, results_for: Callable, assemble: Callable) -> list:
    """Refuse malformed requests one by one, run the items of the rest together, answer in request order.

    `split(request)` -> the request's items; `results_for(items)` -> one result (or exception) per
    item; `assemble(results)` -> the request's answer. A request with a failed item fails with it.
    """
    answers: list = [check(r) for r in requests]
    owners: list[int] = []
    items: list = []
    for r, request in enumerate(requests):
        if answers[r] is None:
            parts = split(request)
            owners += [r] * len(parts)
            items += parts
    results = results_for(items) if items else []
    by_request: dict[int, list] = {}
    for owner, result in zip(owners, results, strict=True):
        by_request.setdefault(owner, []).append(result)
    for r, got in by_request.items():
        failed = next((x for x in got if isinstance(x, Exception)), None)
        if failed is not None:
            answers[r] = failed if len(got) == 1 else type(failed)(f"item {got.index(failed)}: {failed}")
        else:
            answers[r] = assemble(got)
    return answers


class VisionRunner:
    """(PATCHES [n, N, 588] uint8, GRID [n, 2] int32) per request -> VISUAL [n, V, hidden] float32 per request."""

    def __init__(self, session, hidden: int, budget: Budget) -> None:
        self.session = session
        self.hidden = hidden
        self.budget = budget

    @staticmethod
    def check(request: tuple[np.ndarray, np.ndarray]) -> InputError | None:
        patches, grids = request
        if patches.dtype != np.uint8 or patches.ndim != 3 or patches.shape[2] != PATCH_VALUES:
            return InputError(
                f"PATCHES must be uint8 [n, N, {PATCH_VALUES}], got {patches.dtype} {list(patches.shape)}"
            )
        if grids.ndim != 2 or grids.shape != (patches.shape[0], 2) or (grids < 1).any():
            return InputError(f"GRID must be [n, 2] positive (rows, cols) for {patches.shape[0]} images, got {grids}")
        needed = int((grids[:, 0] * grids[:, 1]).max()) * PATCHES_PER_TOKEN
        if needed > patches.shape[1]:
            return InputError(f"GRID {grids.tolist()} needs {needed} patches, PATCHES holds {patches.shape[1]}")
        return None

    @staticmethod
    def items(request: tuple[np.ndarray, np.ndarray]) -> list[ImageItem]:
        patches, grids = request
        out = []
        for p, (rows, cols) in zip(patches, grids.tolist(), strict=True):
            out.append(ImageItem(p[: rows * cols * PATCHES_PER_TOKEN], (rows, cols)))
        return out

    def _call(self, items: list[ImageItem]) -> list[np.ndarray]:
        features = self.session.run(None, vision_feed(items))[0]
        return [f.astype(np.float32, copy=False) for f in split_visual(features, items)]

    def visual_features(self, items: Sequence[ImageItem]) -> list:
        return run_calls(items, [item.n_patches for item in items], self.budget, self._call)

    def run(self, requests: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray | Exception]:
        return answer(requests, self.check, self.items, self.visual_features, lambda rows: pad_rows(rows, self.hidden))


TextRequest = tuple[np.ndarray, np.ndarray, "np.ndarray | None", "np.ndarray | None"]  # ids, mask, visual, grid


class TextRunner:
    """Queries and image prompts, per request -> Embedded per request."""

    def __init__(self, session, pad_id: int, image_token_id: int, hidden: int, budget: Budget) -> None:
        self.session = session
        self.pad_id = pad_id
        self.image_token_id = image_token_id
        self.hidden = hidden
        self.budget = budget

    def check(self, request: TextRequest) -> InputError | None:
        ids, mask, visual, grids = request
        if ids.shape != mask.shape or ids.ndim != 2:
            return InputError(f"INPUT_IDS {list(ids.shape)} and ATTENTION_MASK {list(mask.shape)} must both be [n, T]")
        if not np.isin(mask, (0, 1)).all() or (np.diff(mask, axis=1) < 0).any():
            return InputError("ATTENTION_MASK must be 0/1 with padding on the left (as the preprocess model emits)")
        if (mask.sum(axis=1) == 0).any():
            return InputError("a sequence has no tokens")
        if (visual is None) != (grids is None):
            return InputError("VISUAL and GRID come together (an image prompt) or not at all (a query)")
        if visual is not None and grids is not None:
            n = ids.shape[0]
            if visual.ndim != 3 or visual.shape[0] != n or visual.shape[2] != self.hidden or grids.shape != (n, 2):
                return InputError(
                    f"VISUAL must be [{n}, V, {self.hidden}] and GRID [{n}, 2], got {list(visual.shape)}, "
                    f"{list(grids.shape)}"
                )
            tokens = ((ids == self.image_token_id) & (mask == 1)).sum(axis=1)
            if (tokens != grids[:, 0] * grids[:, 1]).any() or (tokens > visual.shape[1]).any():
                return InputError(f"image prompts hold {tokens.tolist()} image tokens for grids {grids.tolist()}")
        return None

    @staticmethod
    def items(request: TextRequest) -> list[TextItem]:
        ids, mask, visual, grids = request
        out = []
        for i in range(ids.shape[0]):
            row = ids[i][mask[i] == 1]
            if grids is None or visual is None:
                out.append(TextItem(row))
            else:
                rows, cols = (int(x) for x in grids[i])
                out.append(TextItem(row, visual[i, : rows * cols], (rows, cols)))
        return out

    def _call(self, items: list[TextItem]) -> list[np.ndarray]:
        feeds = text_feed(items, self.pad_id, self.image_token_id, self.hidden)
        vectors = self.session.run(None, feeds)[0]
        return [v.astype(np.float32, copy=False) for v in split_text(vectors, items)]

    def vectors(self, items: Sequence[TextItem]) -> list:
        return run_calls(items, [len(item.input_ids) for item in items], self.budget, self._call)

    def run(self, requests: Sequence[TextRequest]) -> list[Embedded | Exception]:
        return answer(requests, self.check, self.items, self.vectors, pack)


def vision_profile(budget: Budget, max_visual_tokens: int) -> tuple:
    """TensorRT shape range of the vision graph: up to `budget.items` images of up to the token cap."""
    longest = max_visual_tokens * PATCHES_PER_TOKEN
    images = budget.items or max(1, budget.size // longest)
    opt = (1, min(longest, 1024))
    return tuple(
        (name, (1, PATCHES_PER_TOKEN, *tail), (*opt, *tail), (images, longest, *tail))
        for name, tail in (("patches", (PATCH_VALUES,)), ("patch_positions", (2,)), ("patch_mask", ()))
    )


def text_profile(budget: Budget, longest: int, hidden: int) -> tuple:
    """TensorRT shape range of the text graph: up to `budget.items` sequences of up to `longest` tokens."""
    batch = budget.items or max(1, budget.size // longest)
    rows = max(budget.size, longest)
    per_token = [(name, ()) for name in ("input_ids", "attention_mask", "visual_index")]
    shapes = [(name, (1, 1), (1, 32), (batch, longest)) for name, _ in per_token]
    shapes.append(("position_ids", (3, 1, 1), (3, 1, 32), (3, batch, longest)))
    shapes.append(("visual_features", (1, hidden), (256, hidden), (rows, hidden)))
    return tuple(shapes)


def vision_runner(params, instance_args: dict[str, str]) -> VisionRunner:
    """A VisionRunner configured by its Triton model's parameters (sessions: TensorRT, CUDA or CPU)."""
    from .sessions import session_from_parameters

    budget = Budget(params.integer("max_session_patches"), params.integer("max_session_images", 0))
    profile = vision_profile(budget, params.integer("max_visual_tokens"))
    session = session_from_parameters(params, instance_args, profile)
    return VisionRunner(session, params.integer("hidden_size"), budget)


def text_runner(params, instance_args: dict[str, str]) -> TextRunner:
    """A TextRunner configured by its Triton model's parameters."""
    from .sessions import session_from_parameters

    budget = Budget(params.integer("max_session_tokens"), params.integer("max_session_sequences", 0))
    hidden = params.integer("hidden_size")
    longest = max(params.integer("max_query_tokens"), params.integer("max_prompt_tokens"))
    session = session_from_parameters(params, instance_args, text_profile(budget, longest, hidden))
    return TextRunner(session, params.integer("pad_token_id"), params.integer("image_token_id"), hidden, budget)
