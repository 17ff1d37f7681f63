"""Image URLs, fetched safely: the one fetcher of the SDK, the CLI, the catalog and the gateway.

A service that fetches URLs for its callers is a server-side request forgery risk: inside a cluster a URL
can name the cloud's metadata service, the Kubernetes API or any pod. So `fetch_image`:

- takes `http` and `https` URLs only, without credentials in them;
- with `FetchPolicy.allow_hosts`, takes only those hosts (each with its subdomains; `*`: any host);
- resolves the host once, requires every address it has to be allowed, and connects to that address
  (for https the certificate is still checked against the host name), so a DNS answer that changes between
  the check and the connection (rebinding) cannot move it;
- allows only global unicast addresses: private, loopback, link-local (the metadata services at
  169.254.169.254 and fd00:ec2::254), shared (100.64/10), reserved, multicast and unspecified ones, and IPv6
  forms of them (IPv4-mapped, NAT64), are refused unless `allow_networks` names them;
- follows at most `max_redirects` redirects, each hop checked as the first URL was (a loop is named one);
- refuses a Content-Length over `max_bytes` before the body and stops reading a body at `max_bytes`;
  takes at most `connect_timeout` seconds to connect and `timeout` for the whole fetch, redirects included;
- uses no proxy from the environment (a proxy would resolve the host itself);
- returns the bytes only if they are an image: PIL names the format from the header without decoding the
  pixels; a header claiming a decompression bomb's size is refused here, and the server's own pixel and byte
  limits apply as to any upload.

Errors are `FetchError` (an `InvalidInputError`: 400 at the gateway) naming the URL's host and the reason,
never the body and never the rest of the URL (a signed URL's query string is a credential).
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import socket
import ssl
import time
import warnings
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from .errors import InvalidInputError

MAX_URL_BYTES = 64 * 2**20  # the SDK's and the CLI's cap; the gateway's is its request body limit
REDIRECTS = frozenset({301, 302, 303, 307, 308})
NAT64 = ipaddress.ip_network("64:ff9b::/96")
CHUNK = 64 * 1024
USER_AGENT = "colqwen2-fetch/1"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class FetchError(InvalidInputError):
    """An image URL that could not be fetched: its host and why."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"cannot fetch the image at {host or 'the URL'}: {reason}")
        self.host, self.reason = host, reason


@dataclass(frozen=True)
class FetchPolicy:
    """What may be fetched. `allow_hosts`: None takes any host; a tuple only these (and their subdomains; `*` any),
    so an empty one fetches nothing (the gateway's default). `allow_networks`: CIDRs that are not on the public
    internet but may be fetched from (an operator's own image store; a test's loopback server)."""

    allow_hosts: tuple[str, ...] | None = None
    allow_networks: tuple[str, ...] = ()
    max_bytes: int = MAX_URL_BYTES
    connect_timeout: float = 5.0
    timeout: float = 30.0
    max_redirects: int = 3
    # Derived once from the two lists: the networks parsed, the hosts normalised (lower case, no `*.` or dot).
    _networks: tuple[Network, ...] = field(init=False, repr=False, compare=False)
    _hosts: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:  # a bad CIDR is the operator's error, named at startup
            networks = tuple(ipaddress.ip_network(n, strict=False) for n in self.allow_networks)
        except ValueError as exc:
            raise ValueError(f"allow_networks: {exc}") from None
        hosts = (h.strip().lower().rstrip(".").removeprefix("*.").removeprefix(".") for h in self.allow_hosts or ())
        object.__setattr__(self, "_networks", networks)
        object.__setattr__(self, "_hosts", tuple(hosts))
        if self.max_bytes <= 0 or self.timeout <= 0 or self.connect_timeout <= 0 or self.max_redirects < 0:
            raise ValueError("max_bytes, timeout and connect_timeout must be positive, max_redirects at least 0")

    @property
    def enabled(self) -> bool:
        return self.allow_hosts is None or bool(self.allow_hosts)

    def host_allowed(self, host: str) -> bool:
        if self.allow_hosts is None:
            return True
        return any(entry == "*" or host == entry or host.endswith("." + entry) for entry in self._hosts)

    def address_allowed(self, address: Address) -> bool:
        return any(address in n for n in self._networks) or is_public(address)


