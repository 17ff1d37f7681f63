"""GPU check: the exported graphs' math on a CUDA GPU in fp32, fp16 and bf16, ready to run on any GPU host.

    make gpu-check                                     # = python -m bench.gpu_check $(GPU_CHECK_ARGS)
    python -m bench.gpu_check                          # real size, fp32/fp16/bf16, batch 1 and 32
    python -m bench.gpu_check --batch 1,8,32 --repeats 20 --out /tmp/check
    python -m bench.gpu_check --device cpu             # the dry run (what CI and CPU hosts run)

What it measures. A random-weight ColQwen2 with the real architecture (`--size real`: Qwen2-VL-2B shapes,
2.209 B parameters) is built in memory, seeded, exactly as `export.random_checkpoint` builds it (nothing is
written to disk, nothing is downloaded), and wrapped with the export's own graph modules
(`export.graphs.VisionEncoderGraph` and `TextEncoderGraph`: the math the ONNX graphs hold). For each precision
(fp32; fp16 and bf16 with the export's cast rule `export.onnx_export.to_matmul_dtype`: matmul and embedding
weights in that dtype, norms, softmax, rotary, residual stream and L2 norm in fp32, as the fp16 artifact) and
each resolution, the image path runs on the GPU as the service runs it: the vision graph over uint8 patches,
then the text graph over the image prompt with the visual features in place of its image tokens. Inputs come
from the serving code (`model_repository/colqwen2_serving`: letterbox / native resize, patch order, patch
positions, prompt ids, M-RoPE positions, `visual_index`), never from a copy of its math:

- fixed: a 1000 x 400 Keepa chart letterboxed to 448 x 448 (32 x 32 patches, 256 visual tokens);
- native: the same chart at the processor's own size within the published pixel limits (3136 to 602112
  pixels): 392 x 1008, a 14 x 36 grid, 504 visual tokens.

Per (resolution, precision, batch size): latency of one call (p50 and mean over `--repeats` timed calls after
warm-up calls, `torch.cuda.synchronize` around each; a call uploads the uint8 patches and the prompt tensors,
runs both graphs and copies the embeddings back to the host), images/s and vectors/s, the peak GPU memory
of the case (`torch.cuda.max_memory_allocated`, reset before each case, weights included), and the per-token
cosine of the fp16 and bf16 embeddings against fp32 (same resolution and batch; min and mean over tokens,
`export.validate.per_token_cosine`), plus the vision features' minimum cosine. A case that runs out of GPU
memory is recorded as `oom` and the run goes on (any other failure is recorded as `error`, and the run
exits 1 once the report is written). This is PyTorch eager running the graphs' math, not ONNX
Runtime or TensorRT: it shows how fast and how precise the graphs are on the card, and whether fp16 and bf16
hold up on the real shapes; the engines' own numbers come from `make bench` on the same host.

What it needs: an NVIDIA GPU, PyTorch with CUDA, and the export requirements (transformers, colpali-engine,
tokenizers, numpy, Pillow); no ONNX Runtime, TensorRT or Triton, no network. The real size holds 8.8 GB of
weights in fp32 (4.4 GB in fp16 or bf16) on the GPU besides each batch's activations: a card with less memory
than a case needs records that case as `oom` (and one that cannot hold the fp32 model builds it on the CPU,
which takes minutes). The fp32 master copy stays in host memory and each precision
is copied to the GPU in turn (about 18 GB of host memory at the real size while a copy is made).

Report: `gpu-check.json` and `gpu-check.md` (the table) in `--out`, default
`bench/results/gpu-check-<gpu name>` (`gpu-check-<size>-<gpu name>` for a size other than real), with the
command, the date (UTC), torch, CUDA and driver versions, the GPU, the model size and its parameter count.
Whenever a GPU host is at hand, run it and commit that folder under bench/results/.

Without a CUDA GPU (this project's build machines and CI) it says so in one line and does a dry run: the
`tiny` checkpoint on the CPU, fp32 and bf16, batch 1 and 2, both resolutions, the same report written to
`build/gpu-check-dry-run` (never bench/results/), exit 0. `--device cpu` forces the dry run.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GB = 1_000_000_000  # the README's memory targets are in GB of 1e9 bytes
REPORT_STEM = "gpu-check"
DRY_RUN_OUT = ROOT / "build" / "gpu-check-dry-run"

FIXED_SIZE = 448  # the letterbox side: 32 x 32 patches, 256 visual tokens
CHART_SIZE = (1000, 400)  # (width, height): Keepa's large graph
CHART_SEED = 0

GPU_DTYPES = ("fp32", "fp16", "bf16")
DRY_RUN_DTYPES = ("fp32", "bf16")  # fp16 matmuls on a CPU are slow or missing; bf16 runs
GPU_BATCHES = (1, 32)
DRY_RUN_BATCHES = (1, 2)
GPU_REPEATS, GPU_WARMUP = 10, 3
DRY_RUN_REPEATS, DRY_RUN_WARMUP = 2, 1

# The README's GPU targets (fp16 serving): throughput, latency of one image, memory. Indicative here: the
# engines (ONNX Runtime CUDA, TensorRT) are measured by `make bench`, this runs the same math in eager PyTorch.
TARGET_IMAGES_PER_S = 200.0
TARGET_P50_MS = 15.0
TARGET_FP16_BYTES = 8 * GB

NO_CUDA_LINE = "No CUDA GPU found"


def _torch_dtypes() -> dict[str, Any]:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# --------------------------------------------------------------------------------------------
# Pure helpers: names, timing summaries, cosines, the Markdown report
# --------------------------------------------------------------------------------------------


def slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3': a folder name from a GPU name."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def default_out(size: str, device_name: str, dry_run: bool) -> Path:
    """Where the report goes without --out: build/ for a dry run, else bench/results/gpu-check-[size-]<gpu>."""
    if dry_run:
        return DRY_RUN_OUT
    return ROOT / "bench" / "results" / f"{REPORT_STEM}-{'' if size == 'real' else size + '-'}{slug(device_name)}"


def parse_list(text: str, kind: type = str) -> tuple:
    """'1, 32' -> (1, 32): items in the order given, empty ones and repeats dropped."""
    out: list = []
    for part in text.split(","):
        part = part.strip()
        if part and kind(part) not in out:
            out.append(kind(part))
    return tuple(out)


def summarise_times(times_ms: list[float], batch: int, vectors_per_image: int) -> dict[str, float]:
    """Every timed call's ms -> p50 / mean / min ms per call, images/s and vectors/s (from the mean)."""
    if not times_ms:
        raise ValueError("no timed calls")
    mean = statistics.fmean(times_ms)
    return {
        "p50_ms": statistics.median(times_ms),
        "mean_ms": mean,
        "min_ms": min(times_ms),
        "images_per_s": batch * 1e3 / mean,
        "vectors_per_s": batch * vectors_per_image * 1e3 / mean,
    }


