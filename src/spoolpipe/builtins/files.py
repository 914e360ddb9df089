"""``files.move``, ``files.copy``, ``files.delete``, ``files.archive``: file chores inside ``files.roots``.

Every path in the data goes through ``spoolpipe.confine`` (the rules of
``images.roots``: relative paths start at the first root, ``..`` is refused,
symbolic links are resolved before the check). Each folder is then opened
from its root down, one name at a time, without following links, and every
file is created, read, renamed and removed through that descriptor: a folder
swapped for a link after the check cannot lead a write outside the roots. New
files are written under a temporary name beside the target (the activity's id
in it, so that a later attempt removes what a killed one left), flushed, then
renamed into place without replacing anything (unless the data says
``"replace": true``); directories are flushed after each change. ``zipfile``
and ``tarfile`` are imported only by ``files.archive``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from logging import Logger
from pathlib import Path
from typing import IO, Literal

from .. import confine
from ..activity import Activity
from ..config import Settings, parse_duration
from ..durable import fsync_directory, move_noreplace, temp_beside
from ..processor import Context, Fatal, processor

MOVE, COPY, DELETE, ARCHIVE = "files.move", "files.copy", "files.delete", "files.archive"
_LABEL = "file roots"
#: Names of archived files (and of kept ones) listed in the result of ``files.archive``: at most this many.
LISTED_NAMES = 1000
#: Opening a folder to act in: ``O_PATH`` needs only the right to enter it (``x``), as ``cp`` and ``mv`` do.
_FOLDER_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Opening a file to read: never through a link, never blocking on a FIFO swapped in.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

ArchiveFormat = Literal["zip", "tar.gz"]
_ZIP_EPOCH = 315576000.0  # 1980-01-01 12:00 UTC: within the 1980 a zip can hold, read in any time zone
_SUFFIXES: dict[str, ArchiveFormat] = {".zip": "zip", ".tar.gz": "tar.gz", ".tgz": "tar.gz"}


def _roots(settings: Settings) -> tuple[Path, ...]:
    """``files.roots`` as real paths, a missing one as configured: only a path in it fails (it names it)."""
    if not settings.files_roots:
        raise Fatal("no file roots configured: set files.roots in spoolpipe.properties")
    roots: list[Path] = []
    for root in settings.files_roots:
        try:
            roots.append(*confine.real_roots([root], _LABEL))
        except ValueError:
            roots.append(Path(os.path.abspath(root)))
    return tuple(roots)


def _rejected(data: dict[str, object], field: str, roots: tuple[Path, ...], exc: Exception) -> Fatal:
    """Why ``data[field]`` cannot be used: its root is missing, or what confinement said."""
    with contextlib.suppress(confine.PathRejected):
        _, lexical = confine.candidate(data.get(field), roots)
        for root in roots:
            if lexical.is_relative_to(root) and not root.is_dir():
                return Fatal(f"data.{field}: file root {root} does not exist (check files.roots)")
    return Fatal(f"data.{field}: {exc}")


def _existing(data: dict[str, object], field: str, roots: tuple[Path, ...], kind: str = "file") -> Path:
    """The real path of ``data[field]``; a file named with a trailing / (a folder's name) is refused."""
    value = data.get(field)
    try:
        path = confine.existing(value, roots, "folder" if kind == "folder" else "file", _LABEL)
    except confine.PathRejected as exc:
        raise _rejected(data, field, roots, exc) from None
    if kind == "file" and isinstance(value, str) and value.endswith("/"):
        raise Fatal(f"data.{field}: {value!r} is not a folder")
    return path


def _not_a_link(data: dict[str, object], field: str, roots: tuple[Path, ...]) -> None:
    """Refuse a path that is itself a symbolic link: moving or deleting it would act on what it points to."""
    try:
        _, lexical = confine.candidate(data.get(field), roots)
    except confine.PathRejected as exc:
        raise _rejected(data, field, roots, exc) from None
    if lexical.is_symlink():
        raise Fatal(f"data.{field}: {data.get(field)!r} is a symbolic link; name the file itself")


def _target(data: dict[str, object], field: str, roots: tuple[Path, ...]) -> Path:
    """A path to create, in the roots; an existing symbolic link there is refused (never written through)."""
    try:
        target = confine.output_file(data.get(field), roots, _LABEL)
    except confine.PathRejected as exc:
        raise _rejected(data, field, roots, exc) from None
    if target.is_symlink():
        raise Fatal(f"data.{field}: {data.get(field)!r} is a symbolic link")
    return target


def _missing(data: dict[str, object], field: str, roots: tuple[Path, ...]) -> Path | None:
    """The path of ``data[field]`` when nothing is there and it would lie in the roots; else None."""
    try:
        _, lexical = confine.candidate(data.get(field), roots)
        if os.path.lexists(lexical):
            return None
        return confine.output_file(data.get(field), roots, _LABEL)
    except confine.PathRejected:
        return None


def _flag(data: dict[str, object], field: str) -> bool:
    value = data.get(field, False)
    if not isinstance(value, bool):
        raise Fatal(f"data.{field}: expected true or false, got {type(value).__name__}")
    return value


def _sync(fd: int, fsync: bool) -> None:
    if fsync:
        os.fsync(fd)


def _flush_folder(folder: int) -> None:
    """Flush the folder open (``O_PATH``) as ``folder``: fsync needs it opened to read, which a folder
    one may only enter or write to refuses; its files are then flushed, its names as the system does."""
    try:
        readable = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=folder)
    except PermissionError:
        return
    try:
        fsync_directory(readable)
    finally:
        os.close(readable)


