"""One export run: checkpoint -> checked, validated ONNX artifacts in one folder.

`run_export` is a short orchestrator over named steps: load, prepare the validation inputs, run
the colpali-engine reference, write the graphs of every variant, check them, validate them, write
the manifest and the report. The run writes into `<out>.partial/` and renames it to `<out>/` only
when every graph passed its checks and every variant met its thresholds; a failed run leaves
`<out>.failed/` (with its report) and never a folder that looks complete.

Validation runs each variant through the serving code itself (`colqwen2_serving`: native-resolution
preprocessing, the prompt tokenizer, the batching runners), on images of many sizes and aspects.
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
from .spec import DEFAULT_VARIANTS, GRAPHS, VARIANTS
from .validate import References, ValidationInputs

log = logging.getLogger(__name__)


@dataclass
class ExportOptions:
    checkpoint: str
    out_dir: Path
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    validation_images: int = 4  # charts and photos each, at the sizes users send
    edge_cases: bool = True  # below the pixel minimum, odd sizes, extreme aspect ratios, modes
    calibration_images: int = 16
    polygraphy: bool = True


@dataclass(frozen=True)
class Layout:
    """What serving needs to know about the checkpoint, read once from the loaded model and processor."""

    min_pixels: int
    max_pixels: int
    hidden_size: int  # the text tower's width: the visual features' width
    image_token_id: int
    pad_token_id: int

    @property
    def max_visual_tokens(self) -> int:
        from model_repository.colqwen2_serving.grid import PIXELS_PER_TOKEN

        return self.max_pixels // PIXELS_PER_TOKEN


def check_options(opts: ExportOptions) -> None:
    """Fail fast, before loading anything, on options that cannot work."""
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


def describe(ckpt) -> Layout:
    image_processor = ckpt.processor.image_processor
    return Layout(
        min_pixels=int(image_processor.size["shortest_edge"]),
        max_pixels=int(image_processor.size["longest_edge"]),
        hidden_size=int(ckpt.model.config.text_config.hidden_size),
        image_token_id=int(ckpt.model.config.image_token_id),
        pad_token_id=int(ckpt.processor.tokenizer.pad_token_id),
    )


def validation_inputs(processor, opts: ExportOptions) -> ValidationInputs:
    """Charts, photos and edge cases at their own sizes (RGB, alpha on white, as served), their
    degraded copies, and the text queries tokenised by colpali-engine."""
    from model_repository.colqwen2_serving.imaging import to_rgb

    from .sample_images import QUERIES, validation_set
    from .validate import degrade

    samples = validation_set(opts.validation_images, with_edge_cases=opts.edge_cases)
    images = [to_rgb(s.image) for s in samples]
    batch = processor.process_queries(list(QUERIES))
    return ValidationInputs(
        images=images,
        image_names=[s.name for s in samples],
        image_kinds=sorted({s.kind for s in samples}),
        query_images=degrade(images),
        query_ids=batch["input_ids"].numpy(),
        query_mask=batch["attention_mask"].numpy(),
    )


def reference_outputs(model, processor, inputs: ValidationInputs) -> References:
    """colpali-engine `ColQwen2.forward` in float32, one image at a time with the checkpoint's processor."""
    import torch

    images, visual = [], []
    with torch.no_grad():
        for image in inputs.images:
            batch = processor.process_images([image])
            images.append(model(**batch)[0].float().numpy())
            pixels = batch["pixel_values"][0, : int(batch["image_grid_thw"][0].prod())]
            visual.append(model.visual(pixels, grid_thw=batch["image_grid_thw"]).pooler_output.float().numpy())
        q = model(input_ids=torch.from_numpy(inputs.query_ids), attention_mask=torch.from_numpy(inputs.query_mask))
    return References(images=images, queries=q.float().numpy(), visual=visual)


