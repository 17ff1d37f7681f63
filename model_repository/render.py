"""Render the committed `${var}` templates into a servable Triton model repository.

    python -m model_repository.render --artifacts artifacts/tiny --out build/model_repository/tiny

A deployment serves one precision by default: `fp16` (FP16 graphs on a GPU host, FP32 on a
CPU-only host) or `int8` (the QDQ graphs TensorRT builds INT8 kernels from on a GPU host, ONNX
Runtime's dynamic INT8 on a CPU host); `--precision fp16,int8` serves both. Each precision loads
one encoder model, `colqwen2_encoder_<variant>`: the vision graph and the one text graph in one
process, serving both the image and the query ensemble, so the language tower's weights (and, on
a GPU, the CUDA context) are paid once per precision.

| public ensemble | serves |
|---|---|
| `colqwen2`, `colqwen2_query` | fp16 if served, else int8 |
| `colqwen2_int8`, `colqwen2_query_int8` | int8, when served |

Images are embedded at their native resolution (colpali-engine's own grid, at most
`--max-visual-tokens` visual tokens), or letterboxed to one fixed S x S grid with `--fixed-image-size S`.
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
from colqwen2_client._constants import CANARY_PRIORITY, FINAL_CLAIM, PLACE_PARAMETER, USER_PRIORITY

from .budgets import ANSWER_EVERY, PREPROCESS_MAX_QUEUE, SESSION_BUDGETS

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
LIBRARY = HERE / "colqwen2_serving"
PREPROCESS = "colqwen2_preprocess"
ENCODER = "colqwen2_encoder"  # the template
PRECISIONS = ("fp16", "int8")  # what a deployment can serve; the variant depends on the host
HOST_VARIANTS = {"gpu": {"fp16": "fp16", "int8": "int8"}, "cpu": {"fp16": "fp32", "int8": "int8_dynamic"}}
ONNX_FILES = {"vision": "vision_encoder.onnx", "text": "text_encoder.onnx"}
WARMUP_QUERY = "a price history chart"
# Admission defaults per host kind. CPU: 10 s of work ahead, about 8 photos at the cap on the medium checkpoint
# (1.2 s each in fp32; README "Overload"); a GPU answers in milliseconds, so 2 s there is generous. The rate
# is the medium checkpoint's fp32 rate on a 2-core CPU (1.2 s / 1536 units); the encoder measures its own.
ADMISSION_WAIT_MS = {"cpu": 10_000, "gpu": 2_000}
ADMISSION_RATE_NS = {"cpu": 800_000, "gpu": 10_000}
WARMUP_GRID = (2, 2)  # the smallest image: 4 visual tokens, 16 patches (the encoder template's warmup)


class RenderError(Exception):
    pass


def encoder_name(variant: str) -> str:
    """`colqwen2_encoder_<variant>`: the vision and text graphs of one variant."""
    return f"colqwen2_encoder_{variant}"


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
    precisions: tuple[str, ...] = ("fp16",)  # from PRECISIONS
    extra_variants: tuple[str, ...] = ()  # more encoder pairs to load beside the ensembles' own (tests, A/Bs)
    variant_overrides: dict[str, str] = field(default_factory=dict)  # precision -> variant, e.g. {"fp16": "fp16"}
    max_visual_tokens: int = 0  # per image; 0: the checkpoint's own cap
    fixed_image_size: int = 0  # 0: native resolution; S: letterbox every image to S x S
    max_batch_size: int = 32
    preferred_batch_sizes: tuple[int, ...] = ()  # empty: 4, 8 on CPU; 8, 16, 32 on GPU
    encoder_queue_delay_us: int = -1  # -1: 1000 on CPU, 2000 on GPU
    preprocess_queue_delay_us: int = 0  # decoding gains nothing from waiting
    preprocess_instances: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))
    encoder_instances: int = 1
    threads: int = 0  # ORT intra-op threads per encoder instance; 0 = all cores
    execution_providers: str = "tensorrt,cuda,cpu"
    # A GPU render whose encoder runs on the CPU provider after all (ONNX Runtime drops a provider it cannot
    # load, silently) reports unhealthy, unless this is set.
    allow_cpu_fallback: bool = False
    trt_cache_dir: str = ""
    max_image_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_query_tokens: int = 512
    copy: bool = False
    dynamic_batching: bool = True  # off only to measure what it brings (bench/serving.py)
    # Overload is refused, not queued without end (the SDK retries refusals with backoff; the gateway
    # answers 503). A user request is refused at once when `max_queue_size` requests already wait in a
    # model's queue (a memory bound: 128 images at the token cap hold about 230 MB of patches), and
    # refused when it has waited `queue_timeout_ms` (about 2 s of work: on the medium checkpoint a
    # CPU serves 0.8 to 1.1 images/s, so 2 s is 2 images; a GPU many more). 0 turns either off.
    max_queue_size: int = 128
    queue_timeout_ms: int = 2000
    # Preprocessing (admission's check, then a decode for what it admits) is bounded by count, not time: a
    # request finding `preprocess_max_queue` others already waiting is refused (busy) at once; -1: the host's
    # (budgets.PREPROCESS_MAX_QUEUE: at least the gateway's batch window, so one user's batch is never refused
    # there, however slow the host), 0: max_queue_size. A time bound refused a single user's 4 in flight on a host
    # busy with other work (the decode waited > 500 ms). `preprocess_queue_timeout_ms` adds one (0: none).
    preprocess_max_queue: int = -1
    preprocess_queue_timeout_ms: int = 0
    # Admission (colqwen2_serving/admission.py): an image is refused at once, before its decode, when more than
    # this much encoder work (ms, at the encoder's measured rate) is ahead of it; -1: the host's default
    # (ADMISSION_WAIT_MS), 0: off. With it on, the encoder's queue has no time bound (what it holds is already
    # bounded), so an admitted request is never refused late. `admission_min_in_flight` requests always pass.
    admission_wait_ms: int = -1
    admission_min_in_flight: int = 4
    admission_rate_ns: int = 0  # encoder ns per unit of cost until measured; 0: the host's ADMISSION_RATE_NS
    # What one ONNX Runtime call may hold; 0: the host's default (SESSION_BUDGETS).
    max_session_patches: int = 0
    max_session_images: int = 0
    max_session_tokens: int = 0
    max_session_sequences: int = 0
    vision_padding_pct: int = 0  # 0 here: the host's (budgets.SESSION_BUDGETS); -1 any
    text_padding_pct: int = 0


def precision_of(variant: str) -> str:
    """The service precision a variant serves: fp32 and fp16 are `fp16`, both INT8 forms `int8`."""
    return "int8" if variant.startswith("int8") else "fp16"


def admission_wait_ms(opts: RenderOptions, device: str) -> int:
    """The admission bound a render writes: the option's, or (-1) the host's default; 0 is off."""
    return opts.admission_wait_ms if opts.admission_wait_ms >= 0 else ADMISSION_WAIT_MS[device]


def session_budgets(opts: RenderOptions, device: str, variant: str) -> dict[str, int]:
    """The host's budgets for this variant's precision, with the render options' overrides."""
    defaults = SESSION_BUDGETS[device][precision_of(variant)]
    return {name: getattr(opts, name) or value for name, value in defaults.items()}


