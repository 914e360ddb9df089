"""The ``spoolpipe`` command line."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import __version__, check, config, control, graph, retention, service, views, worker_log
from .activity import (
    DEFAULT_PRIORITY,
    LATEST,
    NAME_PATTERN,
    PRIORITIES,
    WORKER_ID_PATTERN,
    Activity,
    InvalidActivity,
    format_time,
    is_valid_name,
    is_valid_worker_id,
    nesting,
    new_id,
    parse_document,
    printable,
)
from .repository import NotARepository, Repository, dumps, filesystem_now
from .schedule import report as schedule_report
from .storable import MAX_DEPTH
from .worker import EXIT_CRASH, StartupError, Worker, default_worker_id

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
    if not args.repo:
        raise _UsageError("REPO must not be empty (use . for the current directory)")
    root = Path(args.repo).absolute()
    if os.path.islink(root) and not os.path.exists(root):
        raise _UsageError(f"cannot make a repository at {root}: it is a symbolic link to nothing")
    try:
        created = Repository.create(root, config.render_defaults())
    except OSError as exc:  # a file in the way, a link to nothing, no permission
        where = printable(str(exc.filename or root))
        raise _UsageError(f"cannot make a repository at {root}: {where}: {exc.strerror or exc}") from None
    for path in created:
        print(f"created {path}")
    if not created:
        print(f"{root} is already a complete repository; nothing changed")
    return 0


def _read_data(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    raw = sys.stdin.buffer.read() if text == "-" else os.fsencode(text)  # its bytes, UTF-8 or not
    try:
        doc = parse_document(raw)
    except InvalidActivity as exc:
        raise _UsageError(f"DATA: {exc.reason}") from None
    if nesting(doc) > MAX_DEPTH:  # as the activity's data field, itself level 1
        raise _UsageError(f"DATA: lists and objects nested more than {MAX_DEPTH} levels deep")
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
        try:
            now = filesystem_now(repo.tmp / ".clock-submit")
        except OSError as exc:  # a read-only mount: nothing could be published anyway
            print(f"spoolpipe submit: cannot read the shared clock: {printable(str(exc))}", file=sys.stderr)
            return 1
        if now + args.delay > LATEST:
            raise _UsageError(
                f"--delay reaches past 9999-12-31, the latest not_before: at most {LATEST - now:.0f}"
            )
        not_before = now + args.delay
    activity = Activity(args.id or new_id(), args.type, data, 1, not_before, priority=args.priority)
    limit = config.load(repo.root).settings.limits_activity_bytes
    size = len(dumps(activity.to_json()))
    if size > limit:  # a worker would quarantine it
        raise _UsageError(f"the activity would be {size} bytes, over limits.activity-bytes={limit}")
    try:
        path = repo.submit(activity)
    except FileExistsError as exc:
        raise _UsageError(str(exc)) from None
    except OSError as exc:  # disk full, read-only mount: nothing was published
        print(f"spoolpipe submit: cannot publish the activity: {printable(str(exc))}", file=sys.stderr)
        return 1
    print(activity.id)
    if args.verbose:
        print(f"wrote {path}", file=sys.stderr)
    return 0


WATCH_MAX_SECONDS = 86_400


def _number(text: str) -> float:
    """``text`` as a number, NaN (which fails every bound) when it is none: one message for both."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _watch_interval(text: str) -> float:
    seconds = _number(text)
    if not 0 < seconds <= WATCH_MAX_SECONDS:  # NaN fails this too; 1e10 overflowed time.sleep
        bound = f"give a number of seconds > 0, at most {WATCH_MAX_SECONDS}"
        raise argparse.ArgumentTypeError(f"{text!r}: {bound}")
    return seconds


