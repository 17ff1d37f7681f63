"""In-process references for the serving benchmark: what Triton is compared with.

Each reference goes from encoded image bytes to vectors, one image per call, in this process with
the same thread budget as the server, on the same mixed workload:
- colpali-engine PyTorch: bytes -> PIL -> `ColQwen2Processor` (native resolution, the checkpoint's own
  pixel limits) -> `ColQwen2` (float32 on the CPU; bfloat16 on a GPU, as colpali-engine's own
  examples run it);
- ONNX Runtime called directly: bytes -> the service's own preprocessing -> the vision and text
  graphs the server loads, through the same runners (CPU provider on a CPU host; the server's
  TensorRT -> CUDA chain on a GPU host);
- the preprocessing alone.

`int8_breakdown` splits the int8 graphs' kernel time, from ONNX Runtime's profiler, into the int8
weight matmuls, the float32 attention that dynamic quantization cannot reach, and the rest: the
measured ceiling on what int8 can buy on this checkpoint.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.runtime import cpu_session

from .timing import interleaved_ms

# Kernel names in ONNX Runtime's profile (after its graph optimisations) for each category.
_INT8_OPS = {"DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger", "DynamicQuantizeLinear", "ConvInteger"}
_ATTENTION_OPS = {"MatMul", "FusedMatMul", "Softmax"}  # in int8_dynamic only activation x activation remain


def _rate(fn, items: list) -> tuple[float, float]:
    """(items per second, vectors per second) of `fn(items) -> vector count`, after a one-item warm-up."""
    fn(items[:1])
    start = time.perf_counter()
    vectors = fn(items)
    wall = time.perf_counter() - start
    return len(items) / wall, vectors / wall


@dataclass
class Pipeline:
    """The service's image path in one process: preprocessing, then the vision and text graphs."""

    resolution: object
    tokenizer: object
    vision: object  # VisionRunner
    text: object  # TextRunner

    @classmethod
    def load(cls, artifacts: Path, variant: str, threads: int, gpu: bool, fixed_size: int = 0) -> Pipeline:
        from model_repository.colqwen2_serving.grid import PixelLimits
        from model_repository.colqwen2_serving.imaging import Resolution
        from model_repository.colqwen2_serving.prompts import PromptTokenizer
        from model_repository.colqwen2_serving.runners import Budget, TextRunner, VisionRunner, bounded
        from model_repository.render import SESSION_BUDGETS, precision_of

        manifest = json.loads((artifacts / "manifest.json").read_text())
        limits = PixelLimits(manifest["min_pixels"], manifest["max_pixels"])
        tokenizer = PromptTokenizer.from_processor_dir(artifacts / "processor")
        budgets = SESSION_BUDGETS["gpu" if gpu else "cpu"][precision_of(variant)]
        prompt = len(tokenizer.image_prompt_ids(limits.max_visual_tokens))
        vision_budget = bounded(
            Budget(budgets["max_session_patches"], budgets["max_session_images"]), 4 * limits.max_visual_tokens
        )
        text_budget = bounded(Budget(budgets["max_session_tokens"], budgets["max_session_sequences"]), prompt)
        hidden = manifest["hidden_size"]
        sessions = [
            _session(artifacts / variant / f"{name}.onnx", threads, gpu, profile)
            for name, profile in (
                ("vision_encoder", _vision_profile(vision_budget, limits)),
                ("text_encoder", _text_profile(text_budget, tokenizer, limits, hidden)),
            )
        ]
        return cls(
            Resolution(limits, fixed_size),
            tokenizer,
            VisionRunner(sessions[0], hidden, vision_budget),
            TextRunner(sessions[1], tokenizer.pad_id, tokenizer.image_token_id, hidden, text_budget),
        )

    def embed(self, data: bytes) -> np.ndarray:
        """Encoded bytes -> the image's vectors [n, 128]."""
        from model_repository.colqwen2_serving.feeds import TextItem
        from model_repository.colqwen2_serving.imaging import preprocess_image
        from model_repository.colqwen2_serving.preprocess import image_item

        item = image_item(preprocess_image(data, self.resolution))
        (visual,) = self.vision.visual_features([item])
        prompt = np.array(self.tokenizer.image_prompt_ids(len(visual)), dtype=np.int64)
        (vectors,) = self.text.vectors([TextItem(prompt, visual, item.grid)])
        return vectors

    def preprocess(self, data: bytes) -> int:
        """Preprocessing alone (decode, resize, patches, prompt); returns the vectors the image will get."""
        from model_repository.colqwen2_serving.imaging import preprocess_image
        from model_repository.colqwen2_serving.preprocess import image_item

        item = image_item(preprocess_image(data, self.resolution))
        return len(self.tokenizer.image_prompt_ids(item.grid[0] * item.grid[1]))


def _vision_profile(budget, limits):
    from model_repository.colqwen2_serving.runners import vision_profile

    return vision_profile(budget, limits.max_visual_tokens)


def _text_profile(budget, tokenizer, limits, hidden):
    from model_repository.colqwen2_serving.runners import text_profile

    return text_profile(budget, len(tokenizer.image_prompt_ids(limits.max_visual_tokens)), hidden)


def _session(path: Path, threads: int, gpu: bool, profile):
    """The CPU session export and bench use everywhere, or on a GPU the server's own provider chain."""
    if gpu:
        from model_repository.colqwen2_serving.sessions import SessionConfig, create_session

        return create_session(path, SessionConfig(precision=path.parent.name, profile=profile))
    return cpu_session(path, threads)


