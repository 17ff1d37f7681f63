"""Numerical validation of exported artifacts against colpali-engine `ColQwen2.forward`."""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .spec import VARIANTS, Tolerance


@dataclass
class ValidationInputs:
    """The same inputs for the reference and every artifact."""

    images: list[Image.Image]  # RGB, at their own sizes
    image_names: list[str]
    image_kinds: list[str]
    query_images: list[Image.Image]  # degraded copies of `images`, for query-by-image
    query_ids: np.ndarray  # int64 [Q, T], left padded
    query_mask: np.ndarray  # int64 [Q, T]


@dataclass
class References:
    images: list[np.ndarray]  # float32 [L_i, 128] per image
    queries: np.ndarray  # float32 [Q, T, 128]
    visual: list[np.ndarray]  # float32 [V_i, hidden]: `model.visual`'s merged features per image


@dataclass
class Outputs:
    """What one variant's graphs return for the validation inputs."""

    images: list[np.ndarray]  # [L_i, 128]
    image_queries: list[np.ndarray]  # [L_i, 128] for the degraded copies
    queries: np.ndarray  # [Q, T, 128]
    visual: list[np.ndarray]  # [V_i, hidden]


@dataclass
class Agreement:
    """MaxSim top-1 agreement of a variant with the fp32 artifact, counted on decisive queries."""

    value: float  # share of decisive queries with the same top-1 as fp32
    decisive: int  # queries whose fp32 top-1 beats the runner-up by more than TIE_FRACTION
    gated: bool  # whether the variant's threshold applies (else reported only)

    def __str__(self) -> str:
        return f"{self.value:.3f} of {self.decisive}{'' if self.gated else ' (reported)'}"