@dataclass(frozen=True)
class Plan:
    """What one render writes: the host, the encoder pairs to load and what each ensemble serves."""

    device: str
    encoders: dict[str, str]  # model name -> variant
    ensembles: dict[str, tuple[str, str, str]]  # public ensemble -> (template, precision, variant)


def served_variant(opts: RenderOptions, precision: str, device: str) -> str:
    return opts.variant_overrides.get(precision, HOST_VARIANTS[device][precision])


def served_variants(precisions: str, device: str = "") -> str:
    """The variants a host serves for `precisions` ("fp16,int8"), comma-separated: what `make serve` exports
    when the artifacts are missing (a CPU host serving fp16 needs only fp32)."""
    device = device or detect_device()
    return ",".join(dict.fromkeys(HOST_VARIANTS[device][p.strip()] for p in precisions.split(",") if p.strip()))


def plan(opts: RenderOptions, device: str, available: set[str]) -> Plan:
    unknown = [p for p in opts.precisions if p not in PRECISIONS]
    if unknown or not opts.precisions:
        raise RenderError(f"precision must be one or both of {', '.join(PRECISIONS)}, not {list(opts.precisions)}")
    primary = "fp16" if "fp16" in opts.precisions else "int8"
    ensembles = {"colqwen2": ("colqwen2", primary), "colqwen2_query": ("colqwen2_query", primary)}
    if "int8" in opts.precisions:
        ensembles |= {"colqwen2_int8": ("colqwen2", "int8"), "colqwen2_query_int8": ("colqwen2_query", "int8")}
    variants = [served_variant(opts, p, device) for p in opts.precisions]
    for precision, variant in zip(opts.precisions, variants, strict=True):
        if variant not in available:
            raise RenderError(
                f"serving {precision} on a {device.upper()} host needs the {variant} artifacts, which "
                f"{opts.artifacts} lacks; export with VARIANTS including {variant}"
            )
    for variant in opts.extra_variants:
        if variant not in available:
            raise RenderError(f"extra variant {variant} is not in {opts.artifacts}")
    encoders = {encoder_name(variant): variant for variant in [*variants, *opts.extra_variants]}
    return Plan(
        device,
        encoders,
        {name: (template, p, served_variant(opts, p, device)) for name, (template, p) in ensembles.items()},
    )


