"""``files.move``, ``files.copy``, ``files.delete``, ``files.archive``: file chores inside ``files.roots``.

Every path in the data goes through ``spoolpipe.confine`` (the rules of
``images.roots``: relative paths start at the first root, ``..`` is refused,
symbolic links are resolved before the check). New files are written under a
temporary name beside the target, flushed, then renamed into place without
replacing anything (unless the data says ``"replace": true``); directories
are flushed after each change. ``zipfile`` and ``tarfile`` are imported only
by ``files.archive``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from .. import confine
from ..activity import Activity
from ..config import Settings, parse_duration
from ..durable import fsync_directory, move_noreplace, temp_beside
from ..processor import Context, Fatal, processor

MOVE, COPY, DELETE, ARCHIVE = "files.move", "files.copy", "files.delete", "files.archive"
_LABEL = "file roots"
#: Names of archived files listed in the result of ``files.archive``: at most this many.
LISTED_NAMES = 1000

ArchiveFormat = Literal["zip", "tar.gz"]
_ZIP_EPOCH = 315576000.0  # 1980-01-01 12:00 UTC: within the 1980 a zip can hold, read in any time zone
_SUFFIXES: dict[str, ArchiveFormat] = {".zip": "zip", ".tar.gz": "tar.gz", ".tgz": "tar.gz"}


def _roots(settings: Settings) -> tuple[Path, ...]:
    """``files.roots`` as real paths; ``Fatal`` when none is configured or one is unusable."""
    if not settings.files_roots:
        raise Fatal("no file roots configured: set files.roots in spoolpipe.properties")
    try:
        return confine.real_roots(settings.files_roots, _LABEL)
    except ValueError as exc:
        raise Fatal(f"{exc} (check files.roots in spoolpipe.properties)") from None


def _existing(data: dict[str, object], field: str, roots: tuple[Path, ...], kind: str = "file") -> Path:
    try:
        return confine.existing(data.get(field), roots, "folder" if kind == "folder" else "file", _LABEL)
    except confine.PathRejected as exc:
        raise Fatal(f"data.{field}: {exc}") from None


def _not_a_link(data: dict[str, object], field: str, roots: tuple[Path, ...]) -> None:
    """Refuse a path that is itself a symbolic link: moving or deleting it would act on what it points to."""
    try:
        _, lexical = confine.candidate(data.get(field), roots)
    except confine.PathRejected as exc:
        raise Fatal(f"data.{field}: {exc}") from None
    if lexical.is_symlink():
        raise Fatal(f"data.{field}: {data.get(field)!r} is a symbolic link; name the file itself")


def _target(data: dict[str, object], field: str, roots: tuple[Path, ...]) -> Path:
    """A path to create, in the roots; an existing symbolic link there is refused (never written through)."""
    try:
        target = confine.output_file(data.get(field), roots, _LABEL)
    except confine.PathRejected as exc:
        raise Fatal(f"data.{field}: {exc}") from None
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


def _make_parents(path: Path, fsync: bool) -> None:
    """Create the missing folders above ``path`` (already confined: its deepest existing one is in a root)."""
    missing = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
        if fsync:
            fsync_directory(folder.parent)


@contextlib.contextmanager
def _temporary(target: Path) -> Iterator[tuple[Path, IO[bytes]]]:
    """A new hidden file beside ``target``, removed unless it was renamed away."""
    tmp = temp_beside(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield tmp, handle
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _place(tmp: Path, target: Path, replace: bool, fsync: bool) -> None:
    """Rename ``tmp`` to ``target`` (never over an existing one unless ``replace``), then flush the folder."""
    try:
        if replace:
            os.replace(tmp, target)
        else:
            move_noreplace(tmp, target)
    except FileExistsError:
        raise Fatal(f'{target} exists; set "replace": true in the data to replace it') from None
    except IsADirectoryError:
        raise Fatal(f"{target} is a folder") from None
    if fsync:
        fsync_directory(target.parent)


def _copy_into(source: Path, target: Path, replace: bool, fsync: bool) -> int:
    """Copy ``source`` to ``target`` through a temporary file; returns the bytes copied."""
    _make_parents(target, fsync)
    with _temporary(target) as (tmp, out):
        with open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        out.flush()
        shutil.copystat(source, tmp)
        _sync(out.fileno(), fsync)
        size = out.tell()
        out.close()
        _place(tmp, target, replace, fsync)
    return size


def _same_content(a: Path, b: Path) -> bool:
    import filecmp

    return b.is_file() and filecmp.cmp(a, b, shallow=False)


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
    if not replace and _same_content(source, target):  # a copy an interrupted attempt already made
        ctx.log.info("%s already holds a copy of %s", target, source)
        return {"source": str(source), "target": str(target), "bytes": target.stat().st_size}
    size = _copy_into(source, target, replace, ctx.settings.durability_fsync)
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
        return {"target": str(target), "moved": False}
    source = _existing(data, "source", roots)
    if source == target:
        raise Fatal(f"data.target: {target} is the source itself")
    _make_parents(target, fsync)
    try:
        _place(source, target, replace, fsync)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_into(source, target, replace, fsync)
        os.unlink(source)
    if fsync:
        fsync_directory(source.parent)
    ctx.log.info("moved %s to %s", source, target)
    return {"source": str(source), "target": str(target), "moved": True}


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
    os.unlink(path)
    if ctx.settings.durability_fsync:
        fsync_directory(path.parent)
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


def choose(folder: Path, cutoff: float, skip: Path) -> tuple[list[Candidate], list[str]]:
    """The regular files directly in ``folder`` last modified at or before ``cutoff`` (links are skipped),
    and the names of those left out because they are not UTF-8 (no archive member could be named so)."""
    chosen, unnamable = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.is_file(follow_symlinks=False) or Path(entry.path) == skip:
                continue
            info = entry.stat(follow_symlinks=False)
            if info.st_mtime > cutoff:
                continue
            if _printable(entry.name) != entry.name:
                unnamable.append(_printable(entry.name))
            else:
                chosen.append(Candidate(Path(entry.path), info.st_size, info.st_mtime_ns))
    return sorted(chosen, key=lambda c: c.path.name), sorted(unnamable)


def _open_chosen(item: Candidate) -> IO[bytes]:
    """The chosen file itself: a symbolic link put in its place since is refused, not followed."""
    return os.fdopen(os.open(item.path, os.O_RDONLY | os.O_NOFOLLOW), "rb")


def _write_archive(out: IO[bytes], fmt: ArchiveFormat, files: list[Candidate]) -> None:
    """Each file under its name, read through a descriptor opened without following links."""
    if fmt == "zip":
        import zipfile

        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for item in files:
                with _open_chosen(item) as source:
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
                with _open_chosen(item) as source:
                    archive.addfile(archive.gettarinfo(arcname=item.path.name, fileobj=source), source)


def _members(path: Path, fmt: ArchiveFormat) -> dict[str, int]:
    """Each member's name and size, read back from the archive (every byte read, so it is readable)."""
    sizes: dict[str, int] = {}
    if fmt == "zip":
        import zipfile

        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise Fatal(f"the archive {path} does not read back: {bad!r} is damaged")
            sizes = {info.filename: info.file_size for info in archive.infolist()}
    else:
        import tarfile

        with tarfile.open(path, "r:gz") as archive:
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