def cosine_stats(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(mean, min) per-token cosine of `out` against `ref` (same shape, [..., dim]); NaN if `out` is not finite."""
    from export.validate import per_token_cosine

    if out.shape != ref.shape:
        raise ValueError(f"shapes differ: {out.shape} vs {ref.shape}")
    cos = per_token_cosine(out, ref)
    return float(np.mean(cos)), float(np.min(cos))


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN: non-finite floats become null (the row's `finite` flag says why)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _gb(value: int | None) -> str:
    return "–" if value is None else f"{value / GB:.2f}"


def to_markdown(report: dict) -> str:
    """The report as Markdown: what ran where, one table row per case, the indicative GPU targets."""
    dev, model, settings = report["device"], report["model"], report["settings"]
    where = (
        f"{dev['name']} ({_gb(dev.get('total_memory_bytes'))} GB, driver {dev.get('driver') or 'unknown'}, "
        f"CUDA {report['versions'].get('cuda') or '–'})"
        if dev["type"] == "cuda"
        else f"CPU ({dev['name']}, {dev.get('threads')} threads): dry run, no CUDA GPU"
    )
    dry_note = "**Dry run** (no CUDA GPU): not a GPU measurement, a check that the script runs. "
    peak_note = "Peak memory: `torch.cuda.max_memory_allocated` per case, weights included (GB = 1e9 bytes). "
    lines = [
        f"# GPU check: {model['size']} random ColQwen2 on {dev['name']}",
        "",
        f"{dry_note if report['dry_run'] else ''}"
        f"Export graphs (`VisionEncoderGraph` then `TextEncoderGraph`, the image path) in PyTorch eager on {where}; "
        f"{model['size']} random checkpoint, {model['parameters'] / 1e6:,.1f} M parameters (vision "
        f"{model['vision_parameters'] / 1e6:,.1f} M), seed {model['seed']}, built in memory. "
        f"Median and mean of {settings['repeats']} timed call(s) after {settings['warmup']} warm-up call(s) per case; "
        f"a call uploads the inputs, runs both graphs and copies the embeddings back. "
        f"{'Peak memory: not measured on the CPU. ' if dev['type'] != 'cuda' else peak_note}Cosine: per token, "
        f"against fp32 at the same resolution and batch. fp16/bf16: matmul and embedding weights in that dtype, "
        f"norms, softmax, rotary, residual stream and L2 norm in fp32 (the export's rule).",
        "",
        f"`{report['command']}`, {report['date']}; torch {report['versions']['torch']}, transformers "
        f"{report['versions'].get('transformers')}, colpali-engine {report['versions'].get('colpali-engine')}; "
        f"{report['elapsed_s']:.0f} s.",
        "",
        "| resolution | pixels | grid | visual tokens | sequence |",
        "|---|---|---|---|---|",
    ]
    for r in report["resolutions"]:
        h, w = r["pixels"]
        lines.append(
            f"| {r['name']} | {r['source']} -> {w} x {h} | {r['grid'][0]} x {r['grid'][1]} | {r['visual_tokens']} "
            f"| {r['sequence']} |"
        )
    lines += [
        "",
        "| resolution | dtype | batch | p50 ms / call | mean ms / call | images / s | vectors / s | peak memory GB "
        "| cosine vs fp32 mean | cosine min | vision features cosine min | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        status = row["status"] if row["status"] == "ok" else f"{row['status']}: {row.get('error', '')}"
        if row["status"] == "ok" and not row.get("finite", True):
            status = "ok, NON-FINITE output"
        lines.append(
            f"| {row['resolution']} | {row['dtype']} | {row['batch']} | {_fmt(row.get('p50_ms'), '.2f')} "
            f"| {_fmt(row.get('mean_ms'), '.2f')} | {_fmt(row.get('images_per_s'), '.2f')} "
            f"| {_fmt(row.get('vectors_per_s'), ',.0f')} | {_gb(row.get('peak_memory_bytes'))} "
            f"| {_fmt(row.get('cosine_mean'), '.6f')} | {_fmt(row.get('cosine_min'), '.6f')} "
            f"| {_fmt(row.get('features_cosine_min'), '.6f')} | {status} |"
        )
    weights = report.get("weights", {})
    if weights:
        sizes = ", ".join(
            f"{name} {w['bytes'] / 1e6:,.1f} MB" if w.get("bytes") is not None else f"{name} {w.get('error')}"
            for name, w in weights.items()
        )
        lines += ["", f"Weights of the two graphs per precision: {sizes}."]
    if dev["type"] == "cuda":
        lines += ["", *targets_markdown(report)]
    return "\n".join(lines) + "\n"


def targets_markdown(report: dict) -> list[str]:
    """The README's GPU targets against the fp16 rows (indicative: eager PyTorch, not the engines)."""
    lines = [
        "Against the README's GPU targets (fp16 cases with finite output; indicative only, eager PyTorch rather "
        "than the serving engines):",
        "",
        "| resolution | target | measured | met |",
        "|---|---|---|---|",
    ]
    rows = [r for r in report["results"] if r["dtype"] == "fp16" and r["status"] == "ok" and r.get("finite", True)]
    for res in [r["name"] for r in report["resolutions"]]:
        mine = [r for r in rows if r["resolution"] == res]
        if not mine:
            lines.append(f"| {res} | fp16 | no successful fp16 case | no |")
            continue
        best = max(mine, key=lambda r: r["images_per_s"])
        one = min(mine, key=lambda r: r["batch"])
        peak = max(r["peak_memory_bytes"] or 0 for r in mine)
        lines += [
            f"| {res} | >= {TARGET_IMAGES_PER_S:.0f} images/s | {best['images_per_s']:.1f} (batch {best['batch']}) "
            f"| {'yes' if best['images_per_s'] >= TARGET_IMAGES_PER_S else 'no'} |",
            f"| {res} | p50 <= {TARGET_P50_MS:.0f} ms | {one['p50_ms']:.2f} ms (batch {one['batch']}) "
            f"| {'yes' if one['p50_ms'] <= TARGET_P50_MS else 'no'} |",
            f"| {res} | peak < {TARGET_FP16_BYTES / GB:.0f} GB | {peak / GB:.2f} GB (largest batch) "
            f"| {'yes' if peak < TARGET_FP16_BYTES else 'no'} |",
        ]
    return lines


# --------------------------------------------------------------------------------------------
# The model, built in memory as export.random_checkpoint builds it
# --------------------------------------------------------------------------------------------


@dataclass
class BuiltModel:
    model: Any  # colpali_engine ColQwen2, eval mode, float32
    prompts: Any  # colqwen2_serving.prompts.PromptTokenizer over the checkpoint's tokenizer
    image_processor: Any  # Qwen2VLImageProcessor with the published pixel limits
    limits: Any  # colqwen2_serving.grid.PixelLimits


def build_model(size: str, seed: int = 0, device: str = "cpu") -> BuiltModel:
    """The random ColQwen2 `build_random_checkpoint(out, size, seed)` writes, in memory, on `device`: the same
    `export.random_checkpoint.random_model` (on the CPU bit-identical to the saved checkpoint's weights), with
    the published pixel limits. Built on `device` directly: initialising 2.2 B parameters there takes seconds
    where the CPU takes minutes.
    """
    from export.random_checkpoint import (
        PUBLISHED_MAX_PIXELS,
        PUBLISHED_MIN_PIXELS,
        published_image_processor,
        random_model,
    )
    from model_repository.colqwen2_serving.grid import PixelLimits
    from model_repository.colqwen2_serving.prompts import AUGMENTATION_TOKEN, PromptTokenizer

    model, tokenizer = random_model(size, seed, device)
    backend = tokenizer.backend_tokenizer
    prompts = PromptTokenizer(backend, backend.token_to_id(tokenizer.pad_token or AUGMENTATION_TOKEN))
    limits = PixelLimits(PUBLISHED_MIN_PIXELS, PUBLISHED_MAX_PIXELS)
    return BuiltModel(model, prompts, published_image_processor(), limits)


def build_graphs(built: BuiltModel):
    """The export's two graph modules over the model's own modules, in one ModuleDict (vision, text)."""
    from torch import nn

    from export.graphs import TextEncoderGraph, VisionEncoderGraph

    processor = SimpleNamespace(image_processor=built.image_processor)
    return nn.ModuleDict(
        {"vision": VisionEncoderGraph(built.model, processor).eval(), "text": TextEncoderGraph(built.model).eval()}
    )


def materialise(master, dtype_name: str, device: str):
    """A copy of the fp32 master graphs in `dtype_name` (the export's cast rule) on `device`."""
    from export.onnx_export import to_matmul_dtype

    graphs = copy.deepcopy(master)
    dtype = _torch_dtypes()[dtype_name]
    if dtype_name != "fp32":
        to_matmul_dtype(graphs, dtype)
    return graphs.to(device).eval()


def parameter_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


# --------------------------------------------------------------------------------------------
# The workload: one image per resolution, through the serving code
# --------------------------------------------------------------------------------------------


@dataclass
class Workload:
    name: str
    source: str
    pixels: tuple[int, int]  # (height, width) the encoder sees
    item: Any  # colqwen2_serving.feeds.ImageItem
    prompt: np.ndarray  # int64 [T]: the image prompt with one image token per visual token

    @property
    def visual_tokens(self) -> int:
        return self.item.grid[0] * self.item.grid[1]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "pixels": list(self.pixels),
            "grid": list(self.item.grid),
            "patches": self.item.n_patches,
            "visual_tokens": self.visual_tokens,
            "sequence": len(self.prompt),
        }


