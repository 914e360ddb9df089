"""The ``http.request`` type: send the activity's data as JSON to an endpoint defined in the properties.

The activity names an ``http.<name>`` (data field ``endpoint``, default
``default``); the URL, method, headers and timeout come from the properties
only. Redirects are never followed: a 3xx answer fails the activity, naming
where it pointed. The endpoint's timeout bounds the whole request (an alarm:
a server that sends a byte within each read's timeout cannot hold it longer),
the name lookup included: it runs in a thread of its own, waited for until then.
``urllib`` is imported when a request is made, not before.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..activity import Activity
from ..processor import Context, Fatal, processor, timeout_for
from . import specs

if TYPE_CHECKING:
    import urllib.request

TYPE = "http.request"
#: The response body kept in the result (``body``): at most this many bytes, decoded as UTF-8.
BODY_BYTES = 4096


class RequestFailed(Exception):
    """The endpoint could not be reached or asked to be asked again (5xx, 408, 429): retried."""


class _Overdue(Exception):
    """The request's time is up (raised by the alarm, wherever the request is blocked)."""


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """``_Overdue`` raised in this thread after ``seconds``: a deadline for a whole request, which a
    socket timeout (each read) is not. Only the main thread gets signals; elsewhere each read's only.
    A timer the processor's own code had set is held off meanwhile, then set again for what was left."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def overdue(_signum: int, _frame: FrameType | None) -> None:
        raise _Overdue

    previous = signal.signal(signal.SIGALRM, overdue)
    started = time.monotonic()
    delay, interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if delay:  # due now if its time passed meanwhile
            signal.setitimer(signal.ITIMER_REAL, max(delay - (time.monotonic() - started), 1e-6), interval)


def _connect_within(deadline: float) -> Callable[..., socket.socket]:
    """``socket.create_connection``, its name lookup bounded by ``deadline`` (``time.monotonic``):
    glibc's getaddrinfo goes on after a signal, to its own timeout (resolv.conf), so it runs in a
    thread, left to finish alone when the time is up."""

    def connect(
        address: tuple[str, int], timeout: float | None = None, source: tuple[str, int] | None = None
    ) -> socket.socket:
        found: list[list[Any] | OSError] = []

        def look_up() -> None:
            try:
                found.append(socket.getaddrinfo(*address, type=socket.SOCK_STREAM))
            except OSError as exc:
                found.append(exc)

        lookup = threading.Thread(target=look_up, name=f"resolve {address[0]}", daemon=True)
        lookup.start()
        lookup.join(max(0.0, deadline - time.monotonic()))
        if not found:
            raise _Overdue
        if isinstance(found[0], OSError):
            raise found[0]
        error: OSError = OSError(f"{address[0]}: no address")
        for family, kind, proto, _, sockaddr in found[0]:  # each in turn, as create_connection does
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(timeout)
                if source:
                    sock.bind(source)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        raise error

    return connect


def _opener(deadline: float) -> urllib.request.OpenerDirector:
    import http.client
    import urllib.request

    def bounded(connection: type[http.client.HTTPConnection]) -> Callable[..., http.client.HTTPConnection]:
        """``connection`` connecting by ``_connect_within``: only the socket's address comes from it,
        the host (``Host``, TLS name and certificate check, a proxy's tunnel) stays the URL's."""

        def make(host: str, **kwargs: Any) -> http.client.HTTPConnection:
            made = connection(host, **kwargs)
            made._create_connection = _connect_within(deadline)  # type: ignore[attr-defined]
            made.response_class = FinalAnswer
            return made

        return make

    class FinalAnswer(http.client.HTTPResponse):
        """The answer past interim ones (102 Processing, 103 Early Hints): http.client itself skips
        only 100 Continue, and a 103 before the 200 of a request that succeeded was taken as final."""

        def _read_status(self) -> tuple[str, int, str]:
            while True:
                version, status, reason = super()._read_status()  # type: ignore[misc]
                if not 101 < status < 200:  # 100 is skipped by http.client; 101 switched protocols
                    return version, status, reason
                http.client.parse_headers(self.fp)  # the interim answer's own headers

    class Bounded(urllib.request.HTTPHandler):
        def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
            return super().do_open(bounded(http_class), req, **kwargs)

    class BoundedTLS(urllib.request.HTTPSHandler):
        def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
            return super().do_open(bounded(http_class), req, **kwargs)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        """Answers no 3xx, so urllib raises it as an HTTPError: before its Location is even parsed
        (one urllib cannot parse raised a ValueError, and the request was sent again)."""

        def http_error_302(self, *args: Any, **kwargs: Any) -> None:
            return None

        http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    return urllib.request.build_opener(NoRedirect, Bounded, BoundedTLS)


def _read_body(response: Any) -> tuple[bytes, bool]:
    """The body's first ``BODY_BYTES``, and whether they (or the whole body) could be read: an answer
    is what its status says even when its body breaks off (a cut connection, bad chunks, the time up)."""
    import http.client

    content = b""
    try:
        while len(content) < BODY_BYTES:
            chunk = response.read1(BODY_BYTES - len(content))
            if not chunk:  # the end, or a connection closed before its Content-Length was sent
                return content, not response.length
            content += chunk
    except (OSError, http.client.HTTPException, ValueError, _Overdue):
        return content, False
    return content, True


def _send(
    endpoint: specs.Endpoint, body: bytes | None, headers: dict[str, str], limit: float
) -> tuple[int, bytes, bool, str]:
    """Status, the body's first ``BODY_BYTES``, whether they were read in full, and the Location
    header; ``RequestFailed`` if unreachable or with no answer within ``limit`` seconds."""
    import http.client
    import urllib.error
    import urllib.request

    request = urllib.request.Request(endpoint.url, data=body, headers=headers, method=endpoint.method)
    answer: tuple[int, bytes, bool, str] | None = None
    try:
        with _alarm(limit):
            try:
                with _opener(time.monotonic() + limit).open(
                    request, timeout=min(endpoint.timeout, limit)
                ) as response:
                    answer = response.status, *_read_body(response), response.headers.get("Location", "")
            except urllib.error.HTTPError as exc:
                with exc:
                    location = exc.headers.get("Location", "") if exc.headers else ""
                    answer = exc.code, *_read_body(exc), location
    except _Overdue:
        if answer is None:  # else it came just in time
            raise RequestFailed(
                f"{endpoint.method} {endpoint.url}: no answer within {limit:g}s "
                f"(http.{endpoint.name}.timeout)"
            ) from None
    except urllib.error.URLError as exc:
        raise RequestFailed(f"{endpoint.method} {endpoint.url}: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise RequestFailed(f"{endpoint.method} {endpoint.url}: {type(exc).__name__}: {exc}") from None
    assert answer is not None
    return answer


@processor(TYPE, follow_ups=())
def request(activity: Activity, ctx: Context) -> dict[str, object]:
    """Send the data to the endpoint it names; see docs/builtins.md for outcomes."""
    try:
        name, endpoint = specs.named(
            activity.data,
            specs.ENDPOINT_FIELD,
            ctx.settings.http_endpoints,
            noun="endpoint",
            family="http",
            required="url",
            article="an",
            worker_id=ctx.worker_id,
            default=specs.DEFAULT_ENDPOINT,
        )
    except specs.NotConfigured as exc:
        raise Fatal(str(exc)) from None
    body = None if endpoint.method == "GET" else specs.request_body(activity.data)
    headers = {
        **({} if body is None else {"Content-Type": "application/json; charset=utf-8"}),
        "User-Agent": f"spoolpipe/{__version__}",
        "X-Spoolpipe-Activity": activity.id,
        "X-Spoolpipe-Attempt": str(activity.attempt),
        **dict(endpoint.headers),
    }
    started = time.monotonic()
    limit = specs.within(endpoint.timeout, timeout_for(ctx.settings, activity.type))
    status, content, complete, location = _send(endpoint, body, headers, limit)
    seconds = time.monotonic() - started
    text = content.decode("utf-8", "replace")
    cut = "" if complete else " (the body broke off: what came)"
    ctx.log.info("%s %s: %d after %.3fs%s\n%s", endpoint.method, endpoint.url, status, seconds, cut, text)
    verdict = endpoint.verdict(status)
    what = f"{endpoint.method} {endpoint.url} answered {status}"
    if verdict == "retry":
        raise RequestFailed(f"{what} (retried): {text[:200]!r}")
    if verdict == "fatal":
        if 300 <= status < 400:
            raise Fatal(f"{what}, a redirect to {location!r}, which is not followed: fix http.{name}.url")
        raise Fatal(f"{what}: {text[:200]!r}")
    return {
        "endpoint": name,
        "status": status,
        "duration_seconds": round(seconds, 3),
        "body": text,
        "body_complete": complete,
    }
