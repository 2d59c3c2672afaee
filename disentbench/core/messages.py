"""One-line messages: how an exception or a warning is shown to a user.

Library errors (SQLAlchemy, torch, submitit) often run to pages; disentbench
shows their first line, and Python warnings without the file:line prefix and
the quoted source line.
"""

from __future__ import annotations

import sys


def first_line(value: BaseException | str, limit: int = 200) -> str:
    """The first non-blank line of ``value`` (an exception's type name if it has none), at most ``limit`` chars."""
    text = next((line.strip() for line in str(value).splitlines() if line.strip()), "")
    if not text and isinstance(value, BaseException):
        text = type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def show_warning_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A ``warnings.showwarning`` that writes ``warning: FIRST LINE`` and nothing else."""
    text = first_line(message, limit=1000) or category.__name__
    stream = file if file is not None else sys.stderr
    try:
        stream.write(f"warning: {text}\n")
    except (OSError, ValueError, AttributeError):  # no stderr (pythonw) or a closed one
        pass
