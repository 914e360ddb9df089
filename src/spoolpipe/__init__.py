"""spoolpipe: dependable background work from a shared folder, no broker.

Drop activity JSON files into ``REPO/inbox/``; run ``spoolpipe worker REPO`` on
every machine that mounts the folder.
"""

from __future__ import annotations

from .activity import Activity, InvalidActivity
from .durable import write_atomic
from .processor import Context, Fatal, Processor, Retry, Skip, processor

__version__ = "0.1.0"

__all__ = [
    "Activity",
    "Context",
    "Fatal",
    "InvalidActivity",
    "Processor",
    "Retry",
    "Skip",
    "__version__",
    "processor",
    "write_atomic",
]