def write_graphs(model, processor, variants: tuple[str, ...], folder: Path, calibration: int, layout: Layout) -> None:
    """fp32 first (the base of the INT8 forms), then fp16 (weights cast in place), then the INT8 forms."""
    import torch

    from .graphs import TextEncoderGraph, VisionEncoderGraph
    from .onnx_export import EXTERNAL_DATA_BYTES, export_float_graphs
    from .quantize import half_embeddings, quantize_dynamic_int8, quantize_qdq

    torch.set_grad_enabled(False)
    graphs = {
        "vision_encoder": VisionEncoderGraph(model, processor).eval(),
        "text_encoder": TextEncoderGraph(model).eval(),
    }
    export_float_graphs(graphs, folder, "fp16" in variants)
    external = sum(p.numel() for p in model.parameters()) * 4 > EXTERNAL_DATA_BYTES
    del graphs
    int8 = [v for v in ("int8", "int8_dynamic") if v in variants]
    if not int8:
        return
    feeds = calibration_feeds(folder / "fp32", calibration, layout)
    for spec in GRAPHS:
        src = folder / "fp32" / f"{spec.name}.onnx"
        for variant in int8:
            (folder / variant).mkdir(exist_ok=True)
            if variant == "int8":
                quantize_qdq(src, folder / variant / src.name, feeds[spec.name], external)
            else:
                quantize_dynamic_int8(src, folder / variant / src.name, external)
            half_embeddings(folder / variant / src.name, external)


def calibration_feeds(fp32_dir: Path, count: int, layout: Layout) -> dict[str, list[dict[str, np.ndarray]]]:
    """Real inputs for INT8 calibration: charts and photos at their native grids (the text graph gets
    their fp32 visual features) and text queries."""
    from model_repository.colqwen2_serving.feeds import TextItem, text_feed, vision_feed
    from model_repository.colqwen2_serving.grid import PixelLimits
    from model_repository.colqwen2_serving.imaging import native
    from model_repository.colqwen2_serving.preprocess import image_item
    from model_repository.colqwen2_serving.prompts import PromptTokenizer

    from .runtime import cpu_session
    from .sample_images import QUERIES, calibration_images

    limits = PixelLimits(layout.min_pixels, layout.max_pixels)
    tokenizer = PromptTokenizer.from_processor_dir(fp32_dir.parent / "processor")
    vision = cpu_session(fp32_dir / "vision_encoder.onnx")
    vision_feeds, text_feeds = [], []
    for image in calibration_images(count):
        item = image_item(native(image, limits))
        feed = vision_feed([item])
        vision_feeds.append(feed)
        visual = vision.run(None, feed)[0][0]
        prompt = np.array(tokenizer.image_prompt_ids(len(visual)), dtype=np.int64)
        text_feeds.append(text_feed([TextItem(prompt, visual, item.grid)], *_text_ids(layout)))
    for text in (f"{a} {b}" for a in QUERIES for b in QUERIES[:2]):
        ids = np.array(tokenizer.token_ids(text), dtype=np.int64)
        text_feeds.append(text_feed([TextItem(ids)], *_text_ids(layout)))
    return {"vision_encoder": vision_feeds, "text_encoder": text_feeds}


def _text_ids(layout: Layout) -> tuple[int, int, int]:
    return layout.pad_token_id, layout.image_token_id, layout.hidden_size


def check_graphs(folder: Path, variants: list[str], polygraphy: bool) -> dict[str, dict]:
    from .graph_checks import check_graph, polygraphy_inspect

    graphs = {}
    for variant in variants:
        for spec in GRAPHS:
            path = folder / variant / f"{spec.name}.onnx"
            graphs[f"{variant}/{spec.name}"] = asdict(check_graph(path))
            if polygraphy:
                polygraphy_inspect(path, path.with_suffix(".polygraphy.txt"))
    return graphs


