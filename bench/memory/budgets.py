"""The calls reported, the GPU call budgets (today's and the largest that fit) and the deployments they make."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from model_repository.budgets import (
    CAP_TOKENS,
    GIB,
    GPU_MEMORY,
    GPU_OVERHEAD,
    PROMPT_TOKENS,
    SESSION_BUDGETS,
    GpuMemory,
)
from model_repository.colqwen2_serving.grid import (
    PATCHES_PER_TOKEN,
    PUBLISHED_MAX_PIXELS,
    PUBLISHED_MIN_PIXELS,
    PixelLimits,
    smart_resize,
    token_grid,
)
from model_repository.colqwen2_serving.prompts import PROMPT_EXTRA_TOKENS
from model_repository.colqwen2_serving.runners import Budget, bounded, text_profile, vision_profile
from model_repository.render import HOST_VARIANTS, RenderOptions

from .activations import ActivationModel, text_shapes, vision_shapes
from .model import GRAPH_NAMES

LIMITS = {precision: memory.limit for precision, memory in GPU_MEMORY.items()}  # the targets, GB = 1e9 bytes
# The GPU deployments: precision -> the artifact variant its encoders load.
DEPLOYMENTS = HOST_VARIANTS["gpu"]

# A deployment runs one encoder process per precision (`colqwen2_encoder_<variant>`: both graphs, one CUDA context).
ENCODER_PROCESSES = 1
# Runtime memory outside the graph, per encoder process (an assumption, see OVERHEAD_NOTE).
DEFAULT_OVERHEAD_GIB = GPU_OVERHEAD / GIB
OVERHEAD_NOTE = (
    "What it covers, per process: the CUDA context with the kernels it loads (PyTorch measured 287 MB with CUDA's "
    "lazy module loading against 667 MB eager, pytorch/pytorch#86509; lazy loading is the default on Linux since "
    "CUDA 12.2), the cuBLAS/cuBLASLt workspace (32 MiB recommended on Hopper by the cuBLAS reference for "
    "cublasSetWorkspace), cuDNN, ONNX Runtime's CUDA provider and TensorRT's execution context. Not measured: no "
    "GPU has been lent to this project; pass --overhead-gib to change it (each 0.1 GiB per process moves a "
    "deployment's total by 0.107 GB)."
)

QUERY_TOKENS = RenderOptions.max_query_tokens  # 512: the longest query a deployment takes


@dataclass(frozen=True)
class Scenario:
    """One call: `batch` items padded to `length` patches (vision) or tokens (text)."""

    graph: str
    name: str
    batch: int
    length: int
    visual_rows: int = 0  # text: rows of visual_features (the image prompts' visual tokens; 1 for queries)
    in_gpu_budget: bool = False  # a call the GPU runner may send under the precision's SESSION_BUDGETS["gpu"]
    trt_box: bool = False  # the TensorRT profile's max shapes (what TensorRT may plan memory for)
    note: str = ""

    def shapes(self, hidden: int) -> dict[str, tuple[int, ...]]:
        if self.graph == "vision_encoder":
            return vision_shapes(self.batch, self.length)
        return text_shapes(self.batch, self.length, self.visual_rows, hidden)


def image_tokens(width: int, height: int, cap: int = CAP_TOKENS) -> int:
    """Visual tokens of a width x height image under the published pixel limits, capped (`grid.smart_resize`)."""
    limits = PixelLimits(PUBLISHED_MIN_PIXELS, PUBLISHED_MAX_PIXELS).capped(cap)
    rows, cols = token_grid(*smart_resize(height, width, limits))
    return rows * cols


def gpu_budgets(precision: str, cap: int = CAP_TOKENS) -> dict[str, int]:
    """A GPU host's call budgets for `precision` as `render.py` writes them, with the item counts the encoder
    derives when they are 0 (`runners.bounded`: as many items at the cap as the budget holds)."""
    budgets = {k: v for k, v in SESSION_BUDGETS["gpu"][precision].items() if k.startswith("max_session")}
    vision = bounded(Budget(budgets["max_session_patches"], budgets["max_session_images"]), PATCHES_PER_TOKEN * cap)
    longest = max(QUERY_TOKENS, cap + PROMPT_EXTRA_TOKENS)  # as `runners.encoder_runner` takes it
    text = bounded(Budget(budgets["max_session_tokens"], budgets["max_session_sequences"]), longest)
    budgets["max_session_images"], budgets["max_session_sequences"] = vision.items, text.items
    return budgets


def largest_call(budget_size: int, budget_items: int, length: int) -> int:
    """Items in the largest call of `length`-long items under a `Budget` (`feeds.plan_calls`: an item larger than
    the budget gets a call of its own)."""
    items = max(1, budget_size // length)
    return min(items, budget_items) if budget_items else items


def scenarios(budgets: Mapping[str, int], cap: int = CAP_TOKENS) -> list[Scenario]:
    """The calls reported: one item at the cap, the largest calls under the GPU budgets (and TensorRT's profile
    box), and batches of 32."""
    cap_patches, prompt = PATCHES_PER_TOKEN * cap, cap + PROMPT_EXTRA_TOKENS
    keepa, photo = image_tokens(500, 200, cap), image_tokens(448, 448, cap)
    v_size, v_items = budgets["max_session_patches"], budgets["max_session_images"]
    t_size, t_items = budgets["max_session_tokens"], budgets["max_session_sequences"]
    v_box = {name: high for name, _, _, high in vision_profile(Budget(v_size, v_items), cap)}["patches"][:2]
    t_box = {name: high for name, _, _, high in text_profile(Budget(t_size, t_items), prompt, 1)}
    v_call, t_call, q_call = (largest_call(v_size, v_items, cap_patches), largest_call(t_size, t_items, prompt),
                              largest_call(t_size, t_items, QUERY_TOKENS))  # fmt: skip

    def vision(name: str, batch: int, length: int, note: str = "") -> Scenario:
        ok = batch * length <= v_size and batch <= (v_items or batch)
        return Scenario("vision_encoder", name, batch, length, 0, ok, (batch, length) == v_box, note)

    def text(name: str, batch: int, length: int, rows: int, note: str = "", box: bool = False) -> Scenario:
        ok = batch * length <= t_size and batch <= (t_items or batch)
        return Scenario("text_encoder", name, batch, length, rows, ok and not box, box, note)

    budget = f"max_session_tokens {t_size}, max_session_sequences {t_items}"
    return [
        vision("1 image at the cap", 1, cap_patches, f"{cap} tokens"),
        vision("GPU call budget: largest call", v_call, cap_patches,
               f"max_session_patches {v_size}, max_session_images {v_items}; also the TensorRT box"),
        vision("32 Keepa charts 500x200", 32, PATCHES_PER_TOKEN * keepa, f"{keepa} tokens each"),
        vision("32 images 448x448", 32, PATCHES_PER_TOKEN * photo, f"{photo} tokens each"),
        text("1 image prompt at the cap", 1, prompt, cap),
        text("GPU call budget: largest image-prompt call", t_call, prompt, t_call * cap, budget),
        text("GPU call budget: largest query call", q_call, QUERY_TOKENS, 1, budget),
        text("GPU TensorRT box", t_box["input_ids"][0], t_box["input_ids"][1], t_box["visual_features"][0],
             "text_profile's max shapes", box=True),
        text("32 queries of 32 tokens", 32, 32, 1),
        text("32 image prompts 448x448", 32, photo + PROMPT_EXTRA_TOKENS, 32 * photo, f"{photo} visual tokens each"),
    ]  # fmt: skip


def text_call_peak(model: ActivationModel, hidden: int, sequences: int, tokens: int, cap: int = CAP_TOKENS,
                   fused: bool = False) -> int:  # fmt: skip
    """The largest peak among the text calls under Budget(tokens, sequences) with `cap` visual tokens per image:
    image prompts at the cap and at 448x448, queries at the longest (512) and at 32 tokens."""
    photo = min(image_tokens(448, 448), cap)
    kinds = ((cap + PROMPT_EXTRA_TOKENS, cap), (photo + PROMPT_EXTRA_TOKENS, photo), (QUERY_TOKENS, 0), (32, 0))
    peaks = []
    for length, rows in kinds:
        b = largest_call(tokens, sequences, length)
        peaks.append(model.peaks(text_shapes(b, length, b * rows, hidden))[1 if fused else 0].bytes)
    return max(peaks)


def _largest(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest x in [lo, hi] with fits(x), for a monotone `fits`; lo - 1 if none."""
    if not fits(lo):
        return lo - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def recommend(vision: ActivationModel, text: ActivationModel, hidden: int, room: int, sequences: int,
              tokens_today: int, fused: bool = False) -> dict:  # fmt: skip
    """The largest GPU call budgets whose vision + text activation peaks fit in `room` bytes.

    For n images per vision call at the 768-token cap (max_session_patches n x 3072), the largest
    max_session_tokens for the text runner (keeping `sequences` as max_session_sequences): the text peak
    grows with the padded tokens of a call (the MLP's [tokens, 8960] float32 tensors), whatever mix of
    prompts and queries fills it. The pick is the largest n whose text budget still takes n image prompts
    at the cap in one call and, where some n allows it, is no smaller than today's `tokens_today`. If not
    even one image at the cap fits, the largest max_visual_tokens that does, one item per call. `fused`: with
    the fused-attention estimate instead of the unfused bound."""
    which = 1 if fused else 0
    cap_patches, prompt = PATCHES_PER_TOKEN * CAP_TOKENS, CAP_TOKENS + PROMPT_EXTRA_TOKENS

    def vision_peak(n: int, patches: int = cap_patches) -> int:
        return vision.peaks(vision_shapes(n, patches))[which].bytes

    def text_peak(tokens: int, items: int, cap: int = CAP_TOKENS) -> int:
        return text_call_peak(text, hidden, items, tokens, cap, fused)

    frontier = []
    for n in range(1, sequences + 1):
        left = room - vision_peak(n)
        tokens = _largest(lambda t, left=left: text_peak(t, sequences) <= left, prompt, sequences * prompt)
        if tokens < prompt:
            break
        frontier.append({"images_per_vision_call": n, "vision_peak": room - left, "max_session_tokens": tokens,
                         "image_prompts_per_text_call": min(sequences, tokens // prompt)})  # fmt: skip
    result: dict[str, Any] = {"room_bytes": room, "basis": "fused" if fused else "unfused", "frontier": frontier}
    balanced = [f for f in frontier if f["image_prompts_per_text_call"] >= f["images_per_vision_call"]]
    keeps_text = [f for f in balanced if f["max_session_tokens"] >= tokens_today]
    if balanced:
        pick = (keeps_text or balanced)[-1]
        n = pick["images_per_vision_call"]
        result["max_visual_tokens"] = CAP_TOKENS
        result["budgets"] = {
            "max_session_patches": n * cap_patches,
            "max_session_images": n,
            "max_session_tokens": pick["max_session_tokens"],
            "max_session_sequences": sequences,
        }
        result["activations"] = pick["vision_peak"] + text_peak(pick["max_session_tokens"], sequences)
        return result

    def need(cap: int) -> int:
        return vision_peak(1, PATCHES_PER_TOKEN * cap) + text_peak(cap + PROMPT_EXTRA_TOKENS, 1, cap)

    cap = _largest(lambda c: need(c) <= room, 4, CAP_TOKENS)
    result["needed_at_cap"] = need(CAP_TOKENS)
    result["max_visual_tokens"] = cap if cap >= 4 else 0
    if cap >= 4:
        result["budgets"] = {"max_session_patches": PATCHES_PER_TOKEN * cap, "max_session_images": 1,
                             "max_session_tokens": cap + PROMPT_EXTRA_TOKENS, "max_session_sequences": 1}  # fmt: skip
        result["activations"] = need(cap)
    return result


def deployment(precision: str, weights: Mapping[str, int], rows: Sequence[dict], basis: str, overhead: int) -> dict:
    """Weights + the largest vision call + the largest text call + overhead, against the precision's limit.

    basis "call": the largest calls under today's GPU budgets, unfused peaks; "box": TensorRT's profile maxima
    at unfused peaks; "fused": the "call" calls with the fused-attention estimate; "box fused": the profile
    maxima with the fused-attention estimate (the closest to what TensorRT plans)."""
    variant = DEPLOYMENTS[precision]
    key = "fused_attention_estimate" if "fused" in basis else "peak"
    picks = {}
    for graph in GRAPH_NAMES:
        mine = [r for r in rows if r["graph"] == graph and (r["box" if "box" in basis else "in_budget"][precision])]
        best = max(mine, key=lambda r: r[key][variant])
        picks[graph] = {"scenario": best["name"], "shape": [best["batch"], best["length"]], "peak": best[key][variant]}
    total = sum(weights.values()) + sum(p["peak"] for p in picks.values()) + overhead
    return {
        "precision": precision,
        "variant": variant,
        "basis": basis,
        "weights": dict(weights),
        "vision": picks["vision_encoder"],
        "text": picks["text_encoder"],
        "overhead": overhead,
        "total": total,
        "limit": LIMITS[precision],
        "fits": total <= LIMITS[precision],
    }


def gpu_memory(precision: str, weights: int, overhead: int, vision: ActivationModel, text: ActivationModel,
               hidden: int) -> GpuMemory:  # fmt: skip
    """What a run measures of `precision`'s deployment: the inputs `model_repository.budgets` derives the GPU call
    budgets from (one image at the cap, one image prompt at the cap)."""
    return GpuMemory(
        limit=LIMITS[precision],
        weights=weights,
        image_peak=vision.peak(vision_shapes(1, PATCHES_PER_TOKEN * CAP_TOKENS)),
        prompt_peak=text.peak(text_shapes(1, PROMPT_TOKENS, CAP_TOKENS, hidden)),
        overhead=overhead,
    )
