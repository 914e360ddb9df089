"""The repository on disk: every state change an activity goes through is one rename.

``docs/repository-format.md`` is the contract this module implements; keep them
in step. Exclusivity comes from ``rename``: of two workers renaming the same
source only one succeeds. Whether a claim's owner is still alive is the job of
``liveness``; this module only moves files.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .activity import (
    DEFAULT_PRIORITY,
    OUTCOMES,
    Activity,
    ClaimName,
    InvalidActivity,
    OutcomeKind,
    RunningName,
    attempt_log_name,
    document_priority,
    invalid_entry_name,
    is_ignored,
    new_id,
    new_name,
    parse_activity,
    parse_document,
    parse_running_name,
    printable,
    priority_mark,
    queued_name,
    retried_activity,
)
from .durable import Durability, Spares, move_noreplace, publish, take, write_file
from .storable import encode
from .untrusted import NotARegularFile, kind_of, open_own, read_regular

STATE_DIRS = ("inbox", "running", "done", "failed", "invalid")
SUPPORT_DIRS = (
    "ids",
    "tmp",
    "workers",
    "locks",
    "heartbeats",
    "logs",
    "logs/workers",
    "logs/activities",
    "reports",
)
#: Support folders spoolpipe renames files into and out of, or writes, as it does the state folders.
_WRITTEN = ("ids", "tmp", "locks", "heartbeats", "reports", "control", "schedules", "archive")
PROPERTIES_FILE = "spoolpipe.properties"
_QUARANTINE_PREFIX = "quarantine-"
_REASON = "reason.txt"
# Where an entry that is itself named reason.txt is kept beside its reason.
_REASON_NAMESAKE = "reason.txt~entry"
_STALE_TMP_SECONDS = 3600.0
# Errors a network file system gives for a while without the file being at fault: try again later.
_TRANSIENT = frozenset({errno.ESTALE, errno.EIO, errno.ENOTCONN, errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT})
_STALE_QUARANTINE_SECONDS = 60.0
# Temp files of publish_once: a reservation left on one of these is an orphan once old enough.
_PUBLISH_ONCE = "publish-once"


class NotARepository(Exception):
    """The directory lacks the layout ``spoolpipe init`` creates."""


@dataclass(frozen=True)
class Duplicate:
    """The claim is a copy of an activity another file holds: quarantine it with ``reason``."""

    reason: str


@dataclass(frozen=True)
class Busy:
    """The claim's id is held by a file not seen yet (caches): put the claim back and try later."""

    reason: str


@dataclass(frozen=True)
class Staged:
    """What is staged for a claim in ``running/``: its outcome record and its follow-ups.

    A follow-up is named by its inbox name without ``.json`` (``FID`` or ``FID~pP``).
    """

    claim: ClaimName
    outcome: OutcomeKind
    follow_ups: tuple[str, ...]


@dataclass(frozen=True)
class Settlement:
    """One claim's outcome, to be committed with others in one ``settle``."""

    claim: ClaimName
    outcome: OutcomeKind
    record: Mapping[str, Any]
    follow_ups: Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class Settled:
    """What ``settle`` made of a settlement.

    ``committed``: published (record in ``done/``/``failed/``, follow-ups in ``inbox/``); with an
    ``error``, committed but not all published yet (a folder it goes to is gone and cannot be made
    again): it stays committed in ``running/`` for the next finish, a recovery, to complete.
    ``restored``: the folders publishing it made again (deleted by hand), for the caller to say so.
    ``lost``: fenced, the claim was taken over (recovered or released); nothing was published.
    ``unwritten``: nothing of it stays staged and the claim is still in ``running/`` for the
    caller to release; ``error`` is an ``OSError`` when a write or flush failed (disk full...),
    any other exception when the outcome cannot be encoded (a bug: fail the activity instead).
    """

    settlement: Settlement
    status: Literal["committed", "lost", "unwritten"]
    error: Exception | None = None
    restored: tuple[str, ...] = ()


#: One version of a file: its inode, size and modification time (ns). A rename keeps all three.
Stamp = tuple[int, int, int]


@dataclass(frozen=True)
class Found:
    """An inbox entry's activity, and the stamp of the file it was read from.

    The claim compares the stamp with the file it took: a file renamed over or
    rewritten after it was read holds another document than ``activity``.
    """

    activity: Activity
    stamp: Stamp


@dataclass(frozen=True)
class Rejected:
    """An inbox entry that cannot run, and why.

    ``stamp`` is set when the content might still be being written: the caller
    quarantines it only once it has stayed unchanged long enough.
    """

    reason: str
    stamp: Stamp | None = None


def _stamp(st: os.stat_result) -> Stamp:
    return st.st_ino, st.st_size, st.st_mtime_ns


def made_again(folder: str) -> str:
    """What a worker says of a folder of the layout that ``Repository.restore`` made again."""
    return f"{folder}/ was missing (deleted by hand?): created it again"


def dumps(doc: Any) -> bytes:
    """Compact, so that a record or follow-up is about as large as its content."""
    return encode(doc)


