"""In-process references for the serving benchmark: what Triton is compared with.

Each reference goes from encoded image bytes to vectors, one image per call, in this process with
the same thread budget as the server:
- colpali-engine PyTorch: bytes -> PIL -> letterbox -> `ColQwen2Processor` -> `ColQwen2` (float32
  on the CPU; bfloat16 on a GPU, as colpali-engine's own examples run it);
- ONNX Runtime called directly: bytes -> the service's own preprocessing -> the same ONNX file the
  server loads (CPU provider on a CPU host; the server's TensorRT -> CUDA chain on a GPU host);
- the preprocessing alone.

`int8_breakdown` splits the int8 encoder's kernel time, from ONNX Runtime's profiler, into the
int8 weight matmuls, the float32 attention that dynamic quantization cannot reach, and the rest:
the measured ceiling on what int8 can buy on this checkpoint.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from export.runtime import cpu_session

from .timing import interleaved_ms

# Kernel names in ONNX Runtime's profile (after its graph optimisations) for each category.
_INT8_OPS = {"DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger", "DynamicQuantizeLinear", "ConvInteger"}
_ATTENTION_OPS = {"MatMul", "FusedMatMul", "Softmax"}  # in int8_dynamic only activation x activation remain


def _rate(fn, items: list, repeats: int = 1) -> float:
    fn(items[:1])  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn(items)
    return repeats * len(items) / (time.perf_counter() - start)


def _ort_session(path: Path, threads: int, gpu: bool, size: int):
    """The CPU session export and bench use everywhere, or on a GPU the server's own provider chain."""
    if gpu:
        from model_repository.colqwen2_serving.sessions import SessionConfig, create_session

        shape = (1, size, size, 3)
        profile = (("pixel_values", shape, shape, shape),)
        return create_session(path, SessionConfig(precision=path.parent.name, profile=profile))
    return cpu_session(path, threads)


def in_process(artifacts: Path, data: list[bytes], threads: int, gpu: bool) -> dict[str, float]:
    """Images per second, bytes to vectors, one process, batch 1."""
    import torch
    from PIL import Image

    from export.checkpoint import load_checkpoint
    from model_repository.colqwen2_serving.imaging import letterbox, preprocess_image

    manifest = json.loads((artifacts / "manifest.json").read_text())
    size = manifest["image_size"]
    out: dict[str, float] = {}
    out["preprocess"] = _rate(lambda items: [preprocess_image(d, size) for d in items], data)
    variants = ("fp16", "int8") if gpu else ("fp32", "int8_dynamic", "fp16")
    for variant in variants:
        path = artifacts / variant / "image_encoder.onnx"
        if not path.exists():
            continue
        session = _ort_session(path, threads, gpu, size)

        def onnx(items, session=session):
            for d in items:
                session.run(None, {"pixel_values": preprocess_image(d, size)[None]})

        out[f"onnxruntime {variant}"] = _rate(onnx, data)
        del session
    torch.set_num_threads(threads)
    loaded = load_checkpoint(str(Path(manifest["checkpoint"])))
    device = "cuda" if gpu else "cpu"
    model = loaded.model.to(device, dtype=torch.bfloat16) if gpu else loaded.model

    def pytorch(items):
        with torch.no_grad():
            for d in items:
                image = Image.fromarray(letterbox(Image.open(io.BytesIO(d)), size))
                model(**loaded.processor.process_images([image]).to(device))
            if gpu:
                torch.cuda.synchronize()

    out["colpali-engine pytorch"] = _rate(pytorch, data)
    if gpu:
        del model, loaded
        torch.cuda.empty_cache()  # give the GPU back before the server is measured
    return out


def paired_overhead(
    grpc_url: str, model: str, artifacts: Path, variant: str, data: list[bytes], threads: int, gpu: bool, rounds: int
) -> dict[str, float]:
    """Triton at 1 in flight against the same preprocessing + ONNX file in this process, alternated call by call.

    A shared machine's speed drifts by more than the overhead being measured (in-process int8 went
    from 7.84 to 6.51 img/s across one `make bench` run here); alternating puts both sides in the same
    moments, so the drift cancels. Medians of `rounds` calls each, bytes to vectors.
    """
    import tritonclient.grpc as grpcclient

    from model_repository.colqwen2_serving.imaging import preprocess_image

    size = json.loads((artifacts / "manifest.json").read_text())["image_size"]
    session = _ort_session(artifacts / variant / "image_encoder.onnx", threads, gpu, size)
    client = grpcclient.InferenceServerClient(grpc_url)

    def local(d: bytes) -> None:
        session.run(None, {"pixel_values": preprocess_image(d, size)[None]})

    def served(d: bytes) -> None:
        tensor = grpcclient.InferInput("image", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[d]], dtype=object))
        client.infer(model, [tensor])

    images = {"local": itertools.cycle(data), "served": itertools.cycle(data)}  # the same image each turn
    medians = interleaved_ms(
        {"local": lambda: local(next(images["local"])), "served": lambda: served(next(images["served"]))}, rounds
    )
    client.close()
    in_process_ms, triton_ms = medians["local"][0], medians["served"][0]
    return {"in_process_ms": in_process_ms, "triton_ms": triton_ms, "overhead": triton_ms / in_process_ms - 1}


def int8_breakdown(artifacts: Path, data: list[bytes], threads: int, runs: int = 4) -> dict[str, float] | None:
    """Share of kernel time by category for the int8_dynamic image encoder (CPU), or None.

    Shares, not milliseconds: profiling slows every kernel, so absolute times come from the
    unprofiled references.
    """
    from model_repository.colqwen2_serving.imaging import preprocess_image

    path = artifacts / "int8_dynamic" / "image_encoder.onnx"
    if not path.exists():
        return None
    size = json.loads((artifacts / "manifest.json").read_text())["image_size"]
    with tempfile.TemporaryDirectory() as tmp:
        session = cpu_session(path, threads, profile_prefix=os.path.join(tmp, "int8"))
        pixels = preprocess_image(data[0], size)[None]
        for _ in range(runs):
            session.run(None, {"pixel_values": pixels})
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: Counter[str] = Counter()
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event["args"]["op_name"]
            kind = "int8 matmuls" if op in _INT8_OPS else "float32 attention" if op in _ATTENTION_OPS else "other"
            totals[kind] += event["dur"]
    total = sum(totals.values()) or 1
    return {kind: totals[kind] / total for kind in ("int8 matmuls", "float32 attention", "other")}


def speedup_ceiling(shares: dict[str, float], baselines: dict[str, float]) -> float:
    """PyTorch time / (int8 in-process time with its int8 matmuls made free): an upper bound.

    Whatever the int8 kernels do, the float32 attention, the other kernels and the preprocessing
    remain; this is the best ratio any faster int8 matmul could reach on this checkpoint.
    """
    preprocess_ms = 1e3 / baselines["preprocess"]
    encoder_ms = 1e3 / baselines["onnxruntime int8_dynamic"] - preprocess_ms
    rest_ms = encoder_ms * (1 - shares["int8 matmuls"]) + preprocess_ms
    return (1e3 / baselines["colpali-engine pytorch"]) / rest_ms


def averaged(runs: list[dict[str, float]]) -> dict[str, float]:
    """Mean images/s per reference over runs (taken before and after the server sweep)."""
    return {k: float(np.mean([r[k] for r in runs if k in r])) for k in runs[0]}