def workloads(built: BuiltModel) -> list[Workload]:
    """The 1000 x 400 Keepa chart letterboxed to 448 x 448 and at its native size, as the service prepares them."""
    from export.sample_images import keepa_chart
    from model_repository.colqwen2_serving.imaging import Resolution
    from model_repository.colqwen2_serving.preprocess import image_item

    chart = keepa_chart(CHART_SEED, *CHART_SIZE)
    source = f"Keepa chart {CHART_SIZE[0]} x {CHART_SIZE[1]}"
    out = []
    for name, fixed in ((f"fixed {FIXED_SIZE}", FIXED_SIZE), ("native", 0)):
        pixels = Resolution(built.limits, fixed_size=fixed).pixels(chart)
        item = image_item(pixels)
        prompt = np.array(built.prompts.image_prompt_ids(item.grid[0] * item.grid[1]), dtype=np.int64)
        out.append(Workload(name, source, pixels.shape[:2], item, prompt))
    return out


@dataclass
class Feeds:
    """One call's inputs on the host: the vision graph's, and the text graph's but its visual features."""

    vision: tuple  # patches uint8 [B, N, 588], patch_positions int64 [B, N, 2], patch_mask int64 [B, N]
    text: tuple  # input_ids, attention_mask [B, T], position_ids [3, B, T], visual_index [B, T]


