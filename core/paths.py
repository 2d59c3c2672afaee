"""Where datasets live on disk, and the error raised when one is missing.

Every dataset plugin resolves its files under :func:`data_root` unless its
config names an explicit ``path``, so one environment variable moves all data.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "DISENTBENCH_DATA"


def data_root() -> Path:
    """``$DISENTBENCH_DATA`` if set (and non-empty), else ``~/.cache/disentbench``.

    Read at call time, not import time, so tests and tools can redirect it.
    """
    value = os.environ.get(DATA_ENV)
    if value:
        return Path(value).expanduser()
    return Path.home() / ".cache" / "disentbench"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file is missing; the message says where it was looked for and what to do.

    Subclasses ``FileNotFoundError`` so generic handlers still catch it, while
    ``str(error)`` is the plugin's one-line explanation only.
    """

    def __init__(self, message: str, path: Path | str | None = None):
        super().__init__(message)
        self.message = message
        self.path = Path(path) if path is not None else None

    def __str__(self) -> str:
        return self.message