def read_export(artifacts: Path) -> tuple[dict, set[str]]:
    """The export's manifest and the variants it holds."""
    manifest_file = artifacts / "manifest.json"
    if not manifest_file.exists():
        raise RenderError(f"{artifacts} has no manifest.json: run `make export` (or python -m export) first")
    manifest = json.loads(manifest_file.read_text())
    if "min_pixels" not in manifest:
        raise RenderError(f"{artifacts} is an export from before native resolution: export it again")
    available = {p.name for p in artifacts.iterdir() if all((p / f).exists() for f in ONNX_FILES.values())}
    return manifest, available


def pixel_limits(opts: RenderOptions, manifest: dict):
    """The checkpoint's pixel limits under the render's token cap, with the other numeric options checked."""
    from .colqwen2_serving.grid import PixelLimits

    names = ("max_batch_size", "max_queue_size", "queue_timeout_ms", "max_visual_tokens", "fixed_image_size",
             "admission_min_in_flight", "admission_rate_ns", "preprocess_queue_timeout_ms")  # fmt: skip
    for name in names:
        if getattr(opts, name) < 0 or (name == "max_batch_size" and opts.max_batch_size < 1):
            raise RenderError(f"{name} must be {'at least 1' if name == 'max_batch_size' else '0 or more'}")
    if opts.preprocess_max_queue < -1:
        raise RenderError("preprocess_max_queue must be -1 (the host's default), 0 (max_queue_size) or more")
    if opts.admission_wait_ms < -1:
        raise RenderError("admission_wait_ms must be -1 (the host's default), 0 (off) or more")
    try:
        limits = PixelLimits(manifest["min_pixels"], manifest["max_pixels"]).capped(opts.max_visual_tokens or None)
    except ValueError as exc:
        raise RenderError(str(exc)) from None
    size = opts.fixed_image_size
    if size and (size % 28 or not limits.min_pixels <= size * size <= limits.max_pixels):
        raise RenderError(
            f"fixed image size {size} must be a multiple of 28 with {size}x{size} pixels inside "
            f"[{limits.min_pixels}, {limits.max_pixels}]"
        )
    return limits