@contextlib.contextmanager
def _folder(
    folder: Path, roots: tuple[Path, ...], *, create: bool = False, fsync: bool = False, listed: bool = False
) -> Iterator[int]:
    """``folder`` (confined already) opened from its root down without following a link, creating the
    missing ones if ``create``: what is done through it stays where it was checked to be. Opened to
    read (``listed``) only for listing it."""
    root = next(r for r in roots if folder.is_relative_to(r))
    fd = os.open(root, _FOLDER_FLAGS & ~os.O_NOFOLLOW)  # configured by the operator: may be a link
    try:
        here = root
        for name in folder.relative_to(root).parts:
            here = here / name
            with _naming(here):
                if create:
                    try:
                        os.mkdir(name, dir_fd=fd)
                        if fsync:
                            _flush_folder(fd)
                    except FileExistsError:
                        pass
                try:
                    inner = os.open(name, _FOLDER_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    raise Fatal(
                        f"{here} was replaced by a symbolic link or a file meanwhile: nothing done"
                    ) from None
            os.close(fd)
            fd = inner
        if listed:
            with _naming(folder):
                inner = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = inner
        yield fd
    finally:
        os.close(fd)


def _open_in(folder: int, name: str, where: Path) -> IO[bytes]:
    """The regular file ``name`` in ``folder``, to read: a link or other thing put in its place is refused."""
    with _naming(where):
        fd = os.open(name, _READ_FLAGS, dir_fd=folder)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Fatal(f"{where} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


@contextlib.contextmanager
def _naming(path: Path, other: Path | None = None) -> Iterator[None]:
    """An error of a call relative to a folder descriptor (which names ``.a.txt.ID.tmp`` or ``a.txt``,
    or nothing: a write) raised naming ``path`` (``-> other``: a rename) in full instead."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None and os.path.isabs(os.fsdecode(exc.filename)):
            raise
        raise OSError(exc.errno, exc.strerror, str(path), None, other and str(other)) from None


def _drop_leftover(folder: int, target: Path, owner: str, log: Logger, source: os.stat_result) -> str:
    """The temporary name of ``owner`` (the activity's id) for ``target``, after removing the file an
    earlier attempt of it left there (killed before it could). A file of that name that is the
    ``source`` (or lies in it, a folder archived) is no leftover: a name can be anyone's."""
    name = temp_beside(target, owner).name
    try:
        info = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return name
    if os.path.samestat(info, source) or os.path.samestat(os.fstat(folder), source):
        what = "lies in the folder archived" if stat.S_ISDIR(source.st_mode) else "is the source"
        raise Fatal(
            f"{target.with_name(name)} has the name of this activity's temporary file for {target.name}"
            f" and {what}: nothing done (rename it, or submit the activity under another id)"
        )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=folder)
        log.warning("removed %s, left by an earlier attempt", target.with_name(name))
    return name


@contextlib.contextmanager
def _temporary(
    folder: int, target: Path, owner: str, log: Logger, source: os.stat_result
) -> Iterator[tuple[str, IO[bytes]]]:
    """A new hidden file beside ``target`` in ``folder``, removed unless it was renamed away."""
    with _naming(target):
        tmp = _drop_leftover(folder, target, owner, log, source)
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=folder
        )
    try:
        with os.fdopen(fd, "wb") as handle:
            yield tmp, handle
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=folder)


