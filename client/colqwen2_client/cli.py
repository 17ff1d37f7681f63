"""`colqwen2`: embed images and queries from the shell, and check the service's health.

    colqwen2 embed charts/*.png > vectors.jsonl     one JSON line per file (or http(s) URL)
    colqwen2 query "lego price drop"
    colqwen2 health
    colqwen2 index samples/ --kind auto           into Qdrant in process (~/.local/share/colqwen2/qdrant)
    colqwen2 index --manifest catalog.jsonl --prune   keyed items: refreshes replace, missing keys go
    colqwen2 search "lego price drop" --html      a page with thumbnails (~/.local/share/colqwen2/results.html)
    colqwen2 search --image chart.png --where kind=keepa_chart --where marketplace=DE
    colqwen2 delete --where asin=B0C1234567

Exit codes: 0 all done; 1 some inputs failed (their lines carry "error"); 2 usage;
3 service unreachable or unhealthy; 4 any other service error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from ._base import _duration
from ._constants import DEFAULT_BATCH_SIZE, DEFAULT_TIMEOUT, DEFAULT_URL, MODELS
from ._paths import LEGACY_QDRANT, data_dir, default_page_path, default_qdrant_path
from .client import ColQwen2Client
from .errors import ColQwen2Error, InvalidInputError, ModelNotFoundError, ServerUnavailableError
from .fetch import FetchPolicy
from .qdrant import DEFAULT_FIRST_STAGE, DEFAULT_QUANTIZATION, FIRST_STAGES, QUANTIZATIONS
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


def _index(client: ColQwen2Client, args: argparse.Namespace) -> int:
    from .catalog import Manifest, folder_items, read_manifest
    from .qdrant import VisualIndex

    if bool(args.paths) == bool(args.manifest):
        print("colqwen2: index needs folders/files or --manifest FILE (one of them)", file=sys.stderr)
        return EXIT_USAGE
    catalog: Manifest = read_manifest(args.manifest) if args.manifest else folder_items(args.paths, args.kind)
    for problem in catalog.problems:
        print(f"colqwen2: {args.manifest or 'index'}: {problem}", file=sys.stderr)
    if not catalog.items:
        print("colqwen2: nothing to index", file=sys.stderr)
        return EXIT_USAGE if not catalog.problems else EXIT_PARTIAL
    prune = args.prune
    if prune and not catalog.complete:
        print("colqwen2: not pruning: some lines have no key, so their points cannot be told from stale ones",
              file=sys.stderr)  # fmt: skip
        prune = False
    index = VisualIndex(client, _qdrant(args), _settings(args))
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    try:
        report = index.index(catalog.items, progress=show or None, prune=prune)
        _build(index, report.indexed + report.pruned, show)
        _line(report.summary() | {"points": index.count()})
    finally:
        index.close()
    for where, error in report.failed:
        print(f"colqwen2: {where}: {error}", file=sys.stderr)
    return EXIT_PARTIAL if report.failed or catalog.problems else EXIT_OK


BUILD_NOTICE = 200  # written points from which the build shows progress (it takes seconds to minutes)
# The local engine's build rate on 2 cores, items per second, for the ETA: `make bench-scale` at 10,000 items with the
# default first stage (HNSW over the 2 x 2 cells, about 116 per item, the mean and the layout; int8 quantization; also
# MUVERA there): 10,000 items in 1,042 s. (3 x 3 cells without payload subgraphs built 31 items/s at 100,000.)
BUILD_POINTS_PER_S = 9.6


def _build(index, written: int, show: bool) -> None:
    """After writing: build the index of what waits (HNSW, int8; only what Qdrant finds due), with progress and an
    ETA when it is large (in a child process: the build holds this one's interpreter)."""
    if not written:
        return
    if not (show and written >= BUILD_NOTICE and index.store.kind == "edge"):
        index.optimize()
        return
    eta = written / BUILD_POINTS_PER_S

    def tick(elapsed: float) -> None:
        left = f"about {_duration(eta - elapsed)} left" if elapsed < eta else "longer than estimated"
        sys.stderr.write(f"\rbuilding the search index over {written} written points (HNSW, int8): "
                         f"{_duration(elapsed)}, {left}   ")  # fmt: skip
        sys.stderr.flush()

    started = time.monotonic()
    for name in index.collections():
        index.store.optimize_in_child(name, tick)
    took = _duration(time.monotonic() - started)
    sys.stderr.write(f"\rbuilt the search index over {written} written points in {took}{' ' * 30}\n")


def _migrate(_client: ColQwen2Client, args: argparse.Namespace) -> int:
    from .qdrant import VisualIndex, migrate

    index = VisualIndex(None, _qdrant(args), _settings(args))
    try:
        copied = migrate(args.old, index)
        _build(index, copied, True)
        _line({"copied": copied, "points": index.count(), "first_stage": index.schema.first_stage})
    finally:
        index.close()
    return EXIT_OK


def _where(index, args: argparse.Namespace) -> dict[str, Any]:
    from .qdrant import parse_where

    return parse_where(args.where or [], index.schema.filter_fields)


def _search(client: ColQwen2Client, args: argparse.Namespace) -> int:
    from .qdrant import VisualIndex

    if (args.text is None) == (args.image is None):
        print("colqwen2: search needs a TEXT query or --image FILE (one of them)", file=sys.stderr)
        return EXIT_USAGE
    index = VisualIndex(client, _qdrant(args), _settings(args))
    try:
        return _search_in(index, args)
    finally:
        index.close()


def _search_in(index, args: argparse.Namespace) -> int:
    from .report import Section, table, write_html

    if index.count() == 0:
        print("colqwen2: the collection is empty: run `colqwen2 index DIR` first", file=sys.stderr)
        return EXIT_USAGE
    try:
        where = _where(index, args)
    except InvalidInputError as exc:
        print(f"colqwen2: {exc}", file=sys.stderr)
        return EXIT_USAGE
    hits = index.search(text=args.text, image=args.image, limit=args.limit, where=where)
    title = f'text "{args.text}"' if args.text is not None else f"image {args.image}"
    if where:
        title += " where " + ", ".join(f"{k}={v}" for k, v in where.items())
    print(f"{title}: top {len(hits)} by MaxSim\n{table(hits)}")
    if args.html:
        section = Section(title, hits, query_text=args.text, query_image=args.image)
        print(f"results page: {write_html(args.html, [section])}")
    return EXIT_OK


def _delete(client: ColQwen2Client, args: argparse.Namespace) -> int:
    from .qdrant import VisualIndex

    index = VisualIndex(client, _qdrant(args), _settings(args))
    try:
        where = _where(index, args)
        if not args.key and not where:
            raise InvalidInputError("delete needs --key KEY or --where FIELD=VALUE")
    except InvalidInputError as exc:
        print(f"colqwen2: {exc}", file=sys.stderr)
        return EXIT_USAGE
    deleted = index.delete(args.key or [], where)
    _line({"deleted": deleted, "points": index.count()})
    return EXIT_OK


def _qdrant(args: argparse.Namespace):
    from .qdrant import open_qdrant

    if not args.qdrant_url and args.qdrant_path == LEGACY_QDRANT:
        print(
            f"colqwen2: using ./{LEGACY_QDRANT}, an index from before the per-user folder; move it to "
            f"{data_dir() / 'qdrant'} (or pass --qdrant-path) to use it from anywhere",
            file=sys.stderr,
        )
    return open_qdrant(args.qdrant_path, args.qdrant_url, args.qdrant_api_key)


def _settings(args: argparse.Namespace):
    from .qdrant import IndexSettings

    return IndexSettings(
        collection=args.collection,
        first_stage=getattr(args, "first_stage", None),
        pool_factor=getattr(args, "pool_factor", 1),
        quantization=getattr(args, "quantization", "none"),
        shard_number=getattr(args, "shards", None),
        replication_factor=getattr(args, "replication_factor", None),
        write_consistency_factor=getattr(args, "write_consistency_factor", None),
        on_disk=getattr(args, "on_disk", False),
        fetch=getattr(args, "fetch", None) or FetchPolicy(),
    )


def _qdrant_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--qdrant-path", default=default_qdrant_path(),
                        help="local index folder, Qdrant in process (env COLQWEN2_QDRANT_PATH; default %(default)s, a "
                        "per-user "
                        "folder: COLQWEN2_DATA_DIR or XDG_DATA_HOME move it)")  # fmt: skip
    parser.add_argument("--qdrant-url", default=os.environ.get("QDRANT_URL"),
                        help="a Qdrant server instead, e.g. http://qdrant:6333 (env QDRANT_URL)")  # fmt: skip
    parser.add_argument("--qdrant-api-key", default=os.environ.get("QDRANT_API_KEY"),
                        help="the server's API key (env QDRANT_API_KEY)")  # fmt: skip
    parser.add_argument("--collection", default="visual_embeddings", help="(default: %(default)s)")