class Repository:
    """A repository directory shared by every worker that mounts it."""

    def __init__(self, root: Path, *, fsync: bool = True, worker: str | None = None) -> None:
        self.root = root
        self.inbox = root / "inbox"
        self.running = root / "running"
        self.done = root / "done"
        self.failed = root / "failed"
        self.invalid = root / "invalid"
        self.tmp = root / "tmp"
        self.workers = root / "workers"
        self.locks = root / "locks"
        self.heartbeats = root / "heartbeats"
        self.logs = root / "logs"
        self.reports = root / "reports"
        self.ids = root / "ids"
        self.durability = Durability(root, enabled=fsync)
        #: Finished claims' files, rewritten as the next staged files (see ``Spares``): a worker's only.
        self.spares = Spares(os.fspath(self.tmp), worker)
        # The hot path joins plain strings: pathlib costs more than the system calls it wraps.
        self._inbox, self._running, self._done, self._failed, self._ids, self._attempt_logs = (
            os.fspath(d)
            for d in (self.inbox, self.running, self.done, self.failed, self.ids, self.logs / "activities")
        )

    # -- layout ------------------------------------------------------------------------------

    @staticmethod
    def create(root: Path, properties_text: str) -> list[Path]:
        """Create whatever of the layout is missing; never overwrite. Returns what was created."""
        created: list[Path] = []
        for name in (".", *STATE_DIRS, *SUPPORT_DIRS):
            path = (root / name).resolve() if name == "." else root / name
            if not path.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                created.append(path)
        properties = root / PROPERTIES_FILE
        if os.path.islink(properties) and not properties.exists():
            raise FileExistsError(errno.EEXIST, "it is a symbolic link to a missing file", str(properties))
        if not properties.exists():
            repo = Repository(root)
            publish(
                properties_text.encode("latin-1", "backslashreplace"),
                repo.temp_path("init"),
                properties,
                repo.durability,
            )
            created.append(properties)
        return created

    def check(self) -> None:
        linked = [d for d in (*STATE_DIRS, *_WRITTEN) if (self.root / d).is_symlink()]
        if linked:  # through a link, a worker would move and write files of wherever it points (/etc)
            raise NotARepository(
                f"{self.root / linked[0]} is a symbolic link: the folders spoolpipe moves files between and "
                "writes must be the repository's own; put a folder in its place"
            )
        missing = [d for d in (*STATE_DIRS, *SUPPORT_DIRS) if not (self.root / d).is_dir()]
        in_the_way = [d for d in missing if os.path.lexists(self.root / d)]
        if in_the_way:  # init would not replace it either
            raise NotARepository(
                f"{self.root / in_the_way[0]} is not a folder: move it out of the way, then run: "
                f"spoolpipe init {self.root}"
            )
        if missing == ["ids"]:  # added in 0.2: a repository made before lacks only this
            self.ids.mkdir(exist_ok=True)
            missing = []
        if missing:
            raise NotARepository(
                f"{self.root} is not a spoolpipe repository (missing {', '.join(missing)}); "
                f"run: spoolpipe init {self.root}"
            )

    def temp_path(self, tag: str) -> Path:
        """A fresh name in ``tmp/``, on the same file system as every state directory."""
        return self.tmp / f"{tag}.{new_id()}.tmp"

    def attempt_log(self, activity: Activity) -> str:
        return f"{self._attempt_logs}/{attempt_log_name(activity.id, activity.attempt)}"

    # -- writing new activities ----------------------------------------------------------------

    def where(self, activity_id: str, *, besides: str = "") -> str | None:
        """Where a copy of this id is, as ``DIR/NAME`` (``besides``, one such, not counted), if anywhere.

        Looks at the names spoolpipe gives an id; a file a person dropped under
        another name is known only once a worker claims it.
        """
        for directory in (self.done, self.failed):
            if os.path.lexists(directory / f"{activity_id}.json"):
                found = f"{directory.name}/{activity_id}.json"
                if found != besides:
                    return found
        for directory in (self.running, self.inbox):
            with os.scandir(directory) as entries:
                for e in entries:
                    found = f"{directory.name}/{e.name}"
                    if found != besides and (
                        e.name == f"{activity_id}.json" or e.name.startswith(f"{activity_id}~")
                    ):
                        return found
        if os.path.lexists(self.ids / activity_id):
            return f"ids/{activity_id} (a copy being moved)"
        return None

    def submit(self, activity: Activity) -> Path:
        """Publish a new activity into the inbox, atomically and durably, if its id is free.

        The id is reserved first, as for a schedule's tick (``publish_once``): of any number of
        submits of one id at once, from any machine, under any priority, exactly one publishes.
        """
        where = self.where(activity.id)
        if where is None:
            clock = lambda: filesystem_now(self.tmp / ".clock-submit")  # noqa: E731 - read only if needed
            if self.publish_once(activity, clock) == "published":
                return self.inbox / new_name(activity.id, activity.priority)
            where = self.where(activity.id) or f"ids/{activity.id}"
        raise FileExistsError(f"an activity with id {activity.id} already exists: {where}")

    def _publish_new(self, activity: Activity, tag: str, besides: str) -> Path:
        """Publish ``inbox/ID.json`` (``ID~pP.json``) if the id is free but for ``besides``: the rule of
        submit and retry."""
        where = self.where(activity.id, besides=besides)
        if where is not None:
            raise FileExistsError(f"an activity with id {activity.id} already exists: {where}")
        final = self.inbox / new_name(activity.id, activity.priority)
        try:
            publish(dumps(activity.to_json()), self.temp_path(tag), final, self.durability)
        except FileExistsError:
            raise FileExistsError(
                f"an activity with id {activity.id} already exists: inbox/{final.name}"
            ) from None
        return final

    def publish_once(
        self, activity: Activity, now: float | Callable[[], float]
    ) -> Literal["published", "taken", "busy"]:
        """Publish ``inbox/ID.json`` (``ID~pP.json``) unless the id is taken: of any number of callers
        for one id (workers firing a schedule's tick, submits), at most one ever does.

        The id is reserved before the file is published: ``ids/ID`` is linked to the file, still
        in ``tmp/`` (the exclusive step a claim makes), then the file is renamed into the inbox;
        a claim of it finds the reservation its own. ``taken``: the id is held or has a record;
        ``busy``: it is reserved but no copy can be seen yet, try again later. A reservation whose
        file a dead caller left in ``tmp/`` is dropped, with that file, once it is 60 s old by
        ``now`` (the shared clock; a callable is called only when a reservation is found).
        """
        tmp = self.temp_path(_PUBLISH_ONCE)
        marker = f"{self._ids}/{activity.id}"
        write_file(tmp, dumps(activity.to_json()), self.durability)
        try:
            self.durability.barrier()
            for _ in range(2):
                try:
                    os.link(tmp, marker, follow_symlinks=False)
                    break
                except FileNotFoundError:
                    if not self.restore(self.ids):  # deleted by hand: made again, as init would
                        raise
                except FileExistsError:
                    where = self.where(activity.id)
                    if where is not None and not where.startswith("ids/"):
                        return "taken"
                    held = _lstat(marker)
                    moment = now() if callable(now) else now
                    if held is None or not self._drop_orphan(activity.id, held, moment):
                        return "busy"
            else:
                return "busy"
            self.durability.changed(self._ids)
            mine = os.lstat(tmp)
            for directory in (self._done, self._failed):
                if os.path.lexists(f"{directory}/{activity.id}.json"):
                    self.release_id(activity.id, mine)
                    return "taken"
            final = self.inbox / new_name(activity.id, activity.priority)
            try:
                move_noreplace(tmp, final)
            except FileExistsError:  # a copy that holds no reservation (a person's file)
                self.release_id(activity.id, mine)
                return "taken"
            self.durability.renamed(final)
            self.durability.barrier()
            return "published"
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _drop_orphan(self, activity_id: str, held: os.stat_result, now: float) -> bool:
        """Drop a reservation ``publish_once`` left on its temp file (or on nothing) when its caller
        died before publishing; False when ``held`` is not such a one (or not 60 s old yet)."""
        if now - held.st_ctime <= _STALE_QUARANTINE_SECONDS:
            return False
        if held.st_nlink > 1:
            with os.scandir(self.tmp) as entries:
                orphan = next(
                    (
                        e.path
                        for e in entries
                        if e.name.startswith(_PUBLISH_ONCE + ".")
                        and (st := _lstat(e.path)) is not None
                        and os.path.samestat(st, held)
                    ),
                    None,
                )
            if orphan is None:
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(orphan)
        self.release_id(activity_id, held)
        return True

    # -- intake --------------------------------------------------------------------------------

    def inbox_entries(self) -> dict[str, int]:
        """The inbox's names, each with its inode as the listing gives it (no ``stat``); never those of
        a folder a link in the inbox's place points to (``NotADirectoryError``: see ``open_folder``)."""
        fd = open_folder(self._inbox)
        try:
            with os.scandir(fd) as entries:
                return {e.name: e.inode() for e in entries if not is_ignored(e.name)}
        finally:
            os.close(fd)

    def read(self, name: str, *, limit: int) -> Found | Rejected | None:
        """Read an inbox entry without following links or blocking on FIFOs; ``None`` if it is gone."""
        path = f"{self._inbox}/{name}"
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return Rejected(f"{name} is {kind_of(st.st_mode)}, not an activity file")
        if st.st_size > limit:
            return Rejected(f"{name} is {st.st_size} bytes, over limits.activity-bytes={limit}")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return Rejected(f"{name} is a symbolic link (links are never followed)")
            if exc.errno in _TRANSIENT:
                return None
            return Rejected(f"{name} cannot be read: {exc.strerror}", _stamp(st))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return Rejected(f"{name} is {kind_of(st.st_mode)}, not an activity file")
            chunks: list[bytes] = []
            size = 0
            want = min(st.st_size, limit) + 1  # one read for a whole file; a short read is its end
            while size <= limit:
                chunk = os.read(fd, min(want, limit + 1 - size))
                chunks.append(chunk)
                size += len(chunk)
                if len(chunk) < want:
                    break
                want = 1 << 16
        except OSError as exc:
            if exc.errno in _TRANSIENT:
                return None
            return Rejected(f"{name} cannot be read: {exc.strerror}", _stamp(st))
        finally:
            os.close(fd)
        if size > limit:
            return Rejected(f"{name} is over limits.activity-bytes={limit} bytes")
        try:
            return Found(parse_activity(b"".join(chunks), name), _stamp(st))
        except InvalidActivity as exc:
            return Rejected(f"{name}: {exc.reason}", _stamp(st))

    def quarantine(
        self, directory: Path, name: str, reason: str, *, original: str | None = None
    ) -> Path | None:
        """Move ``directory/name`` (of any kind) into ``invalid/`` with a reason; ``None`` if it was gone.

        ``reason`` should name the entry; it is written escaped, on one line. Any name the
        file system accepts fits: the entry keeps its name, or ``original`` (the name of a
        claimed file in the inbox), so that moving it back to the inbox restores it
        (``reason.txt`` becomes ``reason.txt~entry``), inside ``invalid/NAME~TOKEN/``, whose
        ``NAME`` is shortened.
        All or nothing: if a step fails, the entry is put back where it was and the staging
        folder removed before the error is raised, so nothing hides in ``tmp/``.
        """
        token = new_id()
        source = directory / name
        kept = name if original is None else original
        staging = self.tmp / f"{_QUARANTINE_PREFIX}{token}"
        staged = staging / (_REASON_NAMESAKE if kept == _REASON else kept)
        staging.mkdir()
        moved = False
        try:
            write_file(staging / _REASON, (printable(reason.rstrip()) + "\n").encode(), self.durability)
            moved = take(source, staged)
        finally:
            if not moved:
                shutil.rmtree(staging, ignore_errors=True)
        if not moved:
            return None
        final = self.invalid / invalid_entry_name(kept, token)
        try:
            self.durability.renamed(source, staged)
            self.durability.barrier()
            move_noreplace(staging, final)
        except BaseException:
            self._put_back(staged, source)
            raise
        self.durability.renamed(staging, final)
        self.durability.barrier()
        return final

    def _put_back(self, staged: Path, source: Path) -> None:
        """Undo a quarantine's move, never over something new at ``source`` (``sweep_tmp`` recovers that)."""
        try:
            if not take(staged, source):
                return
        except FileExistsError:
            return
        self.durability.renamed(staged, source)
        shutil.rmtree(staged.parent, ignore_errors=True)

    def claim(self, name: str, activity: Activity, worker: str) -> ClaimName | None:
        """Take an inbox entry for ``worker``; ``None`` if another worker took it first.

        Also ``None`` while this worker already holds a claim of the same id and
        attempt (another copy): it is left in the inbox until that claim is settled.
        Whether the file taken is the one ``activity`` was read from, ``reserve`` checks.
        """
        claim = ClaimName(activity.id, activity.attempt, worker)
        try:
            if not take(f"{self._inbox}/{name}", f"{self._running}/{claim.name}"):
                return None
        except FileExistsError:
            return None
        self.durability.changed(self._inbox, self._running)
        return claim

    def put_back(self, claim: ClaimName, name: str) -> bool:
        """Move an untouched claim back to ``inbox/name``; False if another file has that name now."""
        try:
            move_noreplace(f"{self._running}/{claim.name}", f"{self._inbox}/{name}")
        except FileExistsError:
            return False
        self.durability.changed(self._inbox, self._running)
        return True

    def reserve(
        self, claim: ClaimName, activity: Activity, name: str, now: float, *, stamp: Stamp | None = None
    ) -> Duplicate | Busy | Literal["changed"] | None:
        """Make the claim's id its own: ``None`` if it is; :class:`Duplicate` if another copy holds it;
        :class:`Busy` if the id is held but no other copy can be seen (yet): try again later.

        First, with the ``stamp`` of the file ``activity`` was read from: ``"changed"``
        when the claim took another file (renamed over or rewritten since it was read),
        nothing reserved; the caller puts it back (``put_back``) to be read again.

        ``ids/ID`` is a hard link to the one file that holds the id (claims,
        retries and releases are renames, so the link follows it); creating it
        is what makes an id exclusive across workers and machines. A file with
        more names than that (a hard-linked copy) is first replaced by a private
        copy of itself, so that each copy competes on its own. A copy is called a
        duplicate only once the other copy is seen (client caches of a network
        file system may hide a file for a while); a duplicate's reservation is
        given up before the caller quarantines it. ``now``: the shared clock.
        """
        path = f"{self._running}/{claim.name}"
        marker = f"{self._ids}/{claim.activity_id}"
        st = os.lstat(path)
        if stamp is not None and _stamp(st) != stamp:
            return "changed"
        if st.st_nlink > 1:  # its reservation, made at an earlier claim of this copy, or another copy
            if _same(marker, st):
                return None
            st = self._detach(path)
        for _ in range(2):
            try:
                os.link(path, marker, follow_symlinks=False)
                break
            except FileExistsError:
                held = _lstat(marker)
                if held is not None and os.path.samestat(held, st):
                    return None  # ours after all: a stale cache hid the link count
                if (
                    held is not None
                    and held.st_nlink == 1
                    and now - held.st_ctime > _STALE_QUARANTINE_SECONDS
                ):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(marker)  # left without its file by a crash: see _sweep_ids
                    continue
                other = self._other_copy(claim, st)
                if other is None:
                    return Busy(
                        f"id {claim.activity_id} is reserved (ids/{claim.activity_id}) "
                        "but no other copy of it can be seen yet"
                    )
                return Duplicate(f"{name}: duplicate id {claim.activity_id}: another copy is {other}")
        else:
            return Busy(f"id {claim.activity_id} could not be reserved")
        self.durability.changed(self._ids)
        settled = self._settled_copy(activity)
        if settled is None:
            return None
        self.release_id(claim.activity_id, st)
        return Duplicate(f"{name}: duplicate id {claim.activity_id}: {settled}")

    def restore(self, folder: Path) -> bool:
        """Create a folder of the layout again, as ``init`` would, if it is gone (deleted by hand):
        True if it was; False when anything is there, even a file in its way, and when ``running/``
        is gone too: then the repository itself is away (its mount gone), and nothing of it is made
        on the disk beneath."""
        if not restore_folder(folder, Path(self._running)):
            return False
        self.durability.changed(str(self.root))
        return True

    def _other_copy(self, claim: ClaimName, mine: os.stat_result) -> str | None:
        """Where another file with this claim's id is, checked to exist and to be another file."""
        where = self.where(claim.activity_id, besides=f"running/{claim.name}")
        if where is None or where.startswith("ids/"):
            return None
        found = _lstat(self.root / where)
        if found is None or os.path.samestat(found, mine):
            return None
        return where

    def _settled_copy(self, activity: Activity) -> str | None:
        """What makes an id taken though no live copy holds it: its record in done/ or failed/.

        A failed record this activity was retried from (``spoolpipe retry``) is not
        a duplicate: its history ends with that record, which is then dropped.
        """
        record = f"{activity.id}.json"
        if os.path.lexists(f"{self._done}/{record}"):
            return f"done/{record} exists"
        path = f"{self._failed}/{record}"
        if not os.path.lexists(path):
            return None
        try:
            failed = json.loads(read_regular(path, RECORD_BYTES)[0])
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # a FIFO, a link...: still an id taken
            failed = None
        if (
            activity.history
            and isinstance(failed, dict)
            and _finished_at(failed) == _finished_at({"spoolpipe": activity.history[-1]})
        ):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            self.durability.changed(self._failed)
            return None
        return f"failed/{record} exists (spoolpipe retry REPO {activity.id} runs it again)"

    def _detach(self, path: str) -> os.stat_result:
        """Give a claim a file of its own: a copy of its bytes replaces this one name of a shared file."""
        tmp = self.temp_path("detach")
        write_file(tmp, Path(path).read_bytes(), self.durability)
        self.durability.barrier()
        os.replace(tmp, path)  # replaces only a name: the shared file lives on under its other names
        self.durability.renamed(path)
        return os.lstat(path)

    def release_id(self, activity_id: str, holder: os.stat_result) -> None:
        """Give up the id reservation, if ``holder`` (the file it was made for) still has it."""
        marker = f"{self._ids}/{activity_id}"
        if _same(marker, holder):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(marker)
            self.durability.changed(self._ids)

    # -- running -------------------------------------------------------------------------------

    def claims(self) -> Iterator[ClaimName]:
        """Every claim in ``running/``, committed or not, including staged files left without a claim."""
        seen: set[ClaimName] = set()
        for parsed in self._running_names():
            if parsed.claim not in seen:
                seen.add(parsed.claim)
                yield parsed.claim

    def _running_names(self) -> list[RunningName]:
        with os.scandir(self.running) as entries:
            names = [e.name for e in entries]
        return [parsed for parsed in map(parse_running_name, names) if parsed is not None]

    def _staged(self, claim: ClaimName, listing: Listing | None = None) -> list[RunningName]:
        """The files staged for ``claim`` (its ``~committed`` mark included), as found in ``running/``
        now, or in ``listing`` (:meth:`staged_files`, when nothing else moves them meanwhile)."""
        if listing is not None:
            return listing.get(claim, [])
        return [p for p in self._running_names() if p.claim == claim and p.kind is not None]

    def staged_files(self) -> Listing:
        """Every claim's staged files, from one listing of ``running/``: settling many claims lists it
        once, not twice per claim (20,000 claims of a dead worker took half an hour)."""
        listing: Listing = {}
        for parsed in self._running_names():
            if parsed.kind is not None:
                listing.setdefault(parsed.claim, []).append(parsed)
        return listing

    def settle(self, batch: Sequence[Settlement]) -> list[Settled]:
        """Commit a batch of outcomes: stage all, one barrier, commit all, publish all (``finish``).

        One ``Settled`` per settlement, in order. A claim whose stage or barrier failed
        keeps nothing staged and stays in ``running/``; one that was fenced publishes nothing.
        """
        settled: dict[int, Settled] = {}
        staged: list[tuple[int, Staged]] = []
        for index, item in enumerate(batch):
            try:
                staged.append((index, self.stage(item.claim, item.outcome, item.record, item.follow_ups)))
            except Exception as exc:  # OSError: a write failed; anything else: the outcome cannot be encoded
                settled[index] = Settled(item, "unwritten", exc)
        try:
            self.durability.barrier()
        except OSError as exc:
            for index, files in staged:
                self.discard(files.claim)
                settled[index] = Settled(batch[index], "unwritten", exc)
            staged = []
        committed: dict[ClaimName, int] = {}
        for index, files in staged:
            if self.commit(files.claim):
                committed[files.claim] = index
                settled[index] = Settled(batch[index], "committed")
            else:
                settled[index] = Settled(batch[index], "lost")
        for claim, unpublished, restored in self.finish(
            [files for _, files in staged if files.claim in committed]
        ):
            settled[committed[claim]] = Settled(batch[committed[claim]], "committed", unpublished, restored)
        return [settled[index] for index in range(len(batch))]

    def stage(
        self, claim: ClaimName, outcome: OutcomeKind, record: Any, follow_ups: Iterable[Mapping[str, Any]]
    ) -> Staged:
        """Write a claim's outcome record and follow-ups where only a commit will make them visible.

        Durable after the next barrier; ``commit`` must come after that barrier. On any
        failure nothing stays staged for the claim.
        """
        ids: list[str] = []
        try:
            for doc in follow_ups:
                stem = doc["id"] + priority_mark(doc.get("priority", DEFAULT_PRIORITY))
                name = claim.staged("follow-up", stem)
                self.spares.write(f"{self._running}/{name}", dumps(doc), self.durability)
                ids.append(stem)
            self.spares.write(f"{self._running}/{claim.staged(outcome)}", dumps(record), self.durability)
        except BaseException:
            self.discard(claim)
            raise
        return Staged(claim, outcome, tuple(ids))

    def discard(self, claim: ClaimName, listing: Listing | None = None) -> None:
        """Delete whatever was staged for an uncommitted claim."""
        for parsed in self._staged(claim, listing):
            if parsed.kind != "committed":
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self._running}/{parsed.name}")

    def commit(self, claim: ClaimName) -> bool:
        """The commit point: a staged claim becomes its outcome. False when the claim was lost (fenced)."""
        committed = f"{self._running}/{claim.staged('committed')}"
        # Already committed (a retried commit) counts as committed: the mark has a single writer.
        if not take(f"{self._running}/{claim.name}", committed) and not os.path.lexists(committed):
            self.discard(claim)
            return False
        self.durability.changed(self._running)
        return True

    def finish(self, staged: Iterable[Staged]) -> list[tuple[ClaimName, OSError | None, tuple[str, ...]]]:
        """Publish committed claims' follow-ups, then their records; idempotent: anyone may complete them.

        Once all is flushed, the id reservation goes if it is still this claim's file (the
        ``~committed`` one), then the ``~committed`` mark (kept as a spare file): in that order, a
        finisher killed between the two leaves the mark, and whoever finishes the claim next
        removes both. A folder to publish into that was deleted by hand is made again, as ``init``
        would. A claim a file of which cannot be moved all the same (a file in its folder's place,
        say) keeps its mark and what is left staged, for a later finish. Returned: each claim that
        is left so, with the error, or for which a folder was made again, with its name.
        """
        finished: list[ClaimName] = []
        noted: list[tuple[ClaimName, OSError | None, tuple[str, ...]]] = []
        folders = _Folders()
        try:
            for item in staged:
                claim = item.claim
                records = self._done if item.outcome == "done" else self._failed
                restored: list[str] = []
                try:
                    for follow_up in item.follow_ups:
                        self._publish_staged(
                            claim.staged("follow-up", follow_up),
                            self._inbox,
                            f"{follow_up}.json",
                            restored,
                            folders,
                        )
                    self._publish_staged(
                        claim.staged(item.outcome), records, f"{claim.activity_id}.json", restored, folders
                    )
                except OSError as exc:
                    noted.append((claim, exc, tuple(restored)))
                    continue
                finished.append(claim)
                if restored:
                    noted.append((claim, None, tuple(restored)))
        finally:
            folders.close()
        self.durability.barrier()
        for claim in finished:
            committed = f"{self._running}/{claim.staged('committed')}"
            with contextlib.suppress(FileNotFoundError):
                self.release_id(claim.activity_id, os.lstat(committed))
                self.spares.keep(committed)
        return noted

    def _publish_staged(
        self, name: str, directory: str, target: str, restored: list[str], folders: _Folders
    ) -> None:
        """Move a committed claim's staged file to where it is seen; an existing file is never replaced.

        A ``directory`` deleted by hand is made again first (its name joins ``restored``); with
        something else in its place (a file, a symbolic link: never followed), ``FileNotFoundError``
        or ``NotADirectoryError``: the file stays staged.
        """
        source = f"{self._running}/{name}"
        try:
            try:
                move_noreplace(source, target, target_dir=folders.open(directory))
            except FileNotFoundError:
                if not os.path.lexists(source):
                    raise
                # Its folder is gone (deleted, moved away), not the repository: the file is in running/.
                if self.restore(Path(directory)):
                    restored.append(os.path.basename(directory))
                move_noreplace(source, target, target_dir=folders.open(directory, again=True))
        except FileNotFoundError:
            if os.path.lexists(source):
                raise  # never treat it as published unless it moved
            return  # published by an earlier finish
        except FileExistsError:
            self.quarantine(
                self.running,
                name,
                f"{name}: not published: {os.path.basename(directory)}/{target} already exists "
                "(a file with this id was put there by something other than this activity's commit)",
            )
            return
        self.durability.changed(directory)

    def release(
        self, claim: ClaimName, attempt: int, not_before: float | None, priority: int | None = None
    ) -> bool:
        """Put a claim back into the inbox as ``attempt``; False when it was no longer there.

        ``priority`` goes into the name; ``None``: read it from the claim (recovery knows only names).
        """
        source = self.running / claim.name
        if priority is None:
            priority = _claim_priority(source)
        target = self.inbox / queued_name(claim.activity_id, attempt, not_before, priority)
        if not take(source, target):
            return False
        self.durability.renamed(source, target)
        return True

    def claim_state(self, claim: ClaimName) -> Literal["absent", "claimed", "committed"]:
        """Whether the claim is there, and whether it was committed (its outcome awaits publication)."""
        if os.path.lexists(f"{self._running}/{claim.staged('committed')}"):
            return "committed"
        return "claimed" if os.path.lexists(self.running / claim.name) else "absent"

    def _committed(self, claim: ClaimName, listing: Listing | None = None) -> Staged | None:
        """What a committed claim has left to publish; None if it is not committed."""
        staged = self._staged(claim, listing)
        if not any(p.kind == "committed" for p in staged):
            return None
        outcomes = [o for o in OUTCOMES if any(p.kind == o for p in staged)]
        follow_ups = tuple(p.follow_up for p in staged if p.kind == "follow-up")
        return Staged(claim, outcomes[0] if outcomes else "done", follow_ups)

    def recover(self, claim: ClaimName, listing: Listing | None = None) -> str:
        """Settle the claim of a dead worker: finish it if committed, else requeue it as the next attempt.

        A requeue is durable after the next barrier (the caller's, once for many claims: one
        flush per claim made recovering 30,000 take 11 s); until then a crash leaves the claim
        where it was, to be recovered again. ``listing`` (:meth:`staged_files`) saves listing
        ``running/`` for each of many claims."""
        for _ in range(2):
            committed = self._committed(claim, listing)
            if committed is not None:
                for _, exc, _ in self.finish([committed]):
                    if exc is not None:
                        raise exc  # left committed: the next recovery finishes it
                return "finished"
            if self.release(claim, claim.attempt + 1, None):
                self.discard(claim, listing)
                return "requeued"
            listing = None  # it moved meanwhile: look again
        self.discard(claim)
        return "gone"

    # -- upkeep --------------------------------------------------------------------------------

    def drop_spares(self, worker: str) -> None:
        """Delete the spare files of ``worker``, none of whose processes runs (its lock is held)."""
        Spares.drop_left_by(os.fspath(self.tmp), worker)

    def sweep_tmp(self, now: float) -> None:
        """Finish quarantines a crash interrupted and drop temp files nobody will rename any more.

        Upkeep: a folder deleted by hand is skipped (made again by whoever needs it next)."""
        try:
            with os.scandir(self.tmp) as entries:
                stale = [e for e in entries]
        except (FileNotFoundError, NotADirectoryError):
            stale = []
        for entry in stale:
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            if entry.name.startswith(_QUARANTINE_PREFIX) and entry.is_dir(follow_symlinks=False):
                if age < _STALE_QUARANTINE_SECONDS:
                    continue
                if set(os.listdir(entry.path)) - {_REASON}:
                    token = entry.name[len(_QUARANTINE_PREFIX) :]
                    with contextlib.suppress(OSError):  # upkeep: the next start tries again
                        move_noreplace(Path(entry.path), self.invalid / f"recovered~{token}")
                else:
                    shutil.rmtree(entry.path, ignore_errors=True)
            elif age > _STALE_TMP_SECONDS:
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.unlink(entry.path)
        self._sweep_reports(now)
        self._sweep_ids(now)

    def _sweep_reports(self, now: float) -> None:
        """Drop the hidden temp files (``.ID.txt.RANDOM.tmp``) of report writers killed half-way."""
        try:
            with os.scandir(self.reports) as entries:
                stale = [e for e in entries if e.name.startswith(".") and e.name.endswith(".tmp")]
        except (FileNotFoundError, NotADirectoryError):  # made again by the next report
            return
        for entry in stale:
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and now - st.st_mtime > _STALE_TMP_SECONDS:
                    os.unlink(entry.path)

    def _sweep_ids(self, now: float) -> None:
        """Drop reservations left without their file (only the marker's own name is left).

        Only a crash between a record's publication and the reservation's removal
        leaves one (or a person deleting files by hand). Judged at each heartbeat and by
        age, as client caches may show a link count late.
        """
        with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(self.ids) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat(follow_symlinks=False)
                    if st.st_nlink == 1 and now - st.st_ctime > _STALE_QUARANTINE_SECONDS:
                        os.unlink(entry.path)

    def retry_failed(self, activity_id: str, limit: int | None = None) -> Path:
        """Queue a failed activity's own document again as a first attempt; the record joins its history.

        The new file is published before the record is dropped; a worker that
        claims it meanwhile recognises the record as the one it was retried from.
        ``limit`` (``limits.activity-bytes``): a document larger than a worker reads is refused.
        """
        source = self.failed / f"{activity_id}.json"
        raw, read = _read_record(source)
        activity = retried_activity(parse_document(raw))
        if activity.id != activity_id:
            raise InvalidActivity(f"its id is {activity.id!r}, not the {activity_id!r} its name says")
        size = len(dumps(activity.to_json()))
        if limit is not None and size > limit:
            raise InvalidActivity(
                f"the activity would be {size} bytes (with its spoolpipe.history), "
                f"over limits.activity-bytes={limit}: a worker would quarantine it"
            )
        published = self._publish_new(activity, "retry", f"failed/{source.name}")
        self._drop_retried(source, read)
        self.durability.barrier()
        return published

    def _drop_retried(self, source: Path, read: os.stat_result) -> None:
        """Drop the record ``retry_failed`` read, and only that one: a worker may have run the published
        activity meanwhile and failed it again, deleting this record and writing its own under the name.
        Moved aside first, so that what is judged is what goes."""
        aside = self.temp_path("retried")
        try:
            os.rename(source, aside)
        except FileNotFoundError:  # the worker that claimed the copy dropped it already
            return
        self.durability.renamed(source)
        if _stamp(os.lstat(aside)) == _stamp(read):  # not only the inode: a freed one is soon reused
            os.unlink(aside)
        else:  # the new run's record: back where it was (nothing else writes that name meanwhile)
            move_noreplace(aside, source)

    def count(self, directory: Path) -> int:
        with os.scandir(directory) as entries:
            return sum(1 for e in entries if not is_ignored(e.name))


