"""Which file system holds a path: what the lock mode and spare files depend on."""

from __future__ import annotations

import os
import re

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def filesystem_type(path: str | os.PathLike[str]) -> str:
    """The type of the mount holding ``path`` (its longest mount point), from /proc/self/mountinfo;
    "" when unknown. Mount points come escaped there (``\\040`` for a space, ``\\134`` for ``\\``)."""
    target = os.path.realpath(path)
    best, best_type = "", ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mountinfo:
            for line in mountinfo:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5 or not right:
                    continue
                mount_point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m[1], 8)), fields[4])
                inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, best_type = mount_point, right.split()[0]
    except OSError:
        return ""
    return best_type