def make_feeds(work: Workload, batch: int, prompts, hidden: int) -> Feeds:
    """`batch` copies of the image, fed as the serving runners feed them (`feeds.vision_feed` / `text_feed`).

    The text feed is built with placeholder features of the right shape: at run time the vision graph's
    output takes their place. With every image on one grid nothing is padded, so that output reshaped to
    rows is exactly what `split_visual` then `text_feed` would stack.
    """
    import torch

    from model_repository.colqwen2_serving.feeds import TextItem, text_feed, vision_feed

    items = [work.item] * batch
    vision = vision_feed(items)
    placeholder = np.zeros((work.visual_tokens, hidden), dtype=np.float32)
    texts = [TextItem(work.prompt, placeholder, work.item.grid)] * batch
    text = text_feed(texts, prompts.pad_id, prompts.image_token_id, hidden)
    expected = np.arange(batch * work.visual_tokens).reshape(batch, -1)
    if not np.array_equal(text["visual_index"][text["visual_index"] >= 0].reshape(batch, -1), expected):
        raise AssertionError("visual_index does not point image i's tokens at rows i*V .. i*V+V-1")
    names = ("input_ids", "attention_mask", "position_ids", "visual_index")
    return Feeds(
        tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in vision.values()),
        tuple(torch.from_numpy(np.ascontiguousarray(text[n])) for n in names),
    )


