"""The ``spoolpipe`` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import logging.handlers
import math
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__, config
from .activity import (
    DEFAULT_PRIORITY,
    PRIORITIES,
    Activity,
    InvalidActivity,
    is_valid_name,
    new_id,
    parse_document,
    printable,
)
from .repository import NotARepository, Repository, filesystem_now
from .worker import EXIT_CRASH, StartupError, Worker, default_worker_id, iter_heartbeats

EPILOG = """\
Activities are JSON files {"type": ..., "data": {...}} dropped into REPO/inbox/.
The repository layout is described in docs/repository-format.md, the settings
in docs/configuration.md (and, commented, in REPO/spoolpipe.properties).
"""


class _UsageError(Exception):
    pass


def _repository(path: str) -> Repository:
    repo = Repository(Path(path).absolute())
    repo.check()
    return repo


def cmd_init(args: argparse.Namespace) -> int:
    root = Path(args.repo).absolute()
    created = Repository.create(root, config.render_defaults())
    for path in created:
        print(f"created {path}")
    if not created:
        print(f"{root} is already a complete repository; nothing changed")
    return 0


def _read_data(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    raw = sys.stdin.buffer.read() if text == "-" else text.encode()
    try:
        doc = parse_document(raw)
    except InvalidActivity as exc:
        raise _UsageError(f"DATA: {exc.reason}") from None
    return doc


def cmd_submit(args: argparse.Namespace) -> int:
    repo = _repository(args.repo)
    if not is_valid_name(args.type):
        raise _UsageError(f"TYPE {args.type!r} is not a valid type ([A-Za-z0-9][A-Za-z0-9._-]{{0,127}})")
    if args.id is not None and not is_valid_name(args.id):
        raise _UsageError(f"--id {args.id!r} is not a valid id ([A-Za-z0-9][A-Za-z0-9._-]{{0,127}})")
    if args.delay is not None and not (math.isfinite(args.delay) and args.delay >= 0):
        raise _UsageError("--delay must be a number of seconds >= 0")
    data = _read_data(args.data)
    not_before = None
    if args.delay:
        not_before = filesystem_now(repo.tmp / ".clock-submit") + args.delay
    activity = Activity(args.id or new_id(), args.type, data, 1, not_before, priority=args.priority)
    try:
        path = repo.submit(activity)
    except FileExistsError as exc:
        raise _UsageError(str(exc)) from None
    print(activity.id)
    if args.verbose:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _live(repo: Repository, now: float) -> list[dict[str, Any]]:
    settings = config.load(repo.root).settings
    horizon = max(3 * settings.heartbeat_interval_seconds, settings.claims_lease_seconds)
    live = []
    for doc, mtime in iter_heartbeats(repo):
        for key in ("worker", "host"):  # a heartbeat is a file anyone may have written
            if isinstance(doc.get(key), str):
                doc[key] = printable(doc[key])
        if isinstance(doc.get("types"), dict):
            doc["types"] = {printable(t): n for t, n in doc["types"].items()}
        doc["last_seen_seconds"] = round(max(0.0, now - mtime), 1)
        if now - mtime <= horizon:
            live.append(doc)
    return live


def status(repo: Repository) -> dict[str, Any]:
    """Everything ``status`` shows, as one JSON-serialisable document."""
    now = filesystem_now(repo.tmp / ".clock-status")
    counts = {
        "inbox": repo.count(repo.inbox),
        "running": sum(1 for _ in repo.claims()),
        "done": repo.count(repo.done),
        "failed": repo.count(repo.failed),
        "invalid": repo.count(repo.invalid),
    }
    workers = _live(repo, now)
    handled = {t for w in workers for t, n in w.get("types", {}).items() if n > 0}
    waiting: Counter[str] = Counter()
    for name in repo.inbox_names():
        path = repo.inbox / name
        try:
            if path.is_symlink() or not path.is_file() or path.stat().st_size > 1 << 20:
                continue
            type_ = parse_document(path.read_bytes()).get("type")
        except (OSError, InvalidActivity):
            continue
        if isinstance(type_, str):
            waiting[printable(type_)] += 1
    return {
        "repository": printable(str(repo.root)),
        "counts": counts,
        "workers": workers,
        "inbox_by_type": dict(sorted(waiting.items())),
        "unhandled_types": sorted(t for t in waiting if t not in handled),
    }


def cmd_status(args: argparse.Namespace) -> int:
    report = status(_repository(args.repo))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    counts = report["counts"]
    print(f"repository {report['repository']}")
    print("  " + "  ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"workers alive: {len(report['workers'])}")
    for w in report["workers"]:
        types = ", ".join(f"{t} (concurrency {n})" for t, n in sorted(w.get("types", {}).items()))
        print(
            f"  {w['worker']} on {w['host']} pid {w['pid']}, running {len(w.get('running', []))}, "
            f"seen {w['last_seen_seconds']}s ago; types: {types}"
        )
    if report["inbox_by_type"]:
        print("waiting by type: " + ", ".join(f"{t} {n}" for t, n in report["inbox_by_type"].items()))
    for t in report["unhandled_types"]:
        print(f"  warning: no live worker handles type {t!r}; those activities stay queued")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    repo = _repository(args.repo)
    if args.all_failed == bool(args.ids):
        raise _UsageError("give activity IDs or --all-failed (not both)")
    ids = sorted(p.stem for p in repo.failed.glob("*.json")) if args.all_failed else args.ids
    problems = 0
    for activity_id in ids:
        try:
            repo.retry_failed(activity_id)
            print(f"requeued {activity_id}")
        except FileNotFoundError:
            print(f"error: failed/{activity_id}.json does not exist", file=sys.stderr)
            problems += 1
        except FileExistsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            problems += 1
        except InvalidActivity as exc:
            print(f"error: failed/{activity_id}.json cannot be retried: {exc.reason}", file=sys.stderr)
            problems += 1
    return 1 if problems else 0


class _WorkerLogHandler(logging.handlers.WatchedFileHandler):
    """Reopens the log when it is moved (rotation) or its file system is remounted; never stops the worker."""

    def reopenIfNeeded(self) -> None:
        # While the file system is away, emit() reports each failed write on stderr.
        with contextlib.suppress(OSError):
            super().reopenIfNeeded()


def _configure_logging(repo: Repository, worker_id: str, level: str | None) -> None:
    fmt = logging.Formatter(f"%(asctime)s %(levelname)s [{worker_id}] %(message)s")
    root = logging.getLogger("spoolpipe")
    root.handlers.clear()
    for handler in (
        logging.StreamHandler(sys.stderr),
        _WorkerLogHandler(repo.logs / "workers" / f"{worker_id}.log", encoding="utf-8"),
    ):
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(level or "INFO")
    root.propagate = False


def cmd_worker(args: argparse.Namespace) -> int:
    repo = _repository(args.repo)
    worker_id = args.worker_id or default_worker_id()
    if not is_valid_name(worker_id):
        raise _UsageError(f"--worker-id {worker_id!r} must match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}")
    if args.no_wait and not args.until_idle:
        raise _UsageError("--no-wait only applies with --until-idle")
    _configure_logging(repo, worker_id, args.log_level)
    try:
        worker = Worker(
            repo.root, worker_id, until_idle=args.until_idle, no_wait=args.no_wait, log_level=args.log_level
        )
        return worker.run()
    except StartupError as exc:
        logging.getLogger("spoolpipe").error("%s", exc)
        return 3


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    func: Callable[[argparse.Namespace], int],
    *,
    help: str,
    description: str,
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=description)
    parser.add_argument("repo", metavar="REPO", help="the repository directory")
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spoolpipe",
        description="Brokerless background work from a shared folder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"spoolpipe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _command(
        sub,
        "init",
        cmd_init,
        help="create a repository (idempotent, never overwrites)",
        description="Create REPO's directories and a commented spoolpipe.properties "
        "listing every setting with its default. Existing files are kept.",
    )

    p = _command(
        sub,
        "submit",
        cmd_submit,
        help="publish an activity into REPO/inbox/",
        description="Write an activity atomically into REPO/inbox/ and print its id.",
    )
    p.add_argument("type", metavar="TYPE", help="activity type, e.g. invoice.render")
    p.add_argument(
        "data", metavar="JSON", nargs="?", help="the data object as JSON, or - to read it from stdin"
    )
    p.add_argument("--id", help="activity id (default: a new ULID)")
    p.add_argument("--delay", type=float, metavar="SECONDS", help="do not start before SECONDS from now")
    p.add_argument(
        "--priority",
        type=int,
        choices=PRIORITIES,
        default=DEFAULT_PRIORITY,
        metavar="N",
        help=f"0-9 (default {DEFAULT_PRIORITY}): higher runs first, then older; "
        "one other than the default is also in the file name, ID~pN.json",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also print the file written")

    p = _command(
        sub,
        "worker",
        cmd_worker,
        help="run a worker daemon on REPO",
        description="Claim and run activities from REPO until SIGTERM/SIGINT "
        "(running work gets shutdown.grace-seconds to finish, then is released).",
    )
    p.epilog = (
        "Exit codes: 0 stopped (SIGTERM/SIGINT, or nothing left with --until-idle); 2 bad usage "
        "or not a repository; 3 cannot start (invalid configuration, processors that do not "
        "import, worker id already running, metrics.port taken or metrics.file not writable); "
        f"{EXIT_CRASH} crashed on an unexpected error (a bug in spoolpipe), logged with its "
        "traceback in REPO/logs/workers/ID.log. Claims a crashed worker leaves are recovered "
        "when it starts again."
    )
    p.add_argument(
        "--worker-id",
        metavar="ID",
        help="unique name of this worker (default: the host name); "
        "REPO/workers/ID.properties overrides settings for it",
    )
    p.add_argument(
        "--until-idle",
        action="store_true",
        help="exit 0 once nothing this worker could run remains (batch jobs, tests); "
        "it waits for delayed activities (not_before, retry backoff) it could run, and says so",
    )
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="with --until-idle: exit once only delayed activities remain, leaving them queued",
    )
    p.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level for this run (overrides log.level)",
    )

    p = _command(
        sub,
        "status",
        cmd_status,
        help="counts per state and the live workers",
        description="Show how many activities are in each state, which workers are alive "
        "on which machine, and types nobody handles.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _command(
        sub,
        "retry",
        cmd_retry,
        help="move failed activities back to the inbox",
        description="Queue the activity of failed/ID.json again as inbox/ID.json, a first attempt; "
        "the failed record joins the activity's history (spoolpipe.history).",
    )
    p.add_argument("ids", metavar="ID", nargs="*")
    p.add_argument("--all-failed", action="store_true", help="retry every failed activity")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except _UsageError as exc:
        print(f"spoolpipe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except NotARepository as exc:
        print(f"spoolpipe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except config.ConfigError as exc:
        print(f"spoolpipe {args.command}: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