def in_process(artifacts: Path, data: list[bytes], threads: int, gpu: bool) -> dict[str, dict[str, float]]:
    """Images and vectors per second, bytes to vectors, one process, one image per call."""
    import torch
    from PIL import Image

    from export.checkpoint import load_checkpoint

    out: dict[str, dict[str, float]] = {}
    variants = ("fp16", "int8") if gpu else ("fp32", "int8_dynamic")
    for variant in variants:
        if not (artifacts / variant / "vision_encoder.onnx").exists():
            continue
        pipeline = Pipeline.load(artifacts, variant, threads, gpu)
        if "preprocess" not in out:
            out["preprocess"] = _as_dict(_rate(lambda items, p=pipeline: sum(p.preprocess(d) for d in items), data))
        out[f"onnxruntime {variant}"] = _as_dict(
            _rate(lambda items, p=pipeline: sum(len(p.embed(d)) for d in items), data)
        )
        del pipeline
    torch.set_num_threads(threads)
    manifest = json.loads((artifacts / "manifest.json").read_text())
    loaded = load_checkpoint(str(Path(manifest["checkpoint"])))
    device = "cuda" if gpu else "cpu"
    model = loaded.model.to(device, dtype=torch.bfloat16) if gpu else loaded.model

    def pytorch(items) -> int:
        vectors = 0
        with torch.no_grad():
            for d in items:
                image = Image.open(io.BytesIO(d))
                vectors += model(**loaded.processor.process_images([image]).to(device)).shape[1]
            if gpu:
                torch.cuda.synchronize()
        return vectors

    out["colpali-engine pytorch"] = _as_dict(_rate(pytorch, data))
    if gpu:
        del model, loaded
        torch.cuda.empty_cache()  # give the GPU back before the server is measured
    return out


def _as_dict(rates: tuple[float, float]) -> dict[str, float]:
    return {"images_per_s": rates[0], "vectors_per_s": rates[1]}


def paired_overhead(
    grpc_url: str, model: str, artifacts: Path, variant: str, data: list[bytes], threads: int, gpu: bool, rounds: int
) -> dict[str, float]:
    """Triton at 1 in flight against the same preprocessing + ONNX files in this process, alternated call by call.

    A shared machine's speed drifts by more than the overhead being measured (in-process int8 went
    from 7.84 to 6.51 img/s across one `make bench` run here); alternating puts both sides in the same
    moments, so the drift cancels. Medians of `rounds` calls each, bytes to vectors.
    """
    import tritonclient.grpc as grpcclient

    pipeline = Pipeline.load(artifacts, variant, threads, gpu)
    client = grpcclient.InferenceServerClient(grpc_url)

    def served(d: bytes) -> None:
        tensor = grpcclient.InferInput("image", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[d]], dtype=object))
        client.infer(model, [tensor])

    images = {"local": itertools.cycle(data), "served": itertools.cycle(data)}  # the same image each turn
    medians = interleaved_ms(
        {"local": lambda: pipeline.embed(next(images["local"])), "served": lambda: served(next(images["served"]))},
        rounds,
    )
    client.close()
    in_process_ms, triton_ms = medians["local"][0], medians["served"][0]
    return {"in_process_ms": in_process_ms, "triton_ms": triton_ms, "overhead": triton_ms / in_process_ms - 1}


def int8_breakdown(artifacts: Path, data: list[bytes], threads: int, runs: int = 2) -> dict[str, float] | None:
    """Share of kernel time by category for the int8_dynamic graphs (CPU), over the workload's images, or None.

    Shares, not milliseconds: profiling slows every kernel, so absolute times come from the
    unprofiled references.
    """
    if not (artifacts / "int8_dynamic" / "vision_encoder.onnx").exists():
        return None
    totals: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = Pipeline.load(artifacts, "int8_dynamic", threads, False)
        for name, runner in (("vision", pipeline.vision), ("text", pipeline.text)):
            runner.session = cpu_session(
                artifacts / "int8_dynamic" / f"{name}_encoder.onnx", threads, profile_prefix=os.path.join(tmp, name)
            )
        for _ in range(runs):
            for d in data[:8]:
                pipeline.embed(d)
        for runner in (pipeline.vision, pipeline.text):
            for event in json.loads(Path(runner.session.end_profiling()).read_text()):
                if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                    op = event["args"]["op_name"]
                    kind = (
                        "int8 matmuls" if op in _INT8_OPS else "float32 attention" if op in _ATTENTION_OPS else "other"
                    )
                    totals[kind] += event["dur"]
    total = sum(totals.values()) or 1
    return {kind: totals[kind] / total for kind in ("int8 matmuls", "float32 attention", "other")}


def speedup_ceiling(shares: dict[str, float], baselines: dict[str, dict[str, float]]) -> float:
    """PyTorch time / (int8 in-process time with its int8 matmuls made free): an upper bound.

    Whatever the int8 kernels do, the float32 attention, the other kernels and the preprocessing
    remain; this is the best ratio any faster int8 matmul could reach on this checkpoint.
    """
    preprocess_ms = 1e3 / baselines["preprocess"]["images_per_s"]
    encoder_ms = 1e3 / baselines["onnxruntime int8_dynamic"]["images_per_s"] - preprocess_ms
    rest_ms = encoder_ms * (1 - shares["int8 matmuls"]) + preprocess_ms
    return (1e3 / baselines["colpali-engine pytorch"]["images_per_s"]) / rest_ms


def averaged(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean rates per reference over runs (taken before and after the server sweep)."""
    return {
        name: {metric: float(np.mean([r[name][metric] for r in runs if name in r])) for metric in runs[0][name]}
        for name in runs[0]
    }