def template_values(
    opts: RenderOptions, manifest: dict, device: str, artifacts: Path
) -> tuple[dict[str, object], dict]:
    """Every `${var}` the templates use (the encoders' call budgets aside), and the encoders' warmup arrays."""
    from .colqwen2_serving.prompts import PromptTokenizer

    limits = pixel_limits(opts, manifest)
    size = opts.fixed_image_size
    tokenizer = PromptTokenizer.from_processor_dir(artifacts / "processor", opts.max_query_tokens)
    gpu = device == "gpu"
    preferred = ", ".join(map(str, opts.preferred_batch_sizes or ((8, 16, 32) if gpu else (4, 8))))
    encoder_delay = opts.encoder_queue_delay_us if opts.encoder_queue_delay_us >= 0 else (2000 if gpu else 1000)
    admission_ms = admission_wait_ms(opts, device)
    checkpoint = Path(manifest["checkpoint"])
    values: dict[str, object] = {
        "max_batch_size": opts.max_batch_size,
        "preprocess_instances": opts.preprocess_instances,
        "encoder_instances": opts.encoder_instances,
        "instance_kind": "KIND_GPU" if gpu else "KIND_CPU",
        "resolution": f"fixed-{size}" if size else "native",
        "fixed_image_size": size,
        "min_pixels": limits.min_pixels,
        "max_pixels": limits.max_pixels,
        "max_visual_tokens": limits.max_visual_tokens,
        "checkpoint": checkpoint.resolve() if checkpoint.exists() else checkpoint,
        "processor_dir": "processor",
        "max_image_bytes": opts.max_image_bytes,
        "max_image_pixels": opts.max_image_pixels,
        "max_query_tokens": opts.max_query_tokens,
        "max_prompt_tokens": len(tokenizer.image_prompt_ids(limits.max_visual_tokens)),
        "visual_token_offset": len(tokenizer.image_prefix),
        "hidden_size": manifest["hidden_size"],
        "pad_token_id": tokenizer.pad_id,
        "image_token_id": tokenizer.image_token_id,
        "execution_providers": opts.execution_providers,
        "allow_cpu_fallback": "true" if opts.allow_cpu_fallback else "false",
        "threads": opts.threads,
        "trt_cache_dir": opts.trt_cache_dir,
        # one request per preprocessing call: decoding gains nothing from batches, and a short call lets the
        # scheduler refuse what timed out (and admission refuse what is over its bound) without waiting on one
        "preprocess_batching": _batching_block(
            opts,
            "1",
            opts.preprocess_queue_delay_us,
            opts.preprocess_queue_timeout_ms,
            preprocess_queue(opts, device),
        ),
        "encoder_batching": _batching_block(
            opts, preferred, encoder_delay, 0 if admission_ms else opts.queue_timeout_ms
        ),
        "device": device,
        "answer_every": ANSWER_EVERY[device],
        "admission_wait_ms": admission_ms,
        "admission_min_in_flight": opts.admission_min_in_flight,
        "admission_rate_ns": opts.admission_rate_ns or ADMISSION_RATE_NS[device],
        "admission_place_parameter": PLACE_PARAMETER,
        "admission_final_claim": FINAL_CLAIM,
    }
    warmup_ids = np.asarray(tokenizer.token_ids(WARMUP_QUERY), dtype="<i8")
    prompt_ids = np.asarray(tokenizer.image_prompt_ids(WARMUP_GRID[0] * WARMUP_GRID[1]), dtype="<i8")
    values["warmup_tokens"], values["warmup_prompt_tokens"] = len(warmup_ids), len(prompt_ids)
    warmup = {
        "input_ids": warmup_ids,
        "attention_mask": np.ones_like(warmup_ids),
        "prompt_ids": prompt_ids,
        "prompt_mask": np.ones_like(prompt_ids),
        "grid": np.asarray(WARMUP_GRID, dtype="<i4"),
    }
    return values, warmup


def preprocess_queue(opts: RenderOptions, device: str) -> int:
    """How many requests may wait for preprocessing (0: no bound)."""
    if opts.preprocess_max_queue < 0:
        return PREPROCESS_MAX_QUEUE[device]
    return opts.preprocess_max_queue or opts.max_queue_size


