"""A purge: find what is expired and archive or delete it; ``spoolpipe purge`` and its ``--scheduled`` run."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import stat
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..activity import printable
from ..config import Settings
from ..liveness import OwnLock
from ..repository import Repository, filesystem_now
from ._archive import (
    CHANGED,
    NotAFile,
    appendable,
    archive_group,
    complete_interrupted,
    protected_ids,
    sweep_temp,
)
from ._expiry import (
    ARCHIVE_DIR,
    STATE_DIRS,
    STATES,
    Entry,
    Report,
    State,
    by_archive,
    describe_age,
    expired,
    is_entry,
    limits_of,
)
from ._lock import Busy, retention_lock
from ._tree import Skipped, fsync_dir_fd, open_dir, remove

log = logging.getLogger("spoolpipe.retention")

#: Touched by each scheduled purge that ran: the others skip until ``retention.interval`` has passed.
LAST_RUN = ".last-run"


def scan(repo: Repository, state: State) -> list[Entry]:
    """The entries of ``state`` in place now: regular files named as spoolpipe names them, or
    ``invalid/`` directories; links and anything else are never touched, nor a state's folder that
    is a link (``OSError``: the purge cannot open it to archive or delete, so a dry run lists none)."""
    wanted = stat.S_ISDIR if state == "invalid" else stat.S_ISREG
    entries = []
    fd = open_dir(str(repo.root / STATE_DIRS[state]), None)
    try:
        with os.scandir(fd) as found:
            for item in found:
                if not is_entry(state, item.name):
                    continue
                try:
                    st = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if wanted(st.st_mode):
                    entries.append(Entry(state, item.name, st.st_mtime, st.st_ino, st.st_size))
    finally:
        os.close(fd)
    return entries


def purge(
    repo: Repository,
    limits: Mapping[State, float],
    *,
    archive: bool,
    dry_run: bool,
    lock: OwnLock,
) -> Report:
    """Archive (or delete) every entry past its state's limit; dry: only say which. Holds ``lock``.

    States missing from ``limits`` are kept. An interrupted purge's journal is
    completed first.
    """
    report = Report(dry_run, archive)
    if (problem := _archive_folder_problem(repo)) is not None:
        report.problems.append(problem)
        return report
    if not dry_run:
        try:
            complete_interrupted(repo, report)
        except NotAFile as exc:
            report.problems.append(str(exc))
            return report
        sweep_temp(repo)
    now = filesystem_now(repo.tmp / ".clock-purge")
    entries = []
    for state in (s for s in STATES if limits.get(s, math.inf) < math.inf):
        try:
            entries += scan(repo, state)
        except OSError as exc:
            report.problems.append(
                f"{STATE_DIRS[state]}/ cannot be opened as a folder: {exc.strerror}: nothing purged there"
            )
    found = expired(entries, {s: limits.get(s, math.inf) for s in STATES}, now, protected_ids(repo))
    if dry_run:
        for group in by_archive(found).values():
            state = group[0].state
            target = appendable(repo.root / ARCHIVE_DIR, state, group[0].mtime)[0].name if archive else ""
            for entry in group:
                report.removed[state].append(entry)
                if archive:
                    report.archives[state].add(target)
                    report.destinations[entry] = target
        return report
    if not archive:
        _delete(repo, found, report)
        return report
    for group in by_archive(found).values():
        if not lock.held():
            report.problems.append("the retention lock was lost: stopped; the next purge goes on")
            break
        try:
            archive_group(repo, group, lock, report, now)
        except OSError as exc:
            report.problems.append(f"{group[0].state}: {len(group)} entries not archived: {exc}")
    return report


def _delete(repo: Repository, found: Iterable[Entry], report: Report) -> None:
    """``retention.archive = false``: delete each entry that still is as old as when it was found."""
    for state in STATES:
        mine = [e for e in found if e.state == state]
        if not mine:
            continue
        try:
            fd = open_dir(str(repo.root / STATE_DIRS[state]), None)
        except OSError as exc:
            report.problems.append(f"{STATE_DIRS[state]}/ cannot be opened as a folder: {exc.strerror}")
            continue
        try:
            live = protected_ids(repo)  # queued or running again since the scan: no longer expired
            for entry in mine:
                if entry.is_of(live):
                    continue
                try:
                    if not entry.is_still(os.lstat(entry.name, dir_fd=fd)):
                        report.problems.append(f"{printable(entry.path)}: not deleted: {CHANGED}")
                        continue
                    remove(fd, entry.name)
                except FileNotFoundError:
                    continue
                except (OSError, Skipped) as exc:
                    report.problems.append(f"{printable(entry.path)}: not deleted: {exc}")
                    continue
                report.removed[state].append(entry)
            fsync_dir_fd(fd)
        finally:
            os.close(fd)


def _archive_folder_problem(repo: Repository) -> str | None:
    folder = repo.root / ARCHIVE_DIR
    if os.path.lexists(folder) and not (folder.is_dir() and not folder.is_symlink()):
        return f"{folder} is not a folder: nothing purged (move it away)"
    return None


def _ran_recently(repo: Repository, interval: float) -> bool:
    """A scheduled purge started less than half an interval ago (by the shared clock): skip this one."""
    marker = repo.root / ARCHIVE_DIR / LAST_RUN
    try:
        last = os.lstat(marker).st_mtime
    except FileNotFoundError:
        return False
    # A mark in the future (a server clock stepped back, a restored backup) is no recent run: else
    # every purge would skip, without a word, until the clock caught up.
    return 0 <= filesystem_now(repo.tmp / ".clock-purge") - last < interval / 2


def _mark_run(repo: Repository) -> None:
    (repo.root / ARCHIVE_DIR).mkdir(exist_ok=True)
    marker = repo.root / ARCHIVE_DIR / LAST_RUN
    marker.touch()
    os.utime(marker, None)  # the file server's clock, not this machine's


def scheduled(repo: Repository, settings: Settings) -> Report | None:
    """What a worker runs every ``retention.interval``; None when skipped.

    Skipped when another purge holds the lock or one started less than half an
    interval ago, so however many workers there are, one purge runs per interval.
    """
    try:
        with retention_lock(repo, settings, wait=0.0) as lock:
            try:
                if (problem := _archive_folder_problem(repo)) is None:
                    if _ran_recently(repo, settings.retention_interval):
                        return None
                    _mark_run(repo)
            except OSError as exc:  # archive/ unwritable, .last-run not a file...
                problem = f"cannot mark this run in {ARCHIVE_DIR}/{LAST_RUN}: {exc}: nothing purged"
            if problem is not None:
                report = Report(False, settings.retention_archive)
                report.problems.append(problem)
                return report
            return purge(
                repo, limits_of(settings), archive=settings.retention_archive, dry_run=False, lock=lock
            )
    except Busy:
        return None


#: At most this many problems are logged one by one; the rest are counted.
_PROBLEMS_SHOWN = 20


def run_command(
    repo: Repository,
    settings: Settings,
    *,
    states: Sequence[State],
    older_than: float | None,
    dry_run: bool,
    scheduled_run: bool,
) -> int:
    """``spoolpipe purge``: the exit code (0 done, 1 another purge holds the lock or entries stayed)."""
    if scheduled_run:
        report = scheduled(repo, settings)
        if report is not None:
            for line in report.summary():
                log.info("purge: %s", line)
            _say_problems(report.problems, lambda line: log.warning("purge: %s", line))
        return 0
    limits = {s: (older_than if older_than is not None else limits_of(settings)[s]) for s in states}
    with contextlib.ExitStack() as held:
        try:
            lock = held.enter_context(retention_lock(repo, settings, wait=5.0))
        except Busy as exc:
            print(f"spoolpipe purge: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:  # the lock file cannot be made (a read-only mount)
            print(f"spoolpipe purge: cannot take locks/~retention.lock: {exc}", file=sys.stderr)
            return 1
        try:
            report = purge(repo, limits, archive=settings.retention_archive, dry_run=dry_run, lock=lock)
        except OSError as exc:  # the file system refused what no entry's report covers
            print(f"spoolpipe purge: {exc}; stopped, what was not purged stays in place", file=sys.stderr)
            return 1
    if dry_run:
        now = filesystem_now(repo.tmp / ".clock-purge")
        for state in STATES:
            for entry in report.removed[state]:
                where = f" into archive/{report.destinations[entry]}" if report.archive else ""
                verb = "archive" if report.archive else "delete"
                print(f"would {verb} {printable(entry.path)} ({describe_age(now - entry.mtime)} old){where}")
    for line in report.summary() or ["nothing purged" if report.problems else "nothing to purge"]:
        print(line)
    _say_problems(report.problems, lambda line: print(f"spoolpipe purge: {line}", file=sys.stderr))
    return 1 if report.problems else 0


def _say_problems(problems: Sequence[str], say: Any) -> None:
    for line in problems[:_PROBLEMS_SHOWN]:
        say(line)
    if len(problems) > _PROBLEMS_SHOWN:
        say(f"... and {len(problems) - _PROBLEMS_SHOWN} more entries that stayed in place")
