"""What one ONNX Runtime call may hold, per host and precision: vision (patches, images), text (tokens, sequences).

0 images or sequences: as many of the longest item (an image at the token cap, a prompt at the cap) as
the budget holds (`runners.bounded`), which also makes the TensorRT profile's box (items x longest) the
budget itself. On a CPU, calls over many large images cost gigabytes and no speed. On a GPU the budgets
keep the activations inside the card with the weights: `gpu_call_budgets` derives them from what
`python -m bench.memory` measures of the real checkpoint (`GPU_MEMORY`, README "Memory"): an fp16
deployment takes 2 images and 8192 tokens per call within 8 GB, an int8 one 1 image and 1566 tokens
(2 prompts at the cap) within 4 GB.
"""

from __future__ import annotations

from dataclasses import dataclass

from .colqwen2_serving.grid import PATCHES_PER_TOKEN, PIXELS_PER_TOKEN, PUBLISHED_MAX_PIXELS
from .colqwen2_serving.prompts import PROMPT_EXTRA_TOKENS

GB = 1_000_000_000
GIB = 1 << 30
CAP_TOKENS = PUBLISHED_MAX_PIXELS // PIXELS_PER_TOKEN  # 768: the published checkpoint's visual tokens per image
PROMPT_TOKENS = CAP_TOKENS + PROMPT_EXTRA_TOKENS  # 783: an image prompt at the cap
# The most a GPU call holds (the GPU budgets before memory was modelled); a card with less room gets less.
GPU_MOST_IMAGES = 2
GPU_MOST_TOKENS = 8192
# Runtime memory of a GPU deployment's one encoder process (CUDA context, cuBLAS workspace, the providers):
# an assumption, not measured (bench.memory's OVERHEAD_NOTE).
GPU_OVERHEAD = GIB // 2


@dataclass(frozen=True)
class GpuMemory:
    """A GPU deployment of one precision, in bytes: the card it must fit and what it holds there."""

    limit: int  # the card
    weights: int  # both graphs' weights
    image_peak: int  # activations of a vision call, per image at the cap (unfused: ONNX Runtime's CUDA provider)
    prompt_peak: int  # activations of a text call, per image prompt at the cap (unfused)
    overhead: int = GPU_OVERHEAD

    @property
    def room(self) -> int:
        """Bytes the limit leaves for activations."""
        return self.limit - self.weights - self.overhead


def gpu_call_budgets(
    memory: GpuMemory, most_images: int = GPU_MOST_IMAGES, most_tokens: int = GPU_MOST_TOKENS
) -> dict[str, int]:
    """Up to `most_images` images at the cap per vision call and `most_tokens` tokens per text call, cut to the
    room: the most images that leave room for one prompt at the cap, then as many whole prompts at the cap as
    the rest holds (n items taken as n times one item's peak). Item counts 0: derived from the sizes."""
    images = min(most_images, (memory.room - memory.prompt_peak) // memory.image_peak)
    if images < 1:
        raise ValueError(
            f"one image and one prompt at the cap need {memory.image_peak + memory.prompt_peak} bytes of "
            f"activations; {memory.room} are left"
        )
    prompts = (memory.room - images * memory.image_peak) // memory.prompt_peak
    return {
        "max_session_patches": images * CAP_TOKENS * PATCHES_PER_TOKEN,
        "max_session_images": 0,
        "max_session_tokens": min(most_tokens, prompts * PROMPT_TOKENS),
        "max_session_sequences": 0,
    }


# The real checkpoint per GPU precision: fp16 targets an 8 GB card, int8 a 4 GB one (GB = 1e9 bytes). Weights and
# peaks as `python -m bench.memory` computes them (bench/results/memory-real.json; tests/test_memory.py holds these
# to that record, and the bench warns when a run derives other budgets).
GPU_MEMORY = {
    "fp16": GpuMemory(limit=8 * GB, weights=4_417_372_336, image_peak=201_056_320, prompt_peak=74_083_076),
    "int8": GpuMemory(limit=4 * GB, weights=2_448_980_572, image_peak=714_793_048, prompt_peak=128_810_728),
}
# Padding (percent of a call's own items; -1: any). A CPU computes padding as it computes data: images of
# different grids in one call cost more than apart (the medium checkpoint, mixed workload: 0.70 images/s at 4 in
# flight against 0.78 alone, issue 25), so text calls take at most 25 % padding (queries of similar lengths still
# share a call), and a CPU's vision calls hold one image: even images of one grid gain nothing from sharing a call
# there (medium, this CPU, per image: fp32 at 448 x 448 325 ms alone, 314 ms four to a call; int8 172 ms alone,
# 194 ms four to a call; photos at the cap in int8 1,073 ms alone, 1,239 ms two to a call: an ad-hoc timing of the
# vision graph alone, in process, 2 threads, 2026-12-07, not kept as a bench). A GPU pads in parallel.
_CPU_BUDGETS = {"max_session_patches": 4096, "max_session_images": 1, "max_session_tokens": 8192,
                "max_session_sequences": 32, "vision_padding_pct": 0, "text_padding_pct": 25}  # fmt: skip
_GPU_PADDING = {"vision_padding_pct": -1, "text_padding_pct": -1}
# Images per wave of the encoder (`EncoderRunner.waves`; 0: a batch's requests all together): the encoder answers
# queries first, then image requests every n images in arrival order, so that an image waits for at most n - 1
# images admitted after it, not for its whole batch (answering the batch together: accepted p99 1.13x the admission
# bound, bench/results/serving-medium-mixed-cpu2.md of 2026-12-07 13:52). Not n = 1 on a CPU: the vision graph's
# calls back to back run faster than alternating with the text graph's (medium, this CPU, in process, 8 images:
# fixed 448 int8 282-298 ms an image alone, 237-269 two a wave, 224-260 all eight; native fp32 918-1058, 906-936,
# 894-965; native int8 no difference: an ad-hoc timing of `EncoderRunner`, 2 threads, 2026-12-07). A GPU's calls
# hold several images, and its batch takes milliseconds.
ANSWER_EVERY = {"cpu": 2, "gpu": 0}
# Requests that may wait for preprocessing before one more is refused at once (render's `preprocess_max_queue`): at
# least the gateway's batch window (32; the SDK's is 16), so that one user's batch is never refused there, and on a
# GPU twice that, its preferred batches of up to 32 arriving while the last ones decode. On a saturated CPU host
# what waits there is mostly admission's millisecond checks: refusals at 64 in flight answered within 166 to 463 ms
# at p99 (medium, 2026-12-07, with 16) where a 500 ms time bound took up to 1,016 ms.
PREPROCESS_MAX_QUEUE = {"cpu": 32, "gpu": 64}
SESSION_BUDGETS = {
    "cpu": {"fp16": _CPU_BUDGETS, "int8": _CPU_BUDGETS},
    "gpu": {precision: gpu_call_budgets(memory) | _GPU_PADDING for precision, memory in GPU_MEMORY.items()},
}