def _batching_block(
    opts: RenderOptions, preferred: str, delay_us: int, timeout_ms: int | None = None, max_queue: int | None = None
) -> str:
    """The `dynamic_batching` block, or nothing: each execute() then gets exactly one request. `timeout_ms` and
    `max_queue`: the queue's time and count bounds (default the render options'; 0 none)."""
    if not opts.dynamic_batching:
        return "# dynamic batching off (render option)"
    timeout_ms = opts.queue_timeout_ms if timeout_ms is None else timeout_ms
    max_queue = opts.max_queue_size if max_queue is None else max_queue
    policy = []
    if max_queue:
        policy.append(f"max_queue_size: {max_queue}")
    if timeout_ms:
        policy.append(f"timeout_action: REJECT default_timeout_microseconds: {timeout_ms * 1000}")
    queue = f"\n  default_queue_policy {{ {' '.join(policy)} }}" if policy else ""
    # Two priority levels: user traffic at the default (2, bounded), health canaries at 1, which the
    # batcher serves first and which no queue bound refuses, so a saturated server still answers them.
    lanes = (
        f"\n  priority_levels: 2\n  default_priority_level: {USER_PRIORITY}"
        f"\n  priority_queue_policy {{ key: {CANARY_PRIORITY} value: {{ max_queue_size: 0 }} }}"
    )
    return (
        f"dynamic_batching {{\n  preferred_batch_size: [ {preferred} ]\n  max_queue_delay_microseconds: {delay_us}"
        f"{queue}{lanes}\n}}"
    )


def write_config(repo: Path, template: str, model: str, values: dict[str, object]) -> None:
    text = (TEMPLATES / template / "config.pbtxt").read_text()
    path = repo / model / "config.pbtxt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(fill_template(text, values, f"{template}/config.pbtxt"))


def write_model_code(model_dir: Path, template: str) -> None:
    """model.py plus its library beside it: the stub puts the version folder on sys.path."""
    version = model_dir / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copy2(TEMPLATES / template / "1" / "model.py", version / "model.py")
    shutil.copytree(LIBRARY, version / LIBRARY.name, ignore=shutil.ignore_patterns("__pycache__"))


def write_preprocess(repo: Path, values: dict[str, object], artifacts: Path) -> None:
    write_config(repo, PREPROCESS, PREPROCESS, values)
    write_model_code(repo / PREPROCESS, PREPROCESS)
    shutil.copytree(artifacts / "processor", repo / PREPROCESS / "1" / "processor")


def write_encoders(repo: Path, the_plan: Plan, values: dict[str, object], warmup: dict, opts: RenderOptions) -> None:
    artifacts = opts.artifacts.resolve()
    for model, variant in the_plan.encoders.items():
        budgets = session_budgets(opts, the_plan.device, variant)
        write_config(repo, ENCODER, model, values | budgets | {"name": model, "precision": variant})
        write_model_code(repo / model, ENCODER)
        onnx_dir = repo / model / "1" / "onnx"
        if opts.copy:
            shutil.copytree(artifacts / variant, onnx_dir, ignore=shutil.ignore_patterns("*.txt"))
        else:
            onnx_dir.symlink_to(artifacts / variant, target_is_directory=True)
        (repo / model / "warmup").mkdir()
        for name, array in warmup.items():
            array.tofile(repo / model / "warmup" / name)


def write_ensembles(repo: Path, the_plan: Plan, values: dict[str, object]) -> dict[str, str]:
    """The public ensembles; returns which variant each serves."""
    served = {}
    for ensemble, (template, _, variant) in the_plan.ensembles.items():
        names = {"name": ensemble, "precision": variant, "encoder": encoder_name(variant)}
        write_config(repo, template, ensemble, values | names)
        (repo / ensemble / "1").mkdir()  # ensembles still need a version folder
        served[ensemble] = variant
    return served


