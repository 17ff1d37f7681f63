"""An image host on loopback for the URL tests: good images, errors, slow and large bodies, redirects anywhere."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from tests.images import encode, square_chart, whole_png_bomb

IMAGE = encode(square_chart(448, seed=31), "PNG")  # the gateway tests' chart: 16 x 16 visual tokens
BOMB = whole_png_bomb(40_000)


class Handler(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str]]] = []  # (path, Host header) of every request

    def log_message(self, *args: object) -> None:
        pass

    def send(self, status: int, body: bytes = b"", kind: str = "image/png", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        if "Content_Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        Handler.seen.append((self.path, self.headers.get("Host", "")))
        port = self.server.server_address[1]
        path = self.path.split("?")[0]
        if path == "/image.png":
            self.send(200, IMAGE)
        elif path == "/bomb.png":
            self.send(200, BOMB)
        elif path == "/page.html":
            self.send(200, b"<!DOCTYPE html><html><body>secret internal page</body></html>", "text/html")
        elif path == "/slow":  # a body trickling one byte every 0.2 s
            self.send_response(200)
            self.send_header("Content-Length", str(len(IMAGE)))
            self.end_headers()
            for byte in IMAGE[:40]:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
        elif path == "/big-declared":
            self.send(200, b"", Content_Length=str(10 * 2**20))
        elif path == "/big-chunked":  # no length: the cap holds while reading
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            block = b"\0" * 65536
            for _ in range(64):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
            self.wfile.write(b"0\r\n\r\n")
        elif path.startswith("/to/"):  # /to/<where>: a redirect
            target = {"image": f"http://127.0.0.1:{port}/image.png", "loopback": f"http://127.0.0.2:{port}/image.png",
                      "metadata": "http://169.254.169.254/latest/meta-data/", "private": "http://10.1.2.3/x.png",
                      "relative": "/image.png", "ftp": "ftp://127.0.0.1/image.png"}[path[4:]]  # fmt: skip
            self.send(302, Location=target)
        elif path.startswith("/loop"):
            self.send(301, Location="/loop-b" if path == "/loop-a" else "/loop-a")
        elif path.startswith("/chain/"):  # /chain/<n>: n redirects before the image
            n = int(path.rsplit("/", 1)[1])
            self.send(307, Location=f"/chain/{n - 1}" if n > 1 else "/image.png")
        else:
            self.send(404, b"not here", "text/plain")


@contextmanager
def serve() -> Iterator[str]:
    """The handler on a free loopback port, in a thread: yields its base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
