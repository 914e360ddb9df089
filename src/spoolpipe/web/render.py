"""The status page's HTML, from the views' documents: pure functions, every value escaped.

Everything shown comes from files anyone may write (activity documents,
records, heartbeats, names), so every value goes through ``text`` (element
content and quoted attributes) and every id in a link through ``quote``. The
pages carry no script: they refresh with ``<meta http-equiv="refresh">`` and
are styled by ``/style.css`` (``STYLESHEET``), which the Content-Security-Policy
allows as the only source.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from ..activity import is_valid_name, printable
from ..views.reading import cut

REFRESH_SECONDS: Final = 5
"""How often the pages reload themselves."""
FIELD_CHARS: Final = 1000
"""Characters of one value shown (a reason spoolpipe writes has at most 500, escaped ones may grow):
a hand-written record may hold megabytes, and the page is loaded every few seconds."""
BLOCK_CHARS: Final = 100_000
"""Characters of a story's data, result, traceback or log tail shown (the JSON of the story has them all)."""
RUNNING_SHOWN: Final = 100
"""Activities shown per worker in "running now"."""

STYLESHEET: Final = """\
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; margin: 0; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
header p { margin: .2em 0; color: #555; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.reason { max-width: 60em; overflow-wrap: anywhere; }
.warning { color: #a40000; font-weight: 600; }
.empty { color: #777; font-style: italic; }
pre { background: #fff; border: 1px solid #ddd; padding: .5em; max-height: 30em; overflow: auto;
      white-space: pre-wrap; overflow-wrap: anywhere; }
figure { display: inline-block; margin: 0 .8em .8em 0; text-align: center; }
figure img { display: block; border: 1px solid #ddd; background: #fff; }
figcaption { font-size: .85em; max-width: 160px; overflow-wrap: anywhere; }
"""


def text(value: object, limit: int = FIELD_CHARS) -> str:
    """Any value as HTML text, safe in element content and in double- or single-quoted attributes;
    at most ``limit`` characters of it, a longer one cut with a visible ``…``."""
    return html.escape(
        cut(value if isinstance(value, str) else json.dumps(value, default=str), limit), quote=True
    )


def activity_href(activity_id: str) -> str:
    """The story page of an id, the id quoted so no character can leave the path segment."""
    return "/activity/" + quote(activity_id, safe="")


def _link(activity_id: object) -> str:
    """A link to the story of a valid id; anything else (a hand-written record's "id") as text."""
    if not is_valid_name(activity_id):
        return text(activity_id)
    assert isinstance(activity_id, str)
    return f'<a href="{text(activity_href(activity_id))}">{text(activity_id)}</a>'


@dataclass(frozen=True)
class ImageTile:
    """One thumbnail on the front page: output ``index`` of done activity ``activity_id``."""

    activity_id: str
    index: int
    width: int
    height: int


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{text(title)}</title><link rel="stylesheet" href="/style.css"></head>\n'
        f"<body>\n{body}\n</body></html>\n"
    )


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, empty: str, id_: str = "") -> str:
    """A table of cells that are HTML already; ``empty`` (plain text) when there are no rows."""
    body = "".join("<tr>" + "".join(row) + "</tr>\n" for row in rows)
    if not body:
        return f'<p class="empty">{text(empty)}</p>'
    head = "".join(f"<th>{text(h)}</th>" for h in headers)
    ident = f' id="{text(id_)}"' if id_ else ""
    return f"<table{ident}><tr>{head}</tr>\n{body}</table>"


def _dict(doc: Mapping[str, Any], key: str) -> dict[str, Any]:
    """``doc[key]`` if it is an object, else empty: the documents are read from files anyone may write."""
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _list(doc: Mapping[str, Any], key: str) -> list[Any]:
    value = doc.get(key)
    return value if isinstance(value, list) else []


def _cell(value: object, css: str = "") -> str:
    klass = f' class="{css}"' if css else ""
    return f"<td{klass}>{'' if value is None else text(value)}</td>"


def _counts(counts: Mapping[str, Any]) -> str:
    head = "".join(f"<th>{text(state)}</th>" for state in counts)
    cells = "".join(f'<td class="num" id="count-{text(state)}">{text(n)}</td>' for state, n in counts.items())
    return f'<table id="counts"><tr>{head}</tr><tr>{cells}</tr></table>'


def _workers(workers: Sequence[Mapping[str, Any]]) -> str:
    def row(w: Mapping[str, Any]) -> list[str]:
        types, running = _dict(w, "types"), _list(w, "activities") or _list(w, "running")
        shown = [_running(r) for r in running[:RUNNING_SHOWN]]
        if len(running) > RUNNING_SHOWN:
            shown.append(f"… {len(running) - RUNNING_SHOWN} more")
        return [
            _cell(w.get("worker")),
            _cell(w.get("host")),
            _cell(w.get("pid"), "num"),
            f"<td>{', '.join(shown)}</td>",
            _cell(w.get("last_seen_seconds"), "num"),
            _cell(", ".join(f"{t} ({n})" for t, n in sorted(types.items()))),
        ]

    return _table(
        ["worker", "host", "pid", "running now", "seen (s ago)", "types (concurrency)"],
        (row(w) for w in workers if isinstance(w, Mapping)),
        empty="no live worker",
        id_="workers",
    )