#: Largest record ``retry`` reads: an activity's data and a traceback, each bounded, and its history.
RECORD_BYTES = 64 << 20


#: Staged files by claim, from one listing of ``running/``.
Listing = dict[ClaimName, list[RunningName]]


def _read_record(path: Path) -> tuple[bytes, os.stat_result]:
    """A record file's bytes and the file's status: InvalidActivity says why it is not a record file."""
    try:
        return read_regular(path, RECORD_BYTES)
    except NotARegularFile as exc:
        raise InvalidActivity(f"it {exc.strerror}") from None


def _claim_priority(path: Path) -> int:
    """The priority a claim's document asks for; the default if it cannot be read (it moves as it is)."""
    try:
        return document_priority(parse_document(read_regular(path, RECORD_BYTES)[0]))
    except (OSError, InvalidActivity):
        return DEFAULT_PRIORITY


def _lstat(path: str | Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def restore_folder(folder: Path, running: Path) -> bool:
    """The rule of :meth:`Repository.restore`, for those that hold no ``Repository`` (processors)."""
    if os.path.lexists(folder) or not os.path.isdir(running):
        return False
    try:
        os.mkdir(folder)
    except FileExistsError:  # made meanwhile, by another process
        return False
    return True


def open_folder(path: str) -> int:
    """A descriptor of the folder ``path``, never of where a symbolic link in its place points
    (``NotADirectoryError`` then, naming it): moves into it go nowhere else."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:  # ENOTDIR (a link to a folder) or ELOOP (to anything else)
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP) or not os.path.islink(path):
            raise
        raise NotADirectoryError(
            errno.ENOTDIR, f"{path} is a symbolic link, not a folder: spoolpipe does not follow it"
        ) from None


class _Folders:
    """The folders one ``finish`` publishes into, each opened once (``open_folder``)."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def open(self, path: str, *, again: bool = False) -> int:
        """``again``: the folder was made again since it was opened (the old one is gone)."""
        if again and path in self._fds:
            os.close(self._fds.pop(path))
        if path not in self._fds:
            self._fds[path] = open_folder(path)
        return self._fds[path]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _same(path: str, st: os.stat_result) -> bool:
    try:
        return os.path.samestat(os.lstat(path), st)
    except FileNotFoundError:
        return False


def _finished_at(record: dict[str, Any]) -> object:
    section = record.get("spoolpipe")
    return section.get("finished_at") if isinstance(section, dict) else None


def filesystem_now(probe: Path) -> float:
    """The shared file system's idea of now: the mtime it gives a file we just touched."""
    fd = open_own(probe)
    try:
        # Some file systems (GlusterFS's ctime) stamp a new file with the creating client's clock;
        # only a "set to now" takes the server's.
        os.utime(fd, None)
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)


