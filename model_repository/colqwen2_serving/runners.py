"""Run a batch of Triton requests through the encoder graphs and shape each request's answer.

Triton's dynamic batcher hands a Python model a list of requests, each with one or more items of
its own size. A runner checks each request on its own (a malformed one fails alone), pools the
items of all valid requests, groups them into ONNX Runtime calls of similar size within a token
budget (`feeds.plan_calls`), and answers every request in order. If a call fails, its items are
retried one by one, so one bad item cannot fail its neighbours.

- `VisionRunner`: images (PATCHES uint8 [n, N, 588] + GRID int32 [n, 2]) -> each image's visual
  features [rows * cols, hidden].
- `TextRunner`: token sequences (queries, or image prompts with their visual features) -> vectors.
- `EncoderRunner`, what the `colqwen2_encoder_<variant>` model runs: image requests (INPUT_IDS /
  ATTENTION_MASK of the image prompt, PATCHES, GRID) through the vision graph and then the text
  graph, query requests (INPUT_IDS / ATTENTION_MASK) through the text graph, the text calls shared
  by both -> the service's three outputs: EMBEDDINGS [n, rows, 128] (valid vectors first, zero rows
  after), NUM_VECTORS [n, 1], POOLED [n, 128] (the mean of the valid vectors, L2-normalised).
  Both graphs live in one process: the language tower's weights and the runtime (a CUDA context
  on a GPU) are paid once, and visual features never cross a process boundary.
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


def pack(rows: Sequence[np.ndarray]) -> Embedded:
    """Per-item vectors of different lengths -> one request's padded outputs (as wide as the model's vectors)."""
    counts = np.array([len(r) for r in rows], dtype=np.int32)
    out = np.zeros((len(rows), int(counts.max()), rows[0].shape[-1]), dtype=np.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return Embedded(out, counts[:, None], pooled_vectors(out, counts))


@dataclass(frozen=True)
class Budget:
    """What one ONNX Runtime call may hold: padded size (items x longest, in patches or tokens) and items."""

    size: int
    items: int = 0  # 0: no limit beyond `size`
    padding: float | None = None  # most padding per call, a fraction of its items' own size (None: any)


def run_calls(items: Sequence, costs: Sequence[int], budget: Budget, call: Callable[[list], list]) -> list:
    """`call` over budget-bounded groups of items; per item its result, or the exception it raised alone."""
    results: list = [None] * len(items)
    for group in plan_calls(costs, budget.size, budget.items, budget.padding):
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


class VisionRunner:
    """Images of any grids -> each image's visual features, in budgeted calls grouped by size."""

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
        """Each image's visual features [rows * cols, hidden], or the exception its call raised."""
        return run_calls(items, [item.n_patches for item in items], self.budget, self._call)


class TextRunner:
    """Token sequences (queries, or image prompts with their visual features) -> vectors per sequence."""

    def __init__(self, session, pad_id: int, image_token_id: int, hidden: int, budget: Budget) -> None:
        self.session = session
        self.pad_id = pad_id
        self.image_token_id = image_token_id
        self.hidden = hidden
        self.budget = budget

    def _call(self, items: list[TextItem]) -> list[np.ndarray]:
        feeds = text_feed(items, self.pad_id, self.image_token_id, self.hidden)
        vectors = self.session.run(None, feeds)[0]
        return [v.astype(np.float32, copy=False) for v in split_text(vectors, items)]

    def vectors(self, items: Sequence[TextItem]) -> list:
        return run_calls(items, [len(item.input_ids) for item in items], self.budget, self._call)


EncoderRequest = tuple[np.ndarray, np.ndarray, "np.ndarray | None", "np.ndarray | None"]  # ids, mask, patches, grid