def _place(
    folder: int, name: str, into: int, target: Path, replace: bool, fsync: bool, source: Path | None = None
) -> None:
    """Rename ``name`` of ``folder`` (the file ``source``, or a temporary one of ``target``) to
    ``target`` in ``into`` (never over an existing one unless ``replace``), then flush that folder."""
    try:
        with _naming(source or target, source and target):
            if replace:
                os.replace(name, target.name, src_dir_fd=folder, dst_dir_fd=into)
            else:
                move_noreplace(name, target.name, source_dir=folder, target_dir=into)
    except FileExistsError:
        raise Fatal(f'{target} exists; set "replace": true in the data to replace it') from None
    except IsADirectoryError:
        raise Fatal(f"{target} is a folder") from None
    if fsync:
        _flush_folder(into)


def _copy_into(
    source: IO[bytes], into: int, target: Path, replace: bool, ctx: Context, owner: str
) -> os.stat_result:
    """Copy ``source`` to ``target`` in ``into`` through a temporary file; returns what it made."""
    fsync = ctx.settings.durability_fsync
    with _temporary(into, target, owner, ctx.log, os.fstat(source.fileno())) as (tmp, out):
        with _naming(target):
            shutil.copyfileobj(source, out, 1 << 20)
            out.flush()
            info = os.fstat(source.fileno())
            os.chmod(out.fileno(), stat.S_IMODE(info.st_mode))
            os.utime(out.fileno(), ns=(info.st_atime_ns, info.st_mtime_ns))
            _sync(out.fileno(), fsync)
            made = os.fstat(out.fileno())
            out.close()
        _place(into, tmp, into, target, replace, fsync)
    return made


