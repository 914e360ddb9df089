"""``python -m spoolpipe``: the same as the ``spoolpipe`` command."""

from __future__ import annotations

from .cli import run

run()
