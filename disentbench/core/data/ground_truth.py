"""The ground-truth-data interface every dataset plugin implements.

A dataset is a full factorial grid of factors of variation. Conventions:

* factors are integer indices, shape ``(n, num_factors)``, samples in rows;
* observations are float32 arrays in [0, 1], shape ``(n, C, H, W)`` (PyTorch's
  channel-first layout; the study's TF code used NHWC);
* images are kept as uint8 in memory (``images``, ``(N, C, H, W)``) and turned
  into floats only per batch: ``to_float`` applies the pixel scale and, for
  variants such as colour/noisy dSprites, the per-observation nuisance
  randomness. The same ``to_float`` runs on numpy (metrics) and on torch
  tensors on the training device (the trainer never copies batches from the
  host).

Sampling uses ``numpy.random.RandomState`` on the host side because the
evaluation protocol must reproduce the study's own draws (its metrics take a
RandomState); device-side sampling takes a ``torch.Generator``.

Datasets read from published files (smallNORB, Cars3D, Shapes3D, MPI3D) derive
from :class:`PreparedData`: the original files are read and validated once into
a *prepared cache* under ``<data_root>/<name>/prepared/`` (``images.npy``, uint8
``(N, C, H, W)`` in grid order, plus ``info.json``), which later loads
memory-map in milliseconds. Policy: a dataset loads from its prepared cache if
a valid one exists, else prepares it on first use of ``images`` (with a
message on stderr); ``disentbench data prepare NAME`` does it ahead of time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from disentbench.core.paths import DatasetNotFoundError, data_root


class GroundTruthData:
    """Base class: subclasses set ``factor_names``, ``factor_sizes`` and ``images``.

    ``images`` is a uint8 array ``(N, C, H, W)`` in grid order: the flat index of
    a factor vector is ``sum(factor * bases)`` with the last factor varying
    fastest. Datasets with nuisance factors that are not ground truth
    (smallNORB's instance) override the index helpers.
    """

    name: str = "dataset"
    factor_names: tuple[str, ...] = ()
    factor_sizes: tuple[int, ...] = ()
    #: multiply uint8 pixels by this to get [0, 1] floats (dSprites stores 0/1).
    pixel_scale: float = 1.0 / 255.0

    # -- geometry -----------------------------------------------------------
    @property
    def images(self) -> np.ndarray:
        raise NotImplementedError

    def check(self) -> None:
        """Raise a one-line error if the dataset's files are missing or malformed.

        Called before a study writes anything to the tracking store; must be
        cheap (validate headers, not pixels) or a no-op.
        """

    # -- files and preparation (defaults: a dataset with nothing to prepare) --
    #: True for datasets read once from original files into a prepared cache.
    needs_preparation: ClassVar[bool] = False

    def source_files(self) -> list[Path]:
        """The original files this dataset reads (for checksums and listings); [] when none."""
        return []

    def files_present(self) -> bool:
        """Whether the original files are found (not whether they are valid).

        Default: every :meth:`source_files` entry exists; a dataset that lists
        none is asked through :meth:`check` whether anything is missing.
        """
        files = self.source_files()
        if files:
            return all(path.is_file() for path in files)
        try:
            self.check()
        except DatasetNotFoundError:
            return False
        except Exception:  # present but malformed: still "found"
            return True
        return True

    def is_prepared(self) -> bool:
        """Whether loading needs no preparation step (always, unless overridden)."""
        return True

    def prepare(self, source: Path | None = None) -> Path | None:
        """Build the dataset's prepared cache; returns its folder, or None when there is none.

        The default validates the files (:meth:`check`) and prepares nothing.
        """
        self.check()
        return None

    @property
    def num_factors(self) -> int:
        return len(self.factor_sizes)

    @property
    def observation_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one float observation as the model sees it."""
        return tuple(self.images.shape[1:])

    @property
    def num_observations(self) -> int:
        return int(np.prod(self.factor_sizes))

    @cached_property
    def factor_bases(self) -> np.ndarray:
        sizes = np.asarray(self.factor_sizes, dtype=np.int64)
        return np.concatenate([np.cumprod(sizes[::-1])[::-1][1:], [1]]).astype(np.int64)

    def index_of(self, factors: np.ndarray) -> np.ndarray:
        """Flat image index of each factor vector (rows)."""
        factors = np.asarray(factors, dtype=np.int64)
        return factors @ self.factor_bases

    def factors_of(self, index: np.ndarray) -> np.ndarray:
        """Factor vectors (rows) of flat image indices."""
        index = np.asarray(index, dtype=np.int64)
        return (index[..., None] // self.factor_bases) % np.asarray(self.factor_sizes, dtype=np.int64)

    # -- host-side sampling (evaluation) -------------------------------------
    def sample_factors(self, num: int, random_state: np.random.RandomState) -> np.ndarray:
        """Draw ``num`` factor vectors uniformly, one factor at a time (the study's draw order)."""
        factors = np.zeros((num, self.num_factors), dtype=np.int64)
        for i, size in enumerate(self.factor_sizes):
            factors[:, i] = random_state.randint(size, size=num)
        return factors

    def sample_observations_from_factors(self, factors: np.ndarray, random_state: np.random.RandomState) -> np.ndarray:
        """Float32 observations ``(n, C, H, W)`` for the given factor vectors."""
        return self.to_float(self.images[self.index_of(factors)], random_state)

    def sample(self, num: int, random_state: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
        factors = self.sample_factors(num, random_state)
        return factors, self.sample_observations_from_factors(factors, random_state)

    def sample_observations(self, num: int, random_state: np.random.RandomState) -> np.ndarray:
        return self.sample(num, random_state)[1]

    # -- pixels ---------------------------------------------------------------
    def to_float(self, images, random_state):
        """uint8 images -> float observations in [0, 1].

        ``images`` is a numpy array with a ``numpy.random.RandomState``, or a
        torch tensor (any device) with a ``torch.Generator`` on that device.
        Variants with nuisance randomness override this and must draw their
        randomness from ``random_state`` only.
        """
        if isinstance(images, torch.Tensor):
            return images.to(torch.float32) * self.pixel_scale
        return images.astype(np.float32) * np.float32(self.pixel_scale)

    def device_images(self, device: torch.device | str) -> torch.Tensor:
        """The uint8 image array as a tensor on ``device`` (cached per device)."""
        device = torch.device(device)
        cache = self.__dict__.setdefault("_device_images", {})
        key = str(device)
        if key not in cache:
            cache[key] = torch.from_numpy(np.ascontiguousarray(self.images)).to(device)
        return cache[key]

    def holds_device_images(self, device: torch.device | str) -> bool:
        """Whether ``device_images(device)`` is cached already (so it would add nothing to the device)."""
        return str(torch.device(device)) in self.__dict__.get("_device_images", {})

    def release_device_images(self) -> None:
        """Drop the cached device copies (the memory is freed once no tensor refers to them)."""
        self.__dict__.pop("_device_images", None)

    def sample_batch_on_device(self, batch_size: int, generator: torch.Generator, device) -> torch.Tensor:
        """A float batch drawn i.i.d. uniformly over the grid, made entirely on ``device``."""
        images = self.device_images(device)
        index = torch.randint(images.shape[0], (batch_size,), generator=generator, device=images.device)
        return self.to_float(images[index], generator)


# =============================================================================
# Datasets prepared once from published files
# =============================================================================


class DatasetFormatError(ValueError):
    """A dataset file exists but is not what it should be (truncated, wrong shape, dtype, grid...).

    ``str(error)`` is one line naming the file and what is wrong. Subclasses
    ``ValueError`` so the CLI's bad-input handling (exit 2) applies.
    """

    def __init__(self, message: str, path: Path | str | None = None):
        super().__init__(message)
        self.message = message
        self.path = Path(path) if path is not None else None

    def __str__(self) -> str:
        return self.message


class ChecksumWarning(UserWarning):
    """A source file's SHA-256 differs from the published one (damaged file or another release)."""


PREPARED_IMAGES = "images.npy"
PREPARED_INFO = "info.json"
_LOCK_NAME = ".prepare.lock"


def sha256_of(path: Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a synced temporary file renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An advisory inter-process lock (POSIX flock), so concurrent workers prepare once."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent preparers just race to identical files
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _npy_header(handle) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(handle)
    raise ValueError(f"unsupported .npy format version {version}")


def npz_member_header(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of ``key`` in the npz at ``path`` without reading its data.

    Raises :class:`DatasetFormatError` naming the file when it is not an npz,
    lacks the key, or the member is not a plain C-ordered array.
    """
    if not zipfile.is_zipfile(path):
        raise DatasetFormatError(f"{path} is not an npz (zip) archive: damaged, truncated or another format", path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if f"{key}.npy" not in names:
                found = ", ".join(sorted(n.removesuffix(".npy") for n in names)) or "none"
                raise DatasetFormatError(f"{path} has no `{key}` array (found: {found})", path)
            with archive.open(f"{key}.npy") as handle:
                shape, fortran, dtype = _npy_header(handle)
    except DatasetFormatError:
        raise
    except Exception as exc:
        raise DatasetFormatError(f"{path}: cannot read the `{key}` header ({type(exc).__name__}: {exc})", path) from None
    if fortran or dtype.hasobject:
        raise DatasetFormatError(f"{path}: `{key}` is not a plain C-ordered numeric array", path)
    return tuple(int(n) for n in shape), dtype


def iter_npz_rows(
    path: Path, key: str, rows_per_chunk: int, row_ndim: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Stream ``key`` of an npz as ``(first_row, rows)`` chunks, never all in memory.

    Rows are along axis 0, or, with ``row_ndim``, along all leading axes but
    the last ``row_ndim`` flattened into one (C order). Works for stored and
    deflated members (a multi-GB array is decompressed as it streams). A
    member that ends early raises :class:`DatasetFormatError`.
    """
    shape, dtype = npz_member_header(path, key)
    split = 1 if row_ndim is None else len(shape) - row_ndim
    row_shape, total = shape[split:], int(np.prod(shape[:split], dtype=np.int64))
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as handle:
            _npy_header(handle)
            for start in range(0, total, rows_per_chunk):
                count = min(rows_per_chunk, total - start)
                buffer = handle.read(count * row_bytes)
                if len(buffer) != count * row_bytes:
                    raise DatasetFormatError(
                        f"{path}: `{key}` ends after {start + len(buffer) // max(row_bytes, 1)} of {total} rows (truncated)",
                        path,
                    )
                yield start, np.frombuffer(buffer, dtype=dtype).reshape((count,) + row_shape)
    except DatasetFormatError:
        raise
    except Exception as exc:  # zlib/CRC errors, EOF inside a damaged archive
        raise DatasetFormatError(f"{path}: cannot read `{key}` ({type(exc).__name__}: {exc}); the file is damaged", path) from None


def grid_index_from_factors(
    factors: np.ndarray, grid_sizes: tuple[int, ...], what: str, path: Path | str
) -> np.ndarray:
    """Flat grid index of each row of integer ``factors``, checking they form the full grid once.

    Readers build the image order from the files' own labels with this, never
    assuming the file order, and refuse (naming ``path``) a grid with missing
    or repeated cells.
    """
    factors = np.asarray(factors, dtype=np.int64)
    sizes = np.asarray(grid_sizes, dtype=np.int64)
    if factors.ndim != 2 or factors.shape[1] != len(sizes):
        raise DatasetFormatError(f"{path}: {what} has shape {factors.shape}, expected (n, {len(sizes)})", path)
    out_of_range = (factors < 0) | (factors >= sizes)
    if out_of_range.any():
        row, column = map(int, np.argwhere(out_of_range)[0])
        raise DatasetFormatError(
            f"{path}: {what} row {row} has factor {column} = {factors[row, column]}, outside 0..{sizes[column] - 1}",
            path,
        )
    bases = np.concatenate([np.cumprod(sizes[::-1])[::-1][1:], [1]])
    index = factors @ bases
    total = int(np.prod(sizes))
    counts = np.bincount(index, minlength=total)
    if factors.shape[0] != total or (counts != 1).any():
        missing, repeated = int((counts == 0).sum()), int((counts > 1).sum())
        raise DatasetFormatError(
            f"{path}: {what}: not the full {'x'.join(map(str, grid_sizes))} factor grid "
            f"({factors.shape[0]} rows, {missing} combinations missing, {repeated} repeated)",
            path,
        )
    return index


class PreparedData(GroundTruthData):
    """A dataset read once from its published files into a memory-mapped cache.

    Subclasses set ``name``, ``factor_names``, ``factor_sizes``, ``image_shape``
    and optionally a stored grid with nuisance dimensions (``grid_names``,
    ``grid_sizes``, ``latent_dims``; smallNORB's instance), and implement:

    * ``expected_files(source)``: the original files at ``source`` (a folder or
      file overriding the configured location when not None), existing or not;
    * ``not_found_message(missing, source)``: the one-line error when some are
      missing (where they were looked for, how to get them);
    * ``check_files(source)``: cheap validation of those files (headers, sizes);
    * ``write_images(out, source)``: fill ``out`` (uint8 ``(N, C, H, W)``, grid
      order) from the files, validating shapes, dtypes and the factor grid;
      return extra JSON-able info (e.g. ``factor_values``).

    Stored grid: the images are a full factorial grid over ``grid_sizes`` (last
    varying fastest). Ground-truth factors are the ``latent_dims`` of it; the
    other dimensions are nuisances drawn uniformly from the random state for
    each observation (the study's "sampled at random").

    The cache (``prepared_dir``: ``images.npy`` + ``info.json``) is written
    atomically (temporary file, fsync, ``os.replace``; ``info.json`` last) under
    an advisory lock; it is valid when ``info.json`` matches this dataset's
    name, version and layout and ``images.npy`` has the exact expected header
    and byte size. A cache whose recorded source files differ in size from the
    originals now present is treated as stale and rebuilt.
    """

    needs_preparation: ClassVar[bool] = True
    #: Bump when the prepared pixels or layout change: older caches are rebuilt.
    prepared_version: ClassVar[int] = 1
    #: Published SHA-256 digests of source files, by file name (see each plugin).
    known_sha256: ClassVar[dict[str, str]] = {}
    image_shape: tuple[int, int, int] = (3, 64, 64)
    #: Stored grid; empty means "the factors themselves".
    grid_names: tuple[str, ...] = ()
    grid_sizes: tuple[int, ...] = ()
    latent_dims: tuple[int, ...] = ()

    def __init__(self, prepared_dir: Path | None = None):
        self.prepared_dir = Path(prepared_dir) if prepared_dir else data_root() / self.name / "prepared"
        if not self.grid_sizes:
            self.grid_names, self.grid_sizes = tuple(self.factor_names), tuple(self.factor_sizes)
            self.latent_dims = tuple(range(len(self.factor_sizes)))

    # -- to implement ------------------------------------------------------------
    def expected_files(self, source: Path | None = None) -> list[Path]:
        raise NotImplementedError

    def not_found_message(self, missing: list[Path], source: Path | None = None) -> str:
        raise NotImplementedError

    def check_files(self, source: Path | None = None) -> None:
        raise NotImplementedError

    def write_images(self, out: np.ndarray, source: Path | None = None) -> dict[str, Any]:
        raise NotImplementedError

    # -- geometry ------------------------------------------------------------------
    @property
    def observation_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.image_shape  # known without touching the pixels
        return (int(channels), int(height), int(width))

    @property
    def num_images(self) -> int:
        return int(np.prod(self.grid_sizes))

    @property
    def num_observations(self) -> int:
        return self.num_images

    @cached_property
    def grid_bases(self) -> np.ndarray:
        sizes = np.asarray(self.grid_sizes, dtype=np.int64)
        return np.concatenate([np.cumprod(sizes[::-1])[::-1][1:], [1]]).astype(np.int64)

    @property
    def nuisance_dims(self) -> tuple[int, ...]:
        return tuple(d for d in range(len(self.grid_sizes)) if d not in self.latent_dims)

    def index_of(self, factors: np.ndarray) -> np.ndarray:
        """Flat image index of full stored-grid vectors (rows).

        Without nuisance dimensions these are the factor vectors. With them,
        a factor vector names several images; pass full grid vectors
        (``grid_sizes`` columns), or use :meth:`sample_observations_from_factors`.
        """
        factors = np.asarray(factors, dtype=np.int64)
        if factors.shape[-1] != len(self.grid_sizes):
            raise ValueError(
                f"{self.name}: index_of needs {len(self.grid_sizes)} columns ({', '.join(self.grid_names)}), "
                f"got {factors.shape[-1]}"
            )
        return factors @ self.grid_bases

    def grid_vectors_of(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        return (index[..., None] // self.grid_bases) % np.asarray(self.grid_sizes, dtype=np.int64)

    def factors_of(self, index: np.ndarray) -> np.ndarray:
        """Ground-truth factor vectors of flat image indices (nuisance dimensions dropped)."""
        return self.grid_vectors_of(index)[..., list(self.latent_dims)]

    def grid_vectors_from_factors(self, factors: np.ndarray, random_state: np.random.RandomState) -> np.ndarray:
        """Full grid vectors: the given factors, nuisances drawn uniformly (one draw per nuisance, in order)."""
        factors = np.asarray(factors, dtype=np.int64)
        grid = np.zeros((factors.shape[0], len(self.grid_sizes)), dtype=np.int64)
        grid[:, list(self.latent_dims)] = factors
        for dim in self.nuisance_dims:
            grid[:, dim] = random_state.randint(self.grid_sizes[dim], size=factors.shape[0])
        return grid

    def sample_observations_from_factors(self, factors: np.ndarray, random_state: np.random.RandomState) -> np.ndarray:
        index = self.index_of(self.grid_vectors_from_factors(factors, random_state))
        return self.to_float(self.images[index], random_state)

    # sample_batch_on_device (base class) draws image indices uniformly over the
    # whole stored grid: uniform factors *and* uniform nuisances, as above.

    # -- files -----------------------------------------------------------------------
    def files_in(self, source: Path | None = None) -> list[Path]:
        """The original files, all present, or :class:`DatasetNotFoundError` saying what is missing."""
        files = self.expected_files(source)
        missing = [path for path in files if not path.is_file()]
        if missing or not files:
            raise DatasetNotFoundError(self.not_found_message(missing, source), missing[0] if missing else source)
        return files

    def source_files(self) -> list[Path]:
        return self.expected_files(None)

    def files_present(self) -> bool:
        try:
            return all(path.is_file() for path in self.files_in(None))
        except DatasetNotFoundError:
            return False

    @property
    def images_path(self) -> Path:
        return self.prepared_dir / PREPARED_IMAGES

    @property
    def info_path(self) -> Path:
        return self.prepared_dir / PREPARED_INFO

    def _layout(self) -> dict[str, Any]:
        return {
            "dataset": self.name,
            "version": self.prepared_version,
            "factor_names": list(self.factor_names),
            "factor_sizes": list(self.factor_sizes),
            "grid_names": list(self.grid_names),
            "grid_sizes": list(self.grid_sizes),
            "latent_dims": list(self.latent_dims),
            "image_shape": list(self.image_shape),
            "num_images": self.num_images,
            "dtype": "uint8",
        }

    def prepared_info(self) -> dict[str, Any] | None:
        """The cache's ``info.json`` if it is a valid cache of this dataset, else None."""
        try:
            info = json.loads(self.info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict) or any(info.get(k) != v for k, v in self._layout().items()):
            return None
        try:
            with open(self.images_path, "rb") as handle:
                shape, fortran, dtype = _npy_header(handle)
                data_offset = handle.tell()
            size = self.images_path.stat().st_size
        except (OSError, ValueError):
            return None
        expected = (self.num_images,) + tuple(self.image_shape)
        if tuple(shape) != expected or fortran or dtype != np.uint8 or size != data_offset + int(np.prod(expected)):
            return None
        if self._sources_changed(info):
            return None
        return info

    def _sources_changed(self, info: dict[str, Any]) -> bool:
        recorded = {Path(s["file"]).name: s.get("bytes") for s in info.get("sources", []) if "file" in s}
        try:
            current = {p.name: p.stat().st_size for p in self.files_in(None)}
        except (DatasetNotFoundError, OSError):
            return False  # originals gone (or moved): the cache stands on its own
        if set(current) != set(recorded):
            return True
        return any(recorded[name] != size for name, size in current.items())

    def is_prepared(self) -> bool:
        return self.prepared_info() is not None

    def check(self) -> None:
        """Cheap: a valid prepared cache suffices; otherwise the original files' headers are validated."""
        if not self.is_prepared():
            self.check_files(None)

    @property
    def factor_values(self) -> tuple[np.ndarray | None, ...] | None:
        """The value of each factor index, from the prepared cache (None where unknown)."""
        info = self.prepared_info() or {}
        values = info.get("factor_values")
        if not values:
            return None
        return tuple(np.asarray(values[name]) if values.get(name) is not None else None for name in self.factor_names)

    # -- checksums ------------------------------------------------------------------
    def _checksums(self, files: list[Path]) -> list[dict[str, Any]]:
        sources = []
        for path in files:
            digest = sha256_of(path)
            known = self.known_sha256.get(path.name)
            if known is not None and known.lower() != digest:
                warnings.warn(
                    f"{path}: SHA-256 {digest} differs from the published {known}; "
                    "the file may be damaged or from another release",
                    ChecksumWarning,
                    stacklevel=3,
                )
            sources.append({"file": str(path.resolve()), "bytes": path.stat().st_size, "sha256": digest})
        return sources

    def checksum_status(self) -> str:
        """``ok``, ``mismatch: FILE...``, ``unverified`` (no published digest) or ``-`` (not prepared).

        Uses the digests recorded when the cache was prepared; comparing them
        with ``known_sha256`` here means a digest added later applies at once.
        """
        info = self.prepared_info()
        if info is None:
            return "-"
        bad, verified = [], 0
        for source in info.get("sources", []):
            known = self.known_sha256.get(Path(source["file"]).name)
            if known is None:
                continue
            if known.lower() == source.get("sha256"):
                verified += 1
            else:
                bad.append(Path(source["file"]).name)
        if bad:
            return "mismatch: " + ", ".join(bad)
        return f"ok ({verified} verified)" if verified else "unverified"

    # -- preparing ------------------------------------------------------------------
    def prepare(self, source: Path | None = None) -> Path:
        """Read and validate the original files (at ``source``, else the configured place) into the cache.

        Always rebuilds. Nothing is replaced unless every file validated.
        """
        source = Path(source).expanduser() if source is not None else None
        files = self.files_in(source)
        self.check_files(source)
        self.prepared_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.prepared_dir / _LOCK_NAME):
            self._build(files, source)
        return self.prepared_dir

    def ensure_prepared(self) -> Path:
        """Prepare the cache unless a valid one exists (another process may be building it)."""
        if self.is_prepared():
            return self.prepared_dir
        files = self.files_in(None)
        self.check_files(None)
        print(
            f"{self.name}: no prepared cache in {self.prepared_dir}; preparing it from the original files "
            "(once; later loads memory-map it in seconds)",
            file=sys.stderr,
            flush=True,
        )
        self.prepared_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.prepared_dir / _LOCK_NAME):
            if not self.is_prepared():
                self._build(files, None)
        return self.prepared_dir

    def _build(self, files: list[Path], source: Path | None) -> None:
        started = time.time()
        self.__dict__.pop("_progress_last", None)
        sources = self._checksums(files)
        shape = (self.num_images,) + tuple(self.image_shape)
        fd, tmp_name = tempfile.mkstemp(dir=self.prepared_dir, prefix=f".{PREPARED_IMAGES}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            extra = self.write_images(out, source) or {}
            out.flush()
            del out
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared
            # info.json is the completion marker: drop it before swapping pixels.
            self.info_path.unlink(missing_ok=True)
            os.replace(tmp, self.images_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        info = dict(self._layout())
        info.update(extra)
        info["sources"] = sources
        info["prepared_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        info["prepare_seconds"] = round(time.time() - started, 1)
        atomic_write_text(self.info_path, json.dumps(info, indent=1) + "\n")
        for key in ("images", "_device_images"):
            self.__dict__.pop(key, None)

    def _progress(self, done: int, total: int) -> None:
        """Progress lines on stderr at every 10% of a long preparation."""
        step = max(total // 10, 1)
        last = self.__dict__.get("_progress_last", -1)
        if done >= total or done // step > last:
            self.__dict__["_progress_last"] = done // step
            print(f"{self.name}: {done:,}/{total:,} images", file=sys.stderr, flush=True)
            if done >= total:
                self.__dict__.pop("_progress_last", None)

    # -- loading ----------------------------------------------------------------------
    @cached_property
    def images(self) -> np.ndarray:
        self.ensure_prepared()
        try:
            # "c" (copy-on-write): writable for torch.from_numpy, never written back.
            images = np.load(self.images_path, mmap_mode="c", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DatasetFormatError(
                f"cannot read the prepared {self.name} cache {self.images_path} ({exc}); "
                f"rebuild it with `disentbench data prepare {self.name} --force`",
                self.images_path,
            ) from None
        expected = (self.num_images,) + tuple(self.image_shape)
        if tuple(images.shape) != expected or images.dtype != np.uint8:
            raise DatasetFormatError(
                f"prepared {self.name} cache {self.images_path} is {images.dtype} {tuple(images.shape)}, "
                f"expected uint8 {expected}; rebuild it with `disentbench data prepare {self.name} --force`",
                self.images_path,
            )
        return images

    def __getstate__(self):
        # Send workers the recipe, not the pixels: they memory-map the cache themselves.
        state = dict(self.__dict__)
        for key in ("images", "_device_images", "_progress_last"):
            state.pop(key, None)
        return state
