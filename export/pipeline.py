"""One export run: checkpoint -> checked, validated ONNX artifacts in one folder.

The run writes into `<out>.partial/` and renames it to `<out>/` only when every graph passed its
checks and every variant met its thresholds; a failed run leaves `<out>.failed/` (with its
report) and never a folder that looks complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from .errors import ConfigurationError, ValidationError
from .runtime import cpu_session, embed_images
from .spec import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_VARIANTS,
    ENCODERS,
    IMAGE_ENCODER,
    QUERY_ENCODER,
    RESOLUTION_STEP,
    VARIANTS,
)
from .validate import (
    References,
    ValidationInputs,
    apply_tolerance,
    compare,
    degrade,
    top1_agreement,
    write_report,
)

log = logging.getLogger(__name__)


@dataclass
class ExportOptions:
    checkpoint: str
    out_dir: Path
    image_size: int = DEFAULT_IMAGE_SIZE
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    validation_images: int = 4  # charts and photos each
    edge_cases: bool = True  # grayscale, RGBA, palette, extreme aspect ratios
    calibration_images: int = 16
    polygraphy: bool = True


def check_options(opts: ExportOptions) -> None:
    """Fail fast, before loading anything, on options that cannot work."""
    if opts.image_size <= 0 or opts.image_size % RESOLUTION_STEP:
        raise ConfigurationError(
            f"image size {opts.image_size} is not a positive multiple of {RESOLUTION_STEP} (patch 14 x merge 2)"
        )
    unknown = [v for v in opts.variants if v not in VARIANTS]
    if unknown or not opts.variants:
        raise ConfigurationError(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    out = Path(opts.out_dir).resolve()
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"output folder {out} cannot be created: {exc.strerror}") from None
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ConfigurationError(f"output folder {out} is not writable")
    if out.exists() and not out.is_dir():
        raise ConfigurationError(f"output path {out} is a file")


def _validation_inputs(processor, image_size: int, count: int, with_edge_cases: bool):
    from model_repository.colqwen2_serving.imaging import letterbox

    from .sample_images import QUERIES, validation_set

    samples = validation_set(count, with_edge_cases=with_edge_cases)
    pixels = np.stack([letterbox(s.image, image_size) for s in samples])
    batch = processor.process_queries(list(QUERIES))
    return ValidationInputs(
        pixels=pixels,
        image_names=[s.name for s in samples],
        query_pixels=degrade(pixels),
        query_ids=batch["input_ids"].numpy(),
        query_mask=batch["attention_mask"].numpy(),
    ), sorted({s.kind for s in samples})


def _references(model, processor, inputs: ValidationInputs) -> References:
    import torch
    from PIL import Image

    images = []
    with torch.no_grad():
        for arr in inputs.pixels:  # one at a time: the reference's own batching is not under test
            batch = processor.process_images([Image.fromarray(arr)])
            images.append(model(**batch)[0].float().numpy())
        q = model(input_ids=torch.from_numpy(inputs.query_ids), attention_mask=torch.from_numpy(inputs.query_mask))
    return References(images=np.stack(images), queries=q.float().numpy())


def _run_variant(folder: Path, inputs) -> dict[str, np.ndarray]:
    image = cpu_session(folder / f"{IMAGE_ENCODER.name}.onnx")
    query = cpu_session(folder / f"{QUERY_ENCODER.name}.onnx")
    q = query.run(None, {"input_ids": inputs.query_ids, "attention_mask": inputs.query_mask})[0]
    return {
        "images": embed_images(image, inputs.pixels),
        "image_queries": embed_images(image, inputs.query_pixels),
        "queries": q,
    }


def _calibration_feeds(processor, image_size: int, count: int):
    from model_repository.colqwen2_serving.imaging import letterbox

    from .sample_images import QUERIES, calibration_images

    images = [{"pixel_values": letterbox(img, image_size)[None]} for img in calibration_images(count)]
    texts = [f"{a} {b}" for a in QUERIES for b in QUERIES[:2]]
    queries = []
    for text in texts:
        batch = processor.process_queries([text])
        queries.append({"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()})
    return {IMAGE_ENCODER.name: images, QUERY_ENCODER.name: queries}


def run_export(opts: ExportOptions) -> Path:
    """Export, check and validate; returns the finished artifact folder."""
    import torch

    from .checkpoint import load_checkpoint
    from .encoders import ImageEncoder, QueryEncoder
    from .graph_checks import check_graph, polygraphy_inspect
    from .onnx_export import EXTERNAL_DATA_BYTES, export_encoder, to_matmul_dtype
    from .quantize import quantize_dynamic_int8, quantize_qdq

    check_options(opts)
    started = time.time()
    out = Path(opts.out_dir).resolve()
    tmp = out.with_name(out.name + ".partial")
    failed = out.with_name(out.name + ".failed")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    ckpt = load_checkpoint(opts.checkpoint)
    model, processor = ckpt.model, ckpt.processor
    pixels_per_image = opts.image_size**2
    ip = processor.image_processor
    lo, hi = ip.size["shortest_edge"], ip.size["longest_edge"]
    if not lo <= pixels_per_image <= hi:
        raise ConfigurationError(
            f"image size {opts.image_size} gives {pixels_per_image} pixels, outside the processor's "
            f"[{lo}, {hi}]: colpali-engine would resize it, so the encoder could not match it"
        )
    torch.set_grad_enabled(False)
    encoders = {
        IMAGE_ENCODER.name: ImageEncoder(model, processor, opts.image_size).eval(),
        QUERY_ENCODER.name: QueryEncoder(model).eval(),
    }
    inputs, kinds = _validation_inputs(processor, opts.image_size, opts.validation_images, opts.edge_cases)
    refs = _references(model, processor, inputs)
    n_params = sum(p.numel() for p in model.parameters())
    external = n_params * 4 > EXTERNAL_DATA_BYTES

    # fp32 first: it is the base of the INT8 forms; fp16 then casts the weights in place.
    fp32_dir = tmp / "fp32"
    for spec in ENCODERS:
        export_encoder(encoders[spec.name], spec, fp32_dir / f"{spec.name}.onnx")
    if "fp16" in opts.variants:
        for spec in ENCODERS:
            to_matmul_dtype(encoders[spec.name], torch.float16)
            export_encoder(encoders[spec.name], spec, tmp / "fp16" / f"{spec.name}.onnx")
    del encoders
    if "int8" in opts.variants or "int8_dynamic" in opts.variants:
        feeds = _calibration_feeds(processor, opts.image_size, opts.calibration_images)
        for spec in ENCODERS:
            src = fp32_dir / f"{spec.name}.onnx"
            if "int8" in opts.variants:
                (tmp / "int8").mkdir(exist_ok=True)
                quantize_qdq(src, tmp / "int8" / src.name, feeds[spec.name], external)
            if "int8_dynamic" in opts.variants:
                (tmp / "int8_dynamic").mkdir(exist_ok=True)
                quantize_dynamic_int8(src, tmp / "int8_dynamic" / src.name, external)

    graphs, checks, outputs = {}, [], {}
    mask = inputs.query_mask
    for variant in ("fp32", *[v for v in DEFAULT_VARIANTS if v != "fp32" and v in opts.variants]):
        folder = tmp / variant
        for spec in ENCODERS:
            path = folder / f"{spec.name}.onnx"
            graphs[f"{variant}/{spec.name}"] = asdict(check_graph(path))
            if opts.polygraphy:
                polygraphy_inspect(path, folder / f"{spec.name}.polygraphy.txt")
        outputs[variant] = _run_variant(folder, inputs)
        if variant not in opts.variants:
            continue
        img = compare(variant, IMAGE_ENCODER.name, outputs[variant]["images"], refs.images, None)
        qry = compare(variant, QUERY_ENCODER.name, outputs[variant]["queries"], refs.queries, mask)
        if VARIANTS[variant].tolerance.top1_agreement is not None:
            fp32, other = outputs["fp32"], outputs[variant]
            by_image = top1_agreement(fp32["image_queries"], other["image_queries"], fp32["images"], other["images"])
            by_text = top1_agreement(fp32["queries"], other["queries"], fp32["images"], other["images"], mask)
            for check in (img, qry):
                check.top1_agreement, check.decisive_queries = by_image.agreement, by_image.decisive
                check.text_top1_agreement = f"{by_text.agreement:.3f} of {by_text.decisive}"
                apply_tolerance(check, VARIANTS[variant].tolerance)
        checks += [img, qry]
    if "fp32" not in opts.variants:
        shutil.rmtree(fp32_dir)

    processor.save_pretrained(tmp / "processor")  # what the serving preprocessing reads
    meta = {
        "checkpoint": ckpt.source,
        "merged_adapter": ckpt.merged_adapter,
        "random_weights": ckpt.random_weights,
        "parameters": n_params,
        "image_size": opts.image_size,
        "image_sequence_length": int(refs.images.shape[1]),
        "visual_tokens": (opts.image_size // RESOLUTION_STEP) ** 2,
        "embedding_dim": int(refs.images.shape[-1]),
        "variants": {v: VARIANTS[v].description for v in opts.variants},
        "graphs": graphs,
        "n_images": len(inputs.image_names),
        "image_kinds": kinds,
        "n_queries": int(inputs.query_ids.shape[0]),
        "colpali_engine": version("colpali-engine"),
        "onnxruntime": version("onnxruntime"),
        "torch": version("torch"),
        "provider": "CPUExecutionProvider",
        "export_seconds": round(time.time() - started, 1),
    }
    write_report(checks, meta, tmp)
    (tmp / "manifest.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "graphs"}, indent=2))
    failures = [f"{c.variant}/{c.encoder}: {'; '.join(c.failures)}" for c in checks if not c.passed]
    if failures:
        shutil.rmtree(failed, ignore_errors=True)
        tmp.rename(failed)
        raise ValidationError(f"validation failed ({failed}/validation.md): {failures[0]}")
    shutil.rmtree(failed, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
