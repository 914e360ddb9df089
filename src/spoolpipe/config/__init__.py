"""Load, type and validate spoolpipe's configuration.

Configuration lives in Java ``.properties`` files inside the shared repository
directory ``REPO``:

* ``REPO/spoolpipe.properties`` -- shared by every worker (optional);
* ``REPO/workers/<worker-id>.properties`` -- per-worker overrides (optional).

Later keys win within a file and the per-worker file wins over the shared one.
Every key is described exactly once, in :data:`OPTIONS`; validation, the
commented defaults file written by ``spoolpipe init`` (:func:`render_defaults`)
and the documentation table (:func:`describe_keys`) are all derived from it.

This package is pure: it reads files and returns values, it starts no threads
and never writes anything.

Files are decoded as UTF-8 (an initial byte-order mark is ignored); a file that
is not valid UTF-8 is decoded as ISO-8859-1, the encoding the ``.properties``
specification prescribes. ``\\uXXXX`` escapes work in both cases. A UTF-16 or UTF-32 file
(a UTF-16 byte-order mark, NUL bytes) is an error.

- ``_kinds``: kinds of values (``IntKind``, ``DurationKind``, ``CronKind``...) and
  :func:`parse_duration`;
- ``_schema``: :class:`Option`, ``Family``, :data:`OPTIONS`, ``FAMILIES`` and the
  groups' titles;
- ``_settings``: :class:`Settings`, :class:`Loaded`, :func:`automatic_megapixels`;
- ``_load``: :func:`load`, :func:`config_files`, :class:`ConfigError` and the
  builders of each family's definitions;
- ``_render``: :func:`render_defaults` and :func:`describe_keys`.
"""

from __future__ import annotations

from ._kinds import (
    MAX_SECONDS,
    TYPE_PATTERN,
    BoolKind,
    DurationKind,
    FloatKind,
    Invalid,
    as_seconds,
    parse_duration,
    parse_integer,
)
from ._load import HEARTBEATS_PER_LEASE, SHARED_FILE, ConfigError, config_files, load
from ._render import describe_keys, render_defaults
from ._schema import OPTIONS
from ._settings import Loaded, Settings, automatic_megapixels

__all__ = [
    "HEARTBEATS_PER_LEASE",
    "MAX_SECONDS",
    "OPTIONS",
    "SHARED_FILE",
    "TYPE_PATTERN",
    "BoolKind",
    "ConfigError",
    "DurationKind",
    "FloatKind",
    "Invalid",
    "Loaded",
    "Settings",
    "as_seconds",
    "automatic_megapixels",
    "config_files",
    "describe_keys",
    "load",
    "parse_duration",
    "parse_integer",
    "render_defaults",
]
