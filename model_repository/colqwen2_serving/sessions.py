"""ONNX Runtime sessions for the encoders: TensorRT, then CUDA, then CPU, by availability and config."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
DEFAULT_PROVIDERS = ("tensorrt", "cuda", "cpu")


@dataclass(frozen=True)
class SessionConfig:
    providers: tuple[str, ...] = DEFAULT_PROVIDERS  # preference order, short names
    precision: str = "fp32"  # the artifact variant: fp32 | fp16 | int8 | int8_dynamic
    device_id: int = 0
    threads: int = 0  # intra-op threads on CPU; 0 = ONNX Runtime's default (all cores)
    cache_dir: str = ""  # TensorRT engine and timing cache; empty = next to the model
    # TensorRT optimisation profile: input name -> (min, opt, max) shapes. Without one TensorRT
    # rebuilds the engine whenever a larger batch arrives.
    profile: tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...] = ()
    # Whether idle intra-op threads spin waiting for work (ONNX Runtime's default). A served CPU host turns it off:
    # between and beside the graphs' ops the host's other work (decoding, Triton, gRPC) needs those cores.
    spin: bool = True


def _shapes(profile, which: int) -> str:
    return ",".join(f"{name}:{'x'.join(map(str, shapes[which]))}" for name, *shapes in profile)


def parse_providers(text: str) -> tuple[str, ...]:
    names = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    unknown = [p for p in names if p not in PROVIDER_NAMES]
    if unknown or not names:
        raise ValueError(f"execution_providers {text!r}: use a comma list of {', '.join(PROVIDER_NAMES)}")
    return names


def provider_chain(config: SessionConfig, model_path: Path, available: list[str]) -> list:
    """The (name, options) list ONNX Runtime takes, keeping only providers this host has."""
    chain: list = []
    for short in config.providers:
        name = PROVIDER_NAMES[short]
        if name not in available:
            continue
        if short == "tensorrt":
            cache = config.cache_dir or str(model_path.parent / "trt_cache")
            chain.append(
                (
                    name,
                    {
                        "device_id": config.device_id,
                        # fp16 artifacts keep norms in fp32 in the graph; TensorRT honours that.
                        "trt_fp16_enable": config.precision in ("fp16", "int8"),
                        # QDQ graphs are explicitly quantized: INT8 comes from the graph, not calibration.
                        "trt_int8_enable": config.precision == "int8",
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": cache,
                        "trt_timing_cache_enable": True,
                        "trt_timing_cache_path": cache,
                    }
                    | (
                        {
                            "trt_profile_min_shapes": _shapes(config.profile, 0),
                            "trt_profile_opt_shapes": _shapes(config.profile, 1),
                            "trt_profile_max_shapes": _shapes(config.profile, 2),
                        }
                        if config.profile
                        else {}
                    ),
                )
            )
        elif short == "cuda":
            # Grow the arena by what is asked, not to the next power of two (which can double the reservation).
            chain.append((name, {"device_id": config.device_id, "arena_extend_strategy": "kSameAsRequested"}))
        else:
            chain.append(name)
    if not chain:
        raise RuntimeError(f"none of the execution providers {config.providers} is available here ({available})")
    return chain


def create_session(model_path: str | Path, config: SessionConfig):
    import onnxruntime as ort

    model_path = Path(model_path)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Memory patterns are planned and cached per input shape; at native resolution nearly every call
    # has a new shape, so the cache only grows (1467 MB against 882 MB RSS for the medium fp32 graphs
    # over the mixed workload, in one process).
    opts.enable_mem_pattern = False
    if config.threads:
        opts.intra_op_num_threads = config.threads
    opts.inter_op_num_threads = 1
    if not config.spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    chain = provider_chain(config, model_path, ort.get_available_providers())
    session = ort.InferenceSession(str(model_path), opts, providers=chain)
    log.info("loaded %s with %s", model_path.name, session.get_providers())
    return session


def provider_of(session) -> str:
    """The short name of the provider a session really runs on (ONNX Runtime drops unavailable ones silently)."""
    first = session.get_providers()[0]
    return next((short for short, name in PROVIDER_NAMES.items() if name == first), first)


def session_from_parameters(params, args: dict[str, str], model_path: Path, profile=()):
    """A session for `model_path` configured by the encoder model's config parameters and Triton's instance args."""
    on_gpu = args.get("model_instance_kind") == "GPU"
    config = SessionConfig(
        providers=parse_providers(params.text("execution_providers", ",".join(DEFAULT_PROVIDERS)))
        if on_gpu
        else ("cpu",),  # a KIND_CPU instance must not grab a GPU even if the host has one
        precision=params.text("precision", "fp32"),
        device_id=int(args.get("model_instance_device_id", "0") or 0),
        threads=params.integer("threads", 0),
        cache_dir=params.text("trt_cache_dir", ""),
        profile=tuple(profile),
        spin=on_gpu,
    )
    return create_session(model_path, config)