def image_call(graphs, feeds: Feeds, device: str) -> tuple[Any, Any]:
    """One encoder call: inputs to the device, vision graph, text graph, embeddings back to the host.

    Returns (visual features on the device [B, V, hidden], embeddings on the host float32 [B, T, 128])."""
    patches, positions, mask = (t.to(device) for t in feeds.vision)
    ids, attention, position_ids, index = (t.to(device) for t in feeds.text)
    features = graphs["vision"](patches, positions, mask)
    rows = features.reshape(-1, features.shape[-1])
    embeddings = graphs["text"](ids, attention, position_ids, rows, index)
    return features, embeddings.cpu()


# --------------------------------------------------------------------------------------------
# Running the cases
# --------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _free(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _is_oom(exc: BaseException) -> bool:
    import torch

    text = str(exc)
    # cuBLAS reports a failed workspace allocation as its own status, not as an OutOfMemoryError
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text.lower() or "ALLOC_FAILED" in text


def run_case(graphs, feeds: Feeds, device: str, warmup: int, repeats: int) -> tuple[list[float], Any, np.ndarray]:
    """Warm-up calls, then `repeats` timed calls. Returns (ms per call, features [B, V, hidden] on the host
    as float32 numpy, embeddings float32 numpy) of the last call."""
    import torch

    with torch.inference_mode():
        for _ in range(warmup):
            image_call(graphs, feeds, device)
        _sync(device)
        times = []
        features = embeddings = None
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            features, embeddings = image_call(graphs, feeds, device)
            _sync(device)
            times.append((time.perf_counter() - start) * 1e3)
        return times, features.float().cpu().numpy(), embeddings.float().numpy()


def attempt(fn, *args) -> tuple[Any, tuple[str, str] | None]:
    """`fn(*args)` -> (result, None), or (None, ("oom" | "error", message)) if it raised.

    The exception (and the frames holding the failed call's tensors) is dropped before this returns, so that
    the memory it held can be given back before the next case."""
    try:
        return fn(*args), None
    except Exception as exc:
        return None, ("oom" if _is_oom(exc) else "error", _short(exc))


