"""The status page: a real ``spoolpipe serve`` process on a repository that real workers filled.

The repository holds work in every state: done (with a follow-up), failed (a
reason that is HTML and script, and after retries), invalid junk under hostile
file names, waiting work of a type nobody handles, one activity running in a
live worker, and an ``image.process`` activity that made a JPEG and a PNG.
Requests go through ``http.client`` (raw paths, any method, any Host header),
and the page is loaded in headless Chromium (its screenshot is also copied into
``$SPOOLPIPE_SCREENSHOT_DIR`` when set: that is how docs/img/status-page.png is made).
"""

from __future__ import annotations

import contextlib
import hashlib
import html.parser
import http.client
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from harness import kill_group, make_repository, run_until_idle, start_worker, submit, wait_for
from imagefactory import photo
from spoolpipe.web import MAX_CONNECTIONS, render
from spoolpipe.web.outputs import recorded_outputs
from spoolpipe.web.site import host_allowed, route

HOSTILE_REASON = "<script>alert(1)</script><img src=x onerror=alert(2)> & \"quoted\" 'too'"
HOSTILE_RECORD_NAME = "<img src=x onerror=alert(5)>\u202e.json"
HOSTILE_JUNK_NAME = '"><svg onload=alert(3)><img src=x onerror=alert(4)>.json'

EXTRA_PROCESSORS = """
@processor("t.hostile")
def hostile(activity, ctx):
    raise Fatal(activity.data["reason"])

@processor("t.claims")
def claims(activity, ctx):
    # Not image.process, yet its result looks like recorded outputs: the page must not serve them.
    return activity.data["result"]
"""


@dataclass
class Address:
    """Where a ``spoolpipe serve`` listens."""

    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass
class Served(Address):
    """The shared page of the repository with work in every state, and the ids the tests look at."""

    repo: Path
    image_id: str
    failed_id: str
    parent_id: str


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _output_entry(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    with Image.open(path) as image:
        width, height, fmt = image.width, image.height, (image.format or "").lower()
    return {
        "path": str(path),
        "format": fmt,
        "width": width,
        "height": height,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _forge_done(repo: Path, activity_id: str, type_: str, result: object) -> None:
    """A done record written by hand (anyone who can write the repository can)."""
    record = {"id": activity_id, "type": type_, "data": {}, "result": result, "spoolpipe": {"status": "done"}}
    (repo / "done" / f"{activity_id}.json").write_text(json.dumps(record))


def start_serve(repo: Path, *args: str) -> tuple[subprocess.Popen[str], Address]:
    """``spoolpipe serve REPO --port 0``; its stderr (the access log) goes to ``REPO/../serve.stderr``."""
    log = open(repo.parent / "serve.stderr", "a")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "spoolpipe", "serve", str(repo), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    log.close()
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert "http://" in first, first + (repo.parent / "serve.stderr").read_text()
    host, port = first.split("http://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    return proc, Address(host, int(port))


def stop(proc: subprocess.Popen[str], repo: Path, sig: int = signal.SIGTERM) -> tuple[int, str]:
    """Send ``sig``; the exit code and what the server wrote on stderr."""
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    return proc.returncode, (repo.parent / "serve.stderr").read_text()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("serve")
    images = base / "images"
    (images / "in").mkdir(parents=True)
    photo(images / "in" / "cat.jpg", (640, 480))
    repo = make_repository(
        base, f"images.roots = {images}\nretry.max-attempts = 2\n", extra_processors=EXTRA_PROCESSORS
    )
    secret = base / "secret.txt"
    secret.write_text("not for the web\n")
    parent_id = submit(repo, "t.parent", {"children": 1}, id="parent-1")
    submit(repo, "t.noop", id="done-1")
    failed_id = submit(repo, "t.hostile", {"reason": HOSTILE_REASON}, id="hostile-1")
    submit(repo, "t.flaky", {"succeed_on": 99}, id="flaky-1")
    recipe = {
        "input": "in/cat.jpg",
        "outputs": [
            {
                "path": "web/cat-400.jpg",
                "ops": [{"op": "thumbnail", "width": 400, "height": 400}, {"op": "save"}],
            },
            {
                "path": "web/cat-64.png",
                "ops": [{"op": "thumbnail", "width": 64, "height": 64}, {"op": "save"}],
            },
        ],
    }
    image_id = submit(repo, "image.process", recipe, id="cat-1")
    # The input file lies inside images.roots but is nobody's output: a record of another type claims it.
    submit(repo, "t.claims", {"result": [_output_entry(images / "in" / "cat.jpg")]}, id="claims-1")
    (repo / "inbox" / "junk.json").write_text("{not json")
    (repo / "inbox" / HOSTILE_JUNK_NAME).write_text('{"type": 7}')
    run_until_idle(repo, "w1")
    submit(repo, "t.nobody", id="waiting-1")  # a type no worker handles: stays in the inbox
    # Forged image.process records: a recorded path that is a link leading out of the roots (same bytes,
    # so only the link check refuses it), and one naming a file outside the roots outright.
    outside = base / "outside-copy.jpg"
    shutil.copyfile(images / "web" / "cat-400.jpg", outside)
    (images / "web" / "link.jpg").symlink_to(outside)
    _forge_done(
        repo,
        "forged-link",
        "image.process",
        [{**_output_entry(outside), "path": str(images / "web" / "link.jpg")}],
    )
    _forge_done(
        repo,
        "forged-secret",
        "image.process",
        [{**_output_entry(images / "in" / "cat.jpg"), "path": str(secret)}],
    )
    # One naming a real output inside the roots but other bytes (the file changed since, or a forgery).
    changed = {
        **_output_entry(images / "web" / "cat-400.jpg"),
        "sha256": hashlib.sha256(b"other").hexdigest(),
    }
    _forge_done(repo, "forged-changed", "image.process", [changed])
    # A hand-written failed record under a hostile file name, with a hostile id in it.
    (repo / "failed" / HOSTILE_RECORD_NAME).write_text(
        json.dumps(
            {"id": HOSTILE_RECORD_NAME, "type": "<b>t</b>", "spoolpipe": {"status": "failed", "reason": "x"}}
        )
    )
    # A hand-written record holding lone surrogates (valid JSON, not valid UTF-8 once decoded).
    (repo / "done" / "forged-surrogate.json").write_text(
        '{"id": "forged-surrogate", "type": "t.\\ud800", "data": {"k": "\\udfff"}, "result": "\\ud800",'
        ' "spoolpipe": {"status": "done", "reason": "\\ud800<b>"}}'
    )
    submit(repo, "t.stuck", id="running-1")
    worker = start_worker(repo, "w-live")
    wait_for(lambda: any(n.startswith("running-1~") for n in os.listdir(repo / "running")), 60, "a claim")
    wait_for(lambda: "running-1" in (repo / "heartbeats" / "w-live.json").read_text(), 60, "a heartbeat")
    proc, address = start_serve(repo)
    try:
        yield Served(address.host, address.port, repo, image_id, failed_id, parent_id)
    finally:
        code, err = stop(proc, repo)
        kill_group(worker)
    assert code == 0, err
    assert "Traceback" not in err and '" 500 ' not in err, err  # nothing the tests sent made it fail


def get(
    served: Address, path: str, *, method: str = "GET", host: str | None = None
) -> http.client.HTTPResponse:
    """A request with ``path`` sent exactly as given (no normalisation), the body read."""
    conn = http.client.HTTPConnection(served.host.strip("[]"), served.port, timeout=60)
    conn.putrequest(method, path, skip_host=host is not None, skip_accept_encoding=True)
    if host is not None:
        conn.putheader("Host", host)
    conn.endheaders()
    response = conn.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    conn.close()
    return response


def body(response: http.client.HTTPResponse) -> str:
    data: bytes = response.body  # type: ignore[attr-defined]
    return data.decode("utf-8")


def status_json(repo: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "spoolpipe", "status", str(repo), "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def timeless(value: Any) -> Any:
    """A status document without the fields that change from one second to the next."""
    if isinstance(value, dict):
        return {k: timeless(v) for k, v in value.items() if k != "now" and not k.endswith("_seconds")}
    if isinstance(value, list):
        return [timeless(v) for v in value]
    return value


class _Tags(html.parser.HTMLParser):
    """Every start tag and its attributes, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> _Tags:
    tags = _Tags()
    tags.feed(page)
    tags.close()
    return tags


SAFE_TAGS = {
    "html", "head", "meta", "title", "link", "body", "header", "h1", "h2", "p", "a", "code", "span",
    "table", "tbody", "tr", "th", "td", "div", "figure", "img", "figcaption", "pre", "ol", "ul", "li",
}  # fmt: skip


def assert_no_markup_injected(page: str) -> None:
    for tag, attrs in parse(page).tags:
        assert tag in SAFE_TAGS, f"unexpected <{tag}> in the page"
        assert not [a for a in attrs if a.startswith("on")], f"event handler attribute on <{tag}>"
        for attr in ("href", "src"):
            if attrs.get(attr) is not None:
                assert str(attrs[attr]).startswith("/"), f"{tag} {attr}={attrs[attr]!r} leaves the site"


# --------------------------------------------------------------------------- over HTTP


def test_api_status_returns_what_status_json_prints(served: Served) -> None:
    response = get(served, "/api/status")
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/json"
    assert timeless(json.loads(body(response))) == timeless(status_json(served.repo))


def test_the_page_shows_counts_workers_waiting_and_failures_as_text(served: Served) -> None:
    response = get(served, "/")
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/html; charset=utf-8"
    csp = response.getheader("Content-Security-Policy") or ""
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert response.getheader("X-Content-Type-Options") == "nosniff"
    page = body(response)
    assert_no_markup_injected(page)
    assert "<script" not in page.lower()
    counts = status_json(served.repo)["counts"]
    assert counts["failed"] == 3 and counts["invalid"] == 2 and counts["running"] == 1
    assert counts["inbox"] == 1 and counts["done"] >= 4
    for state, n in counts.items():
        assert f'id="count-{state}">{n}<' in page
    text = "".join(parse(page).text)
    assert HOSTILE_REASON in text  # shown as text, every character
    assert "RuntimeError: flaky attempt 2" in text
    assert "w-live" in text and "running-1" in text
    assert "t.nobody" in text and "no live worker handles type t.nobody" in text
    assert HOSTILE_JUNK_NAME in text  # the hostile junk name, as text
    assert "<img src=x onerror=alert(5)>\\u202e" in text  # a hostile record name and id, as text, escaped
    assert not [a for tag, a in parse(page).tags if tag == "a" and "alert(5)" in str(a.get("href"))]
    assert '<meta http-equiv="refresh" content="5">' in page


def _story_link(page: str, activity_id: str) -> str:
    links = [a["href"] for tag, a in parse(page).tags if tag == "a" and a.get("href")]
    wanted = render.activity_href(activity_id)
    assert wanted in links, links
    return str(wanted)


def test_an_activity_story_is_one_click_away(served: Served) -> None:
    link = _story_link(body(get(served, "/")), served.failed_id)
    response = get(served, link)
    assert response.status == 200
    page = body(response)
    assert_no_markup_injected(page)
    text = "".join(parse(page).text)
    assert served.failed_id in text and HOSTILE_REASON in text
    as_json = json.loads(body(get(served, f"/api/activity/{served.failed_id}")))
    assert as_json["id"] == served.failed_id


def test_a_story_links_parent_and_follow_ups_and_lists_attempts(served: Served) -> None:
    parent = body(get(served, render.activity_href(served.parent_id)))
    children = [
        str(a["href"])
        for tag, a in parse(parent).tags
        if tag == "a"
        and str(a.get("href")).startswith("/activity/")
        and a["href"] != f"/activity/{served.parent_id}"
    ]
    assert len(children) == 1, children
    child = body(get(served, children[0]))
    assert _story_link(child, served.parent_id)
    assert "t.child" in "".join(parse(child).text)
    flaky = "".join(parse(body(get(served, "/activity/flaky-1"))).text)
    assert flaky.count("flaky attempt 1") >= 1 and flaky.count("flaky attempt 2") >= 1
    assert "w1" in flaky and "Traceback" in flaky and "RuntimeError: flaky attempt 2" in flaky


def test_lone_surrogates_in_a_record_do_not_break_the_page(served: Served) -> None:
    for path in ("/", "/activity/forged-surrogate", "/api/activity/forged-surrogate", "/api/status"):
        response = get(served, path)
        assert response.status == 200, path
        if path.startswith("/api/"):
            json.loads(body(response))
        else:
            assert_no_markup_injected(body(response))
    assert "done/forged-surrogate.json" in body(get(served, "/activity/forged-surrogate"))


def test_a_story_escapes_what_is_not_printable_as_inspect_does(tmp_path: Path) -> None:
    """Data and result were shown with raw bidi overrides and controls: text could pose as other text."""
    repo = make_repository(tmp_path)
    spoof = "invoice\u202eFDP.exe\u2066\x7f\u0085\u2028"
    record = {"id": "spoof-1", "type": "t.noop", "data": {spoof: [spoof]}, "result": spoof,
              "spoolpipe": {"status": "done"}}  # fmt: skip
    (repo / "done" / "spoof-1.json").write_text(json.dumps(record))
    inspected = subprocess.run(
        [sys.executable, "-m", "spoolpipe", "inspect", str(repo), "spoof-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert inspected.returncode == 0, inspected.stderr
    proc, address = start_serve(repo)
    try:
        response = get(address, "/activity/spoof-1")
    finally:
        code, err = stop(proc, repo)
    assert code == 0, err
    assert response.status == 200
    shown = "".join(parse(body(response)).text)
    for escaped in ("\\u202e", "\\u2066", "\\u0085", "\\u2028"):
        assert escaped in inspected.stdout and escaped in shown, escaped
    assert not [c for c in shown if not c.isprintable() and c != "\n"], "a character not printable"
    assert '"invoice\\u202eFDP.exe' in shown  # still the JSON, indented, one value a line
    assert "\n  " in shown


def test_unknown_and_unusable_ids_are_404(served: Served) -> None:
    for path in ("/activity/no-such-id", "/activity/%3Cscript%3E", "/activity/", "/api/activity/no-such-id"):
        response = get(served, path)
        assert response.status == 404, path
        assert_no_markup_injected(body(response))


def test_thumbnails_of_recent_image_outputs(served: Served) -> None:
    page = body(get(served, "/"))
    sources = [a["src"] for tag, a in parse(page).tags if tag == "img"]
    assert f"/thumb/{served.image_id}/0" in sources and f"/thumb/{served.image_id}/1" in sources
    assert not [s for s in sources if "forged" in str(s) or "claims" in str(s)], sources
    thumb = get(served, f"/thumb/{served.image_id}/0")
    assert thumb.status == 200 and thumb.getheader("Content-Type") == "image/jpeg"
    with Image.open(io.BytesIO(thumb.body)) as image:  # type: ignore[attr-defined]
        assert max(image.size) <= 160 and image.size == (160, 120)
    full = get(served, f"/output/{served.image_id}/1")
    assert full.status == 200 and full.getheader("Content-Type") == "image/png"
    record = json.loads((served.repo / "done" / f"{served.image_id}.json").read_text())
    assert full.body == Path(record["result"][1]["path"]).read_bytes()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "path",
    [
        "/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/output/..%2f..%2fsecret.txt/0",
        "/output/%2e%2e/0",
        "/output/cat-1/../../secret.txt",
        "/output/cat-1/9",  # no such output
        "/output/cat-1/-1",
        "/output/cat-1/00",
        "/thumb/claims-1/0",  # a result that names a file in the roots, but not an image.process
        "/output/claims-1/0",
        "/output/forged-link/0",  # recorded path is a link leading out of the roots
        "/thumb/forged-link/0",
        "/output/forged-secret/0",  # recorded path outside the roots
        "/output/forged-changed/0",  # inside the roots, but not the recorded bytes
        "/thumb/forged-changed/0",
        "/output/parent-1/0",
        "/images/in/cat.jpg",
        "/inbox/",
        "/done/",
        "/done/cat-1.json",
        "/api/",
        "/style.css/..",
        "/index.html",
    ],
)
def test_everything_else_is_404(served: Served, path: str) -> None:
    response = get(served, path)
    assert response.status == 404, path
    assert b"not for the web" not in response.body  # type: ignore[attr-defined]
    assert response.getheader("X-Content-Type-Options") == "nosniff"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"])
def test_only_get_and_head(served: Served, method: str) -> None:
    response = get(served, "/", method=method)
    assert response.status == 405
    assert response.getheader("Allow") == "GET, HEAD"
    head = get(served, "/api/status", method="HEAD")
    assert head.status == 200 and head.body == b""  # type: ignore[attr-defined]
    assert int(head.getheader("Content-Length") or 0) > 0


def test_a_loopback_page_refuses_foreign_host_names(served: Served) -> None:
    assert get(served, "/", host="evil.example:8765").status == 403  # DNS rebinding
    assert get(served, "/", host=f"localhost:{served.port}").status == 200
    assert get(served, "/", host=f"127.0.0.1:{served.port}").status == 200


def raw_request(address: Address, request: bytes) -> bytes:
    """Send ``request`` as it is on a new connection; everything the server answers until it closes."""
    with socket.create_connection((address.host.strip("[]"), address.port), timeout=60) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_request_with_no_host_header_is_refused_by_a_loopback_page(served: Served) -> None:
    answer = raw_request(served, b"GET /api/status HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 403 "), answer[:200]
    assert b"Content-Security-Policy: default-src 'none'" in answer


@pytest.mark.parametrize(
    "request_line",
    [
        b"PRI * HTTP/2.0",
        b"GET / HTTP/9.9",
        b"GET / HTTP/1.x",
        b"GET",
        b"GET /",
        b"G E T /",
        b"GET / HTTP/0.9",
        b"GET /nothing HTTP/0.9\r\nHost: localhost",
    ],
)
def test_a_malformed_request_line_gets_a_status_line_and_the_security_headers(
    served: Served, request_line: bytes
) -> None:
    """These were answered HTTP/0.9 style: a bare body, no status line, no Content-Security-Policy."""
    answer = raw_request(served, request_line + b"\r\n\r\n")
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    assert head.startswith(("HTTP/1.0 400 ", "HTTP/1.0 403 ", "HTTP/1.0 404 ", "HTTP/1.0 505 ")), answer[:200]
    assert "Content-Security-Policy: default-src 'none'" in head and "X-Frame-Options: DENY" in head


def test_an_http_0_9_simple_request_is_answered_at_once_as_http_1_0(served: Served) -> None:
    """``GET /`` and its line end, nothing more: HTTP/0.9 has no headers, so none are waited for
    (the client got nothing until the connection's time limit)."""
    with socket.create_connection((served.host.strip("[]"), served.port), timeout=10) as sock:
        sock.sendall(b"GET /\r\n")  # and the connection stays open, as such a client leaves it
        answer = b""
        while chunk := sock.recv(1 << 16):
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    assert head.startswith("HTTP/1.0 403 "), answer[:200]  # no Host: refused, with its headers
    assert "Content-Security-Policy: default-src 'none'" in head


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f.1", "::ffff:127.0.0.1"])
def test_loopback_written_otherwise_than_as_an_ip_literal_still_refuses_foreign_host_names(
    tmp_path: Path, host: str
) -> None:
    """The guard judged the --host string: 127.1 (or a name resolving to 127.0.1.1) switched it off."""
    repo = make_repository(tmp_path)
    proc, address = start_serve(repo, "--host", host)
    try:
        assert get(address, "/api/status", host="attacker.example").status == 403
        assert get(address, "/api/status", host=f"attacker.example:{address.port}").status == 403
        assert get(address, "/api/status", host=f"localhost:{address.port}").status == 200
        assert get(address, "/api/status", host=f"{address.host}:{address.port}").status == 200
    finally:
        code, err = stop(proc, repo)
    assert code == 0, err


def test_huge_values_in_hand_written_files_do_not_inflate_the_pages(tmp_path: Path) -> None:
    """20 failed records with a 4 MiB reason of "<" made / 335 MB: every value was shown in full."""
    repo = make_repository(tmp_path)
    huge = "<" * (1 << 20)
    for n in range(20):
        record = {
            "id": f"big-{n}" if n else huge,
            "type": "t." + huge[:100_000],
            "data": huge,
            "result": [huge],
            "spoolpipe": {"status": "failed", "attempts": 1, "finished_at": huge, "reason": huge,
                          "traceback": huge, "attempt_history": [{"attempt": 1, "error": huge}]},
        }  # fmt: skip
        (repo / "failed" / f"big-{n}.json").write_text(json.dumps(record))
    heartbeat = {
        "worker": "w-" + huge[:100_000],
        "host": huge[:100_000],
        "types": {"t." + huge[:100_000]: 1},
        "activities": [{"id": huge[:1000]}] * 500,
    }
    (repo / "heartbeats" / "w.json").write_text(json.dumps(heartbeat))
    (repo / "inbox" / "big.json").write_text(json.dumps({"id": "big", "type": "t." + huge[:100_000]}))
    quarantined = repo / "invalid" / "x.json~01J00000000000000000000000"
    quarantined.mkdir()
    (quarantined / "reason.txt").write_text(huge[:60_000] + "\n")
    proc, address = start_serve(repo)
    try:
        front, story = get(address, "/"), get(address, "/activity/big-1")
    finally:
        code, err = stop(proc, repo)
    assert code == 0 and "Traceback" not in err, err
    assert front.status == 200 and story.status == 200
    page = body(front)
    assert len(page) < 1 << 20, len(page)
    assert f"{'&lt;' * 50}" in page and "…" in page  # the start of each value, and a visible cut
    assert len(body(story)) < 2 << 20, len(body(story))
    assert "…" in body(story)


def test_a_client_that_goes_away_before_its_answer_is_one_line_in_the_log(tmp_path: Path) -> None:
    """A connection reset while the page was being made put a whole traceback in the log."""
    repo = make_repository(tmp_path)
    for n in range(3000):  # the front page reads each: slow enough for the reset to arrive first
        (repo / "inbox" / f"a-{n}.json").write_text(json.dumps({"id": f"a-{n}", "type": "t.noop"}))
    proc, address = start_serve(repo)
    log = repo.parent / "serve.stderr"
    try:
        sock = socket.create_connection((address.host, address.port), timeout=30)
        sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{address.port}\r\n\r\n".encode())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # with a reset, not a FIN
        wait_for(lambda: "went away" in log.read_text() or "Traceback" in log.read_text(), 60, "an answer")
        assert get(address, "/api/status").status == 200  # and the page goes on
    finally:
        code, err = stop(proc, repo)
    assert code == 0, err
    assert "Traceback" not in err and "Exception occurred" not in err, err
    assert "127.0.0.1 the client went away before its answer was sent (Connection reset by peer)" in err, err


# --------------------------------------------------------------------------- the process


def test_sigterm_and_sigint_stop_it_with_exit_0(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc, address = start_serve(repo)
        conn = http.client.HTTPConnection(address.host, address.port, timeout=30)
        conn.request("GET", "/api/status")
        assert conn.getresponse().status == 200
        conn.close()
        code, err = stop(proc, repo, sig)
        assert code == 0, err
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection((address.host, address.port), timeout=5),
        ):
            pass


def test_idle_connections_cannot_take_every_thread(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    proc, address = start_serve(repo)

    def answered() -> bool:
        try:
            conn = http.client.HTTPConnection(address.host, address.port, timeout=30)
            conn.request("GET", "/api/status")
            return conn.getresponse().status == 200
        except (ConnectionError, http.client.RemoteDisconnected):
            return False

    idle = [
        socket.create_connection((address.host, address.port), timeout=30) for _ in range(MAX_CONNECTIONS)
    ]
    try:
        wait_for(lambda: not answered(), 60, "one connection too many to be closed")
    finally:
        for sock in idle:
            sock.close()
    wait_for(answered, 60, "the page to answer again once the idle connections are gone")
    code, err = stop(proc, repo)
    assert code == 0, err


def test_connections_that_send_slowly_cannot_take_every_thread_for_good(tmp_path: Path) -> None:
    """One byte every few seconds kept a connection's read from ever waiting 30 s: 32 of them held
    every thread for as long as they liked."""
    repo = make_repository(tmp_path)
    proc, address = start_serve(repo, "--request-timeout", "5")

    def answered() -> bool:
        try:
            conn = http.client.HTTPConnection(address.host, address.port, timeout=5)
            conn.request("GET", "/api/status")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False

    slow = [socket.create_connection((address.host, address.port), timeout=5) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in slow:
            sock.sendall(b"GET / HTTP/1.1\r\nX-A: ")
        started = time.monotonic()
        assert not answered()
        while not answered():
            assert time.monotonic() - started < 30, "the slow connections still hold every thread"
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.sendall(b"a")
            time.sleep(0.5)
        held = time.monotonic() - started
    finally:
        for sock in slow:
            sock.close()
        code, err = stop(proc, repo)
    assert code == 0, err
    assert held > 3, held  # closed at their deadline, 5 s after they were opened, not before


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "3601", "soon"])
def test_a_request_timeout_out_of_range_is_refused(tmp_path: Path, value: str) -> None:
    repo = make_repository(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "spoolpipe", "serve", str(repo), "--request-timeout", value],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert f"--request-timeout: {value!r} is not a number of seconds from 0.1 to 3600" in result.stderr


def test_a_configuration_broken_while_it_runs_is_shown_until_fixed(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    properties = repo / "spoolpipe.properties"
    good = properties.read_text()
    proc, served = start_serve(repo)
    try:
        properties.write_text(good + "pool.size = <many>\n")
        for path in ("/", "/api/status"):
            response = get(served, path)
            assert response.status == 503, path
            assert "spoolpipe.properties:" in body(response) and "&lt;many&gt;" in body(response)
        properties.write_text(good)
        assert get(served, "/").status == 200
    finally:
        code, err = stop(proc, repo)
    assert code == 0, err


def test_a_port_in_use_is_exit_3_with_a_clear_error(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "spoolpipe", "serve", str(repo), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 3
    assert f"cannot listen on 127.0.0.1 port {port}: Address already in use" in out.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--port", "70000"], "not a port number"),
        (["--host", "no such host name.invalid"], "is not a usable address"),
    ],
)
def test_bad_usage_is_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    repo = make_repository(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "spoolpipe", "serve", str(repo), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and needle in out.stderr


def test_not_a_repository_or_invalid_configuration_is_exit_2(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "spoolpipe", "serve", str(tmp_path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "not a spoolpipe repository" in out.stderr.lower()
    repo = make_repository(tmp_path, "pool.size = many\n")
    out = subprocess.run(
        [sys.executable, "-m", "spoolpipe", "serve", str(repo), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "spoolpipe.properties:" in out.stderr


JUNK_HEARTBEATS = {
    "state a list": {"circuits": {"t.a": {"state": ["open"]}}},
    "state an object": {"circuits": {"t.a": {"state": {"a": 1}}}},
    "circuit fields of every shape": {
        "circuits": {"t.a": {"state": "open", "since": ["s"], "until": {"u": 1}, "failures": [3], "probe": 5}}
    },
    "circuits a list": {"circuits": [{"state": "open"}]},
    "a circuit a list": {"circuits": {"t.a": ["open"], "t.b": None}},
    "types of every shape": {"types": {"t.a": [1], "t.b": {"n": 1}, "t.c": 1.5, "t.d": True}},
    "activities of every shape": {
        "activities": [
            {"id": ["x"], "type": ["t"], "attempt": {"a": 1}, "started_at": ["s"], "timeout_seconds": [1]},
            {"id": "ok", "type": {"t": 1}, "started_at": {"s": 1}, "timeout_seconds": "10"},
            ["x"],
        ]
    },
    "every field an object": {
        k: {"a": 1} for k in ("host", "pid", "started_at", "lock_mode", "pool_size", "running", "activities")
    },
    "every field a list": {
        k: [["x"]] for k in ("host", "pid", "started_at", "lock_mode", "pool_size", "types", "circuits")
    },
}


@pytest.mark.parametrize("shape", list(JUNK_HEARTBEATS.values()), ids=list(JUNK_HEARTBEATS))
def test_status_and_the_page_survive_junk_heartbeats(tmp_path: Path, shape: dict[str, Any]) -> None:
    """A circuit "state" that was a list or an object crashed status (exit 70) and made the page 500."""
    repo = make_repository(tmp_path)
    heartbeat = {"worker": "w9", "host": "h", "pid": 1, "types": {"t.a": 1}} | shape
    (repo / "heartbeats" / "w9.json").write_text(json.dumps(heartbeat))
    for args in ([], ["--json"]):
        out = subprocess.run(
            [sys.executable, "-m", "spoolpipe", "status", str(repo), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert "w9" in out.stdout
    proc, address = start_serve(repo)
    try:
        for path in ("/", "/api/status"):
            response = get(address, path)
            assert response.status == 200, path
            assert "w9" in body(response)
    finally:
        code, err = stop(proc, repo)
    assert code == 0 and "Traceback" not in err, err


# --------------------------------------------------------------------------- in a browser

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--virtual-time-budget=3000",
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "headless Chromium is needed: apt-get install chromium chromium-driver"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message + " (not CI, so skipped)")
    return found


def browse(url: str, tmp: Path, *extra: str) -> str:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    out = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_in_headless_chromium(served: Served, tmp_path: Path) -> None:
    dom = browse(served.url + "/", tmp_path, "--dump-dom")
    tags = parse(dom)
    text = "".join(tags.text)
    counts = status_json(served.repo)["counts"]
    for state, n in counts.items():
        assert f'id="count-{state}">{n}<' in dom, state
    assert HOSTILE_REASON in text  # the reason is text: its <script> and <img onerror> never became elements
    assert_no_markup_injected(dom)
    story = browse(served.url + _story_link(dom, served.failed_id), tmp_path, "--dump-dom")
    assert served.failed_id in "".join(parse(story).text) and HOSTILE_REASON in "".join(parse(story).text)
    shot = tmp_path / "status-page.png"
    browse(served.url + "/", tmp_path, f"--screenshot={shot}", "--window-size=1280,1400", "--hide-scrollbars")
    with Image.open(shot) as image:
        assert image.size == (1280, 1400)
        darkest, lightest = image.convert("L").getextrema()
        assert lightest - darkest > 100  # something was drawn: not a blank page
    if directory := os.environ.get("SPOOLPIPE_SCREENSHOT_DIR"):
        shutil.copyfile(shot, Path(directory) / "status-page.png")


# --------------------------------------------------------------------------- pure parts, in process


def test_routes() -> None:
    assert route("/").name == "index"
    assert route("/?refresh=1").name == "index"
    assert route("/activity/a.b-c_1") == route("/activity/a%2Eb-c_1")
    assert route("/activity/a.b-c_1").activity_id == "a.b-c_1"
    assert route("/output/x/3").index == 3 and route("/thumb/x/0").name == "thumb"
    for path in ("", "x", "/activity/..", "/activity/a%2Fb", "/activity/a/b", "/output/x/1e3", "/output/x/ 1",
                 "/output/x/99999", "/activity/%ff", "/activity/" + "a" * 129):  # fmt: skip
        assert route(path).name == "missing", path


def test_host_guard() -> None:
    assert host_allowed("127.0.0.1:8765", "127.0.0.1") and host_allowed("[::1]:80", "127.0.0.1")
    assert host_allowed("LOCALHOST", "127.0.0.1") and not host_allowed(None, "127.0.0.1")
    assert host_allowed("[::ffff:127.0.0.1]:80", "::ffff:127.0.0.1")
    assert not host_allowed("attacker.example", "::ffff:127.0.0.1") and host_allowed(None, "0.0.0.0")
    assert not host_allowed("attacker.example", "127.0.0.1") and not host_allowed("", "::1")
    assert not host_allowed("[::1", "127.0.0.1") and not host_allowed("127.0.0.1.attacker.example", "::1")
    assert host_allowed("status.example.org", "0.0.0.0")


def test_recorded_outputs_take_only_well_formed_image_process_entries() -> None:
    good = {"path": "/x/a.jpg", "format": "jpeg", "width": 4, "height": 3, "bytes": 10, "sha256": "a" * 64}
    record = {"type": "image.process", "spoolpipe": {"status": "done"}, "result": [good]}
    assert [e.path for e in recorded_outputs(record)] == ["/x/a.jpg"]
    bad_entries: list[object] = [
        {**good, "path": "relative.jpg"},
        {**good, "format": "svg"},
        {**good, "bytes": True},
        {**good, "sha256": "A" * 64},
        {**good, "path": "/x/\x00"},
        "/x/a.jpg",
        None,
    ]
    assert recorded_outputs({**record, "result": bad_entries}) == []
    assert recorded_outputs({**record, "type": "t.other"}) == []
    assert recorded_outputs({**record, "spoolpipe": {"status": "failed"}}) == []
    assert recorded_outputs({**record, "result": {"path": "/x"}}) == []


def test_rendering_escapes_everything() -> None:
    evil = "</td><script>alert(1)</script>\"' onmouseover=alert(2) <!--"
    running = {"id": evil, "type": evil, "running_seconds": 1.5}
    status = {
        "repository": evil,
        "counts": {"inbox": evil},
        "inbox": {"ready": evil, "delayed": 1, "oldest_waiting_seconds": 3.2},
        "workers": [
            {"worker": evil, "host": evil, "pid": evil, "types": {evil: 1}, "running": [evil]},
            {"worker": evil, "activities": [running, evil]},
        ],
        "stuck": [{"id": evil, "type": evil, "worker": evil, "why": evil}, evil],
        "inbox_by_type": {evil: 1},
        "unhandled_types": [evil],
    }
    linked = {"id": evil, "state": evil, "type": evil, "valid": True}
    story = {
        "id": evil,
        "state": evil,
        "reason": evil,
        "parent": linked,
        "follow_ups": [linked, {**linked, "valid": False}, evil],
        "attempts": [{"run": 0, "attempt": 1, "worker": evil, "error": evil}, evil],
        "logs": [{"path": evil, "bytes": 3, "tail": [evil, 7]}, evil],
        "result": {evil: [evil]},
        "data": evil,
        "traceback": evil + "\n" + evil,
        "locations": [{"state": evil, "path": evil}, evil],
        evil: evil,
    }
    failures = [{"id": evil, "type": evil, "attempts": evil, "reason": evil, "finished_at": evil}]
    tiles = [render.ImageTile(evil, 0, 1, 1)]
    for page in (
        render.index_page(status, failures, [{"name": evil, "reason": evil}], tiles, evil),
        render.story_page(evil, story),
        render.error_page(evil, evil),
    ):
        assert_no_markup_injected(page)
        assert "<script" not in page and "<!--" not in page
        assert evil in "".join(parse(page).text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=render.FIELD_CHARS), st.text(min_size=1))
def test_no_value_can_add_markup(value: str, key: str) -> None:
    failures = [{"id": value, "type": value, "attempts": value, "reason": value, "finished_at": value}]
    status = {
        "repository": value,
        "counts": {key: value},
        "unhandled_types": [value],
        "inbox_by_type": {key: 1},
    }
    story = {"id": value, "reason": value, "parent": {"id": value, "valid": True}, key: value}
    for page in (
        render.index_page(status, failures, [{"path": value, "reason": value}], [], value),
        render.story_page(value, story),
    ):
        assert_no_markup_injected(page)
        assert value in "".join(parse(page).text)