def cmd_status(args: argparse.Namespace) -> int:
    from .views import text
    from .views.watch import watch

    repo = _repository(args.repo)

    def render() -> str:
        report = views.status(repo)
        if args.json:
            return json.dumps(report, indent=None if args.watch else 2)
        return "\n".join(text.status_lines(report))

    if args.watch is not None:
        return watch(render, args.watch)
    print(render())
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .views import text

    repo = _repository(args.repo)
    config.load(repo.root)  # an invalid configuration is exit 2 (file:line), whatever is listed
    try:
        since = None if args.since is None else config.parse_duration(args.since)
    except ValueError as exc:
        raise _UsageError(f"--since: {exc}") from None
    if args.limit is not None and args.limit < 0:
        raise _UsageError("--limit must be 0 or more")
    found = views.entries(repo, args.state, type_=args.type, since=since, limit=args.limit)
    if args.json:
        print(json.dumps(found, indent=2))
    for entry in [] if args.json else found:
        print(text.entry_line(entry))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .views import text

    repo = _repository(args.repo)
    if not is_valid_name(args.id):
        raise _UsageError(f"'{printable(args.id)}' is not a valid id ({NAME_PATTERN})")
    config.load(repo.root)  # an invalid configuration is exit 2 (file:line), as for status
    found = views.story(repo, args.id)
    if found is None:
        where = printable(args.repo)
        print(f"spoolpipe inspect: no activity '{printable(args.id)}' in {where}", file=sys.stderr)
        return 1
    print(json.dumps(found, indent=2) if args.json else "\n".join(text.story_lines(found)))
    return 0


def _reader_gone() -> None:
    """Standard output's reader went away (``| head``): what is written from now on goes nowhere."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _tell(line: str) -> None:
    """Print a line of a command that goes on whether or not anyone reads it (``| head``)."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        _reader_gone()


def cmd_retry(args: argparse.Namespace) -> int:
    repo = _repository(args.repo)
    if args.all_failed == bool(args.ids):
        raise _UsageError("give activity IDs or --all-failed (not both)")
    for activity_id in args.ids:
        if not is_valid_name(activity_id):
            raise _UsageError(f"'{printable(activity_id)}' is not a valid id ({NAME_PATTERN})")
    limit = config.load(repo.root).settings.limits_activity_bytes  # an invalid one is exit 2
    ids = sorted(p.stem for p in repo.failed.glob("*.json")) if args.all_failed else args.ids
    problems = 0
    for activity_id in ids:
        record = f"failed/{printable(activity_id)}.json"
        try:
            if not is_valid_name(activity_id):
                raise InvalidActivity(f"its name is not a valid id ({NAME_PATTERN})")
            repo.retry_failed(activity_id, limit)
        except FileNotFoundError:
            print(f"error: {record} does not exist", file=sys.stderr)
        except FileExistsError as exc:
            print(f"error: {exc}", file=sys.stderr)
        except InvalidActivity as exc:
            print(f"error: {record} cannot be retried: {exc.reason}", file=sys.stderr)
        except OSError as exc:
            print(f"error: {record} cannot be retried: {printable(str(exc))}", file=sys.stderr)
        else:
            _tell(f"requeued {activity_id}")  # outside the try: a closed stdout is no error of the retry
            continue
        problems += 1
    return 1 if problems else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from . import web

    repo = _repository(args.repo)
    config.load(repo.root)  # an invalid configuration is exit 2 before anything listens
    return web.serve(repo, args.host, args.port, request_timeout=args.request_timeout)


def cmd_schedule(args: argparse.Namespace) -> int:
    repo = _repository(args.repo)
    if not 0 <= args.next <= schedule_report.NEXT_MAX:
        raise _UsageError(f"--next must be from 0 to {schedule_report.NEXT_MAX}")
    rules = config.load(repo.root).settings.schedules
    if args.name is not None:
        if args.name not in rules:
            print(f"spoolpipe schedule: no schedule named '{printable(args.name)}'", file=sys.stderr)
            return 1
        rules = {args.name: rules[args.name]}
    now = views.reading.shared_now(repo)  # the local clock on a read-only mount
    described = schedule_report.describe(repo, rules, now, args.next)
    if args.json:
        print(
            json.dumps(
                {"repository": str(repo.root), "now": format_time(now), "schedules": described}, indent=2
            )
        )
    else:
        print(schedule_report.render(described, args.next), end="")
    return 0


def _log_rotation(repo: Repository, worker_id: str) -> tuple[int, int]:
    """``log.max-bytes`` and ``log.backups``; no rotation with an invalid configuration (the worker
    then logs why it cannot start, and exits)."""
    try:
        settings = config.load(repo.root, worker_id).settings
    except config.ConfigError:
        return 0, 1
    return settings.log_max_bytes, settings.log_backups