def build_anywhere(size: str, seed: int, device: str, log: Callable[[str], None] = print) -> tuple[BuiltModel, str]:
    """(the model, where it was built): on `device`, or on the CPU where the fp32 model does not fit there."""
    built, failure = attempt(build_model, size, seed, device)
    if failure and failure[0] == "oom":  # a small card: the fp32 model alone does not fit
        log(f"building the model on the GPU ran out of memory ({failure[1]}); building it on the CPU (slower)")
        _free(device)
        return build_model(size, seed, "cpu"), "cpu"
    if failure:
        raise RuntimeError(f"building the {size} model failed: {failure[1]}")
    return built, device


class Checker:
    """The cases' shared state: the fp32 master graphs on the host, the workloads, the settings, and the fp32
    outputs the other precisions are compared with."""

    def __init__(
        self, size: str, device: str, warmup: int, repeats: int, seed: int = 0, log: Callable[[str], None] = print
    ) -> None:
        t0 = time.perf_counter()
        self.device, self.warmup, self.repeats, self.log = device, warmup, repeats, log
        built, self.built_on = build_anywhere(size, seed, device, log)
        model = built.model
        self.counts = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "vision_parameters": sum(p.numel() for p in model.visual.parameters()),
            "text_parameters": sum(p.numel() for p in model.language_model.parameters())
            + sum(p.numel() for p in model.custom_text_proj.parameters()),
        }
        self.master = build_graphs(built).to("cpu")  # every module of the model lives in the two graphs
        self.hidden = model.config.text_config.hidden_size
        built.model = model = None  # the master graphs hold every weight now, on the host
        _free(device)
        self.prompts = built.prompts
        self.works = workloads(built)
        self.references: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        elapsed = time.perf_counter() - t0
        log(f"built the {size} model ({self.counts['parameters'] / 1e6:,.1f} M parameters) in {elapsed:.1f} s")

    def precision(self, dtype: str, batches: tuple[int, ...]) -> tuple[dict, list[dict]]:
        """(weights entry, rows) of one dtype: every (resolution, batch) case on a copy of the master graphs in
        that dtype, or every row `oom` / `error` when that copy cannot be made."""
        import torch

        graphs, failure = attempt(materialise, self.master, dtype, self.device)
        if failure:  # the weights alone may not fit
            _free(self.device)
            status, message = failure
            rows = [
                {"resolution": w.name, "dtype": dtype, "batch": b, "status": status, "error": "loading the weights"}
                for w in self.works
                for b in batches
            ]
            self.log(f"{dtype}: {status} loading the weights: {message}")
            return {"bytes": None, "error": f"loading the weights: {message}"}, rows
        weights = {"bytes": parameter_bytes(graphs)}
        if self.device == "cuda":
            weights["allocated_bytes"] = torch.cuda.memory_allocated()
        rows = [self.case(graphs, work, dtype, batch) for work in self.works for batch in batches]
        del graphs
        _free(self.device)
        return weights, rows

    def case(self, graphs, work: Workload, dtype: str, batch: int) -> dict[str, Any]:
        """One (resolution, dtype, batch) row: timings, peak memory, finiteness and cosines, or how it failed."""
        import torch

        row: dict[str, Any] = {"resolution": work.name, "dtype": dtype, "batch": batch}
        feeds = make_feeds(work, batch, self.prompts, self.hidden)
        if self.device == "cuda":
            _free(self.device)
            torch.cuda.reset_peak_memory_stats()
        measured, failure = attempt(run_case, graphs, feeds, self.device, self.warmup, self.repeats)
        if failure:
            row.update(status=failure[0], error=failure[1])
            self.log(f"{work.name} {dtype} batch {batch}: {row['status']}: {row['error']}")
            del feeds
            _free(self.device)  # after the exception and its frames are gone
            return row
        times, features, embeddings = measured
        row.update(status="ok", **summarise_times(times, batch, len(work.prompt)), times_ms=times)
        row["peak_memory_bytes"] = torch.cuda.max_memory_allocated() if self.device == "cuda" else None
        row["finite"] = bool(np.isfinite(embeddings).all() and np.isfinite(features).all())
        self.compare(row, features, embeddings)
        self.log(_case_line(row))
        return row

    def compare(self, row: dict[str, Any], features: np.ndarray, embeddings: np.ndarray) -> None:
        """fp32: keep the outputs as the reference; another dtype: its cosines against that reference, if any."""
        key = (row["resolution"], row["batch"])
        if row["dtype"] == "fp32":
            self.references[key] = (features, embeddings)
        elif key in self.references:
            ref_features, ref_embeddings = self.references[key]
            row["cosine_mean"], row["cosine_min"] = cosine_stats(embeddings, ref_embeddings)
            row["features_cosine_min"] = cosine_stats(features, ref_features)[1]


