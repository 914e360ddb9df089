"""Text for Mermaid diagrams (a step pipeline's waves, the flow graph): labels no name can end."""

from __future__ import annotations

from typing import Final

_PLAIN: Final = frozenset(" _-.,:/")


def label_text(text: str) -> str:
    """``text`` for inside a quoted Mermaid label: every character but letters, digits,
    spaces and ``_-.,:/`` as an entity code (``#34;``), so quotes, brackets, ``#``,
    ``;``, ``<`` and line breaks show as themselves and cannot end the label."""
    return "".join(
        char if (char.isalnum() and char.isprintable()) or char in _PLAIN else f"#{ord(char)};"
        for char in text
    )
