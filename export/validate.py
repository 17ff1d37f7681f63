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

    pixels: np.ndarray  # uint8 [N, S, S, 3], letterboxed
    image_names: list[str]
    query_pixels: np.ndarray  # uint8 [M, S, S, 3]: degraded copies of `pixels`, for query-by-image
    query_ids: np.ndarray  # int64 [Q, T]
    query_mask: np.ndarray  # int64 [Q, T]


@dataclass
class References:
    images: np.ndarray  # float32 [N, L, 128]
    queries: np.ndarray  # float32 [Q, T, 128]


@dataclass
class Check:
    variant: str
    encoder: str
    max_abs: float
    cosine_mean: float
    cosine_min: float
    has_nan: bool
    top1_agreement: float | None = None  # query-by-image, gated
    decisive_queries: int | None = None
    text_top1_agreement: str | None = None  # text queries, reported only (see README)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def degrade(pixels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A near-duplicate of each image (JPEG q=60, shifted by a few pixels): the image queries."""
    rng = np.random.default_rng(seed)
    out = []
    for arr in pixels:
        dx, dy = rng.integers(-6, 7, size=2)
        shifted = np.roll(arr, (int(dy), int(dx)), axis=(0, 1))
        buf = io.BytesIO()
        Image.fromarray(shifted).save(buf, format="JPEG", quality=60)
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return np.stack(out)


def per_token_cosine(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Cosine between matching token vectors; only tokens where mask is set."""
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    if mask is not None:
        keep = mask.reshape(-1).astype(bool)
        a, b = a[keep], b[keep]
    denom = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(denom, 1e-30)


def maxsim(queries: np.ndarray, docs: np.ndarray, query_mask: np.ndarray | None = None) -> np.ndarray:
    """ColBERT MaxSim: scores [Q, D] = sum over query tokens of the best matching doc token."""
    sims = np.einsum("qtd,nsd->qnts", queries, docs).max(axis=-1)  # [Q, D, Tq]
    if query_mask is not None:
        sims = sims * query_mask[:, None, :]
    return sims.sum(-1)


def compare(variant: str, encoder: str, out: np.ndarray, ref: np.ndarray, mask: np.ndarray | None) -> Check:
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
    if tol.top1_agreement is not None and check.top1_agreement is not None:
        if not check.top1_agreement >= tol.top1_agreement:
            check.failures.append(f"MaxSim top-1 agreement {check.top1_agreement:.3f} < {tol.top1_agreement}")
        if (check.decisive_queries or 0) < MIN_DECISIVE_QUERIES:
            check.failures.append(
                f"only {check.decisive_queries} queries have a clear fp32 top-1 (need {MIN_DECISIVE_QUERIES})"
            )


# Two documents whose fp32 MaxSim scores are within this fraction of the top score are a tie:
# a random-weight checkpoint scores near-duplicates (a chart and its grayscale copy) within
# 1e-4 of each other, and which of two tied documents comes first says nothing about precision.
TIE_FRACTION = 1e-3
MIN_DECISIVE_QUERIES = 3


@dataclass
class Agreement:
    agreement: float  # share of decisive queries with the same top-1 as fp32
    decisive: int  # queries whose fp32 top-1 beats the runner-up by more than TIE_FRACTION


def top1_agreement(
    fp32: np.ndarray,
    other: np.ndarray,
    fp32_docs: np.ndarray,
    other_docs: np.ndarray,
    query_mask: np.ndarray | None = None,
) -> Agreement:
    """MaxSim top-1 agreement between the fp32 artifact and `other`, counted on decisive queries."""
    ref = maxsim(fp32, fp32_docs, query_mask)
    got = maxsim(other, other_docs, query_mask).argmax(1)
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > TIE_FRACTION * np.abs(top2[:, 1])
    decisive = int(clear.sum())
    agree = int((ref.argmax(1) == got)[clear].sum())
    return Agreement(agree / decisive if decisive else 0.0, decisive)


def write_report(checks: list[Check], meta: dict, out_dir: Path) -> None:
    rows = [{**asdict(c), "passed": c.passed} for c in checks]
    tolerances = {name: asdict(v.tolerance) for name, v in VARIANTS.items()}
    (out_dir / "validation.json").write_text(
        json.dumps({"meta": meta, "tolerances": tolerances, "checks": rows}, indent=2)
    )
    lines = [
        f"# Validation of {meta['checkpoint']} at {meta['image_size']} x {meta['image_size']}",
        "",
        f"Reference: colpali-engine {meta['colpali_engine']} `ColQwen2.forward` in float32 on the CPU; "
        f"artifacts run by ONNX Runtime {meta['onnxruntime']} ({meta['provider']}). "
        f"Inputs: {meta['n_images']} images ({', '.join(meta['image_kinds'])}), "
        f"{meta['n_queries']} text queries, {meta['n_images']} degraded image queries. "
        f"Top-1 agreement (query by image: degraded copies searching the clean images) counts the "
        f"queries whose fp32 top-1 beats the runner-up by more than {TIE_FRACTION:g} of its score; "
        f"text-query agreement is reported, not gated.",
        "",
        "| variant | encoder | max abs diff | cosine mean | cosine min | top-1 agreement (image queries) "
        "| text queries | thresholds | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        tol = VARIANTS[c.variant].tolerance
        limits = ", ".join(
            f"{k} {'<=' if k == 'max_abs' else '>='} {v}" for k, v in asdict(tol).items() if v is not None
        )
        top1 = "" if c.top1_agreement is None else f"{c.top1_agreement:.3f} of {c.decisive_queries}"
        text = c.text_top1_agreement or ""
        result = "pass" if c.passed else "FAIL: " + "; ".join(c.failures)
        lines.append(
            f"| {c.variant} | {c.encoder} | {c.max_abs:.2e} | {c.cosine_mean:.6f} | {c.cosine_min:.6f} "
            f"| {top1} | {text} | {limits} | {result} |"
        )
    (out_dir / "validation.md").write_text("\n".join(lines) + "\n")