def _where_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--where", action="append", metavar="FIELD=VALUE",
                        help="only points whose FIELD is VALUE (A,B: any of them); repeat to combine")  # fmt: skip


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
    parser.add_argument("--allow-network", action="append", default=[], metavar="CIDR",
                        help="image URLs may resolve to this network although it is not public (repeat; e.g. a "
                        "local image server: 127.0.0.1/32); private, loopback and link-local addresses are refused "
                        "otherwise")  # fmt: skip
    parser.add_argument("--url-timeout", type=float, default=30.0, help="seconds per image URL fetch")
    sub = parser.add_subparsers(dest="command", required=True)

    embed = sub.add_parser("embed", help="embed image files or http(s) URLs: one JSON line each")
    embed.add_argument("files", nargs="+", help="image files or URLs")
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

    index = sub.add_parser("index", help="index image files (folders are searched) or a manifest into Qdrant")
    index.add_argument("paths", nargs="*", help="folders and files: the key is the path relative to the folder")
    index.add_argument("--manifest", help="JSONL or CSV: key (or asin, marketplace, kind), path or url, payload")
    index.add_argument("--prune", action="store_true", help="delete points whose key is not in this full catalog")
    index.add_argument("--kind", default="auto", help="payload kind for folders: keepa_chart, product_image or auto")
    index.add_argument("--first-stage", choices=list(FIRST_STAGES),
                       help=f"a new collection's first stage (default {DEFAULT_FIRST_STAGE}; an existing one keeps "
                       "it)")  # fmt: skip
    index.add_argument("--pool-factor", type=int, default=1, help="hierarchical token pooling (1: off)")
    index.add_argument("--quantization", choices=list(QUANTIZATIONS), default=DEFAULT_QUANTIZATION,
                       help="a new collection's quantization of the stored multivectors, rescored with the "
                       "originals on search (default %(default)s)")  # fmt: skip
    index.add_argument("--shards", type=int, help="a new collection's shard number (a Qdrant cluster)")
    index.add_argument("--replication-factor", type=int, help="a new collection's replication factor")
    index.add_argument("--write-consistency-factor", type=int, help="replicas that must confirm a write")
    index.add_argument("--on-disk", action="store_true", help="keep the multivectors and payload on disk")
    index.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    _qdrant_options(index)
    index.set_defaults(run=_index)

    search = sub.add_parser("search", help="search the indexed images by text or by image")
    search.add_argument("text", nargs="?")
    search.add_argument("--image", help="an image file or http(s) URL to search with instead of text")
    search.add_argument("--limit", type=int, default=10)
    search.add_argument("--html", nargs="?", const=default_page_path(), metavar="FILE",
                        help="also write an HTML page of the results with thumbnails (FILE, or %(const)s without "
                        "one)")  # fmt: skip
    _where_option(search)
    _qdrant_options(search)
    search.set_defaults(run=_search)

    delete = sub.add_parser("delete", help="delete indexed items by key or by filter")
    delete.add_argument("--key", action="append", help="an item's key; repeat for more")
    _where_option(delete)
    _qdrant_options(delete)
    delete.set_defaults(run=_delete)

    migrate = sub.add_parser(
        "migrate", help="copy an index written by an earlier version (qdrant-client's local mode) into --qdrant-path"
    )
    migrate.add_argument("old", help="the earlier version's folder (it is only read)")
    migrate.add_argument("--first-stage", choices=[s for s in FIRST_STAGES if s != "cells"],
                         help="the new collection's first stage (default: the old collection's; rows_cols only from "
                         "a rows_cols collection: the old index keeps no grids, so no cells)")  # fmt: skip
    _qdrant_options(migrate)
    migrate.set_defaults(run=_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.fetch = FetchPolicy(allow_networks=tuple(args.allow_network), timeout=args.url_timeout)
        client = ColQwen2Client(
            args.url, precision=args.precision, timeout=args.timeout, batch_size=getattr(args, "batch_size", 16),
            fetch=args.fetch,
        )  # fmt: skip
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
