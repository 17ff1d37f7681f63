"""`colqwen2`: embed images and queries from the shell, and check the service's health.

    colqwen2 embed charts/*.png > vectors.jsonl     one JSON line per file
    colqwen2 query "lego price drop"
    colqwen2 health
    colqwen2 index samples/ --kind auto           into embedded Qdrant (./qdrant_data)
    colqwen2 search "lego price drop" --html results.html
    colqwen2 search --image photo.jpg

Exit codes: 0 all done; 1 some inputs failed (their lines carry "error"); 2 usage;
3 service unreachable or unhealthy; 4 any other service error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._constants import DEFAULT_BATCH_SIZE, DEFAULT_TIMEOUT, DEFAULT_URL, MODELS
from .client import ColQwen2Client
from .errors import ColQwen2Error, InvalidInputError, ModelNotFoundError, ServerUnavailableError
from .types import Embedding

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_ERROR = 0, 1, 2, 3, 4


def _line(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")


def _record(embedding: Embedding, with_vectors: bool, **extra: Any) -> dict[str, Any]:
    record = embedding.to_dict()
    if not with_vectors:
        record.pop("vectors")
    return extra | record


def _embed(client: ColQwen2Client, args: argparse.Namespace) -> int:
    show_progress = args.progress if args.progress is not None else (len(args.files) > 1 and sys.stderr.isatty())
    results = client.embed_batch(args.files, progress=show_progress or None, return_exceptions=True)
    failed = 0
    for path, result in zip(args.files, results, strict=True):
        if isinstance(result, ColQwen2Error):
            failed += 1
            _line({"file": path, "error": str(result), "error_type": type(result).__name__})
        else:
            _line(_record(result, args.vectors, file=path))
    if failed and all(isinstance(r, ServerUnavailableError) for r in results):
        return EXIT_UNAVAILABLE
    return EXIT_PARTIAL if failed else EXIT_OK


def _query(client: ColQwen2Client, args: argparse.Namespace) -> int:
    _line(_record(client.embed_query(args.text), args.vectors, text=args.text))
    return EXIT_OK


def _health(client: ColQwen2Client, _args: argparse.Namespace) -> int:
    verdict = client.health()
    _line(verdict)
    return EXIT_OK if verdict["status"] == "healthy" else EXIT_UNAVAILABLE


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def guess_kind(path: Path) -> str:
    name = path.name.lower()
    return "keepa_chart" if "keepa" in name or "chart" in name else "product_image"


def _index(client: ColQwen2Client, args: argparse.Namespace) -> int:
    from .qdrant import VisualIndex

    files = sorted(
        p for d in args.paths for p in (Path(d).rglob("*") if Path(d).is_dir() else [Path(d)])
        if p.suffix.lower() in IMAGE_SUFFIXES
    )  # fmt: skip
    if not files:
        print("colqwen2: no image files found", file=sys.stderr)
        return EXIT_USAGE
    payloads = [{"kind": guess_kind(f) if args.kind == "auto" else args.kind} for f in files]
    index = VisualIndex(client, _qdrant(args), _settings(args))
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    report = index.index([str(f.resolve()) for f in files], payloads, progress=show or None)
    _line(
        {
            "indexed": report.indexed,
            "skipped": report.skipped,
            "failed": len(report.failed),
            "points": index.count(),
            "stored_vectors": report.stored_vectors,
            "raw_vectors": report.raw_vectors,
        }
    )
    for source, error in report.failed:
        print(f"colqwen2: {source}: {error}", file=sys.stderr)
    return EXIT_PARTIAL if report.failed else EXIT_OK


def _search(client: ColQwen2Client, args: argparse.Namespace) -> int:
    from .qdrant import VisualIndex
    from .report import table, write_html

    if (args.text is None) == (args.image is None):
        print("colqwen2: search needs a TEXT query or --image FILE (one of them)", file=sys.stderr)
        return EXIT_USAGE
    index = VisualIndex(client, _qdrant(args), _settings(args))
    if index.count() == 0:
        print("colqwen2: the collection is empty: run `colqwen2 index DIR` first", file=sys.stderr)
        return EXIT_USAGE
    hits = index.search(text=args.text, image=args.image, limit=args.limit)
    title = f'text "{args.text}"' if args.text is not None else f"image {args.image}"
    print(f"{title}: top {len(hits)} by MaxSim\n{table(hits)}")
    if args.html:
        print(f"results page: {write_html(args.html, [(title, hits)])}")
    return EXIT_OK


def _qdrant(args: argparse.Namespace):
    from .qdrant import open_qdrant

    return open_qdrant(args.qdrant_path, args.qdrant_url)


def _settings(args: argparse.Namespace):
    from .qdrant import IndexSettings

    return IndexSettings(
        collection=args.collection, pool_factor=getattr(args, "pool_factor", 1), quantization=args.quantization
    )


def _qdrant_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--qdrant-path", default=os.environ.get("COLQWEN2_QDRANT_PATH", "qdrant_data"),
                        help="embedded Qdrant folder (default %(default)s)")  # fmt: skip
    parser.add_argument("--qdrant-url", default=os.environ.get("QDRANT_URL"), help="a Qdrant server instead")
    parser.add_argument("--collection", default="visual_embeddings")
    parser.add_argument("--quantization", choices=["none", "scalar", "binary"], default="none")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colqwen2", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("COLQWEN2_URL", DEFAULT_URL),
        help="Triton URL: http://host:8000 or grpc://host:8001 (env COLQWEN2_URL; default %(default)s)",
    )
    parser.add_argument("--precision", choices=list(MODELS), default=os.environ.get("COLQWEN2_PRECISION", "fp16"))
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per request")
    sub = parser.add_subparsers(dest="command", required=True)

    embed = sub.add_parser("embed", help="embed image files: one JSON line each")
    embed.add_argument("files", nargs="+")
    embed.add_argument("--vectors", action="store_true", help="include every vector, not just the pooled one")
    embed.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="requests in flight")
    embed.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar on stderr")
    embed.set_defaults(run=_embed)

    query = sub.add_parser("query", help="embed a text query")
    query.add_argument("text")
    query.add_argument("--vectors", action="store_true", help="include every token vector")
    query.set_defaults(run=_query)

    health = sub.add_parser("health", help="canary inference; exit 0 when healthy, 3 when not")
    health.set_defaults(run=_health)

    index = sub.add_parser("index", help="embed image files (folders are searched) into Qdrant")
    index.add_argument("paths", nargs="+")
    index.add_argument("--kind", default="auto", help="payload kind: keepa_chart, product_image or auto (by name)")
    index.add_argument("--pool-factor", type=int, default=1, help="hierarchical token pooling (1: off)")
    index.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    _qdrant_options(index)
    index.set_defaults(run=_index)

    search = sub.add_parser("search", help="search the indexed images by text or by image")
    search.add_argument("text", nargs="?")
    search.add_argument("--image", help="an image file to search with instead of text")
    search.add_argument("--limit", type=int, default=10)
    search.add_argument("--html", help="also write an HTML page of the results with thumbnails")
    _qdrant_options(search)
    search.set_defaults(run=_search)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        client = ColQwen2Client(
            args.url, precision=args.precision, timeout=args.timeout, batch_size=getattr(args, "batch_size", 16)
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        with client:
            return args.run(client, args)
    except InvalidInputError as exc:
        print(f"colqwen2: {exc}", file=sys.stderr)
        return EXIT_PARTIAL
    except (ServerUnavailableError, ModelNotFoundError) as exc:
        print(f"colqwen2: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ColQwen2Error as exc:
        print(f"colqwen2: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