def render(opts: RenderOptions) -> Path:
    """Write the repository to `opts.out` (replacing it) and return its path."""
    artifacts = opts.artifacts.resolve()
    manifest, available = read_export(artifacts)
    device = detect_device() if opts.device == "auto" else opts.device
    if device not in ("cpu", "gpu"):
        raise RenderError(f"device must be auto, cpu or gpu, not {opts.device!r}")
    the_plan = plan(opts, device, available)
    values, warmup = template_values(opts, manifest, device, artifacts)

    out = opts.out.resolve()
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    write_preprocess(staging, values, artifacts)
    write_encoders(staging, the_plan, values, warmup, opts)
    served = write_ensembles(staging, the_plan, values)
    summary = {
        "artifacts": str(artifacts),
        "device": device,
        "precisions": list(opts.precisions),
        "ensembles": served,
        "encoders": sorted(the_plan.encoders),
        "resolution": values["resolution"],
        "max_visual_tokens": values["max_visual_tokens"],
        "manifest": manifest,
    }
    (staging / "render.json").write_text(json.dumps(summary, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    """The render options, in this order: what is served, capacity and queues, call budgets, runtime."""
    defaults = RenderOptions(Path(), Path())
    _add_serving_arguments(parser, defaults)
    _add_capacity_arguments(parser, defaults)
    _add_budget_arguments(parser)
    _add_runtime_arguments(parser, defaults)


def _add_serving_arguments(parser: argparse.ArgumentParser, d: RenderOptions) -> None:
    """The export, the host, the precisions and the image resolution."""
    parser.add_argument(
        "--artifacts", type=Path, required=True, metavar="DIR", help="an export folder (with manifest.json): required"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"], help="host kind (default: auto)")
    parser.add_argument(
        "--precision",
        default=",".join(d.precisions),
        help="fp16, int8 or fp16,int8: what the deployment serves (fp16 is FP32 on a CPU host; int8 is QDQ "
        "on a GPU host, dynamic on a CPU host) (default: %(default)s)",
    )
    parser.add_argument(
        "--max-visual-tokens",
        type=int,
        default=0,
        help="cap per image (colpali-engine's max_num_visual_tokens): 4 up to the checkpoint's own cap "
        "(default: the checkpoint's cap)",
    )
    parser.add_argument(
        "--fixed-image-size", type=int, default=0, help="letterbox every image to S x S instead of native (default: 0)"
    )
    parser.add_argument(
        "--extra-variants",
        default="",
        metavar="LIST",
        help="comma list of variants (fp32, fp16, int8, int8_dynamic) whose encoders are loaded too, without a "
        "public ensemble (default: none)",
    )


def _add_capacity_arguments(parser: argparse.ArgumentParser, d: RenderOptions) -> None:
    """Batching, instances, threads and the queue bounds."""
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=d.max_batch_size,
        metavar="N",
        help="requests Triton's dynamic batcher merges into one call, per model (default: %(default)s)",
    )
    parser.add_argument(
        "--preprocess-instances",
        type=int,
        default=d.preprocess_instances,
        metavar="N",
        help="processes decoding and resizing images in parallel (default: %(default)s)",
    )
    parser.add_argument(
        "--encoder-instances",
        type=int,
        default=d.encoder_instances,
        metavar="N",
        help="ONNX Runtime sessions per served precision; each holds the weights once (default: %(default)s)",
    )
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (default: 0, all cores)")
    parser.add_argument(
        "--max-queue-size",
        type=int,
        default=d.max_queue_size,
        help="user requests waiting per model; beyond it refused at once (default: %(default)s; 0: unbounded)",
    )
    parser.add_argument(
        "--queue-timeout-ms",
        type=int,
        default=d.queue_timeout_ms,
        help="a user request waiting longer in the encoder's queue is refused, with admission off (default: "
        "%(default)s; 0: never)",
    )
    parser.add_argument(
        "--preprocess-queue-timeout-ms",
        type=int,
        default=d.preprocess_queue_timeout_ms,
        help="a user request waiting longer for preprocessing is refused (default: %(default)s; 0: no time bound)",
    )
    parser.add_argument(
        "--preprocess-max-queue",
        type=int,
        default=d.preprocess_max_queue,
        help="a user request finding this many waiting for preprocessing is refused at once (default: the host's, "
        "32 on a CPU and 64 on a GPU; 0: --max-queue-size)",
    )
    parser.add_argument(
        "--admission-wait-ms",
        type=int,
        default=d.admission_wait_ms,
        help="refuse an image at once when more encoder work than this is ahead of it (default: -1, the "
        f"host's: {ADMISSION_WAIT_MS['cpu']} on CPU, {ADMISSION_WAIT_MS['gpu']} on GPU; 0: admission off)",
    )
    parser.add_argument(
        "--admission-min-in-flight",
        type=int,
        default=d.admission_min_in_flight,
        metavar="N",
        help="image requests always admitted while fewer are in flight (default: %(default)s)",
    )


def _add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    """What one ONNX Runtime call may hold; the defaults are the host's (`budgets.SESSION_BUDGETS`)."""
    cpu, gpu = SESSION_BUDGETS["cpu"]["fp16"], SESSION_BUDGETS["gpu"]
    parser.add_argument(
        "--max-session-patches",
        type=int,
        default=0,
        help=f"vision patches per ONNX Runtime call (default: {cpu['max_session_patches']} on CPU; on GPU "
        f"{gpu['fp16']['max_session_patches']} fp16, {gpu['int8']['max_session_patches']} int8)",
    )
    parser.add_argument(
        "--max-session-tokens",
        type=int,
        default=0,
        help=f"text tokens per ONNX Runtime call (default: {cpu['max_session_tokens']} on CPU; on GPU "
        f"{gpu['fp16']['max_session_tokens']} fp16, {gpu['int8']['max_session_tokens']} int8)",
    )


def _add_runtime_arguments(parser: argparse.ArgumentParser, d: RenderOptions) -> None:
    """Input limits, execution providers, the TensorRT cache and how ONNX files are placed."""
    parser.add_argument(
        "--max-query-tokens",
        type=int,
        default=d.max_query_tokens,
        metavar="N",
        help="longest text query in tokens; longer queries are refused (default: %(default)s)",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=d.max_image_pixels,
        help="refused before decoding (default: %(default)s)",
    )
    parser.add_argument(
        "--execution-providers", default=d.execution_providers, help="order, on GPU instances (default: %(default)s)"
    )
    parser.add_argument(
        "--allow-cpu-fallback",
        action="store_true",
        help="a GPU render whose encoder ends up on the CPU provider stays healthy (default: unhealthy)",
    )
    parser.add_argument(
        "--trt-cache-dir",
        default="",
        metavar="DIR",
        help="TensorRT engine and timing cache, a persistent volume on GPU hosts (default: none, engines are "
        "rebuilt at every start)",
    )
    parser.add_argument(
        "--copy", action="store_true", help="copy ONNX files instead of symlinking them (default: symlink)"
    )


def options_from_args(args: argparse.Namespace, out: Path) -> RenderOptions:
    return RenderOptions(
        artifacts=args.artifacts,
        out=out,
        device=args.device,
        precisions=_comma_list(args.precision),
        max_visual_tokens=args.max_visual_tokens,
        fixed_image_size=args.fixed_image_size,
        extra_variants=_comma_list(args.extra_variants),
        max_batch_size=args.max_batch_size,
        preprocess_instances=args.preprocess_instances,
        encoder_instances=args.encoder_instances,
        threads=args.threads,
        max_query_tokens=args.max_query_tokens,
        max_queue_size=args.max_queue_size,
        queue_timeout_ms=args.queue_timeout_ms,
        admission_wait_ms=args.admission_wait_ms,
        preprocess_queue_timeout_ms=args.preprocess_queue_timeout_ms,
        preprocess_max_queue=args.preprocess_max_queue,
        admission_min_in_flight=args.admission_min_in_flight,
        max_image_pixels=args.max_image_pixels,
        max_session_patches=args.max_session_patches,
        max_session_tokens=args.max_session_tokens,
        execution_providers=args.execution_providers,
        allow_cpu_fallback=args.allow_cpu_fallback,
        trt_cache_dir=args.trt_cache_dir,
        copy=args.copy,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_repository.render",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_render_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="where to render: required")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
