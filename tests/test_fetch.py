"""The image URL fetcher against real HTTP servers on loopback (allowed explicitly, as an operator would)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest
from colqwen2_client.fetch import FetchError, FetchPolicy, fetch_image, is_public, is_url

from tests.image_server import IMAGE, Handler, serve

LOOPBACK = ("127.0.0.1/32",)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve() as url:
        yield url


def allowed(**changes: object) -> FetchPolicy:
    return FetchPolicy(**{"allow_networks": LOOPBACK, "timeout": 5.0, **changes})  # type: ignore[arg-type]


def refused(url: str, policy: FetchPolicy, match: str) -> FetchError:
    with pytest.raises(FetchError, match=match) as caught:
        fetch_image(url, policy)
    return caught.value


def test_an_image_url_is_fetched(server):
    assert fetch_image(f"{server}/image.png?sig=abc", allowed()) == IMAGE
    assert fetch_image(f"{server}/to/relative", allowed()) == IMAGE  # a redirect on the same host
    assert fetch_image(f"{server}/chain/3", allowed()) == IMAGE  # three redirects: the limit


def test_loopback_is_refused_unless_allowed(server):
    error = refused(f"{server}/image.png", FetchPolicy(), "resolves to an address that is not public")
    assert error.host == "127.0.0.1" and "image.png" not in str(error)


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("/missing.png", "HTTP 404"),
        ("/page.html", "not an image \\(an HTML page\\)"),
        ("/bomb.png", "decompression bomb"),
        ("/big-declared", "10485760 bytes, over the limit of 1048576"),
        ("/big-chunked", "over the limit of 1048576 bytes"),
        ("/to/loopback", "resolves to an address that is not public"),
        ("/to/metadata", "resolves to an address that is not public"),
        ("/to/private", "resolves to an address that is not public"),
        ("/to/ftp", "scheme 'ftp': only http and https"),
        ("/loop-a", "a redirect loop"),
        ("/chain/4", "more than 3 redirects"),
    ],
)
def test_bad_urls_are_refused_with_their_host_and_reason(server, path, match):
    error = refused(server + path, allowed(max_bytes=2**20), match)
    assert "secret" not in str(error) and "<html" not in str(error).lower()  # never the body
    assert error.host in ("127.0.0.1", "127.0.0.2", "169.254.169.254", "10.1.2.3")


def test_a_slow_body_times_out(server):
    started = time.monotonic()
    refused(f"{server}/slow", allowed(timeout=1.0), "no complete answer within 1 s")
    assert time.monotonic() - started < 3


def test_addresses_and_schemes_refused_before_connecting(server):
    port = server.rsplit(":", 1)[1]
    for url in (f"http://[::ffff:127.0.0.1]:{port}/image.png", f"http://2130706433:{port}/image.png",
                "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/", "http://100.100.100.200/",
                "http://0.0.0.0/", "http://224.0.0.1/", "http://[::1]/"):  # fmt: skip
        refused(url, FetchPolicy(), "not public")
    refused(f"http://user:pw@127.0.0.1:{port}/image.png", allowed(), "credentials")
    refused("file:///etc/passwd", allowed(), "only http and https")
    refused("gopher://127.0.0.1/", allowed(), "only http and https")
    refused("http:///image.png", allowed(), "no host")
    refused(f"{server}/image.png", allowed(allow_hosts=("images-amazon.com", "keepa.com")), "not on this service's")
    refused(f"{server}/image.png", allowed(allow_hosts=()), "fetches no image URLs")
    assert not is_public(__import__("ipaddress").ip_address("64:ff9b::a00:1"))  # NAT64 of 10.0.0.1
    assert is_url("https://m.media-amazon.com/x.jpg") and not is_url("aGVsbG8=") and not is_url("chart.png")


def test_the_host_is_resolved_once_and_the_connection_made_to_that_address(server, monkeypatch):
    """DNS rebinding: the address checked is the address connected to; the Host header keeps the name."""
    port = int(server.rsplit(":", 1)[1])
    calls = []
    real = socket.getaddrinfo

    def answer(host, *args, **kwargs):
        calls.append(host)
        if host == "images.example.test":  # the first answer is the only one asked for
            return real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", answer)
    Handler.seen.clear()
    policy = allowed(allow_hosts=("example.test",))
    assert fetch_image(f"http://images.example.test:{port}/image.png", policy) == IMAGE
    assert calls[0] == "images.example.test" and set(calls[1:]) <= {"127.0.0.1"}  # then only the address itself
    assert Handler.seen == [("/image.png", f"images.example.test:{port}")]


def test_https_checks_the_certificate_against_the_host_name(tmp_path):
    """The connection goes to the pinned address, yet TLS verifies the name: a self-signed certificate fails."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)  # fmt: skip
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        refused(f"https://127.0.0.1:{httpd.server_address[1]}/image.png", allowed(), "TLS failed .*CERTIFICATE_VERIFY")
    finally:
        httpd.shutdown()
