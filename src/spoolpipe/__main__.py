"""``python -m spoolpipe``: the same as the ``spoolpipe`` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