def _case_line(row: dict[str, Any]) -> str:
    """The progress line of a case that ran."""
    return (
        f"{row['resolution']:>9} {row['dtype']} batch {row['batch']:>3}: p50 {row['p50_ms']:9.2f} ms, "
        f"{row['images_per_s']:8.2f} images/s"
        + (f", peak {row['peak_memory_bytes'] / GB:.2f} GB" if row["peak_memory_bytes"] else "")
        + (f", cosine vs fp32 mean {row['cosine_mean']:.6f} min {row['cosine_min']:.6f}"
           if "cosine_mean" in row else "")
    )  # fmt: skip


def run_check(
    size: str,
    device: str,
    dtypes: tuple[str, ...],
    batches: tuple[int, ...],
    warmup: int,
    repeats: int,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """Every (dtype, resolution, batch) case; the report's `model`, `weights`, `resolutions` and `results`."""
    check = Checker(size, device, warmup, repeats, seed, log)
    results: list[dict] = []
    weights: dict[str, dict] = {}
    for dtype in dtypes:
        weights[dtype], rows = check.precision(dtype, batches)
        results += rows
    return {
        "model": {"size": size, "seed": seed, "built_on": check.built_on, **check.counts, "shapes": _shapes(size)},
        "weights": weights,
        "resolutions": [w.describe() for w in check.works],
        "results": results,
    }


def _shapes(size: str) -> dict:
    from export.random_checkpoint import SIZES

    return asdict(SIZES[size])


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}"