class EncoderRunner:
    """Image and query requests -> Embedded per request (see the module docstring)."""

    def __init__(
        self, vision: VisionRunner, text: TextRunner, max_visual_tokens: int = 0, answer_every: int = 0
    ) -> None:
        self.vision = vision
        self.text = text
        self.max_visual_tokens = max_visual_tokens  # per image (0: no limit): the TensorRT profile's and memory's
        self.answer_every = answer_every  # images per wave (0: the whole batch): see `waves`
        self.provider = "cpu"  # the ONNX Runtime provider the sessions really run on (reported to health checks)

    def check(self, request: EncoderRequest) -> InputError | None:
        ids, mask, patches, grids = request
        if ids.shape != mask.shape or ids.ndim != 2:
            return InputError(f"INPUT_IDS {list(ids.shape)} and ATTENTION_MASK {list(mask.shape)} must both be [n, T]")
        if not np.isin(mask, (0, 1)).all() or (np.diff(mask, axis=1) < 0).any():
            return InputError("ATTENTION_MASK must be 0/1 with padding on the left (as the preprocess model emits)")
        if (mask.sum(axis=1) == 0).any():
            return InputError("a sequence has no tokens")
        if (patches is None) != (grids is None):
            return InputError("PATCHES and GRID come together (an image) or not at all (a query)")
        if patches is None or grids is None:
            return None
        problem = VisionRunner.check((patches, grids))
        if problem is not None:
            return problem
        if self.max_visual_tokens and (grids[:, 0] * grids[:, 1] > self.max_visual_tokens).any():
            return InputError(f"GRID {grids.tolist()} is over the limit of {self.max_visual_tokens} visual tokens")
        tokens = ((ids == self.text.image_token_id) & (mask == 1)).sum(axis=1)
        if grids.shape[0] != ids.shape[0] or (tokens != grids[:, 0] * grids[:, 1]).any():
            return InputError(f"image prompts hold {tokens.tolist()} image tokens for grids {grids.tolist()}")
        return None

    def waves(self, requests: Sequence[EncoderRequest]) -> list[list[int]]:
        """Which requests run together and are answered together, in order: all of them (their items share
        calls), or with `answer_every` n the queries together first (milliseconds), then the image requests in
        arrival order, n images a wave: an image then waits for the work admitted before it and at most n - 1
        images after it, not for its whole batch (`budgets.ANSWER_EVERY`)."""
        if not self.answer_every:
            return [list(range(len(requests)))] if requests else []
        queries = [i for i, r in enumerate(requests) if r[2] is None]
        waves: list[list[int]] = []
        images = self.answer_every  # the first image opens a wave
        for i, request in enumerate(requests):
            if request[2] is None:
                continue
            if images >= self.answer_every:
                waves.append([])
                images = 0
            waves[-1].append(i)
            images += len(request[2])
        return ([queries] if queries else []) + waves

    def run(self, requests: Sequence[EncoderRequest]) -> list[Embedded | Exception]:
        answers: list = [self.check(r) for r in requests]
        valid = [r for r in range(len(requests)) if answers[r] is None]
        rows = {r: [ids[mask == 1] for ids, mask in zip(requests[r][0], requests[r][1], strict=True)] for r in valid}
        images = {r: VisionRunner.items((requests[r][2], requests[r][3])) for r in valid if requests[r][2] is not None}
        flat = [(r, k) for r in images for k in range(len(images[r]))]
        visual = dict(zip(flat, self.vision.visual_features([images[r][k] for r, k in flat]), strict=True))
        owners, items = [], []
        for r in valid:
            for k, row in enumerate(rows[r]):
                features = visual.get((r, k))
                if isinstance(features, Exception):
                    answers[r] = _item_error(features, k, len(rows[r]))
                    break
                item = TextItem(row) if features is None else TextItem(row, features, images[r][k].grid)
                owners.append((r, k))
                items.append(item)
        results = self.text.vectors(items) if items else []
        by_request: dict[int, list] = {}
        for (r, k), result in zip(owners, results, strict=True):
            by_request.setdefault(r, []).append((k, result))
        for r, got in by_request.items():
            if answers[r] is not None:
                continue  # its image already failed in the vision graph
            failed = next(((k, x) for k, x in got if isinstance(x, Exception)), None)
            answers[r] = _item_error(failed[1], failed[0], len(got)) if failed else pack([x for _, x in got])
        return answers


def _item_error(error: Exception, index: int, count: int) -> Exception:
    return error if count == 1 else type(error)(f"item {index}: {error}")


def bounded(budget: Budget, longest: int) -> Budget:
    """`budget` with its item count set: as given, or (0) as many of the longest items as its size holds."""
    return budget if budget.items else Budget(budget.size, max(1, budget.size // longest), budget.padding)


def vision_profile(budget: Budget, max_visual_tokens: int) -> tuple:
    """TensorRT shape range of the vision graph: up to `budget.items` images of up to the token cap."""
    longest = max_visual_tokens * PATCHES_PER_TOKEN
    images = bounded(budget, longest).items
    opt = (1, min(longest, 1024))
    return tuple(
        (name, (1, PATCHES_PER_TOKEN, *tail), (*opt, *tail), (images, longest, *tail))
        for name, tail in (("patches", (PATCH_VALUES,)), ("patch_positions", (2,)), ("patch_mask", ()))
    )


def text_profile(budget: Budget, longest: int, hidden: int) -> tuple:
    """TensorRT shape range of the text graph: up to `budget.items` sequences of up to `longest` tokens."""
    batch = bounded(budget, longest).items
    rows = max(budget.size, longest)
    per_token = [(name, ()) for name in ("input_ids", "attention_mask", "visual_index")]
    shapes = [(name, (1, 1), (1, 32), (batch, longest)) for name, _ in per_token]
    shapes.append(("position_ids", (3, 1, 1), (3, 1, 32), (3, batch, longest)))
    shapes.append(("visual_features", (1, hidden), (256, hidden), (rows, hidden)))
    return tuple(shapes)


def _padding(params, key: str) -> float | None:
    """A padding bound in percent (negative or unset: none) as a fraction."""
    percent = params.integer(key, -1)
    return None if percent < 0 else percent / 100


def encoder_runner(params, instance_args: dict[str, str]) -> EncoderRunner:
    """The encoder model's runner, configured by its Triton parameters (sessions: TensorRT, CUDA or CPU)."""
    from .sessions import provider_of, session_from_parameters

    hidden = params.integer("hidden_size")
    cap = params.integer("max_visual_tokens")
    longest = max(params.integer("max_query_tokens"), params.integer("max_prompt_tokens"))
    vision_padding, text_padding = (_padding(params, f"{kind}_padding_pct") for kind in ("vision", "text"))
    vision_budget = bounded(
        Budget(params.integer("max_session_patches"), params.integer("max_session_images", 0), vision_padding),
        cap * PATCHES_PER_TOKEN,
    )
    text_budget = bounded(
        Budget(params.integer("max_session_tokens"), params.integer("max_session_sequences", 0), text_padding), longest
    )
    vision_profile_ = vision_profile(vision_budget, cap)
    vision_session = session_from_parameters(params, instance_args, params.path("vision_model"), vision_profile_)
    text_profile_ = text_profile(text_budget, longest, hidden)
    text_session = session_from_parameters(params, instance_args, params.path("text_model"), text_profile_)
    runner = EncoderRunner(
        VisionRunner(vision_session, hidden, vision_budget),
        TextRunner(text_session, params.integer("pad_token_id"), params.integer("image_token_id"), hidden, text_budget),
        max_visual_tokens=cap,
        answer_every=params.integer("answer_every", 0),
    )
    providers = {provider_of(vision_session), provider_of(text_session)}
    runner.provider = providers.pop() if len(providers) == 1 else "mixed"
    return runner