def _running(entry: object) -> str:
    """What a worker runs: an id, or ``{"id", "type", "running_seconds", ...}``."""
    if not isinstance(entry, Mapping):
        return _link(entry)
    details = [text(entry["type"])] if isinstance(entry.get("type"), str) else []
    if isinstance(entry.get("running_seconds"), int | float):
        details.append(f"{text(entry['running_seconds'])} s")
    return _link(entry.get("id")) + (f" ({', '.join(details)})" if details else "")


def _stuck(stuck: Sequence[object]) -> str:
    fields = ("id", "type", "worker", "attempt", "running_seconds", "timeout_seconds", "why")
    rows = (
        [f"<td>{_link(c.get('id'))}</td>", *(_cell(c.get(k)) for k in fields[1:])]
        for c in stuck
        if isinstance(c, Mapping)
    )
    return _table(["id", "type", "worker", "attempt", "running (s)", "timeout (s)", "why"], rows,
                  empty="no claim looks stuck", id_="stuck")  # fmt: skip


def _inbox(inbox: Mapping[str, Any]) -> str:
    """Ready versus delayed, and how long the oldest has waited (the status's ``inbox`` section)."""
    if not inbox:
        return ""
    parts = [f"{text(inbox.get(k))} {k}" for k in ("ready", "delayed", "unreadable") if k in inbox]
    oldest = inbox.get("oldest_waiting_seconds")
    if isinstance(oldest, int | float):
        parts.append(f"the oldest has waited {text(round(oldest))} s")
    return f'<p id="inbox">waiting: {"; ".join(parts)}</p>'


def _waiting(by_type: Mapping[str, Any], unhandled: Sequence[object]) -> str:
    rows = (
        [_cell(t), _cell(n, "num"), _cell("no live worker handles it" if t in unhandled else "", "warning")]
        for t, n in by_type.items()
    )
    return _table(["type", "waiting", ""], rows, empty="nothing waiting", id_="waiting")


def _failures(failures: Sequence[Mapping[str, Any]]) -> str:
    rows = (
        [
            f"<td>{_link(f.get('id'))}</td>",
            _cell(f.get("type")),
            _cell(f.get("attempts"), "num"),
            _cell(f.get("finished_at")),
            _cell(f.get("reason"), "reason"),
        ]
        for f in failures
    )
    return _table(
        ["id", "type", "attempts", "failed at", "reason"], rows, empty="no failures", id_="failures"
    )


def _invalid(entries: Sequence[Mapping[str, Any]]) -> str:
    rows = ([_cell(e.get("path")), _cell(e.get("at")), _cell(e.get("reason"), "reason")] for e in entries)
    return _table(["entry", "quarantined at", "reason"], rows, empty="no invalid files", id_="invalid")


def _images(tiles: Sequence[ImageTile]) -> str:
    if not tiles:
        return '<p class="empty">no image.process outputs yet</p>'
    figures = []
    for tile in tiles:
        where = f"{quote(tile.activity_id, safe='')}/{tile.index}"
        size = f' width="{tile.width}" height="{tile.height}"' if tile.width and tile.height else ""
        figures.append(
            f'<figure><a href="/output/{text(where)}"><img src="/thumb/{text(where)}" alt="output '
            f'{tile.index} of {text(tile.activity_id)}"{size}></a>'
            f"<figcaption>{_link(tile.activity_id)} #{tile.index}</figcaption></figure>"
        )
    return f'<div id="images">{"".join(figures)}</div>'


