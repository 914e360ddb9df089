"""Path confinement: every path an activity names must really lie in one of the configured roots.

Shared by image work (``images.roots``) and the ``files.*`` processors
(``files.roots``); ``label`` names the roots in messages ("image roots").
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from .durable import temp_beside


class _Invalid(Exception):
    """A bad value; the message completes "<json path>: "."""


class PathRejected(_Invalid, ValueError):
    """A path that is malformed, missing, of the wrong kind, or outside the image roots."""


def _got(value: object) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


def candidate(value: object, roots: tuple[Path, ...]) -> tuple[str, Path]:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise PathRejected(f"expected a path, got {_got(value)}")
    path = Path(value)
    if ".." in path.parts:
        raise PathRejected(f"{value!r}: '..' is not allowed")
    return value, Path(os.path.abspath(path if path.is_absolute() else roots[0] / path))


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def _escape(raw: str, lexical: Path, roots: tuple[Path, ...], label: str) -> PathRejected:
    """Through a link when the path, or a folder on its way, really lies in a root (a root configured
    as a link is reached through it: ``lexical`` alone would not say)."""
    if any(_inside(Path(os.path.realpath(step)), roots) for step in (lexical, *lexical.parents)):
        return PathRejected(f"{raw!r} leads outside the {label} through a symbolic link")
    return PathRejected(f"{raw!r} is outside the {label}")


def _confined(
    path: Path, raw: str, lexical: Path, roots: tuple[Path, ...], unresolved: str, label: str
) -> Path:
    """The real path of ``path`` (``lexical`` or an ancestor), refused unless it lies in a root."""
    try:
        real = Path(os.path.realpath(path, strict=True))
    except OSError:
        if not _inside(Path(os.path.realpath(path)), roots):  # never say whether it exists out there
            raise _escape(raw, lexical, roots, label) from None
        raise PathRejected(unresolved) from None
    if not _inside(real, roots):
        raise _escape(raw, lexical, roots, label)
    return real


def existing(
    value: object, roots: tuple[Path, ...], kind: Literal["file", "folder"], label: str = "image roots"
) -> Path:
    """An existing regular file (or folder) whose real path lies in a root; returns that real path."""
    raw, lexical = candidate(value, roots)
    real = _confined(lexical, raw, lexical, roots, f"{raw!r} does not exist", label)
    if kind == "file" and not real.is_file():
        raise PathRejected(f"{raw!r} is not a regular file")
    if kind == "folder" and not real.is_dir():
        raise PathRejected(f"{raw!r} is not a folder")
    return real


def _existing_file(value: object, roots: tuple[Path, ...]) -> Path:
    return existing(value, roots, "file")


#: Longest file or folder name Linux file systems take, in bytes (NAME_MAX).
_NAME_MAX = 255
#: Longest path Linux takes, in bytes (PATH_MAX less its terminating NUL).
_PATH_MAX = 4095


def output_file(value: object, roots: tuple[Path, ...], label: str = "image roots") -> Path:
    """A file path whose deepest existing ancestor really lies in a root (missing folders get made)."""
    raw, lexical = candidate(value, roots)
    if raw.endswith(("/", os.sep)):
        raise PathRejected(f"{raw!r} names a folder, not a file")
    if os.path.isdir(lexical):  # a root itself, whose parent lies outside the roots
        raise PathRejected(f"{raw!r} is a folder")
    existing, missing = lexical.parent, [lexical.name]
    while not os.path.lexists(existing):
        existing, missing = existing.parent, [existing.name, *missing]
    real_parent = _confined(existing, raw, lexical, roots, f"{raw!r}: cannot resolve {existing}", label)
    if not real_parent.is_dir():
        raise PathRejected(f"{raw!r}: {existing} is not a folder")
    for name in missing:
        size = len(os.fsencode(name))
        if size > _NAME_MAX:
            raise PathRejected(
                f"{raw!r}: the name is {size} bytes, longer than the file system allows ({_NAME_MAX})"
            )
    target = real_parent.joinpath(*missing)
    size = max(len(os.fsencode(path)) for path in (target, temp_beside(target)))  # written, then renamed
    if size > _PATH_MAX:
        raise PathRejected(
            f"{raw!r}: the path is {size} bytes with the temp file beside it,"
            f" longer than the file system allows ({_PATH_MAX})"
        )
    if target.is_dir():
        raise PathRejected(f"{raw!r} is a folder")
    return target


def real_roots(roots: Sequence[Path], label: str = "image roots") -> tuple[Path, ...]:
    """The roots as real paths; ``ValueError`` naming a root that is missing or not a folder."""
    if not roots:
        raise ValueError(f"the {label} need at least one root folder")
    real: list[Path] = []
    for root in roots:
        try:
            resolved = Path(os.path.realpath(root, strict=True))
        except OSError as exc:
            raise ValueError(f"{label[:-1]} {root} does not exist") from exc
        if not resolved.is_dir():
            raise ValueError(f"{label[:-1]} {root} is not a folder")
        real.append(resolved)
    return tuple(real)


def resolve_path(
    value: object,
    roots: Sequence[Path],
    *,
    kind: Literal["file", "folder"] = "file",
    label: str = "image roots",
) -> Path:
    """The real path of an existing file (or folder) named by ``value``, confined to ``roots``.

    The rules of a recipe's ``input`` (docs/images.md): relative paths start at the
    first root, ``..`` is refused, links are resolved before the check. Raises
    ``PathRejected``; ``ValueError`` when a root is missing.
    """
    return existing(value, real_roots(roots, label), kind, label)
