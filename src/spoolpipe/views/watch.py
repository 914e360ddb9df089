"""``status --watch``: redraw a view every few seconds until Ctrl-C."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from ..activity import printable

#: Home the cursor and clear the screen: only where the output is a terminal.
_CLEAR = "\x1b[H\x1b[2J"


def watch(
    render: Callable[[], str], interval: float, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    """Print ``render()`` every ``interval`` seconds; 0 once interrupted (SIGINT).

    A turn that cannot read the repository says so on ``err``: ``out`` holds only what
    ``render`` made (one JSON document per line, with ``--json``)."""
    clear = out.isatty()
    try:
        while True:
            try:
                text = render()
            except OSError as exc:  # a shared file system away for a while: say so, try again
                err.write(f"cannot read the repository: {printable(str(exc))}\n")
                err.flush()
            else:
                out.write((_CLEAR if clear else "") + text + ("" if text.endswith("\n") else "\n"))
                out.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