def run_variant(folder: Path, inputs: ValidationInputs, layout: Layout):
    """One variant's graphs on the validation inputs, through the serving runners."""
    from model_repository.colqwen2_serving.feeds import TextItem
    from model_repository.colqwen2_serving.grid import PixelLimits
    from model_repository.colqwen2_serving.imaging import native
    from model_repository.colqwen2_serving.preprocess import image_item
    from model_repository.colqwen2_serving.prompts import PromptTokenizer
    from model_repository.colqwen2_serving.runners import Budget, TextRunner, VisionRunner

    from .runtime import cpu_session
    from .validate import Outputs

    limits = PixelLimits(layout.min_pixels, layout.max_pixels)
    tokenizer = PromptTokenizer.from_processor_dir(folder.parent / "processor")
    vision = VisionRunner(cpu_session(folder / "vision_encoder.onnx"), layout.hidden_size, Budget(8192, 8))
    text = TextRunner(cpu_session(folder / "text_encoder.onnx"), *_text_ids(layout), Budget(8192, 32))

    def embed(images) -> tuple[list[np.ndarray], list[np.ndarray]]:
        items = [image_item(native(image, limits)) for image in images]
        visual = _results(vision.visual_features(items))
        prompts = [np.array(tokenizer.image_prompt_ids(len(v)), dtype=np.int64) for v in visual]
        vectors = _results(
            text.vectors([TextItem(p, v, i.grid) for p, v, i in zip(prompts, visual, items, strict=True)])
        )
        return vectors, visual

    images, visual = embed(inputs.images)
    image_queries, _ = embed(inputs.query_images)
    rows = [ids[mask == 1] for ids, mask in zip(inputs.query_ids, inputs.query_mask, strict=True)]
    vectors = _results(text.vectors([TextItem(row) for row in rows]))
    queries = np.zeros((*inputs.query_ids.shape, vectors[0].shape[-1]), dtype=np.float32)
    for i, v in enumerate(vectors):
        queries[i, queries.shape[1] - len(v) :] = v
    return Outputs(images=images, image_queries=image_queries, queries=queries, visual=visual)


def _results(results: list) -> list:
    failed = next((r for r in results if isinstance(r, Exception)), None)
    if failed is not None:
        raise failed
    return results


def validate_variants(folder: Path, variants: list[str], inputs, refs: References, layout: Layout, real: bool):
    """Each requested variant against the reference (fp32 always runs: the quantized forms are also
    held to it on each encoder's own job):
    - image queries: degraded copies searching the clean images, both sides in the variant;
    - query side: the variant's text queries ranking the fp32 image set (only the text tower varies);
    - text: the variant's queries ranking the variant's images, gated only for a real checkpoint (a
      random one's text rankings are near ties that say nothing about precision).
    Returns the checks and, per variant, the vision features' cosine against `model.visual`."""
    from .validate import apply_tolerance, compare, maxsim, top1_agreement

    mask = inputs.query_mask
    fp32 = run_variant(folder / "fp32", inputs, layout)
    base_image_queries = maxsim(fp32.image_queries, fp32.images)
    base_query_side = maxsim(fp32.queries, fp32.images, mask)
    checks, vision = [], {}
    for variant in variants:
        out = fp32 if variant == "fp32" else run_variant(folder / variant, inputs, layout)
        image = compare(variant, "image", out.images, refs.images, None)
        query = compare(variant, "query", out.queries, refs.queries, mask)
        features = compare(variant, "vision features", out.visual, refs.visual, None)
        vision[variant] = {"cosine_mean": features.cosine_mean, "cosine_min": features.cosine_min}
        tol = VARIANTS[variant].tolerance
        if tol.top1_agreement is not None:
            image.agreements["image queries"] = top1_agreement(
                base_image_queries, maxsim(out.image_queries, out.images)
            )
            query.agreements["query side"] = top1_agreement(base_query_side, maxsim(out.queries, fp32.images, mask))
            query.agreements["text"] = top1_agreement(base_query_side, maxsim(out.queries, out.images, mask), real)
            apply_tolerance(image, tol)
            apply_tolerance(query, tol)
        checks += [image, query]
    return checks, vision


