"""`python -m export`: ColQwen2 checkpoint -> validated ONNX artifacts.

Examples:
  python -m export --checkpoint checkpoints/tiny --out artifacts/tiny
  python -m export --checkpoint vidore/colqwen2-v1.0 --out artifacts/colqwen2-v1.0 --variants fp16,int8
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import ExportError
from .spec import DEFAULT_VARIANTS, VARIANTS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a ColQwen2 checkpoint to ONNX (fp32, fp16, int8) and validate it against colpali-engine.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint folder or hub id (LoRA adapters are merged)")
    p.add_argument("--out", required=True, type=Path, help="artifact folder to create or replace")
    p.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, from {','.join(VARIANTS)} (default: all)",
    )
    p.add_argument("--validation-images", type=int, default=4, help="charts and photos each (plus 7 edge cases)")
    p.add_argument("--calibration-images", type=int, default=16, help="images for INT8 calibration")
    p.add_argument("--no-polygraphy", action="store_true", help="skip `polygraphy inspect model`")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    for noisy in ("transformers", "torch", "onnxscript", "root"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from .pipeline import ExportOptions, run_export

    opts = ExportOptions(
        checkpoint=args.checkpoint,
        out_dir=args.out,
        variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()),
        validation_images=args.validation_images,
        calibration_images=args.calibration_images,
        polygraphy=not args.no_polygraphy,
    )
    try:
        out = run_export(opts)
    except ExportError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return exc.exit_code
    print((out / "validation.md").read_text())
    print(f"artifacts: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
