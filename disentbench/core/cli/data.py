"""``disentbench data``: list, prepare, inspect and preview the ground-truth datasets.

Datasets read from published files are validated and written once into a
memory-mapped prepared cache (``core.data.PreparedData``); ``data prepare``
does that ahead of time, otherwise the first use does it. Bad input (an
unknown dataset, missing or malformed files) exits 2 with one line naming the
file and what is wrong.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from pathlib import Path

import click
import numpy as np

from disentbench.core.cli._common import BadInput, check_data_root, plugin_registry, term_width


@contextlib.contextmanager
def _file_errors():
    """Dataset file problems (missing, malformed, a missing reader) -> exit 2 with their one-line message."""
    from disentbench.core.data.ground_truth import ChecksumWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ChecksumWarning)
        try:
            yield
        except (FileNotFoundError, ValueError, ImportError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BadInput(message) from None
        finally:
            for warning in caught:
                if issubclass(warning.category, ChecksumWarning):
                    click.echo(f"warning: {warning.message}", err=True)
                else:
                    warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _dataset(name: str):
    registry = plugin_registry()
    try:
        registration = registry.get("dataset", name)
    except KeyError as exc:
        raise BadInput(exc.args[0]) from None
    try:
        return registration, registration.factory(registration.make_config())
    except Exception as exc:
        raise BadInput(f"dataset {name!r} cannot be created: {type(exc).__name__}: {exc}") from None


def _is_prepared_kind(data) -> bool:
    return bool(getattr(data, "needs_preparation", False))


def _factors_text(data) -> str:
    return ", ".join(f"{name} {size}" for name, size in zip(data.factor_names, data.factor_sizes))


def _status(data) -> dict:
    """One row of ``data list``; never raises (a broken dataset shows its error)."""
    row = {
        "factors": dict(zip(data.factor_names, map(int, data.factor_sizes))),
        "images": int(getattr(data, "num_images", 0) or np.prod(data.factor_sizes)),
    }
    try:
        row["files"] = "yes" if data.files_present() else "no"
    except Exception as exc:
        row["files"] = f"error: {exc}"
    if _is_prepared_kind(data):
        row["prepared"] = "yes" if data.is_prepared() else "no"
        row["checksums"] = data.checksum_status()
    else:
        row["prepared"] = "-"  # read directly, nothing to prepare
        row["checksums"] = "-"
    return row


@click.group("data")
def data():
    """Datasets: which are present and prepared, prepare them, inspect and preview them.

    Files live under $DISENTBENCH_DATA (default ~/.cache/disentbench) unless a
    dataset's `path` says otherwise; prepared caches under <data_root>/<name>/prepared/.

    \b
    Example:
      disentbench data list
      disentbench data prepare smallnorb
      disentbench data show cars3d --out cars3d.png
    """
    # a $DISENTBENCH_DATA that is a file or cannot be written: one line and exit 2, before any command
    check_data_root()


@data.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(as_json):
    """Every dataset plugin: factors, image count, files present, prepared, checksums.

    \b
    Example:
      disentbench data list
    """
    from disentbench.core.paths import data_root

    rows = []
    for registration in plugin_registry().all("dataset"):
        try:
            dataset = registration.factory(registration.make_config())
            row = _status(dataset)
        except Exception as exc:
            row = {"factors": {}, "images": 0, "files": f"error: {type(exc).__name__}: {exc}", "prepared": "-", "checksums": "-"}
        rows.append({"name": registration.name, **row})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "factors", "images", "files", "prepared", "checksums", box=None, pad_edge=False)
    for row in rows:
        factors = ", ".join(f"{k} {v}" for k, v in row["factors"].items())
        table.add_row(row["name"], factors, f"{row['images']:,}", row["files"], row["prepared"], row["checksums"])

    Console(width=max(160, term_width())).print(table)
    click.echo(f"data root: {data_root()} ($DISENTBENCH_DATA)")


@data.command("prepare")
@click.argument("name")
@click.option(
    "--from",
    "source",
    type=click.Path(exists=True, path_type=Path),
    help="Folder (or file) holding the original files, instead of the configured place.",
)
@click.option("--force", is_flag=True, help="Rebuild even if a valid prepared cache exists.")
def prepare_cmd(name, source, force):
    """Validate a dataset's original files and write its memory-mapped prepared cache.

    Loading a prepared dataset takes seconds; without this step the first use prepares it.

    \b
    Example:
      disentbench data prepare smallnorb
      disentbench data prepare shapes3d --from ~/Downloads/3dshapes.h5
    """
    _, dataset = _dataset(name)
    with _file_errors():
        if not _is_prepared_kind(dataset):
            if source is not None:
                raise BadInput(f"{name} has no prepared form; set the dataset's `path` to read other files")
            dataset.check()
            click.echo(f"{name} needs no preparation; its files are valid.")
            return
        if dataset.is_prepared() and source is None and not force:
            click.echo(f"{name} is already prepared in {dataset.prepared_dir} (--force rebuilds it).")
            return
        started = time.time()
        folder = dataset.prepare(source)
    click.echo(
        f"prepared {name}: {dataset.num_images:,} images {tuple(dataset.image_shape)} uint8 in {folder} "
        f"({time.time() - started:.1f} s); checksums: {dataset.checksum_status()}"
    )


@data.command("info")
@click.argument("name")
def info_cmd(name):
    """A dataset's factors, files, prepared cache and checksums.

    \b
    Example:
      disentbench data info cars3d
    """
    registration, dataset = _dataset(name)
    click.echo(f"{name}: {registration.description}")
    click.echo(f"factors: {_factors_text(dataset)}")
    if not _is_prepared_kind(dataset):
        try:
            dataset.check()
            click.echo("files: present and valid")
        except (FileNotFoundError, ValueError, ImportError) as exc:
            click.echo(f"files: {str(exc).splitlines()[0]}")
        return
    nuisances = [f"{dataset.grid_names[d]} {dataset.grid_sizes[d]}" for d in dataset.nuisance_dims]
    if nuisances:
        click.echo(f"nuisance (drawn uniformly per observation): {', '.join(nuisances)}")
    click.echo(f"images: {dataset.num_images:,} x {tuple(dataset.image_shape)} uint8")
    files = dataset.source_files()
    present = [path for path in files if path.is_file()]
    if len(files) <= 8:
        for path in files:
            click.echo(f"original: {path} ({'present' if path.is_file() else 'missing'})")
    else:
        click.echo(f"originals: {len(present)} of {len(files)} files present in {files[0].parent}")
    if not files:
        click.echo(f"originals: none found ({dataset.not_found_message([], None)})")
    info = dataset.prepared_info()
    if info is None:
        click.echo(f"prepared: no (run `disentbench data prepare {name}`; cache folder {dataset.prepared_dir})")
        return
    size = dataset.images_path.stat().st_size
    click.echo(f"prepared: {dataset.prepared_dir} ({size / 2**20:,.1f} MiB, {info.get('prepared_at', '?')})")
    click.echo(f"checksums: {dataset.checksum_status()}")
    sources = info.get("sources", [])
    for source in sources[:8]:
        click.echo(f"  sha256 {source.get('sha256')}  {Path(source['file']).name}")
    if len(sources) > 8:
        click.echo(f"  ... and {len(sources) - 8} more in {dataset.info_path}")


@data.command("show")
@click.argument("name")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="PNG to write (default NAME_factors.png).")
@click.option("--seed", type=int, default=0, show_default=True, help="Which random observation the rows start from.")
@click.option("--columns", type=click.IntRange(2, 64), default=10, show_default=True, help="Values shown per factor.")
def show_cmd(name, out, seed, columns):
    """A PNG grid: one row per factor, varying it with the other factors fixed at a random sample.

    A factor with more values than columns shows evenly spaced values; short
    rows are padded with white cells.

    \b
    Example:
      disentbench data show smallnorb --out norb.png
    """
    from disentbench.core.display.images import save_png, tile

    out = out or Path(f"{name}_factors.png")
    if out.suffix.lower() != ".png":
        raise BadInput(f"--out {out} must end in .png")
    _, dataset = _dataset(name)
    random_state = np.random.RandomState(seed)
    with _file_errors():
        dataset.check()
        if hasattr(dataset, "grid_vectors_from_factors"):  # stored grid with nuisances: fix them too
            start = dataset.grid_vectors_from_factors(dataset.sample_factors(1, random_state), random_state)[0]
            dims, sizes = list(dataset.latent_dims), dataset.grid_sizes
            names = [dataset.grid_names[d] for d in dims]
        else:
            start = dataset.sample_factors(1, random_state)[0]
            dims, sizes, names = list(range(dataset.num_factors)), dataset.factor_sizes, list(dataset.factor_names)
        rows = []
        for dim in dims:
            values = np.unique(np.linspace(0, sizes[dim] - 1, min(sizes[dim], columns)).round().astype(np.int64))
            vectors = np.repeat(start[None], len(values), axis=0)
            vectors[:, dim] = values
            images = dataset.to_float(np.asarray(dataset.images[dataset.index_of(vectors)]), random_state)
            if len(images) < columns:  # blank (white) cells pad short rows
                blank = np.ones((columns - len(images),) + images.shape[1:], dtype=images.dtype)
                images = np.concatenate([images, blank])
            rows.append(images)
        save_png(tile(np.concatenate(rows), rows=len(rows), cols=columns), out)
    click.echo(f"wrote {out}: rows {', '.join(names)}; {columns} columns")