def manifest(ckpt, layout: Layout, opts: ExportOptions, inputs: ValidationInputs, refs: References) -> dict:
    model = ckpt.model
    return {
        "checkpoint": ckpt.source,
        "merged_adapter": ckpt.merged_adapter,
        "random_weights": ckpt.random_weights,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vision_parameters": sum(p.numel() for p in model.visual.parameters()),
        **asdict(layout),
        "max_visual_tokens": layout.max_visual_tokens,
        "embedding_dim": int(refs.images[0].shape[-1]),
        "variants": {v: VARIANTS[v].description for v in opts.variants},
        "n_images": len(inputs.images),
        "image_sizes": [list(image.size) for image in inputs.images],
        "image_vectors": [len(r) for r in refs.images],
        "image_kinds": inputs.image_kinds,
        "n_queries": int(inputs.query_ids.shape[0]),
        "colpali_engine": version("colpali-engine"),
        "onnxruntime": version("onnxruntime"),
        "torch": version("torch"),
        "provider": "CPUExecutionProvider",
    }


def run_export(opts: ExportOptions) -> Path:
    """Export, check and validate; returns the finished artifact folder. An export of the same checkpoint,
    options and sources done before is taken from the cache (`export/cache.py`) instead."""
    from . import cache

    check_options(opts)
    out = Path(opts.out_dir).resolve()
    key = cache.cache_key(opts.checkpoint, opts)
    with cache.locked(key):
        hit = cache.restore(key, opts.variants, out)
        if not hit:
            _export(opts, out)
            cache.store(key, opts.variants, out)
    if hit:
        _name_checkpoint(out, str(opts.checkpoint))
    cache.record(key, opts.variants, opts.checkpoint, out, hit=hit)
    return out


def _name_checkpoint(out: Path, checkpoint: str) -> None:
    """A cache hit's manifest names the checkpoint of the export that filled the cache (the same content, maybe
    another folder, maybe gone since): name this one's. Replaced, not edited: the file is linked to the entry."""
    path = out / "manifest.json"
    data = json.loads(path.read_text())
    if data.get("checkpoint") != checkpoint:
        data["checkpoint"] = checkpoint
        staging = path.with_name(path.name + ".partial")
        staging.write_text(json.dumps(data, indent=2))
        os.replace(staging, path)


def _export(opts: ExportOptions, out: Path) -> None:
    from .checkpoint import load_checkpoint
    from .validate import write_report

    started = time.time()
    tmp, failed = out.with_name(out.name + ".partial"), out.with_name(out.name + ".failed")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    ckpt = load_checkpoint(opts.checkpoint)
    layout = describe(ckpt)
    ckpt.processor.save_pretrained(tmp / "processor")  # what the serving preprocessing reads
    inputs = validation_inputs(ckpt.processor, opts)
    refs = reference_outputs(ckpt.model, ckpt.processor, inputs)
    meta = manifest(ckpt, layout, opts, inputs, refs)
    write_graphs(ckpt.model, ckpt.processor, opts.variants, tmp, opts.calibration_images, layout)
    built = ["fp32", *[v for v in DEFAULT_VARIANTS if v != "fp32" and v in opts.variants]]
    graphs = check_graphs(tmp, built, opts.polygraphy)
    checks, vision = validate_variants(tmp, list(opts.variants), inputs, refs, layout, not ckpt.random_weights)
    if "fp32" not in opts.variants:
        shutil.rmtree(tmp / "fp32")

    meta["export_seconds"] = round(time.time() - started, 1)
    write_report(checks, {**meta, "graphs": graphs, "vision_features": vision, "image_names": inputs.image_names}, tmp)
    (tmp / "manifest.json").write_text(json.dumps(meta, indent=2))
    failures = [f"{c.variant}/{c.encoder}: {'; '.join(c.failures)}" for c in checks if not c.passed]
    if failures:
        shutil.rmtree(failed, ignore_errors=True)
        tmp.rename(failed)
        raise ValidationError(f"validation failed ({failed}/validation.md): {failures[0]}")
    shutil.rmtree(failed, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