def _same_content(source: IO[bytes], folder: int, name: str) -> bool:
    """Whether the regular file ``name`` in ``folder`` holds exactly the bytes of ``source``."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=folder)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as other:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != os.fstat(source.fileno()).st_size:
            return False
        source.seek(0)
        try:
            while chunk := source.read(1 << 20):
                if other.read(len(chunk)) != chunk:
                    return False
            return not other.read(1)
        finally:
            source.seek(0)


@processor(COPY, follow_ups=())
def copy(activity: Activity, ctx: Context) -> dict[str, object]:
    """Copy ``source`` to ``target``; a target with the very same content already counts as done."""
    roots = _roots(ctx.settings)
    data = dict(activity.data)
    source = _existing(data, "source", roots)
    target = _target(data, "target", roots)
    replace = _flag(data, "replace")
    if source == target:
        raise Fatal(f"data.target: {target} is the source itself")
    fsync = ctx.settings.durability_fsync
    with (
        _folder(source.parent, roots) as from_folder,
        _open_in(from_folder, source.name, source) as src,
        _folder(target.parent, roots, create=True, fsync=fsync) as into,
    ):
        if not replace and _same_content(src, into, target.name):  # a copy an interrupted attempt made
            ctx.log.info("%s already holds a copy of %s", target, source)
            size = os.fstat(src.fileno()).st_size
        else:
            size = _copy_into(src, into, target, replace, ctx, activity.id).st_size
            ctx.log.info("copied %s to %s (%d bytes)", source, target, size)
    return {"source": str(source), "target": str(target), "bytes": size}


@processor(MOVE, follow_ups=())
def move(activity: Activity, ctx: Context) -> dict[str, object]:
    """Move ``source`` to ``target`` (a copy then a removal across file systems)."""
    roots = _roots(ctx.settings)
    data = dict(activity.data)
    replace = _flag(data, "replace")
    target = _target(data, "target", roots)
    fsync = ctx.settings.durability_fsync
    _not_a_link(data, "source", roots)
    gone = _missing(data, "source", roots)
    if gone is not None and target.is_file():  # moved by an interrupted attempt of this activity
        ctx.log.warning("%s is gone and %s exists: taken as moved already", gone, target)
        with _folder(target.parent, roots) as into, contextlib.suppress(FileNotFoundError):
            os.unlink(_kept_name(target, activity.id), dir_fd=into)  # what it replaced, if it was killed
        return {"source": str(gone), "target": str(target), "moved": False}
    source = _existing(data, "source", roots)
    if source == target:
        raise Fatal(f"data.target: {target} is the source itself")
    with (
        _folder(source.parent, roots) as from_folder,
        _folder(target.parent, roots, create=True, fsync=fsync) as into,
    ):
        try:
            if _same_file(from_folder, source.name, into, target.name):  # a rename would do nothing
                ctx.log.info("%s is another name of %s: removing the source name", target, source)
                with _naming(source):
                    os.unlink(source.name, dir_fd=from_folder)
            else:
                _place(from_folder, source.name, into, target, replace, fsync, source)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            _move_across(from_folder, source, into, target, replace, ctx, activity.id)
        if fsync:
            _flush_folder(from_folder)
    ctx.log.info("moved %s to %s", source, target)
    return {"source": str(source), "target": str(target), "moved": True}


def _move_across(
    from_folder: int, source: Path, into: int, target: Path, replace: bool, ctx: Context, owner: str
) -> None:
    """A move between file systems: a copy, then the source's removal.

    A removal refused leaves one file, not two: the copy it made goes, and the target it replaced
    comes back. That one is kept meanwhile as another name of the same file (``.NAME.ID.kept.tmp``),
    where the file system has hard links; the next attempt finds it if this one is killed.
    """
    kept = _kept_name(target, owner)
    made = None
    with _open_in(from_folder, source.name, source) as src:
        if _same_content(src, into, target.name):  # copied by an attempt stopped before the removal
            ctx.log.info("%s already holds a copy of %s: removing the source", target, source)
        else:
            if replace:
                with contextlib.suppress(FileNotFoundError, FileExistsError), _naming(target):
                    os.link(target.name, kept, src_dir_fd=into, dst_dir_fd=into, follow_symlinks=False)
            made = _copy_into(src, into, target, replace, ctx, owner)
    try:
        with _naming(source):
            os.unlink(source.name, dir_fd=from_folder)
    except OSError:
        with contextlib.suppress(OSError):
            now_there = os.stat(target.name, dir_fd=into, follow_symlinks=False)
            if made is None or os.path.samestat(now_there, made):  # not another writer's since
                try:
                    os.replace(kept, target.name, src_dir_fd=into, dst_dir_fd=into)
                    ctx.log.warning("%s: put back the file it replaced", target)
                except FileNotFoundError:  # nothing was replaced (or kept): the copy it made goes
                    if made is not None:
                        os.unlink(target.name, dir_fd=into)
        raise
    with contextlib.suppress(FileNotFoundError):
        os.unlink(kept, dir_fd=into)


def _kept_name(target: Path, owner: str) -> str:
    return temp_beside(target, f"{owner}.kept").name


def _same_file(folder: int, name: str, other_folder: int, other: str) -> bool:
    try:
        info = os.stat(other, dir_fd=other_folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return os.path.samestat(os.stat(name, dir_fd=folder, follow_symlinks=False), info)


@processor(DELETE, follow_ups=())
def delete(activity: Activity, ctx: Context) -> dict[str, object]:
    """Delete the file at ``path``; a file that is not there is done already (``deleted: false``)."""
    roots = _roots(ctx.settings)
    data = dict(activity.data)
    _not_a_link(data, "path", roots)
    gone = _missing(data, "path", roots)
    if gone is not None:
        ctx.log.info("%s does not exist: nothing to delete", gone)
        return {"path": str(gone), "deleted": False}
    path = _existing(data, "path", roots)
    with _folder(path.parent, roots) as folder, _naming(path):
        os.unlink(path.name, dir_fd=folder)
        if ctx.settings.durability_fsync:
            _flush_folder(folder)
    ctx.log.info("deleted %s", path)
    return {"path": str(path), "deleted": True}


# --------------------------------------------------------------------------- files.archive


@dataclass(frozen=True)
class Candidate:
    """A file old enough to archive, with what it was when it was chosen."""

    path: Path
    size: int
    mtime_ns: int


def archive_format(target: Path) -> ArchiveFormat:
    """The format the target's name asks for."""
    name = target.name.lower()
    for suffix, fmt in _SUFFIXES.items():
        if name.endswith(suffix) and len(name) > len(suffix):
            return fmt
    raise Fatal(f"data.archive: {target.name!r} must end in .zip, .tar.gz or .tgz")