@dataclass
class Check:
    variant: str
    encoder: str  # what is compared: "image" (vision + text graphs) or "query" (text graph)
    max_abs: float
    cosine_mean: float
    cosine_min: float
    has_nan: bool
    agreements: dict[str, Agreement] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def degrade(images: list[Image.Image], seed: int = 0) -> list[Image.Image]:
    """A near-duplicate of each image (JPEG q=60, shifted by a few pixels): the image queries."""
    rng = np.random.default_rng(seed)
    out = []
    for image in images:
        dx, dy = rng.integers(-6, 7, size=2)
        shifted = np.roll(np.asarray(image.convert("RGB")), (int(dy), int(dx)), axis=(0, 1))
        buf = io.BytesIO()
        Image.fromarray(shifted).save(buf, format="JPEG", quality=60)
        out.append(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return out


def per_token_cosine(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Cosine between matching token vectors; only tokens where mask is set."""
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    if mask is not None:
        keep = mask.reshape(-1).astype(bool)
        a, b = a[keep], b[keep]
    denom = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(denom, 1e-30)


def maxsim(queries, docs, query_mask: np.ndarray | None = None) -> np.ndarray:
    """ColBERT MaxSim: scores [Q, D] = sum over query tokens of the best matching doc token.

    `queries` and `docs` are [n, L, dim] arrays or lists of [L_i, dim] (sizes may differ per item)."""
    scores = np.zeros((len(queries), len(docs)))
    for i, q in enumerate(queries):
        q = np.asarray(q, dtype=np.float64)
        if query_mask is not None:
            q = q[np.asarray(query_mask[i]).astype(bool)]
        for j, d in enumerate(docs):
            scores[i, j] = (q @ np.asarray(d, dtype=np.float64).T).max(axis=-1).sum()
    return scores


def compare(variant: str, encoder: str, out, ref, mask: np.ndarray | None) -> Check:
    """Per-token comparison; `out` and `ref` are arrays of one shape, or lists of [L_i, dim] per item."""
    if isinstance(out, list):
        if [len(o) for o in out] != [len(r) for r in ref]:
            raise ValueError(f"{variant}/{encoder}: vector counts {[len(o) for o in out]} != {[len(r) for r in ref]}")
        out, ref = np.concatenate(out), np.concatenate(ref)
    cos = per_token_cosine(out, ref, mask)
    diff = np.abs(out.astype(np.float64) - ref)
    if mask is not None:
        diff = diff * mask[..., None]
    check = Check(
        variant=variant,
        encoder=encoder,
        max_abs=float(np.nanmax(diff)) if diff.size else 0.0,
        cosine_mean=float(np.nanmean(cos)),
        cosine_min=float(np.nanmin(cos)),
        has_nan=bool(np.isnan(out).any()),
    )
    apply_tolerance(check, VARIANTS[variant].tolerance)
    return check


def apply_tolerance(check: Check, tol: Tolerance) -> None:
    check.failures.clear()
    if check.has_nan:
        check.failures.append("output has NaN")
    if tol.max_abs is not None and not check.max_abs <= tol.max_abs:
        check.failures.append(f"max abs diff {check.max_abs:.3g} > {tol.max_abs:g}")
    if tol.cosine_mean is not None and not check.cosine_mean >= tol.cosine_mean:
        check.failures.append(f"mean cosine {check.cosine_mean:.6f} < {tol.cosine_mean}")
    if tol.cosine_min is not None and not check.cosine_min >= tol.cosine_min:
        check.failures.append(f"min cosine {check.cosine_min:.6f} < {tol.cosine_min}")
    if tol.top1_agreement is None:
        return
    for name, agreement in check.agreements.items():
        if not agreement.gated:
            continue
        if not agreement.value >= tol.top1_agreement:
            check.failures.append(f"{name} top-1 agreement {agreement.value:.3f} < {tol.top1_agreement}")
        if agreement.decisive < MIN_DECISIVE_QUERIES:
            check.failures.append(
                f"{name}: only {agreement.decisive} queries have a clear fp32 top-1 (need {MIN_DECISIVE_QUERIES})"
            )


# Two documents whose fp32 MaxSim scores are within this fraction of the top score are a tie:
# a random-weight checkpoint scores near-duplicates (a chart and its grayscale copy) within
# 1e-4 of each other, and which of two tied documents comes first says nothing about precision.
TIE_FRACTION = 1e-3
MIN_DECISIVE_QUERIES = 3


def top1_agreement(fp32_scores: np.ndarray, other_scores: np.ndarray, gated: bool = True) -> Agreement:
    """Agreement of `other_scores`' top-1 with `fp32_scores`' (both [Q, D]) on the decisive queries."""
    top2 = np.sort(fp32_scores, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > TIE_FRACTION * np.abs(top2[:, 1])
    decisive = int(clear.sum())
    agree = int((fp32_scores.argmax(1) == other_scores.argmax(1))[clear].sum())
    return Agreement(agree / decisive if decisive else 0.0, decisive, gated)


def write_report(checks: list[Check], meta: dict, out_dir: Path) -> None:
    rows = [{**asdict(c), "passed": c.passed} for c in checks]
    tolerances = {name: asdict(v.tolerance) for name, v in VARIANTS.items()}
    (out_dir / "validation.json").write_text(
        json.dumps({"meta": meta, "tolerances": tolerances, "checks": rows}, indent=2)
    )
    sizes = sorted({f"{w}x{h}" for w, h in meta["image_sizes"]}, key=lambda s: [int(x) for x in s.split("x")])
    counts = meta["image_vectors"]
    lines = [
        f"# Validation of {meta['checkpoint']} at native resolution",
        "",
        f"Reference: colpali-engine {meta['colpali_engine']} `ColQwen2.forward` in float32 on the CPU, each image "
        f"alone through the checkpoint's own processor ({meta['min_pixels']} to {meta['max_pixels']} pixels, at "
        f"most {meta['max_visual_tokens']} visual tokens); artifacts run by ONNX Runtime {meta['onnxruntime']} "
        f"({meta['provider']}) through the serving code, images batched with their different grids. "
        f"Inputs: {meta['n_images']} images ({', '.join(meta['image_kinds'])}; {', '.join(sizes)}; "
        f"{min(counts)} to {max(counts)} vectors each), {meta['n_queries']} text queries, and a degraded copy of "
        f"each image as an image query.",
        "",
        f"Top-1 agreement with fp32 counts the queries whose fp32 top-1 beats the runner-up by more than "
        f"{TIE_FRACTION:g} of its score: *image queries* (degraded copies searching the clean images), *query side* "
        f"(the variant's text queries ranking the fp32 images: the text tower alone) and *text* (the variant's "
        f"queries ranking the variant's images; gated for a real checkpoint, reported for a random one).",
        "",
        "| variant | embeds | max abs diff | cosine mean | cosine min | top-1 agreement | vision features cosine min "
        "| thresholds | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    vision = meta.get("vision_features", {})
    for c in checks:
        tol = VARIANTS[c.variant].tolerance
        limits = ", ".join(
            f"{k} {'<=' if k == 'max_abs' else '>='} {v}" for k, v in asdict(tol).items() if v is not None
        )
        agreements = "; ".join(f"{name} {a}" for name, a in c.agreements.items())
        features = f"{vision[c.variant]['cosine_min']:.6f}" if c.encoder == "image" and c.variant in vision else ""
        result = "pass" if c.passed else "FAIL: " + "; ".join(c.failures)
        lines.append(
            f"| {c.variant} | {c.encoder} | {c.max_abs:.2e} | {c.cosine_mean:.6f} | {c.cosine_min:.6f} "
            f"| {agreements} | {features} | {limits} | {result} |"
        )
    (out_dir / "validation.md").write_text("\n".join(lines) + "\n")
