"""The gateway's settings: where Triton and the catalog index are, and the limits on requests."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .._constants import DEFAULT_TIMEOUT
from ..fetch import FetchPolicy


def _listed(name: str) -> tuple[str, ...]:
    """A comma-separated environment variable as a tuple (empty: none)."""
    return tuple(v.strip() for v in os.environ.get(name, "").split(",") if v.strip())


@dataclass(frozen=True)
class GatewaySettings:
    triton_url: str = field(default_factory=lambda: os.environ.get("COLQWEN2_TRITON_URL", "grpc://127.0.0.1:8001"))
    precision: str = "fp16"
    max_body_bytes: int = 64 * 1024 * 1024  # base64 adds a third: 32 MiB images fit one per request
    max_batch: int = 32
    health_ttl: float = 2.0  # seconds a canary verdict is reused, so probes cannot flood the server
    timeout: float = DEFAULT_TIMEOUT  # per Triton request
    # Bearer token every route but /health requires; empty: none (`make gateway` on 127.0.0.1).
    token: str = field(default="", repr=False)
    # Requests inside the gateway at once; the next gets 503 at once. Triton's queues refuse beyond
    # 128 waiting per model, so more in flight here would only wait to be refused.
    max_concurrency: int = 64
    request_timeout: float = 30.0  # seconds for a whole request: 408 for a body still arriving, 504 for Triton
    # The catalog index behind /search and /index: a Qdrant server, or an embedded folder; neither: no index.
    qdrant_url: str = field(default_factory=lambda: os.environ.get("QDRANT_URL", ""))
    qdrant_path: str = field(default_factory=lambda: os.environ.get("COLQWEN2_QDRANT_PATH", ""))
    qdrant_api_key: str = field(default_factory=lambda: os.environ.get("QDRANT_API_KEY", ""), repr=False)
    collection: str = "visual_embeddings"
    # A new collection's settings (the first /index creates it); None: the index's and Qdrant's defaults.
    shards: int | None = None
    replication_factor: int | None = None
    write_consistency_factor: int | None = None
    on_disk: bool = False
    quantization: str | None = None
    # Image URLs (`url` in /embed, /embed_batch, /index, /search): fetched only from these hosts (and their
    # subdomains; `*`: any public host); none (the default): the gateway fetches no URL. Addresses that are not
    # public (private, loopback, link-local, metadata) stay refused unless `url_allow_networks` names them.
    url_allow_hosts: tuple[str, ...] = field(default_factory=lambda: _listed("COLQWEN2_URL_ALLOW_HOSTS"))
    url_allow_networks: tuple[str, ...] = field(default_factory=lambda: _listed("COLQWEN2_URL_ALLOW_NETWORKS"))
    url_timeout: float = 10.0  # seconds per fetch, redirects included (connecting: at most 5 of them)

    def fetch_policy(self) -> FetchPolicy:
        """What this gateway fetches: its allow-lists, at most its body limit, within `url_timeout`."""
        return FetchPolicy(
            allow_hosts=self.url_allow_hosts, allow_networks=self.url_allow_networks, max_bytes=self.max_body_bytes,
            connect_timeout=min(5.0, self.url_timeout), timeout=self.url_timeout,
        )  # fmt: skip
