"""Text for one-line messages: logs, denials and errors are read line by line."""

from __future__ import annotations

QUOTE_CHARACTERS = 100


def one_line(text: object) -> str:
    """`text` with every run of whitespace, newlines included, as one space."""
    return " ".join(str(text).split())


def quoted(value: str, limit: int = QUOTE_CHARACTERS) -> str:
    """`value` as a message quotes it: whole when short, else its start and its size.

    Input from a workload (an image name, a field) may be megabytes long; a message that
    repeated it would be as long, in every log line, warning and Event that carries it.
    """
    if len(value) <= limit:
        return value
    return f"{value[:limit]}… ({len(value.encode(errors='replace'))} bytes)"