# --------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def nvidia_smi(index: int = 0) -> dict[str, str]:
    """Driver version, name and memory from nvidia-smi, when it is there ({} otherwise)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return {}
    fields = ("driver_version", "name", "memory.total", "power.limit", "clocks.max.sm")
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader", "-i", str(index)],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    values = [v.strip() for v in out.splitlines()[0].split(",")] if out else []
    return dict(zip(fields, values, strict=False))


def environment(device: str) -> tuple[dict, dict]:
    """(device, versions) for the report."""
    import torch

    from .timing import cpu_name

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": _version("transformers"),
        "colpali-engine": _version("colpali-engine"),
        "numpy": np.__version__,
    }
    if device == "cuda":
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        smi = nvidia_smi(index)
        versions["cudnn"] = torch.backends.cudnn.version()
        info = {
            "type": "cuda",
            "name": torch.cuda.get_device_name(index),
            "index": index,
            "total_memory_bytes": props.total_memory,
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "driver": smi.get("driver_version"),
            "nvidia_smi": smi,
            "cpu": cpu_name(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        }
    else:
        info = {"type": "cpu", "name": cpu_name(), "threads": torch.get_num_threads()}
    return info, versions


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None):
    from export.random_checkpoint import SIZES

    p = argparse.ArgumentParser(
        prog="python -m bench.gpu_check",
        description="The export graphs on a CUDA GPU in fp32/fp16/bf16: images/s, latency, peak memory, "
        "cosine vs fp32, at 448 x 448 and native resolution. Without a GPU: a CPU dry run on the tiny size.",
    )
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="cpu forces the dry run")
    p.add_argument("--size", choices=sorted(SIZES), help="checkpoint shapes (default: real on a GPU, tiny dry run)")
    p.add_argument("--dtypes", help=f"default {','.join(GPU_DTYPES)} ({','.join(DRY_RUN_DTYPES)} dry run)")
    p.add_argument("--batch", help=f"batch sizes, default {','.join(map(str, GPU_BATCHES))} (dry run 1,2)")
    p.add_argument("--repeats", type=int, help=f"timed calls per case (default {GPU_REPEATS}, dry run 2)")
    p.add_argument("--warmup", type=int, help=f"warm-up calls per case (default {GPU_WARMUP}, dry run 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="report folder (default bench/results/gpu-check-<gpu>; dry run: "
                   "build/gpu-check-dry-run)")  # fmt: skip
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda:
        why = f"{NO_CUDA_LINE} (torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'})"
        smi = nvidia_smi()
        if smi and args.device != "cpu":  # a GPU is there, but this torch cannot use it: never pass as a dry run
            print(
                f"error: nvidia-smi sees {smi.get('name', 'a GPU')} (driver {smi.get('driver_version', '?')}), but "
                f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}) cannot use it: its CUDA needs a "
                "newer driver (CUDA 13 builds need R580+; CUDA 12.x builds run on R525+). Install a torch built for "
                "this driver's CUDA, or pass --device cpu for the dry run.",
                file=sys.stderr,
            )
            return 2
        if args.device == "cuda":
            print(f"error: --device cuda, but {why[0].lower()}{why[1:]}", file=sys.stderr)
            return 2
        print(
            f"{why}: running the CPU dry run instead (tiny size unless --size, fp32 and bf16); run this on a GPU "
            f"host for the real check.",
            flush=True,
        )
    elif args.device == "cpu":
        print("--device cpu: CPU dry run (a CUDA GPU is present but not used).", flush=True)
    device = "cuda" if cuda and args.device != "cpu" else "cpu"
    dry = device == "cpu"

    size = args.size or ("tiny" if dry else "real")
    dtypes = parse_list(args.dtypes) if args.dtypes else (DRY_RUN_DTYPES if dry else GPU_DTYPES)
    unknown = [d for d in dtypes if d not in GPU_DTYPES]
    if unknown or not dtypes:
        print(f"error: unknown dtypes {unknown}; choose from {','.join(GPU_DTYPES)}", file=sys.stderr)
        return 2
    dtypes = ("fp32", *[d for d in dtypes if d != "fp32"])  # fp32 first: the cosines' reference
    try:
        batches = parse_list(args.batch, int) if args.batch else (DRY_RUN_BATCHES if dry else GPU_BATCHES)
    except ValueError:
        print(f"error: --batch takes comma-separated integers, not {args.batch!r}", file=sys.stderr)
        return 2
    repeats = args.repeats if args.repeats is not None else (DRY_RUN_REPEATS if dry else GPU_REPEATS)
    warmup = args.warmup if args.warmup is not None else (DRY_RUN_WARMUP if dry else GPU_WARMUP)
    if not batches or min(batches) < 1 or repeats < 1 or warmup < 0:
        print("error: batches and --repeats must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2

    dev_info, versions = environment(device)
    out = args.out or default_out(size, dev_info["name"], dry)
    print(f"{size} on {dev_info['name']} ({device}), {','.join(dtypes)}, batch {batches}, "
          f"{warmup} warm-up + {repeats} timed calls per case -> {out}", flush=True)  # fmt: skip

    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    checked = run_check(size, device, dtypes, batches, warmup, repeats, args.seed, log=lambda m: print(m, flush=True))
    report = {
        "tool": "bench.gpu_check",
        "command": " ".join(["python -m bench.gpu_check", *(sys.argv[1:] if argv is None else argv)]),
        "date": started.isoformat(timespec="seconds"),
        "dry_run": dry,
        "device": dev_info,
        "versions": versions,
        "settings": {"dtypes": list(dtypes), "batches": list(batches), "warmup": warmup, "repeats": repeats},
        **checked,
        "elapsed_s": time.perf_counter() - t0,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{REPORT_STEM}.json").write_text(json.dumps(_finite_or_none(report), indent=2) + "\n")
    markdown = to_markdown(report)
    (out / f"{REPORT_STEM}.md").write_text(markdown)
    print(markdown)
    print(f"wrote {out / (REPORT_STEM + '.json')} and {out / (REPORT_STEM + '.md')}")
    errors = [r for r in report["results"] if r["status"] == "error"]
    if errors:
        print(f"error: {len(errors)} case(s) failed other than by running out of memory", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
