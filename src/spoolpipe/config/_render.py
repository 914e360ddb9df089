"""Rendering the schema: the commented defaults file and the documentation table."""

from __future__ import annotations

import textwrap

from ._kinds import TYPE_PATTERN
from ._load import SHARED_FILE, WORKERS_DIR
from ._properties import writing
from ._schema import GROUP_TITLES, OPTIONS

_HEADER = f"""\
# spoolpipe configuration
#
# This is the shared file, REPO/{SHARED_FILE}, read by every worker
# daemon. A worker can override any key for itself alone in
# REPO/{WORKERS_DIR}/<worker-id>.properties: keys there win over this file,
# and within one file a later line wins over an earlier one. Both files are
# optional; a key that is not set anywhere takes the default shown below.
#
# The syntax is that of Java .properties files: "key = value" (or "key: value"
# or "key value"), a line ending in a backslash continues on the next line,
# lines starting with # or ! are comments, and \\uXXXX escapes are understood.
# Files are read as UTF-8, or as ISO-8859-1 when they are not valid UTF-8.
# Relative paths are resolved against the directory of the file that sets them.
#
# Running daemons re-read these files when they change. When the new
# configuration is invalid they log the errors (file:line) and keep using the
# last valid one. Changes to processors, processors.path, processor.* and
# custom.* take effect by recycling the pool's processes as they become idle
# (as does a change to a processor module's file); pool.size takes effect at
# restart.
#
# Every key below is commented out and shows its default: uncomment a line,
# or append "key = value" at the end, to change it.
"""


def _comment(text: str) -> str:
    return textwrap.fill(text, width=79, initial_indent="# ", subsequent_indent="# ")


def _line(key: str, value: str) -> str:
    if value == "":
        return f"{key} ="
    return writing.join_key_value(key, value, separator=" = ")


def render_defaults() -> str:
    """The commented ``spoolpipe.properties`` written by ``spoolpipe init``.

    Every key appears commented out with its default, and pattern keys as
    commented-out examples, so a key a user uncomments or appends is set once
    (no "set again" warning). Loading it yields exactly the defaults.
    """
    parts = [_HEADER]
    group = None
    for opt in OPTIONS:
        if opt.group != group:
            group = opt.group
            title = GROUP_TITLES.get(group, group)
            parts.append(f"\n# {'=' * 77}\n# {title}\n# {'=' * 77}\n")
        parts.append("\n" + _comment(opt.description) + "\n")
        if opt.default is None:  # examples are written as properties lines already
            parts.extend(f"#{line}\n" for line in opt.example.splitlines())
        else:
            parts.append("#" + _line(opt.key, opt.default) + "\n")
    return "".join(parts)


def _md(text: str) -> str:
    text = text.replace("|", "\\|").replace("<", "\\<")
    return text.replace(TYPE_PATTERN, f"`{TYPE_PATTERN}`")


def describe_keys() -> str:
    """A Markdown table of every key (key, default, accepted values, meaning)."""
    rows = [
        "| Key | Default | Accepted values | Meaning |",
        "| --- | --- | --- | --- |",
    ]
    for opt in OPTIONS:
        if opt.default is None:
            default = "(none)" if opt.family_default is None else f"`{opt.family_default}`"
        elif opt.default == "":
            default = "(empty)"
        else:
            default = f"`{opt.default}`"
        rows.append(f"| `{opt.key}` | {default} | {_md(opt.kind.expected)} | {_md(opt.description)} |")
    return "\n".join(rows) + "\n"
