"""`colqwen2`: embed images and queries from the shell, and check the service's health.

    colqwen2 embed charts/*.png > vectors.jsonl     one JSON line per file
    colqwen2 query "lego price drop"
    colqwen2 health

Exit codes: 0 all done; 1 some inputs failed (their lines carry "error"); 2 usage;
3 service unreachable or unhealthy; 4 any other service error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
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
