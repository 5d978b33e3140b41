"""Text for one-line messages: logs, denials and errors are read line by line."""

from __future__ import annotations


def one_line(text: object) -> str:
    """`text` with every run of whitespace, newlines included, as one space."""
    return " ".join(str(text).split())
