"""What the status page answers to each request: routing, headers and the responses (no sockets here).

``route`` is pure (a raw request path to a ``Route``); ``Site.respond`` reads the
repository through the views and turns a method, path and Host header into a
``Response``. Only GET and HEAD exist; unknown paths are 404, there is no
directory listing and no write endpoint.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import unquote, urlsplit

from .. import config, images
from ..activity import format_time, is_valid_name
from ..image_processors import IMAGE_PROCESS
from ..repository import Repository, SharedClock
from ..views import entries, status, story
from . import outputs, render

log = logging.getLogger("spoolpipe.serve")

RECENT_FAILURES: Final = 20
RECENT_INVALID: Final = 10
RECENT_DONE_SCANNED: Final = 50
"""Thumbnails are of the image.process activities among this many most recent done records."""
RECENT_IMAGE_ACTIVITIES: Final = 8
TILES_PER_ACTIVITY: Final = 4

SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}
"""Sent with every response."""

HTML: Final = "text/html; charset=utf-8"
JSON: Final = "application/json"

RouteName = Literal["index", "style", "api-status", "story", "api-story", "output", "thumb", "missing"]


@dataclass(frozen=True)
class Route:
    name: RouteName
    activity_id: str = ""
    index: int = 0


_MISSING: Final = Route("missing")
_INDEX = re.compile(r"\A(?:0|[1-9][0-9]{0,3})\Z")


def route(raw_path: str) -> Route:
    """The page a raw request target names; ``missing`` for anything else.

    Segments are split before they are unquoted, so ``%2F`` or ``%2e%2e`` stay
    inside one segment, and an id must be a valid activity id.
    """
    path = urlsplit(raw_path).path
    if not path.startswith("/"):
        return _MISSING
    fixed: dict[str, RouteName] = {"/": "index", "/style.css": "style", "/api/status": "api-status"}
    if path in fixed:
        return Route(fixed[path])
    segments = [unquote(s) for s in path[1:].split("/")]
    match segments:
        case ["activity", activity_id] if is_valid_name(activity_id):
            return Route("story", activity_id)
        case ["api", "activity", activity_id] if is_valid_name(activity_id):
            return Route("api-story", activity_id)
        case ["output" | "thumb" as kind, activity_id, index] if is_valid_name(activity_id) and _INDEX.match(
            index
        ):
            return Route("output" if kind == "output" else "thumb", activity_id, int(index))
    return _MISSING


def host_allowed(host_header: str | None, bound_host: str) -> bool:
    """Whether a request's Host header may be answered: a loopback-bound page answers only loopback names.

    A page on 127.0.0.1 is otherwise readable by any web site through DNS
    rebinding (a name of theirs resolving to 127.0.0.1); bound elsewhere, any Host is fine.
    ``bound_host`` is the address bound, not what ``--host`` said. No Host at all is refused
    too: browsers always send one, and the documented rule is "a loopback name", not "none".
    """
    if not _is_loopback(bound_host):
        return True
    if host_header is None:
        return False
    try:
        name = urlsplit("//" + host_header.strip()).hostname
    except ValueError:  # "[::1", say
        return False
    return name is not None and _is_loopback(name)


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return (mapped or address).is_loopback  # ::ffff:127.0.0.1 is 127.0.0.1


@dataclass
class Response:
    status: HTTPStatus
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _html(status_: HTTPStatus, page: str) -> Response:
    # A lone surrogate (a hand-written record may hold "\ud800") is sent as its escape, not an error.
    return Response(status_, HTML, page.encode("utf-8", "backslashreplace"), {"Cache-Control": "no-store"})


def _json(doc: Any) -> Response:
    body = json.dumps(doc, indent=2).encode("ascii")  # as ``status --json`` prints it
    return Response(HTTPStatus.OK, JSON, body, {"Cache-Control": "no-store"})


def _error(status_: HTTPStatus, message: str) -> Response:
    return _html(status_, render.error_page(f"{status_.value} {status_.phrase}", message))


NOT_FOUND_MESSAGE: Final = "Nothing here. The page shows / and the stories it links to."


class Site:
    """The status page of one repository; safe to call from many threads at once."""

    def __init__(self, repo: Repository, bound_host: str) -> None:
        self.repo = repo
        self.bound_host = bound_host
        self.thumbnails = outputs.ThumbnailCache()
        self.checked = outputs.CheckedFiles()
        self.clock = SharedClock(repo.tmp / ".clock-serve")

    def respond(self, method: str, raw_path: str, host_header: str | None) -> Response:
        """The response to one request; an unexpected error is logged and answered with 500."""
        if method not in ("GET", "HEAD"):
            response = _error(HTTPStatus.METHOD_NOT_ALLOWED, "This page is read-only: only GET and HEAD.")
            response.headers["Allow"] = "GET, HEAD"
            return response
        if not host_allowed(host_header, self.bound_host):
            return _error(HTTPStatus.FORBIDDEN, "This page answers only to a loopback host name.")
        try:
            return self._get(route(raw_path))
        except config.ConfigError as exc:  # edited while the page runs: say so until it is fixed
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, f"The repository's configuration is invalid: {exc}")
        except Exception:
            log.exception("serving %r failed", raw_path)
            return _error(HTTPStatus.INTERNAL_SERVER_ERROR, "The page failed; the error is in the log.")

    def _get(self, where: Route) -> Response:
        match where.name:
            case "index":
                return _html(HTTPStatus.OK, self._index())
            case "style":
                return Response(HTTPStatus.OK, "text/css; charset=utf-8", render.STYLESHEET.encode())
            case "api-status":
                return _json(status(self.repo))
            case "story" | "api-story":
                doc = story(self.repo, where.activity_id)
                if doc is None:
                    return _error(
                        HTTPStatus.NOT_FOUND, f"No activity {where.activity_id} in this repository."
                    )
                if where.name == "api-story":
                    return _json(doc)
                return _html(HTTPStatus.OK, render.story_page(where.activity_id, doc))
            case "output" | "thumb":
                return self._image(where)
        return _error(HTTPStatus.NOT_FOUND, NOT_FOUND_MESSAGE)

    def _index(self) -> str:
        return render.index_page(
            status(self.repo),
            entries(self.repo, "failed", limit=RECENT_FAILURES, chars=render.FIELD_CHARS),
            entries(self.repo, "invalid", limit=RECENT_INVALID, chars=render.FIELD_CHARS),
            self._tiles(),
            format_time(self.clock.now()),
        )

    def _real_roots(self) -> tuple[Path, ...]:
        """``images.roots`` as real paths, read afresh (a hot-reloaded change applies); empty if unusable."""
        roots = config.load(self.repo.root).settings.images_roots
        try:
            return images.real_roots(roots) if roots else ()
        except ValueError:
            return ()

    def _tiles(self) -> list[render.ImageTile]:
        tiles: list[render.ImageTile] = []
        roots = self._real_roots()
        if not roots:
            return tiles
        recent = entries(
            self.repo, "done", limit=RECENT_DONE_SCANNED, chars=render.FIELD_CHARS
        )  # by type would read every record
        image_ids = [
            d["id"] for d in recent if d.get("type") == IMAGE_PROCESS and isinstance(d.get("id"), str)
        ]
        for activity_id in image_ids[:RECENT_IMAGE_ACTIVITIES]:
            found = outputs.done_outputs(self.repo.done, activity_id)
            for out in [e for e in found if self.checked.servable(e, roots)][:TILES_PER_ACTIVITY]:
                width, height = render.thumbnail_box(out.width, out.height, outputs.THUMBNAIL_SIDE)
                tiles.append(render.ImageTile(activity_id, out.index, width, height))
        return tiles

    def _image(self, where: Route) -> Response:
        refused = _error(HTTPStatus.NOT_FOUND, "No such recorded image output.")
        found = [e for e in outputs.done_outputs(self.repo.done, where.activity_id) if e.index == where.index]
        roots = self._real_roots()
        if not found or not roots:
            return refused
        data = outputs.read_output(found[0], roots)
        if data is None:
            return refused
        cache = {"Cache-Control": "private, max-age=3600"}
        if where.name == "output":
            return Response(HTTPStatus.OK, outputs.MEDIA_TYPES[found[0].format], data, cache)
        thumbnail = self.thumbnails.get(found[0], data)
        if thumbnail is None:
            return refused
        return Response(HTTPStatus.OK, thumbnail.media_type, thumbnail.body, cache)
