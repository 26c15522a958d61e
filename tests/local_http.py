"""A misbehaving HTTP(S) file server on 127.0.0.1 for download tests.

The first path component picks a behaviour, the rest names a file in `server.files`:
  /ok/NAME           200, or 206 for a Range request (with ETag)
  /norange/NAME      always 200 with the whole file (a server without Range support)
  /drop-once/NAME    the first request sends half the body then closes; later ones behave like /ok/
  /drop-always/NAME  every request sends half the body then closes
  /stall-body/NAME   sends the headers and a few bytes, then nothing
  /stall-once/NAME   the first request sends half the body then nothing; later ones behave like /ok/
  /stall-headers/X   accepts the connection and never answers
  /busy-once/NAME    503 the first time, then like /ok/
  /gzip-encoded/NAME like /ok/, labelled Content-Encoding: gzip (the bytes are sent as stored)
  /gzip-if-asked/NAME  gzip-compresses the body on the fly if the request accepts gzip
  /range-416/NAME    416 for any Range request, otherwise like /ok/
  /wrong-range/NAME  answers a Range request with 206 and the whole file (Content-Range bytes 0-...)
  /overlong/NAME     answers a Range request with the right Content-Range but the whole file as body
  /redirect/REST     302 to /REST
  /loop/X            302 to itself, forever
  anything else      404
Every request's path and headers are recorded in `server.requests`.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BEHAVIOURS = {"ok", "norange", "drop-once", "drop-always", "stall-body", "stall-once", "busy-once",
              "gzip-encoded", "gzip-if-asked", "range-416", "wrong-range", "overlong"}  # fmt: skip


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.scheme = "https" if tls else "http"
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, Message]] = []
        self.stop = threading.Event()  # releases stalled handlers at shutdown

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}"

    def seen(self, path: str, header: str = "Range") -> list[str | None]:
        """The `header` (by default Range) of each request made for `path`, in order."""
        return [headers.get(header) for p, headers in self.requests if p == path]


class Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers))
        behaviour, _, name = self.path.strip("/").partition("/")
        data = self.server.files.get(name)
        first = len(self.server.seen(self.path)) == 1
        range_header = self.headers.get("Range")
        if behaviour == "stall-headers":
            self.server.stop.wait(30)
            return
        if behaviour in ("redirect", "loop"):
            self.send_response(302)
            self.send_header("Location", f"/{name}" if behaviour == "redirect" else self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if data is None or behaviour not in BEHAVIOURS:
            self.send_error(404, "Not Found")
            return
        if behaviour == "busy-once" and first:
            self.send_error(503, "Service Unavailable")
            return
        if behaviour == "range-416" and range_header:
            self.send_error(416, "Range Not Satisfiable")
            return
        etag = '"' + hashlib.md5(data).hexdigest() + '"'
        start = 0
        if range_header and behaviour != "norange":
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if behaviour == "wrong-range":
                start = 0
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            if behaviour == "overlong":
                start = 0
        else:
            self.send_response(200)
        body = data[start:]
        compress = behaviour == "gzip-if-asked" and "gzip" in self.headers.get("Accept-Encoding", "")
        if compress:
            body = gzip.compress(body)
        if compress or behaviour == "gzip-encoded":
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.end_headers()
        if behaviour == "stall-body" or (behaviour == "stall-once" and first):
            self.wfile.write(body[:10] if behaviour == "stall-body" else body[: len(body) // 2])
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
def file_server(tls: ssl.SSLContext | None = None) -> Iterator[FileServer]:
    server = FileServer(tls)
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


@contextmanager
def unanswered_url() -> Iterator[str]:
    """A URL on 127.0.0.1 whose TCP connect hangs: the listener's accept queue is full, it never accepts."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler = socket.create_connection(("127.0.0.1", port))  # takes the one place in the queue
        try:
            yield f"http://127.0.0.1:{port}/dataset.tar.gz"
        finally:
            filler.close()


def self_signed_tls(folder: Path, hostname: str = "127.0.0.1") -> tuple[ssl.SSLContext, Path]:
    """A server TLS context with a new self-signed certificate for `hostname`, and the certificate's path."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    try:
        alt_name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        alt_name = x509.DNSName(hostname)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([alt_name]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = folder / f"{hostname}.crt", folder / f"{hostname}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path
