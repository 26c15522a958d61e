"""A misbehaving HTTP file server on 127.0.0.1 for download tests.

The first path component picks a behaviour, the rest names a file in `server.files`:
  /ok/NAME           200, or 206 for a Range request (with ETag)
  /norange/NAME      always 200 with the whole file (a server without Range support)
  /drop-once/NAME    the first request sends half the body then closes; later ones behave like /ok/
  /drop-always/NAME  every request sends half the body then closes
  /stall-body/NAME   sends the headers and a few bytes, then nothing
  /stall-headers/X   accepts the connection and never answers
  /busy-once/NAME    503 the first time, then like /ok/
  anything else      404
Every request's path and Range header is recorded in `server.requests`.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.stop = threading.Event()  # releases stalled handlers at shutdown

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def seen(self, path: str) -> list[str | None]:
        """The Range headers of the requests made for `path`, in order."""
        return [range_ for p, range_ in self.requests if p == path]


class Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Range")))
        behaviour, _, name = self.path.strip("/").partition("/")
        data = self.server.files.get(name)
        first = len(self.server.seen(self.path)) == 1
        if behaviour == "stall-headers":
            self.server.stop.wait(30)
            return
        if data is None or behaviour not in ("ok", "norange", "drop-once", "drop-always", "stall-body", "busy-once"):
            self.send_error(404, "Not Found")
            return
        if behaviour == "busy-once" and first:
            self.send_error(503, "Service Unavailable")
            return
        start = 0
        range_header = self.headers.get("Range")
        if range_header and behaviour != "norange":
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("ETag", '"' + hashlib.md5(data).hexdigest() + '"')
        self.end_headers()
        body = data[start:]
        if behaviour == "stall-body":
            self.wfile.write(body[:10])
            self.wfile.flush()
            self.server.stop.wait(30)
            return
        if behaviour == "drop-always" or (behaviour == "drop-once" and first):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@contextmanager
def file_server() -> Iterator[FileServer]:
    server = FileServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def refused_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (the port was just free)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/dataset.tar.gz"