def _older_than(data: dict[str, object]) -> float:
    value = data.get("older_than")
    try:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError
        seconds = float(value) if not isinstance(value, str) else parse_duration(value)
        if not 0 <= seconds < float("inf"):
            raise ValueError
    except ValueError:
        raise Fatal(
            f"data.older_than: expected a duration (seconds, or 30s, 15m, 2h, 7d), got {value!r}"[:300]
        ) from None
    return seconds


def _printable(name: str) -> str:
    """A file name that is not UTF-8, with its bytes escaped (``\\xff``), as results and logs can hold it."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def choose(folder: Path, fd: int, cutoff: float, skip: os.stat_result) -> tuple[list[Candidate], list[str]]:
    """The regular files directly in ``folder`` (open as ``fd``) last modified at or before ``cutoff``
    (links are skipped, and the file ``skip``), and the names of those left out because they are not
    UTF-8 (no archive member could be named so)."""
    chosen, unnamable = [], []
    with os.scandir(fd) as entries:
        for entry in entries:
            if not entry.is_file(follow_symlinks=False):
                continue
            info = entry.stat(follow_symlinks=False)
            if info.st_mtime > cutoff or os.path.samestat(info, skip):
                continue
            if _printable(entry.name) != entry.name:
                unnamable.append(_printable(entry.name))
            else:
                chosen.append(Candidate(folder / entry.name, info.st_size, info.st_mtime_ns))
    return sorted(chosen, key=lambda c: c.path.name), sorted(unnamable)


def _write_archive(out: IO[bytes], fmt: ArchiveFormat, folder: int, files: list[Candidate]) -> None:
    """Each file under its name, read through a descriptor opened without following links."""
    if fmt == "zip":
        import zipfile

        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for item in files:
                with _open_in(folder, item.path.name, item.path) as source:
                    stamp = time.gmtime(max(item.mtime_ns / 1e9, _ZIP_EPOCH))[
                        :6
                    ]  # zip has no time before 1980
                    info = zipfile.ZipInfo(item.path.name, date_time=stamp)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = (os.fstat(source.fileno()).st_mode & 0o7777) << 16
                    with archive.open(info, "w", force_zip64=True) as member:
                        shutil.copyfileobj(source, member, 1 << 20)
    else:
        import tarfile

        with tarfile.open(fileobj=out, mode="w:gz") as archive:
            for item in files:
                with _open_in(folder, item.path.name, item.path) as source:
                    archive.addfile(archive.gettarinfo(arcname=item.path.name, fileobj=source), source)


def _members(path: IO[bytes], target: Path, fmt: ArchiveFormat) -> dict[str, int]:
    """Each member's name and size, read back from the archive (every byte read, so it is readable)."""
    sizes: dict[str, int] = {}
    if fmt == "zip":
        import zipfile

        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise Fatal(f"the archive {target} does not read back: {bad!r} is damaged")
            sizes = {info.filename: info.file_size for info in archive.infolist()}
    else:
        import tarfile

        with tarfile.open(fileobj=path, mode="r:gz") as archive:
            for member in archive:
                handle = archive.extractfile(member)
                if handle is not None:
                    sizes[member.name] = _read_size(handle)
    return sizes


