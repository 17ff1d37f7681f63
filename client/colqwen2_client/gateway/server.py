"""`colqwen2-gateway`: serve the original REST API in front of Triton with uvicorn."""

from __future__ import annotations

import argparse
import os
import sys

from .._constants import DEFAULT_TIMEOUT, MODELS
from .app import GatewaySettings, create_app


def main(argv: list[str] | None = None) -> int:
    defaults = GatewaySettings()
    parser = argparse.ArgumentParser(prog="colqwen2-gateway", description=__doc__)
    parser.add_argument("--triton-url", default=defaults.triton_url, help="env COLQWEN2_TRITON_URL; %(default)s")
    parser.add_argument("--host", default=os.environ.get("COLQWEN2_GATEWAY_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("COLQWEN2_GATEWAY_PORT", "8080")))
    parser.add_argument("--precision", choices=list(MODELS), default=defaults.precision)
    parser.add_argument("--max-body-mb", type=float, default=defaults.max_body_bytes / 2**20)
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch)
    parser.add_argument("--health-ttl", type=float, default=defaults.health_ttl, help="seconds a verdict is reused")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per Triton request")
    args = parser.parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        print("colqwen2-gateway needs the gateway extra: pip install 'colqwen2-client[gateway]'", file=sys.stderr)
        return 2
    settings = GatewaySettings(
        triton_url=args.triton_url,
        precision=args.precision,
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_batch=args.max_batch,
        health_ttl=args.health_ttl,
        timeout=args.timeout,
    )
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