_CLOCK_GRAIN = 0.02
#: A wall clock that moved this much more (or less) than the monotonic one since the offset was last
#: right was stepped (in one step or in several small ones).
_CLOCK_STEP = 0.5


class SharedClock:
    """Local time corrected to the shared file system's clock, re-probed every ``refresh`` seconds.

    A step of the local clock (NTP, a resumed VM) is noticed at the next call, as the wall clock
    moving apart from the monotonic one since the offset was last right (small steps add up): the
    offset is probed again at once (corrected by that step if the probe fails), so that nothing
    waiting for a time starts early or stalls for the step.
    """

    def __init__(self, probe: Path, refresh: float = 30.0) -> None:
        self._probe = probe
        self._refresh = refresh
        self._offset = 0.0
        self._probed_at = -refresh
        # (monotonic, wall) when the offset was last right: steps since then add up, however small.
        self._anchor: tuple[float, float] | None = None

    def now(self) -> float:
        local, wall = time.monotonic(), time.time()
        if self._anchor is None:
            self._anchor = (local, wall)
        step = (wall - self._anchor[1]) - (local - self._anchor[0])
        if abs(step) > _CLOCK_STEP:
            self._offset -= step
            self._anchor = (local, wall)
            self._probed_at = -self._refresh
        if local - self._probed_at >= self._refresh:
            with contextlib.suppress(OSError):
                offset = filesystem_now(self._probe) - time.time()
                # File times come from a coarse kernel clock (a tick, a few ms): an offset that small
                # is that coarseness, not another clock, and would make a delay end a little early.
                self._offset = offset if abs(offset) > _CLOCK_GRAIN else 0.0
                self._probed_at = local
                self._anchor = (local, wall)
        return wall + self._offset
