"""Render the committed `${var}` templates into a servable Triton model repository.

    python -m model_repository.render --artifacts artifacts/tiny --out build/model_repository/tiny

Which encoder serves each public ensemble depends on the host: a GPU host serves `colqwen2` in
FP16 and `colqwen2_int8` with the QDQ INT8 graph (TensorRT's form); a CPU-only host serves FP32
and ONNX Runtime's dynamic INT8, and says so in each ensemble's `precision` parameter.
The rendered folder is self-contained (model code, tokenizer, warmup data); ONNX variant folders
are symlinked unless `--copy` is given (a Docker image wants copies).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
LIBRARY = HERE / "colqwen2_serving"
PREPROCESS = "colqwen2_preprocess"

# Public ensemble -> (template, encoder kind, variant on GPU hosts, variant on CPU hosts).
ENSEMBLES = {
    "colqwen2": ("colqwen2", "image", "fp16", "fp32"),
    "colqwen2_int8": ("colqwen2", "image", "int8", "int8_dynamic"),
    "colqwen2_query": ("colqwen2_query", "query", "fp16", "fp32"),
    "colqwen2_query_int8": ("colqwen2_query", "query", "int8", "int8_dynamic"),
}
ONNX_FILES = {"image": "image_encoder.onnx", "query": "query_encoder.onnx"}
WARMUP_QUERY = "a price history chart"


class RenderError(Exception):
    pass


def encoder_name(kind: str, variant: str) -> str:
    return f"colqwen2_{kind}_encoder_{variant}"


def fill_template(text: str, values: dict[str, object], source: str = "template") -> str:
    """`${var}` substitution that fails on any variable left without a value."""
    try:
        return string.Template(text).substitute({k: str(v) for k, v in values.items()})
    except KeyError as exc:
        raise RenderError(f"{source}: no value for ${{{exc.args[0]}}}") from None
    except ValueError as exc:
        raise RenderError(f"{source}: {exc}") from None


def detect_device() -> str:
    """`gpu` when ONNX Runtime here can reach CUDA, else `cpu`."""
    try:
        import onnxruntime as ort

        return "gpu" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    except ImportError:
        return "cpu"


@dataclass
class RenderOptions:
    artifacts: Path
    out: Path
    device: str = "auto"  # auto | cpu | gpu
    extra_variants: tuple[str, ...] = ()  # more encoder models to load beside the ensembles' own
    max_batch_size: int = 32
    preferred_batch_sizes: tuple[int, ...] = ()  # empty: 4, 8 on CPU; 8, 16, 32 on GPU
    encoder_queue_delay_us: int = -1  # -1: 1000 on CPU, 2000 on GPU
    preprocess_queue_delay_us: int = 0  # decoding gains nothing from waiting
    preprocess_instances: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))
    encoder_instances: int = 1
    threads: int = 0  # ORT intra-op threads per encoder instance; 0 = all cores
    execution_providers: str = "tensorrt,cuda,cpu"
    trt_cache_dir: str = ""
    max_image_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_query_tokens: int = 512
    copy: bool = False
    dynamic_batching: bool = True  # off only to measure what it brings (bench/serving.py)
    # Requests waiting per model before Triton refuses new ones with UNAVAILABLE (the SDK retries
    # those with backoff; the gateway answers 503). 0: unbounded, Triton's default.
    max_queue_size: int = 0
    max_session_batch: int = -1  # images per ONNX Runtime call; -1: 4 on CPU (bounded memory), all on GPU
    ensemble_variants: dict[str, str] = field(default_factory=dict)  # e.g. {"colqwen2": "fp16"} on a CPU host


def ensemble_variant(opts: RenderOptions, ensemble: str, device: str) -> str:
    """The variant an ensemble serves: the override if given, else the host's default."""
    _, _, gpu_variant, cpu_variant = ENSEMBLES[ensemble]
    return opts.ensemble_variants.get(ensemble, gpu_variant if device == "gpu" else cpu_variant)


