"""Load, type and validate spoolpipe's configuration (the code is in ``_schema`` for now)."""

from __future__ import annotations

from ._schema import (
    OPTIONS,
    SHARED_FILE,
    TYPE_PATTERN,
    BoolKind,
    ConfigError,
    Loaded,
    Settings,
    automatic_megapixels,
    config_files,
    describe_keys,
    load,
    parse_duration,
    render_defaults,
)

__all__ = [
    "OPTIONS",
    "SHARED_FILE",
    "TYPE_PATTERN",
    "BoolKind",
    "ConfigError",
    "Loaded",
    "Settings",
    "automatic_megapixels",
    "config_files",
    "describe_keys",
    "load",
    "parse_duration",
    "render_defaults",
]