def _unchanged(item: Candidate) -> bool:
    try:
        info = item.path.stat(follow_symlinks=False)
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
    if target.exists():
        raise Fatal(f"data.archive: {target} exists; archives are never replaced")
    _make_parents(target, fsync)
    with _temporary(target) as (tmp, out):
        os.utime(tmp)  # "now" as the file system's server sets it (a new file may get the client's clock)
        now = tmp.stat().st_mtime  # the file system's clock, as the files' times are
        files, unnamable = choose(folder, now - age, tmp)
        for name in unnamable:
            ctx.log.warning("%s in %s is not a UTF-8 name: not archived, kept", name, folder)
        if not files:
            ctx.log.info("no file in %s is older than %gs: no archive written", folder, age)
            nothing = {"archive": None, "files": 0, "bytes": 0, "names": [], "kept": unnamable}
            return {"folder": str(folder), **nothing}
        _write_archive(out, fmt, files)
        out.flush()
        _sync(out.fileno(), fsync)
        out.close()
        members = _members(tmp, fmt)
        for item in files:
            if members.get(item.path.name) != item.size and _unchanged(item):
                raise Fatal(f"the archive {target} does not hold {item.path.name} as it was: nothing removed")
        _place(tmp, target, False, fsync)
    removed, kept = _remove(files, members)
    if fsync and removed:
        fsync_directory(folder)
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
        "kept": sorted(kept + unnamable),
    }


def _remove(files: list[Candidate], members: dict[str, int]) -> tuple[list[str], list[str]]:
    """Remove each archived file that is still as it was archived; the names removed and kept."""
    removed, kept = [], []
    for item in files:
        if members.get(item.path.name) == item.size and _unchanged(item):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(item.path)
            removed.append(item.path.name)
        else:
            kept.append(item.path.name)
    return removed, kept