def _read_size(handle: IO[bytes]) -> int:
    size = 0
    while chunk := handle.read(1 << 20):
        size += len(chunk)
    return size


def _unchanged(folder: int, item: Candidate) -> bool:
    try:
        info = os.stat(item.path.name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return info.st_size == item.size and info.st_mtime_ns == item.mtime_ns


@processor(ARCHIVE, follow_ups=())
def archive(activity: Activity, ctx: Context) -> dict[str, object]:
    """Put the files of ``folder`` older than ``older_than`` into ``archive``, then remove them."""
    roots = _roots(ctx.settings)
    data = dict(activity.data)
    folder = _existing(data, "folder", roots, "folder")
    target = _target(data, "archive", roots)
    fmt = archive_format(target)
    age = _older_than(data)
    fsync = ctx.settings.durability_fsync
    if os.path.lexists(target):
        raise Fatal(f"data.archive: {target} exists; archives are never replaced")
    with (
        _folder(folder, roots, listed=True) as from_folder,
        _folder(target.parent, roots, create=True, fsync=fsync) as into,
        _temporary(into, target, activity.id, ctx.log, os.fstat(from_folder)) as (tmp, out),
    ):
        os.utime(out.fileno())  # "now" as the file system's server sets it (a new file may get the client's)
        made = os.fstat(out.fileno())
        files, unnamable = choose(folder, from_folder, made.st_mtime - age, made)  # the file system's clock
        for name in unnamable:
            ctx.log.warning("%s in %s is not a UTF-8 name: not archived, kept", name, folder)
        if not files:
            ctx.log.info("no file in %s is older than %gs: no archive written", folder, age)
            nothing: dict[str, object] = {"archive": None, "files": 0, "bytes": 0, "names": []}
            return {"folder": str(folder), **nothing, **_kept(unnamable)}
        with _naming(target):
            _write_archive(out, fmt, from_folder, files)
            out.flush()
            _sync(out.fileno(), fsync)
            out.close()
        with _open_in(into, tmp, target) as written:
            members = _members(written, target, fmt)
        for item in files:
            if members.get(item.path.name) != item.size and _unchanged(from_folder, item):
                raise Fatal(f"the archive {target} does not hold {item.path.name} as it was: nothing removed")
        _place(into, tmp, into, target, False, fsync)
        removed, kept = _remove(from_folder, files, members)
        if fsync and removed:
            _flush_folder(from_folder)
    for name in kept:
        ctx.log.warning("%s changed while it was archived: kept in %s", name, folder)
    ctx.log.info("archived %d files of %s into %s", len(removed), folder, target)
    names = [item.path.name for item in files]
    return {
        "folder": str(folder),
        "archive": str(target),
        "files": len(files),
        "bytes": sum(item.size for item in files),
        "names": names[:LISTED_NAMES],
        **_kept(kept + unnamable),
    }


def _kept(names: list[str]) -> dict[str, object]:
    """``kept``: the first ``LISTED_NAMES`` names, sorted; ``kept_files``: how many in all."""
    return {"kept": sorted(names)[:LISTED_NAMES], "kept_files": len(names)}


def _remove(folder: int, files: list[Candidate], members: dict[str, int]) -> tuple[list[str], list[str]]:
    """Remove each archived file that is still as it was archived; the names removed and kept."""
    removed, kept = [], []
    for item in files:
        if members.get(item.path.name) == item.size and _unchanged(folder, item):
            with contextlib.suppress(FileNotFoundError), _naming(item.path):
                os.unlink(item.path.name, dir_fd=folder)
            removed.append(item.path.name)
        else:
            kept.append(item.path.name)
    return removed, kept