def _plan(opts: RenderOptions, device: str, available: set[str]) -> dict[str, tuple[str, str]]:
    """Encoder model name -> (kind, variant) for everything this repository loads."""
    plan: dict[str, tuple[str, str]] = {}
    for ensemble, (_, kind, _, _) in ENSEMBLES.items():
        variant = ensemble_variant(opts, ensemble, device)
        if variant not in available:
            raise RenderError(
                f"{ensemble} on a {device.upper()} host needs the {variant} artifacts, which {opts.artifacts} lacks; "
                f"export with VARIANTS including {variant}"
            )
        plan[encoder_name(kind, variant)] = (kind, variant)
    for variant in opts.extra_variants:
        if variant not in available:
            raise RenderError(f"extra variant {variant} is not in {opts.artifacts}")
        for kind in ONNX_FILES:
            plan[encoder_name(kind, variant)] = (kind, variant)
    return plan


def _batching_block(opts: RenderOptions, preferred: str, delay_us: int) -> str:
    """The `dynamic_batching` block, or nothing: each execute() then gets exactly one request."""
    if not opts.dynamic_batching:
        return "# dynamic batching off (render option)"
    queue = f"\n  default_queue_policy {{ max_queue_size: {opts.max_queue_size} }}" if opts.max_queue_size else ""
    return (
        f"dynamic_batching {{\n  preferred_batch_size: [ {preferred} ]\n  max_queue_delay_microseconds: {delay_us}"
        f"{queue}\n}}"
    )


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _model_code(model_dir: Path, template: str) -> None:
    """model.py plus its library beside it: the stub puts the version folder on sys.path."""
    version = model_dir / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copy2(TEMPLATES / template / "1" / "model.py", version / "model.py")
    shutil.copytree(LIBRARY, version / LIBRARY.name, ignore=shutil.ignore_patterns("__pycache__"))


