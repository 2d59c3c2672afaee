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


def unwritable_reason(path: Path | str, *, folder: bool) -> str | None:
    """Why ``path`` cannot be created or written (None if it can), without leaving anything behind.

    ``folder``: ``path`` is (to be) a folder; otherwise a file. The nearest
    existing ancestor must be a folder in which a file can be created: tested
    by creating and removing a hidden probe file there, because ``os.access``
    says yes to root even on read-only or virtual file systems (/proc, /sys).
    """
    import tempfile

    path = Path(path).expanduser()
    if path.exists():
        if folder and not path.is_dir():
            return f"{path} is a file, not a folder"
        if not folder and path.is_dir():
            return f"{path} is a folder, not a file"
        probe_in = path if folder else path.parent
    else:
        probe_in = path.parent
        while not probe_in.exists() and probe_in != probe_in.parent:
            probe_in = probe_in.parent
        if not probe_in.is_dir():
            return f"cannot create {path}: {probe_in} is a file, not a folder"
    try:
        handle, probe = tempfile.mkstemp(prefix=".disentbench-probe-", dir=probe_in)
    except OSError as exc:
        if path.exists():
            return f"{path} is not writable ({exc.strerror or exc})"
        return f"cannot create {path}: {probe_in} is not writable ({exc.strerror or exc})"
    os.close(handle)
    os.unlink(probe)
    return None


def check_data_root() -> None:
    """Raise ``DataRootError`` (one line, naming $DISENTBENCH_DATA and the fix) if the data root is unusable."""
    root = data_root()
    reason = unwritable_reason(root, folder=True)
    if reason is not None:
        source = f"${DATA_ENV}" if os.environ.get(DATA_ENV) else "the default data root"
        raise DataRootError(f"{source} ({root}): {reason}; set ${DATA_ENV} to a writable folder")


class DataRootError(ValueError):
    """The data root ($DISENTBENCH_DATA) is a file or cannot be written."""