def thumbnail_box(width: int, height: int, side: int) -> tuple[int, int]:
    """The size a ``width`` x ``height`` image is shown at within a square of ``side`` (never enlarged)."""
    if width <= 0 or height <= 0:
        return 0, 0
    scale = min(1.0, side / width, side / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def index_page(
    status: Mapping[str, Any],
    failures: Sequence[Mapping[str, Any]],
    invalid: Sequence[Mapping[str, Any]],
    tiles: Sequence[ImageTile],
    generated_at: str,
) -> str:
    """The front page: counts, workers, waiting by type, recent failures and invalid files, thumbnails."""
    repository = status.get("repository", "")
    counts, workers = _dict(status, "counts"), _list(status, "workers")
    by_type, unhandled = _dict(status, "inbox_by_type"), _list(status, "unhandled_types")
    warnings = "".join(
        f'<p class="warning">no live worker handles type {text(t)}; those activities stay queued</p>'
        for t in unhandled
    )
    body = f"""<header><h1>spoolpipe status</h1>
<p>repository <code id="repository">{text(repository)}</code></p>
<p>as of {text(generated_at)}; refreshes every {REFRESH_SECONDS} s;
<a href="/api/status">as JSON</a></p></header>
<h2>Activities</h2>
{_counts(counts)}
{_inbox(_dict(status, "inbox"))}
{warnings}
<h2>Live workers</h2>
{_workers(workers)}
<h2>Claims that look stuck</h2>
{_stuck(_list(status, "stuck"))}
<h2>Waiting by type</h2>
{_waiting(by_type, unhandled)}
<h2>Recent failures</h2>
{_failures(failures)}
<h2>Recent invalid files</h2>
{_invalid(invalid)}
<h2>Recent images</h2>
{_images(tiles)}"""
    return _page(f"spoolpipe: {repository}", body)


def _json_block(value: object) -> str:
    """Indented JSON, every character that is not printable escaped as ``inspect`` does (a bidi
    override could make one value pose as another); other characters as they are."""
    if value is None:
        return '<p class="empty">none</p>'
    dumped = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return _block("\n".join(printable(line) for line in dumped.split("\n")))


def _block(value: str) -> str:
    """A story's long text (data, result, traceback, log tail), at most ``BLOCK_CHARS`` of it."""
    return f"<pre>{text(value, BLOCK_CHARS)}</pre>"


def _linked(entry: object) -> str:
    """A parent or follow-up of a story (``{"id", "state", "type", "valid"}``) as a link with its state."""
    if not isinstance(entry, Mapping):
        return text(entry)
    label = _link(entry.get("id")) if entry.get("valid") is not False else text(entry.get("id"))
    details = ", ".join(text(entry[k]) for k in ("type", "state") if isinstance(entry.get(k), str))
    return f"{label} ({details})" if details else label


def _attempts(attempts: Sequence[object]) -> str:
    fields = ("run", "attempt", "worker", "host", "started_at", "finished_at", "outcome", "error")
    rows = (
        [_cell(a.get(k), "reason" if k == "error" else "") for k in fields]
        for a in attempts
        if isinstance(a, Mapping)
    )
    return _table(list(fields), rows, empty="no attempt yet", id_="attempts")


def _logs(logs: Sequence[object]) -> str:
    parts = []
    for log in logs:
        if not isinstance(log, Mapping):
            continue
        lines = "\n".join(line for line in _list(log, "tail") if isinstance(line, str))
        parts.append(
            f"<p><code>{text(log.get('path'))}</code> ({text(log.get('bytes'))} bytes), last lines:</p>"
            + _block(lines)
        )
    return "".join(parts) or '<p class="empty">no attempt log</p>'


# The story's fields this page lays out; any other field is shown as JSON under "other fields".
_STORY_SUMMARY: Final = ("state", "type", "status", "not_before", "started_at", "finished_at", "reason")
_STORY_LAID_OUT: Final = frozenset(
    {*_STORY_SUMMARY, "id", "attempts", "logs", "result", "data", "traceback", "parent", "follow_ups",
     "follow_ups_left_out",
     "locations", "now"}
)  # fmt: skip


def story_page(activity_id: str, story: Mapping[str, Any]) -> str:
    """One activity's story (what ``inspect --json`` prints): summary, attempts, logs, links, data."""
    summary = _table(
        ["field", "value"],
        ([f"<th>{k}</th>", _cell(story.get(k), "reason" if k == "reason" else "")] for k in _STORY_SUMMARY),
        empty="",
        id_="summary",
    )
    parent = story.get("parent")
    follow_ups = "".join(f"<li>{_linked(f)}</li>" for f in _list(story, "follow_ups"))
    left_out = story.get("follow_ups_left_out")
    if isinstance(left_out, int) and left_out > 0:
        follow_ups += f'<li class="empty">and {left_out} more, not looked up</li>'

    locations = "".join(
        f"<li><code>{text(loc.get('path'))}</code> ({text(loc.get('state'))})</li>"
        for loc in _list(story, "locations")
        if isinstance(loc, Mapping)
    )
    traceback = story.get("traceback")
    others = {k: v for k, v in story.items() if k not in _STORY_LAID_OUT}
    body = f"""<header><h1>activity <span id="activity-id">{text(activity_id)}</span></h1>
<p><a href="/">back to the status</a>; as of {text(story.get("now"))}; refreshes every {REFRESH_SECONDS} s;
<a href="/api/activity/{text(quote(activity_id, safe=""))}">as JSON</a></p></header>
{summary}
<h2>Parent</h2>
{_linked(parent) if parent is not None else '<p class="empty">none</p>'}
<h2>Follow-ups</h2>
{f'<ol id="follow-ups">{follow_ups}</ol>' if follow_ups else '<p class="empty">none</p>'}
<h2>Attempts</h2>
{_attempts(_list(story, "attempts"))}
<h2>Traceback</h2>
{_block(traceback) if isinstance(traceback, str) and traceback else '<p class="empty">none</p>'}
<h2>Attempt logs</h2>
{_logs(_list(story, "logs"))}
<h2>Result</h2>
{_json_block(story.get("result"))}
<h2>Data</h2>
{_json_block(story.get("data"))}
<h2>Files</h2>
<ul>{locations}</ul>
{"<h2>Other fields</h2>" + _json_block(others) if others else ""}"""
    return _page(f"spoolpipe: {activity_id}", body)


def error_page(title: str, message: str) -> str:
    """A 404, 405 or 500 page; ``message`` is plain text."""
    return _page(title, f'<h1>{text(title)}</h1><p>{text(message)}</p><p><a href="/">status</a></p>')
