"""``spoolpipe serve``: a read-only status page of one repository, on the standard library's HTTP server.

``site`` decides every response (routes, headers, escaping through ``render``,
image confinement through ``outputs``); this module only binds the socket,
runs ``ThreadingHTTPServer`` and stops it on SIGTERM or SIGINT.
"""

from __future__ import annotations

import contextlib
import http.client
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Final, TextIO

from ..activity import printable
from ..repository import Repository
from .site import SECURITY_HEADERS, Site

EXIT_CANNOT_START: Final = 3
"""The address cannot be bound (port in use, permission denied)."""
EXIT_BAD_HOST: Final = 2
"""``--host`` is not an address or a name that resolves."""
MAX_CONNECTIONS: Final = 32
"""Connections served at once; one more is closed without an answer."""


def _handler(site: Site, request_timeout: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "spoolpipe"
        sys_version = ""
        # Until a request line names its version, http.server assumes HTTP/0.9, whose answers have no
        # status line and no headers: a malformed line got a bare body without the security headers.
        default_request_version = "HTTP/1.0"
        timeout = request_timeout

        _version = "HTTP/1.0"

        @property
        def request_version(self) -> str:
            return self._version

        @request_version.setter
        def request_version(self, value: str) -> None:
            # A request line may name HTTP/0.9 itself: answered as HTTP/1.0 too, never as a bare body.
            self._version = "HTTP/1.0" if value == "HTTP/0.9" else value

        def parse_request(self) -> bool:
            words = self.raw_requestline.split()
            if len(words) == 2 and words[0] == b"GET":  # HTTP/0.9's simple request: no headers follow
                self.command, self.path = "GET", words[1].decode("iso-8859-1")
                self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
                self.request_version = self.default_request_version
                self.close_connection = True
                self.headers = http.client.HTTPMessage()
                return True
            return super().parse_request()

        def setup(self) -> None:
            super().setup()
            self._deadline = threading.Timer(request_timeout, self._expire)
            self._deadline.daemon = True
            self._deadline.start()

        def _expire(self) -> None:
            with contextlib.suppress(OSError):  # the thread serving it then sees its end
                self.connection.shutdown(socket.SHUT_RDWR)

        def finish(self) -> None:
            self._deadline.cancel()
            super().finish()

        def _answer(self) -> None:
            response = site.respond(self.command, self.path, self.headers.get("Host"))
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)

        def end_headers(self) -> None:
            # Here rather than in _answer, so that http.server's own errors (400, 414...) carry them too.
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            super().end_headers()

        def __getattr__(self, name: str) -> Any:
            # Every method has a handler (``do_GET``, ``do_POST``, ``do_FOO``...): the site says 405.
            if name.startswith("do_"):
                return self._answer
            raise AttributeError(name)

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(printable(f"{self.address_string()} {format % args}") + "\n")

    return Handler


class _Server(ThreadingHTTPServer):
    """One thread per connection, at most ``MAX_CONNECTIONS`` at once: further ones are closed at once."""

    daemon_threads = True
    # socketserver's default, 5, dropped the rest of a burst of connections: each waited 1 s to retry.
    request_queue_size = 2 * MAX_CONNECTIONS

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (reset, closed, timed out) is one line, not a traceback.

        Every other error of an answer is the site's 500 (``Site.respond``): an OSError
        that gets here is of the client's socket. Anything else is a bug, with its traceback.
        """
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handle_error(request, client_address)
            return
        why = printable(exc.strerror or str(exc) or type(exc).__name__)
        sys.stderr.write(f"{client_address[0]} the client went away before its answer was sent ({why})\n")


def _resolve(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    """The family and numeric address ``host`` names: what is bound, and what the Host guard judges
    (``127.1``, ``2130706433`` or a name resolving to 127.0.1.1 are loopback too)."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return family, str(address[0])


def serve(
    repo: Repository,
    host: str,
    port: int,
    *,
    request_timeout: float,
    out: TextIO = sys.stdout,
) -> int:
    """Serve the status page of ``repo`` on ``host``:``port`` until SIGTERM or SIGINT; the exit code.

    Each connection is closed ``request_timeout`` seconds after it was opened, idle or not: idle
    clients cannot hold threads, nor can clients sending a byte now and then.

    An error while answering a request is a 500 (``Site.respond``); anything else raised here is
    a bug, which ``cli.main`` turns into exit 70.
    """
    try:
        family, address = _resolve(host, port)
    except (OSError, UnicodeError) as exc:
        print(f"spoolpipe serve: error: --host {host!r} is not a usable address ({exc})", file=sys.stderr)
        return EXIT_BAD_HOST
    server_class = type("Server", (_Server,), {"address_family": family})
    try:
        server = server_class((address, port), _handler(Site(repo, address), request_timeout))
    except OSError as exc:
        print(
            f"spoolpipe serve: error: cannot listen on {host} port {port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return EXIT_CANNOT_START
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    print(f"serving the status of {printable(str(repo.root))} at http://{shown}:{bound_port}/", file=out)
    print("read-only; SIGTERM or Ctrl-C stops it", file=out, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
