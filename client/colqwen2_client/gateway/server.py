"""`colqwen2-gateway`: serve the original REST API in front of Triton with uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .._constants import DEFAULT_TIMEOUT, MODELS
from ..qdrant import DEFAULT_QUANTIZATION, QUANTIZATIONS
from .app import GatewaySettings, create_app


def read_token(path: Path | None) -> str:
    """The bearer token: the file's first line, else $COLQWEN2_GATEWAY_TOKEN, else none."""
    if path is not None:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the token file {path}: {exc.strerror}") from None
        if not token:
            raise ValueError(f"the token file {path} is empty")
    else:
        token = os.environ.get("COLQWEN2_GATEWAY_TOKEN", "").strip()
    if token and (not token.isascii() or not token.isprintable() or " " in token):
        raise ValueError("the token must be printable ASCII without spaces")
    return token


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def build_parser(defaults: GatewaySettings) -> argparse.ArgumentParser:
    """`colqwen2-gateway`'s options, defaulting to `defaults` (the environment's settings)."""
    parser = argparse.ArgumentParser(prog="colqwen2-gateway", description=__doc__)
    parser.add_argument("--triton-url", default=defaults.triton_url, help="env COLQWEN2_TRITON_URL; %(default)s")
    parser.add_argument("--host", default=os.environ.get("COLQWEN2_GATEWAY_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("COLQWEN2_GATEWAY_PORT", "8080")))
    parser.add_argument("--precision", choices=list(MODELS), default=defaults.precision)
    parser.add_argument("--max-body-mb", type=float, default=defaults.max_body_bytes / 2**20)
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch)
    parser.add_argument("--health-ttl", type=float, default=defaults.health_ttl, help="seconds a verdict is reused")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per Triton request")
    parser.add_argument(
        "--token-file",
        type=Path,
        default=os.environ.get("COLQWEN2_GATEWAY_TOKEN_FILE") or None,
        help="require `Authorization: Bearer <token>` (all but /health) with the token in this file; "
        "env COLQWEN2_GATEWAY_TOKEN_FILE, or the token itself in COLQWEN2_GATEWAY_TOKEN (default: no token)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=defaults.max_concurrency,
        help="requests in flight; the next gets 503 (default: %(default)s; 0: no limit)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=defaults.request_timeout,
        help="seconds per request: 408 for a slow body, 504 for a slow answer (default: %(default)s; 0: none)",
    )
    add_index_options(parser, defaults)
    parser.add_argument("--url-allow-host", action="append", default=list(defaults.url_allow_hosts), metavar="HOST",
                        help="fetch image URLs (`url` in the bodies) from this host and its subdomains (repeat; "
                        "`*`: any public host; env COLQWEN2_URL_ALLOW_HOSTS, comma-separated); none: no URL is "
                        "fetched")  # fmt: skip
    parser.add_argument("--url-allow-network", action="append", default=list(defaults.url_allow_networks),
                        metavar="CIDR", help="a network that is not public but may be fetched from (repeat; env "
                        "COLQWEN2_URL_ALLOW_NETWORKS); private, loopback and link-local addresses are refused "
                        "otherwise")  # fmt: skip
    parser.add_argument("--url-timeout", type=float, default=defaults.url_timeout,
                        help="seconds per image URL fetch (default: %(default)s)")  # fmt: skip
    return parser


def add_index_options(parser: argparse.ArgumentParser, defaults: GatewaySettings) -> None:
    """The catalog index behind /search and /index, and a new collection's settings."""
    parser.add_argument("--qdrant-url", default=defaults.qdrant_url,
                        help="the catalog index behind /search and /index: a Qdrant server (env QDRANT_URL; its key "
                        "in QDRANT_API_KEY)")  # fmt: skip
    parser.add_argument("--qdrant-path", default=defaults.qdrant_path,
                        help="or a local index folder, Qdrant in process (env COLQWEN2_QDRANT_PATH); neither: /search "
                        "and /index answer 503")  # fmt: skip
    parser.add_argument("--collection", default=defaults.collection, help="(default: %(default)s)")
    # A new collection's settings: the first /index creates the collection with them (as `colqwen2 index`).
    parser.add_argument("--shards", type=positive_int, help="a new collection's shard number (a Qdrant cluster)")
    parser.add_argument("--replication-factor", type=positive_int, help="a new collection's replication factor")
    parser.add_argument("--write-consistency-factor", type=positive_int, help="replicas that must confirm a write")
    parser.add_argument("--on-disk", action="store_true", help="keep the multivectors and payload on disk")
    parser.add_argument("--quantization", choices=list(QUANTIZATIONS),
                        help=f"a new collection's quantization (default: {DEFAULT_QUANTIZATION})")  # fmt: skip


def settings_from(args: argparse.Namespace, token: str, defaults: GatewaySettings) -> GatewaySettings:
    """The gateway's settings from its parsed options (the Qdrant API key from the environment only)."""
    return GatewaySettings(
        triton_url=args.triton_url,
        precision=args.precision,
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_batch=args.max_batch,
        health_ttl=args.health_ttl,
        timeout=args.timeout,
        token=token,
        max_concurrency=args.max_concurrency,
        request_timeout=args.request_timeout,
        qdrant_url=args.qdrant_url,
        qdrant_path=args.qdrant_path,
        qdrant_api_key=defaults.qdrant_api_key,
        collection=args.collection,
        shards=args.shards,
        replication_factor=args.replication_factor,
        write_consistency_factor=args.write_consistency_factor,
        on_disk=args.on_disk,
        quantization=args.quantization,
        url_allow_hosts=tuple(args.url_allow_host),
        url_allow_networks=tuple(args.url_allow_network),
        url_timeout=args.url_timeout,
    )


def main(argv: list[str] | None = None) -> int:
    defaults = GatewaySettings()
    args = build_parser(defaults).parse_args(argv)
    try:
        token = read_token(args.token_file)
    except ValueError as exc:
        print(f"colqwen2-gateway: {exc}", file=sys.stderr)
        return 2
    try:
        import uvicorn
    except ImportError:
        print("colqwen2-gateway needs the gateway extra: pip install 'colqwen2-client[gateway]'", file=sys.stderr)
        return 2
    settings = settings_from(args, token, defaults)
    try:
        settings.fetch_policy()
    except ValueError as exc:
        print(f"colqwen2-gateway: --url-allow-network: {exc}", file=sys.stderr)
        return 2
    if not token and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"colqwen2-gateway: no token on {args.host}: anyone who reaches it can embed", file=sys.stderr)
    uvicorn.run(
        create_app(settings), host=args.host, port=args.port, log_level="info", server_header=False,
        h11_max_incomplete_event_size=64 * 1024,  # the header block; RequestGuard refuses over 16 KiB with 431
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