def _worker_id(value: str | None) -> str:
    """``--worker-id``, or the host's default when it is not given (an empty one is invalid: a script's
    unset ``$WID`` must not borrow another worker's identity)."""
    worker_id = default_worker_id() if value is None else value
    if not is_valid_worker_id(worker_id):
        raise _UsageError(f"--worker-id {worker_id!r} must match {WORKER_ID_PATTERN} (at most 64 characters)")
    return worker_id


def cmd_graph(args: argparse.Namespace) -> int:
    repo = _repository(args.repo)
    worker_id = None if args.worker_id is None else _worker_id(args.worker_id)
    loaded = check.load_configuration(repo.root, worker_id, sys.stderr)
    if loaded is None:
        return check.EXIT_CONFIGURATION
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    with _output_to_stderr():  # what processor modules print is not the graph
        processors = check.import_configured(loaded.settings, sys.stderr)
    if processors is None:
        return check.EXIT_CANNOT_START
    s = loaded.settings
    flow = graph.build({t: r.follow_up_types for t, r in processors.items()}, s.schedules, s.failures_handler)
    print(graph.render(flow, args.format), end="")
    return 0


@contextlib.contextmanager
def _output_to_stderr() -> Iterator[None]:
    """Standard output goes to stderr meanwhile: print() and writes to descriptor 1 (programs, C code)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)


def cmd_worker(args: argparse.Namespace) -> int:
    repo = _repository(args.repo)
    worker_id = _worker_id(args.worker_id)
    if args.no_wait and not args.until_idle:
        raise _UsageError("--no-wait only applies with --until-idle")
    if args.check:
        if args.until_idle:
            raise _UsageError("--check starts no worker: it takes no --until-idle")
        return check.check_worker(repo.root, worker_id, sys.stdout, sys.stderr)
    try:
        worker_log.configure(repo.logs, worker_id, args.log_level, *_log_rotation(repo, worker_id))
    except OSError as exc:  # another user's file, a folder in the way
        log_file = repo.logs / "workers" / f"{worker_id}.log"
        print(
            f"spoolpipe worker: cannot start: cannot write its log {log_file}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return check.EXIT_CANNOT_START
    try:
        worker = Worker(
            repo.root, worker_id, until_idle=args.until_idle, no_wait=args.no_wait, log_level=args.log_level
        )
        return worker.run()
    except StartupError as exc:
        logging.getLogger("spoolpipe").error("%s", exc)
        return exc.exit_code


def _targets(args: argparse.Namespace) -> list[str]:
    if args.all == bool(args.workers):
        raise _UsageError("give WORKER ids or --all (not both)")
    for worker_id in args.workers:
        if not is_valid_worker_id(worker_id):
            raise _UsageError(f"WORKER {worker_id!r} is not a worker id ({WORKER_ID_PATTERN})")
    return list(args.workers)


def cmd_stop(args: argparse.Namespace) -> int:
    repo, targets = _repository(args.repo), _targets(args)
    request = control.Request.STOP_NOW if args.now else control.Request.STOP
    return control.request_workers(repo, targets, every=args.all, request=request, wait=args.wait)


def cmd_reload(args: argparse.Namespace) -> int:
    repo, targets = _repository(args.repo), _targets(args)
    return control.request_workers(
        repo, targets, every=args.all, request=control.Request.RELOAD, wait=args.wait
    )


def cmd_systemd_unit(args: argparse.Namespace) -> int:
    repo = _repository(args.repo)
    worker_id = _worker_id(args.worker_id)
    grace = config.load(repo.root, worker_id).settings.shutdown_grace_seconds
    unit = service.Unit(os.path.realpath(repo.root), worker_id, service.interpreter(), grace, args.user)
    try:
        sys.stdout.write(service.render(unit))
    except service.UnitError as exc:
        raise _UsageError(str(exc)) from None
    return 0


#: ``purge --older-than``: as the ``retention.*`` keys (above 0, at most 100 years).
_OLDER_THAN = config.DurationKind(0, exclusive=True)

_REQUEST_NOTE = (
    "A request names the worker's current run (host, pid, start time, from its heartbeat): a worker "
    "started later discards it. See docs/operations.md, Control."
)


def _add_targets(parser: argparse.ArgumentParser, wait_help: str) -> None:
    parser.add_argument("workers", metavar="WORKER", nargs="*", help="worker ids (see spoolpipe status)")
    parser.add_argument("--all", action="store_true", help="every worker alive now (recent heartbeat)")
    parser.add_argument("--wait", action="store_true", help=wait_help)


def cmd_purge(args: argparse.Namespace) -> int:
    repo = _repository(args.repo)
    if args.worker_id is not None:
        _worker_id(args.worker_id)
    if args.scheduled and (args.worker_id is None or args.state or args.older_than or args.dry_run):
        raise _UsageError("--scheduled takes --worker-id and nothing else")
    older_than = None
    if args.older_than is not None:
        try:
            older_than = _OLDER_THAN.parse(args.older_than, Path())
        except config.Invalid as exc:  # the retention keys' own bounds
            raise _UsageError(f"--older-than: {exc}; expected {_OLDER_THAN.expected}") from None
    settings = config.load(repo.root, args.worker_id).settings
    if args.scheduled:
        try:
            worker_log.configure(repo.logs, args.worker_id, settings.log_level)
        except OSError as exc:  # a read-only mount: its lock could not be taken either
            print(f"spoolpipe purge: cannot open logs/workers/{args.worker_id}.log: {exc}", file=sys.stderr)
            return 1
    try:
        return retention.run_command(
            repo,
            settings,
            states=args.state or retention.STATES,
            older_than=older_than,
            dry_run=args.dry_run,
            scheduled_run=args.scheduled,
        )
    except BrokenPipeError:  # its reader went away (``| head``): no crash, as for every command
        raise
    except Exception:
        logging.getLogger("spoolpipe").critical("purge crashed (a bug in spoolpipe):", exc_info=True)
        return EXIT_CRASH


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


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return int(text)


def _request_timeout(text: str) -> float:
    seconds = _number(text)
    if not 0.1 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 0.1 to 3600")
    return seconds


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
        "data", metavar="DATA", nargs="?", help="the data object as JSON, or - to read it from stdin"
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
        "Exit codes: 0 stopped (SIGTERM/SIGINT, spoolpipe stop, or nothing left with --until-idle); "
        "2 bad usage, not a repository or invalid configuration (file:line); 3 cannot start (processors "
        "that do not import, worker id already running, its log or lock file not writable, metrics.port "
        "taken or metrics.file not writable); "
        f"{EXIT_CRASH} crashed on an unexpected error (a bug in spoolpipe), logged with its "
        "traceback in REPO/logs/workers/ID.log. Claims a crashed worker leaves are recovered "
        "when it starts again. With --check: 0 it could start, 2 bad usage, not a repository or invalid "
        "configuration, 3 processors "
        "that do not import, its log or lock file not writable, metrics.port taken (but by the running "
        "worker of this id) or metrics.file not writable."
    )
    p.add_argument(
        "--worker-id",
        metavar="ID",
        help="unique name of this worker, at most 64 of A-Z a-z 0-9 . _ - (default: the host name); "
        "REPO/workers/ID.properties overrides settings for it",
    )
    p.add_argument(
        "--until-idle",
        action="store_true",
        help="exit 0 once nothing this worker could run remains (batch jobs, tests); "
        "it waits for delayed activities (not_before, retry backoff) it could run, and says so; "
        "it never fires schedules",
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
    p.add_argument(
        "--check",
        action="store_true",
        help="start nothing: validate the configuration, import the processors, print the types this "
        "worker would take and any warnings, then exit 0, 2 (bad usage, not a repository, invalid "
        "configuration, file:line) or 3 (processors that do not import, file:line; its log or lock "
        "file not writable; metrics that cannot be set up); takes no lock and "
        "never touches the inbox",
    )

    p = _command(
        sub,
        "status",
        cmd_status,
        help="counts per state, waiting work, live workers and what looks stuck",
        description="Show how many activities are in each state and of each type waiting, how many are "
        "ready or delayed and how long the oldest has waited, which workers are alive on which "
        "machine and what each runs for how long, claims that look stuck, types nobody handles, and the "
        "circuit breakers workers have open (docs/operations.md, Circuit breakers). "
        "The --json document is a stable contract (docs/operations.md, 'Seeing what happens').",
    )
    p.add_argument(
        "--json", action="store_true", help="machine-readable output (with --watch: one line per redraw)"
    )
    p.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=_watch_interval,
        metavar="SECONDS",
        help=f"redraw every SECONDS (default 2, at most {WATCH_MAX_SECONDS}) until Ctrl-C",
    )

    p = _command(
        sub,
        "list",
        cmd_list,
        help="one line per activity in a state, newest first",
        description="List the activities in STATE, newest first (by the time their file got there), one "
        "per line: id, type, attempt, age, and for failed and invalid entries the reason. Invalid "
        "entries are listed by their folder under invalid/.",
    )
    p.epilog = (
        "Exit codes: 0 listed (also when nothing matches); "
        f"2 bad usage, not a repository or invalid configuration; {EXIT_CRASH} crashed (a bug)."
    )
    p.add_argument("state", metavar="STATE", choices=views.STATES, help="one of " + ", ".join(views.STATES))
    p.add_argument("--type", metavar="TYPE", help="only activities of this type")
    p.add_argument(
        "--since", metavar="DURATION", help="only entries at most this old: 30s, 15m, 2h, 1d (plain: seconds)"
    )
    p.add_argument("--limit", type=int, metavar="N", help="at most N entries (the newest)")
    p.add_argument("--json", action="store_true", help="machine-readable output: a JSON array")

    p = _command(
        sub,
        "inspect",
        cmd_inspect,
        help="one activity's whole story",
        description="Show where activity ID is now (inbox, delayed, running, done, failed, invalid), each "
        "attempt (worker, host, start, end, outcome or error), the tail of each attempt log, its result "
        "or reason and traceback, its parent and its follow-ups with their states.",
    )
    p.epilog = (
        "Exit codes: 0 shown; 1 no activity with this id; 2 bad usage (an ID that is not a valid id), "
        f"not a repository or invalid configuration; {EXIT_CRASH} crashed (a bug)."
    )
    p.add_argument("id", metavar="ID", help="the activity id")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _command(
        sub,
        "retry",
        cmd_retry,
        help="move failed activities back to the inbox",
        description="Queue the activity of failed/ID.json again as inbox/ID.json, a first attempt; "
        "the failed record joins the activity's history (spoolpipe.history).",
    )
    p.add_argument("ids", metavar="ID", nargs="*", help="the ids of failed activities (failed/ID.json)")
    p.add_argument("--all-failed", action="store_true", help="retry every failed activity")

    p = _command(
        sub,
        "stop",
        cmd_stop,
        help="stop workers on any machine (drain, or --now)",
        description="Write REPO/control/WORKER.stop (with --now: WORKER.stop-now) for each live worker "
        "named, or every live one with --all. Within heartbeat.interval-seconds the worker does what "
        "SIGTERM does: it claims nothing more, lets running activities finish within "
        "shutdown.grace-seconds (then releases them to the inbox) and exits 0. With --now it releases "
        "its running activities to the inbox at once. " + _REQUEST_NOTE,
    )
    p.epilog = (
        "Exit codes: 0 every worker got its request (with --wait: and has exited); 1 a worker named "
        "is not alive (the others still get theirs), or --all found no live worker; 2 bad usage or "
        f"not a repository; {EXIT_CRASH} crashed (a bug)."
    )
    _add_targets(p, "block until each worker has exited")
    p.add_argument("--now", action="store_true", help="release running activities to the inbox at once")

    p = _command(
        sub,
        "reload",
        cmd_reload,
        help="make workers on any machine re-read their configuration",
        description="Write REPO/control/WORKER.reload for each live worker named, or every live one "
        "with --all. Within heartbeat.interval-seconds the worker does what SIGHUP does: it re-reads "
        "its configuration. A configuration the worker would reject is reported here (file:line) "
        "and not sent. " + _REQUEST_NOTE,
    )
    p.epilog = (
        "Exit codes: 0 every worker got its request (with --wait: and has taken it); 1 a worker named "
        "is not alive (the others still get theirs), --all found no live worker, or, with --wait, a "
        "worker stopped before it took the request; 2 bad usage, not a repository, or a worker's "
        f"configuration is invalid (nothing sent to it); {EXIT_CRASH} crashed (a bug)."
    )
    _add_targets(p, "block until each worker has taken the request")

    p = _command(
        sub,
        "systemd-unit",
        cmd_systemd_unit,
        help="print a systemd service unit that runs a worker on REPO",
        description="Print a unit (to save as /etc/systemd/system/spoolpipe-ID.service) running "
        "`spoolpipe worker REPO --worker-id ID` with this interpreter: restarted on failure, "
        "stopped by SIGTERM with shutdown.grace-seconds to drain (read from REPO's configuration), "
        "reloaded by SIGHUP, KillMode=mixed so pool processes go with the daemon, after the network "
        "and REPO's mount. See docs/operations.md, Running as a service.",
    )
    p.epilog = (
        "Exit codes: 0 printed; 2 bad usage (an invalid id or user name, a path a unit cannot "
        f"hold), not a repository, or invalid configuration; {EXIT_CRASH} crashed (a bug)."
    )
    p.add_argument("--worker-id", metavar="ID", help="the worker's id (default: the host name)")
    p.add_argument("--user", metavar="USER", help="run the worker as USER (default: root)")

    p = _command(
        sub,
        "serve",
        cmd_serve,
        help="a read-only status page in the browser",
        description="Serve a status page of REPO over HTTP: counts, live workers, waiting types, "
        "recent failures with their reasons, each activity's story and thumbnails of recent "
        "image.process outputs; it refreshes itself. /api/status returns what status --json prints. "
        "Read-only: only GET and HEAD, no write endpoints.",
    )
    p.epilog = (
        "Exit codes: 0 stopped by SIGTERM or SIGINT (Ctrl-C); 2 bad usage, not a repository, invalid "
        "configuration or a --host that is not an address; 3 cannot listen (port in use, permission "
        f"denied); {EXIT_CRASH} crashed on an unexpected error (a bug). Bound to a loopback address "
        "it answers only requests for a loopback host name. "
        "Pages: /, /activity/ID, /api/status, /api/activity/ID, /thumb/ID/N and /output/ID/N "
        "(docs/operations.md, The status page)."
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port", type=_port, default=8765, help="port to listen on (default 8765; 0 picks a free one)"
    )
    p.add_argument(
        "--request-timeout",
        type=_request_timeout,
        default=30.0,
        metavar="SECONDS",
        help="close each connection this long after it was opened, idle or not (default 30; 0.1 to 3600)",
    )

    p = _command(
        sub,
        "purge",
        cmd_purge,
        help="archive or delete what is past its retention.* limit",
        description="Move done/ and failed/ records, invalid/ entries and attempt logs older than "
        "their retention.* limit (or --older-than) into archive/STATE-YYYY-MM-DD.tar.gz "
        "(retention.archive = true) or delete them (false). Entries of activities that are queued "
        "or running are kept. Workers do this by themselves every retention.interval; one purge "
        "runs at a time (locks/~retention.lock).",
    )
    p.epilog = (
        "Exit codes: 0 done (also when nothing had expired; with --scheduled, also when skipped); "
        "1 another purge held the lock for 5s (or it cannot be taken: a read-only mount), or some "
        "entries could not be purged (listed on stderr, left in place), or a folder it needs is not "
        "one (archive a file, a state folder a link); 2 bad usage, not a repository or invalid "
        "configuration; "
        f"{EXIT_CRASH} crashed (a bug). See docs/operations.md, Cleaning up."
    )
    p.add_argument(
        "--state",
        action="append",
        choices=retention.STATES,
        help="only this state (repeatable; default: all four)",
    )
    p.add_argument(
        "--older-than",
        metavar="DURATION",
        help="instead of the retention.* limits: everything older than DURATION (30s, 15m, 2h, 1d)",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would go; change nothing")
    p.add_argument(
        "--worker-id",
        metavar="ID",
        help="use worker ID's settings (REPO/workers/ID.properties too); default: the shared file only",
    )
    p.add_argument(
        "--scheduled",
        action="store_true",
        help="what a worker runs every retention.interval (with --worker-id): skip if another purge "
        "runs or one started within half an interval; log to REPO/logs/workers/ID.log",
    )

    p = _command(
        sub,
        "schedule",
        cmd_schedule,
        help="list the schedules, their last and next ticks",
        description="List the schedules of REPO/spoolpipe.properties (schedule.<name>.*): name, "
        "expression, activity type, workers allowed to fire it, catch-up, the last tick fired "
        "(from REPO/schedules/NAME.json) and the next fire times. Times are UTC ticks shown in "
        "ISO-8601. docs/operations.md (Schedules) describes the --json output, a stable format.",
    )
    p.epilog = (
        "Exit codes: 0 listed; 1 NAME is not a configured schedule; 2 bad usage, not a "
        f"repository or invalid configuration (each problem with file:line); {EXIT_CRASH} crashed (a bug)."
    )
    p.add_argument("name", metavar="NAME", nargs="?", help="show only this schedule")
    p.add_argument(
        "--json", action="store_true", help="machine-readable output (stable; see docs/operations.md)"
    )
    p.add_argument(
        "--next",
        type=int,
        default=schedule_report.NEXT_COUNT,
        metavar="N",
        help=f"how many next fire times to list (default {schedule_report.NEXT_COUNT}, "
        f"at most {schedule_report.NEXT_MAX})",
    )
    p = _command(
        sub,
        "graph",
        cmd_graph,
        help="print the flow: which types lead to which (Mermaid or Graphviz)",
        description="Print a graph of the flow as the configuration loads it: each activity type "
        "with a processor, an edge to each follow-up type it declares (follow_ups; a processor "
        "that declares none may create any type: a dashed edge to an 'any type' node), types named "
        "but without a processor here (dashed, 'no processor'), each schedule with an edge to the "
        "type it fires labelled with its expression, and one 'fails for good' node leading to "
        "failures.handler. The processors are imported as `spoolpipe worker --check` does; "
        "nothing is written. See docs/processors.md, The flow graph.",
    )
    p.epilog = (
        "Exit codes: 0 printed; 2 bad usage, not a repository, or invalid configuration (file:line); "
        f"3 processors that do not import (file:line); {EXIT_CRASH} crashed (a bug). "
        "A picture: spoolpipe graph REPO --format dot | dot -Tsvg > flow.svg"
    )
    p.add_argument(
        "--format",
        choices=graph.FORMATS,
        default="mermaid",
        help="mermaid (default: a flowchart for Markdown) or dot (Graphviz: dot -Tsvg)",
    )
    p.add_argument(
        "--worker-id",
        metavar="ID",
        help="include REPO/workers/ID.properties (default: the shared file only)",
    )
    for name, codes in _EXIT_CODES.items():
        sub.choices[name].epilog = f"Exit codes: {codes}; {EXIT_CRASH} crashed on an unexpected error."
    return parser


#: The exit codes of the commands whose parsers above do not state them (docs/operations.md, Exit codes).
_EXIT_CODES = {
    "init": "0 created what was missing (or nothing was); 2 bad usage, or no repository can be made "
    "there (a file in the way, a link to nothing, no permission)",
    "submit": "0 published, the id is printed; 1 it could not be written (disk full, read-only): "
    "nothing published; 2 bad usage (an invalid TYPE, --id, DATA or --delay, "
    "DATA a worker would refuse: over limits.activity-bytes or nested too deep; an id already in "
    "use), not a repository or invalid configuration",
    "status": "0 shown (with --watch: stopped by Ctrl-C); 2 bad usage, not a repository or invalid "
    "configuration",
    "retry": "0 every ID requeued; 1 an ID without failed/ID.json, or one that cannot be requeued "
    "(the others still are); 2 bad usage (an ID that is not a valid id: nothing is requeued), not "
    "a repository or invalid configuration",
}


def run() -> None:
    """The ``spoolpipe`` command: exit with ``main``'s code.

    The interpreter's last garbage collection at exit walks every object a worker made and
    frees nothing a command needs (exit handlers still run, files are still closed and
    flushed): frozen first, an idle ``worker --until-idle`` ends 14 ms sooner (0.18 s in all).
    """
    code = main()
    gc.freeze()
    sys.exit(code)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Options go anywhere, before an optional last argument too (``submit REPO TYPE --delay 5 DATA``):
    a plain parse took that argument as missing, then refused it as one too many."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command: argparse.ArgumentParser = commands.choices[args.command]
    parsed = command.parse_intermixed_args(argv[argv.index(args.command) + 1 :])
    parsed.command = args.command
    return parsed


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
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
    except PermissionError as exc:  # a folder of the repository this user may not read or write
        where = f"{exc.filename}: " if exc.filename else ""
        print(
            f"spoolpipe {args.command}: error: {where}{exc.strerror or exc} (a repository of another user?)",
            file=sys.stderr,
        )
        return 2
    except BrokenPipeError:  # the reader went away (``| head``): what it read was complete
        _reader_gone()
        return 0
    except Exception:
        traceback.print_exc()
        print(
            f"spoolpipe {args.command}: crashed (a bug in spoolpipe): exit code {EXIT_CRASH}", file=sys.stderr
        )
        return EXIT_CRASH