def render(opts: RenderOptions) -> Path:
    """Write the repository to `opts.out` (replacing it) and return its path."""
    artifacts = opts.artifacts.resolve()
    manifest_file = artifacts / "manifest.json"
    if not manifest_file.exists():
        raise RenderError(f"{opts.artifacts} has no manifest.json: run `make export` (or python -m export) first")
    manifest = json.loads(manifest_file.read_text())
    device = detect_device() if opts.device == "auto" else opts.device
    if device not in ("cpu", "gpu"):
        raise RenderError(f"device must be auto, cpu or gpu, not {opts.device!r}")
    available = {p.name for p in artifacts.iterdir() if (p / ONNX_FILES["image"]).exists()}
    plan = _plan(opts, device, available)

    from .colqwen2_serving.queries import QueryTokenizer

    tokenizer = QueryTokenizer.from_processor_dir(artifacts / "processor", opts.max_query_tokens)
    warmup_ids = np.asarray(tokenizer.token_ids(WARMUP_QUERY), dtype="<i8")
    checkpoint = Path(manifest["checkpoint"])
    gpu = device == "gpu"
    preferred = ", ".join(map(str, opts.preferred_batch_sizes or ((8, 16, 32) if gpu else (4, 8))))
    encoder_delay = opts.encoder_queue_delay_us if opts.encoder_queue_delay_us >= 0 else (2000 if gpu else 1000)
    values: dict[str, object] = {
        "max_batch_size": opts.max_batch_size,
        "preprocess_instances": opts.preprocess_instances,
        "encoder_instances": opts.encoder_instances,
        "instance_kind": "KIND_GPU" if gpu else "KIND_CPU",
        "image_size": manifest["image_size"],
        "checkpoint": checkpoint.resolve() if checkpoint.exists() else checkpoint,
        "processor_dir": "processor",
        "max_image_bytes": opts.max_image_bytes,
        "max_image_pixels": opts.max_image_pixels,
        "max_query_tokens": opts.max_query_tokens,
        "pad_token_id": tokenizer.pad_id,
        "execution_providers": opts.execution_providers,
        "threads": opts.threads,
        "trt_cache_dir": opts.trt_cache_dir,
        "warmup_tokens": len(warmup_ids),
        "max_session_batch": opts.max_session_batch if opts.max_session_batch >= 0 else (0 if gpu else 4),
        "preprocess_batching": _batching_block(opts, preferred, opts.preprocess_queue_delay_us),
        "encoder_batching": _batching_block(opts, preferred, encoder_delay),
        "device": device,
    }
    if opts.max_batch_size < 1:
        raise RenderError("max_batch_size must be at least 1")
    if opts.max_queue_size < 0:
        raise RenderError("max_queue_size must be 0 (unbounded) or more")

    out = opts.out.resolve()
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)

    def config(template: str, model: str, extra: dict[str, object]) -> None:
        text = (TEMPLATES / template / "config.pbtxt").read_text()
        _write(staging / model / "config.pbtxt", fill_template(text, values | extra, f"{template}/config.pbtxt"))

    config(PREPROCESS, PREPROCESS, {})
    _model_code(staging / PREPROCESS, PREPROCESS)
    shutil.copytree(artifacts / "processor", staging / PREPROCESS / "1" / "processor")

    for model, (kind, variant) in plan.items():
        template = f"colqwen2_{kind}_encoder"
        config(template, model, {"name": model, "precision": variant, "onnx_model": f"onnx/{ONNX_FILES[kind]}"})
        _model_code(staging / model, template)
        onnx_dir = staging / model / "1" / "onnx"
        if opts.copy:
            shutil.copytree(artifacts / variant, onnx_dir, ignore=shutil.ignore_patterns("*.txt"))
        else:
            onnx_dir.symlink_to(artifacts / variant, target_is_directory=True)
        if kind == "query":
            warmup = staging / model / "warmup"
            warmup.mkdir()
            warmup_ids.tofile(warmup / "input_ids")
            np.ones_like(warmup_ids).tofile(warmup / "attention_mask")

    served: dict[str, str] = {}  # ensemble -> encoder model
    for ensemble, (template, kind, _, _) in ENSEMBLES.items():
        variant = ensemble_variant(opts, ensemble, device)
        served[ensemble] = encoder_name(kind, variant)
        config(template, ensemble, {"name": ensemble, "encoder": served[ensemble], "precision": variant})
        (staging / ensemble / "1").mkdir()  # ensembles still need a version folder

    (staging / "render.json").write_text(
        json.dumps(
            {
                "artifacts": str(artifacts),
                "device": device,
                "ensembles": served,
                "encoders": sorted(plan),
                "manifest": manifest,
            },
            indent=2,
        )
    )
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = RenderOptions(Path(), Path())
    parser.add_argument("--artifacts", type=Path, required=True, help="an export folder (with manifest.json)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    parser.add_argument("--extra-variants", default="", help="comma list: also load these variants' encoders")
    parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    parser.add_argument("--preprocess-instances", type=int, default=defaults.preprocess_instances)
    parser.add_argument("--encoder-instances", type=int, default=defaults.encoder_instances)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    parser.add_argument("--max-queue-size", type=int, default=0, help="per model; beyond it UNAVAILABLE (0: unbounded)")
    parser.add_argument("--max-query-tokens", type=int, default=defaults.max_query_tokens)
    parser.add_argument("--max-image-pixels", type=int, default=defaults.max_image_pixels)
    parser.add_argument("--execution-providers", default=defaults.execution_providers, help="order, on GPU instances")
    parser.add_argument("--trt-cache-dir", default="", help="TensorRT engine/timing cache (a persistent volume)")
    parser.add_argument("--copy", action="store_true", help="copy ONNX files instead of symlinking them")


def options_from_args(args: argparse.Namespace, out: Path) -> RenderOptions:
    return RenderOptions(
        artifacts=args.artifacts,
        out=out,
        device=args.device,
        extra_variants=tuple(v for v in args.extra_variants.split(",") if v),
        max_batch_size=args.max_batch_size,
        preprocess_instances=args.preprocess_instances,
        encoder_instances=args.encoder_instances,
        threads=args.threads,
        max_query_tokens=args.max_query_tokens,
        max_queue_size=args.max_queue_size,
        max_image_pixels=args.max_image_pixels,
        execution_providers=args.execution_providers,
        trt_cache_dir=args.trt_cache_dir,
        copy=args.copy,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_render_arguments(parser)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        out = render(options_from_args(args, args.out))
    except RenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