def is_public(address: Address) -> bool:
    """A global unicast address; an IPv6 one that embeds IPv4 (mapped, NAT64) counts as the IPv4 one."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public(address.ipv4_mapped)
        if address in NAT64:
            return is_public(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return address.is_global and not address.is_multicast


def is_url(value: object) -> bool:
    """Whether an image input is a URL (no base64 string or file path starts with a scheme and `://`)."""
    return isinstance(value, str) and value[:8].lower().startswith(("http://", "https://"))


def host_of(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def fetch_image(url: str, policy: FetchPolicy | None = None) -> bytes:
    """The image at `url`, under `policy` (default: any public host, 64 MiB, 30 s); FetchError otherwise."""
    policy = policy or FetchPolicy()
    host = host_of(url)
    if not policy.enabled:
        raise FetchError(host, "this service fetches no image URLs (its operator allows hosts to turn them on)")
    deadline = time.monotonic() + policy.timeout
    seen = {url}
    for _hop in range(policy.max_redirects + 1):
        status, location, data = _get(url, policy, deadline)
        if status not in REDIRECTS:
            return _image(host_of(url), data)
        if not location:
            raise FetchError(host_of(url), f"HTTP {status} without a Location")
        url = urljoin(url, location)
        if url in seen:
            raise FetchError(host_of(url), "a redirect loop")
        seen.add(url)
    raise FetchError(host, f"more than {policy.max_redirects} redirects")


def fetch_or_error(url: str, policy: FetchPolicy | None = None) -> bytes | FetchError:
    """`fetch_image`, its FetchError returned rather than raised (a batch keeps the other images)."""
    try:
        return fetch_image(url, policy)
    except FetchError as exc:
        return exc


def _get(url: str, policy: FetchPolicy, deadline: float) -> tuple[int, str, bytes]:
    """One GET, no redirect followed: (status, Location, body of a 200)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchError(host_of(url), f"not a valid URL ({exc})") from None
    host = (parts.hostname or "").rstrip(".")
    if parts.scheme not in ("http", "https"):
        raise FetchError(host, f"scheme {parts.scheme or 'none'!r}: only http and https are fetched")
    if not host:
        raise FetchError("", "the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise FetchError(host, "credentials in the URL are not sent")
    if not policy.host_allowed(host):
        raise FetchError(host, "the host is not on this service's allow-list")
    port = port or (443 if parts.scheme == "https" else 80)
    address = _resolve(host, port, policy)
    conn = _connect(parts.scheme, host, address, port, policy, deadline)
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", path, headers={"User-Agent": USER_AGENT, "Accept": "image/*", "Connection": "close"})
        response = conn.getresponse()
        if response.status in REDIRECTS:
            return response.status, response.getheader("Location") or "", b""
        if response.status != 200:
            raise FetchError(host, f"HTTP {response.status} {response.reason}".rstrip())
        return 200, "", _body(conn, response, host, policy, deadline)
    except TimeoutError:
        raise FetchError(host, f"no complete answer within {policy.timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(host, f"{type(exc).__name__}: {exc}") from None
    finally:
        conn.close()


def _resolve(host: str, port: int, policy: FetchPolicy) -> Address:
    """The host's first address, once every address it resolves to is allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(host, f"cannot resolve the host ({getattr(exc, 'strerror', None) or exc})") from None
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
    refused = [a for a in addresses if not policy.address_allowed(a)]
    if refused or not addresses:
        # the address itself is not named: the errors must not map a cluster's internal names for a caller
        what = "an address that is not public (private, loopback, link-local or reserved)" if refused else "nothing"
        raise FetchError(host, f"the host resolves to {what}")
    return addresses[0]


def _connect(
    scheme: str, host: str, address: Address, port: int, policy: FetchPolicy, deadline: float
) -> http.client.HTTPConnection:
    """A connection to `address` (no second lookup) that speaks to `host`: its Host header, its TLS name."""
    remaining = deadline - time.monotonic()
    try:
        sock = socket.create_connection((str(address), port), timeout=max(0.01, min(policy.connect_timeout, remaining)))
    except TimeoutError:
        raise FetchError(host, f"no connection within {min(policy.connect_timeout, policy.timeout):g} s") from None
    except OSError as exc:
        raise FetchError(host, f"cannot connect ({exc.strerror or exc})") from None
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    conn: http.client.HTTPConnection
    if scheme == "https":
        try:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise FetchError(host, f"TLS failed ({exc})") from None
        conn = http.client.HTTPSConnection(host, port)
    else:
        conn = http.client.HTTPConnection(host, port)
    conn.sock = sock  # request() uses it as is: no connect(), no proxy, no second lookup
    return conn


def _body(
    conn: http.client.HTTPConnection, response: http.client.HTTPResponse, host: str, policy: FetchPolicy,
    deadline: float,
) -> bytes:  # fmt: skip
    """A 200's body, at most `max_bytes`, read before the deadline."""
    declared = response.getheader("Content-Length")
    if declared and declared.isdigit() and int(declared) > policy.max_bytes:
        raise FetchError(host, f"the body is {int(declared)} bytes, over the limit of {policy.max_bytes}")
    chunks, size = [], 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        if conn.sock is not None:
            conn.sock.settimeout(remaining)
        chunk = response.read1(CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > policy.max_bytes:
            raise FetchError(host, f"the body is over the limit of {policy.max_bytes} bytes")
        chunks.append(chunk)


def _image(host: str, data: bytes) -> bytes:
    """`data` if PIL knows it for an image from its header (nothing decoded)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)):
                return data
    except Image.DecompressionBombError as exc:
        raise FetchError(host, f"a decompression bomb ({exc})") from None
    except Exception:  # PIL raises many kinds of error on bytes that are not an image
        start = data[:64].lstrip().lower()
        what = "an HTML page" if start.startswith((b"<!doctype html", b"<html")) else f"{len(data)} bytes"
        raise FetchError(host, f"not an image ({what})") from None
