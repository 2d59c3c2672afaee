"""Pictures of a trained model: reconstructions and latent traversals (PNG grid and
animated GIF, each latent labelled with its index and mean KL, each column of
the grid with its value), and a per-run score card.

Everything here renders off-screen (numpy, Pillow, matplotlib ``Figure`` objects
with the Agg canvas); pyplot is never imported, so no global figure state and no
GUI backend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from disentbench.core.contracts import Model
from disentbench.core.data.ground_truth import GroundTruthData

TRAVERSAL_STEPS = 9  # values per latent
TRAVERSAL_LIMIT = 2.0  # from -limit to +limit: the bulk of the N(0, 1) prior
KL_OBSERVATIONS = 256  # observations a latent's KL label is averaged over


def tile(images: np.ndarray, rows: int, cols: int, pad: int = 2) -> np.ndarray:
    """(rows*cols, C, H, W) floats in [0, 1] -> one (H', W', 3) image with white padding."""
    n, channels, height, width = images.shape
    if n != rows * cols:
        raise ValueError(f"tile needs {rows * cols} images, got {n}")
    if channels == 1:
        images = np.repeat(images, 3, axis=1)
    canvas = np.ones((rows * (height + pad) + pad, cols * (width + pad) + pad, 3), dtype=np.float32)
    for index in range(n):
        r, c = divmod(index, cols)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        canvas[top : top + height, left : left + width] = images[index].transpose(1, 2, 0)
    return np.clip(canvas, 0.0, 1.0)


def save_png(image: np.ndarray, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.image

    path.parent.mkdir(parents=True, exist_ok=True)
    matplotlib.image.imsave(path, image)
    return path


@torch.no_grad()
def reconstruction_grid(model: Model, data: GroundTruthData, device, *, num: int = 8, seed: int = 0) -> np.ndarray:
    """Top row: observations; bottom row: the model's reconstructions (sigmoid of logits of the mean code)."""
    observations = data.sample_observations(num, np.random.RandomState(seed))
    x = torch.from_numpy(observations).to(device)
    mean, _ = model.encode(x)
    recon = torch.sigmoid(model.decode(mean)).float().cpu().numpy()
    return tile(np.concatenate([observations, recon]), rows=2, cols=num)


@torch.no_grad()
def traversal_images(
    model: Model, data: GroundTruthData, device, *, steps: int = TRAVERSAL_STEPS, limit: float = TRAVERSAL_LIMIT, seed: int = 0
) -> np.ndarray:
    """Decoded latent traversals, shape (num_latent, steps, C, H, W), floats in [0, 1].

    Latent ``i`` is set to ``steps`` values from -limit to +limit (the prior's
    bulk), all other latents held at a data point's mean code.
    """
    observation = data.sample_observations(1, np.random.RandomState(seed))
    mean, _ = model.encode(torch.from_numpy(observation).to(device))
    num_latent = mean.shape[1]
    values = torch.linspace(-limit, limit, steps, device=mean.device, dtype=mean.dtype)
    codes = mean.repeat(num_latent * steps, 1)
    for latent in range(num_latent):
        codes[latent * steps : (latent + 1) * steps, latent] = values
    decoded = torch.sigmoid(model.decode(codes)).float().cpu().numpy()
    return decoded.reshape(num_latent, steps, *decoded.shape[1:])


def traversal_grid_from(traversals: np.ndarray) -> np.ndarray:
    """One row per latent, one column per traversal value."""
    num_latent, steps = traversals.shape[:2]
    return tile(traversals.reshape(num_latent * steps, *traversals.shape[2:]), rows=num_latent, cols=steps)


@torch.no_grad()
def traversal_grid(
    model: Model, data: GroundTruthData, device, *, steps: int = TRAVERSAL_STEPS, limit: float = TRAVERSAL_LIMIT, seed: int = 0
) -> np.ndarray:
    """One row per latent: that latent set to values from -limit to +limit (the prior's bulk),
    all other latents held at a data point's mean code."""
    return traversal_grid_from(traversal_images(model, data, device, steps=steps, limit=limit, seed=seed))


# ---------------------------------------------------------------------------
# labels: which latent (and its KL), which value


@torch.no_grad()
def latent_kl(
    model: Model, data: GroundTruthData, device, *, num: int = KL_OBSERVATIONS, seed: int = 0, batch_size: int = 128
) -> np.ndarray:
    """Each latent's KL(q(z_i | x) || N(0, 1)), averaged over ``num`` observations (``RandomState(seed)``).

    A latent the model does not use sits at the prior, with a KL near 0; the
    traversal labels show it so such rows can be told from informative ones.
    """
    observations = data.sample_observations(num, np.random.RandomState(seed))
    total = None
    for start in range(0, num, batch_size):
        mean, logvar = model.encode(torch.from_numpy(observations[start : start + batch_size]).to(device))
        mean, logvar = mean.double(), logvar.double()
        part = (0.5 * (mean.square() + logvar.exp() - logvar - 1.0)).sum(dim=0)
        total = part if total is None else total + part
    if total is None:
        raise ValueError("latent_kl needs at least one observation")
    return (total / num).cpu().numpy()


def latent_labels(kl: Sequence[float] | np.ndarray) -> list[str]:
    """One label per latent: its index and its mean KL, ``z3 KL 0.42``."""
    return [f"z{i} KL {float(value):.2f}" for i, value in enumerate(kl)]


def value_labels(steps: int, limit: float = TRAVERSAL_LIMIT) -> list[str]:
    """One label per traversal column: the value the latent is set to, ``-2.0`` ... ``+2.0``."""
    return [f"{value:+.1f}" for value in np.linspace(-limit, limit, steps)]


def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def label_grid(
    grid: np.ndarray,
    cell: tuple[int, int],
    *,
    pad: int = 2,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    cell_labels: Sequence[str] | None = None,
) -> np.ndarray:
    """A :func:`tile` grid with text (Pillow's default font) around its cells; (H'', W'', 3) floats in [0, 1].

    ``row_labels`` go in a margin on the left (one per row of cells),
    ``col_labels`` in a strip on top (one per column), ``cell_labels`` in a
    strip above each row of cells (one per cell, reading order). ``cell`` is
    a cell's (height, width) and ``pad`` the padding :func:`tile` used.
    """
    from PIL import Image, ImageDraw

    height, width = cell
    rows = (grid.shape[0] - pad) // (height + pad)
    cols = (grid.shape[1] - pad) // (width + pad)
    font = _font()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_height = int(math.ceil(measure.textbbox((0, 0), "Ag0+-", font=font)[3])) + 1
    left = int(math.ceil(max(measure.textlength(t, font=font) for t in row_labels))) + 6 if row_labels else 0
    top = text_height + 2 if col_labels else 0
    strip = text_height + 1 if cell_labels else 0
    source = Image.fromarray(np.round(np.clip(grid, 0.0, 1.0) * 255).astype(np.uint8), mode="RGB")
    canvas = Image.new("RGB", (grid.shape[1] + left, grid.shape[0] + top + rows * strip), "white")
    draw = ImageDraw.Draw(canvas)
    for r in range(rows):
        band_top = pad + r * (height + pad)
        y = top + band_top + (r + 1) * strip  # where this row of cells lands
        canvas.paste(source.crop((0, band_top, grid.shape[1], band_top + height + pad)), (left, y))
        if row_labels and r < len(row_labels):
            draw.text((2, y + max(0, (height - text_height) // 2)), row_labels[r], fill=(0, 0, 0), font=font)
        for c in range(cols):
            index = r * cols + c
            if cell_labels and index < len(cell_labels) and cell_labels[index]:
                draw.text((left + pad + c * (width + pad), y - strip), cell_labels[index], fill=(0, 0, 0), font=font)
    for c, text in enumerate(col_labels or ()):
        x = left + pad + c * (width + pad) + (width - measure.textlength(text, font=font)) / 2
        draw.text((max(left, x), 1), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def labelled_traversal_grid(
    traversals: np.ndarray, kl: Sequence[float] | np.ndarray, *, limit: float = TRAVERSAL_LIMIT
) -> np.ndarray:
    """:func:`traversal_grid_from` with each row labelled by its latent and KL, each column by its value."""
    num_latent, steps = traversals.shape[:2]
    if len(kl) != num_latent:
        raise ValueError(f"{len(kl)} KL values for {num_latent} latents")
    return label_grid(
        traversal_grid_from(traversals), traversals.shape[-2:],
        row_labels=latent_labels(kl), col_labels=value_labels(steps, limit),
    )


def traversal_frames(
    traversals: np.ndarray, *, cols: int | None = None, kl: Sequence[float] | np.ndarray | None = None
) -> np.ndarray:
    """Animation frames of the traversals: frame ``t`` shows every latent at the ``t``-th value.

    Each frame is a grid with one cell per latent (cell ``i`` = latent ``i``
    traversed, in reading order; ``cols`` defaults to a near-square layout,
    unused cells stay white). With ``kl`` (one value per latent) each cell is
    labelled above with its latent and KL. Returns (steps, H', W', 3) floats in [0, 1].
    """
    num_latent, steps = traversals.shape[:2]
    cols = cols or max(1, math.ceil(math.sqrt(num_latent)))
    rows = math.ceil(num_latent / cols)
    blank = np.ones((rows * cols - num_latent, *traversals.shape[2:]), dtype=traversals.dtype)
    frames = [tile(np.concatenate([traversals[:, t], blank]), rows=rows, cols=cols) for t in range(steps)]
    if kl is not None:
        if len(kl) != num_latent:
            raise ValueError(f"{len(kl)} KL values for {num_latent} latents")
        frames = [label_grid(frame, traversals.shape[-2:], cell_labels=latent_labels(kl)) for frame in frames]
    return np.stack(frames)


def gif_frame_count(steps: int, bounce: bool = True) -> int:
    """Frames :func:`save_gif` writes for ``steps`` traversal values (there and back when ``bounce``)."""
    return 2 * steps - 2 if bounce and steps > 2 else steps


def save_gif(
    frames: np.ndarray,
    path: Path,
    *,
    captions: Sequence[str] | None = None,
    duration_ms: int = 150,
    bounce: bool = True,
    scale: int = 2,
) -> Path:
    """Write (T, H, W, 3) floats in [0, 1] as a looping animated GIF.

    ``bounce`` plays the frames forward then backward (without repeating the
    end frames), so a latent sweeps from -limit to +limit and back; the GIF
    has :func:`gif_frame_count` frames. ``scale`` enlarges each pixel (nearest
    neighbour) so 64x64 images are readable in a browser. ``captions`` (one
    per frame) are written in a strip under the frame. Pillow merges
    consecutive identical frames (a collapsed model's traversal), so such a
    GIF can have fewer frames.
    """
    from PIL import Image, ImageDraw

    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"save_gif needs (T, H, W, 3) frames, got shape {frames.shape}")
    if captions is not None and len(captions) != len(frames):
        raise ValueError(f"{len(captions)} captions for {len(frames)} frames")
    pixels = np.round(np.clip(frames, 0.0, 1.0) * 255).astype(np.uint8)
    if scale > 1:
        pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    rendered = []
    for index in range(len(frames)):
        image = Image.fromarray(pixels[index], mode="RGB")
        if captions is not None:
            strip = 18
            framed = Image.new("RGB", (image.width, image.height + strip), "white")
            framed.paste(image, (0, 0))
            ImageDraw.Draw(framed).text((4, image.height + 3), captions[index], fill=(0, 0, 0))
            image = framed
        rendered.append(image)
    order = list(range(len(frames)))
    if bounce and len(frames) > 2:
        order += list(range(len(frames) - 2, 0, -1))
    sequence = [rendered[i] for i in order]
    path.parent.mkdir(parents=True, exist_ok=True)
    sequence[0].save(path, format="GIF", save_all=True, append_images=sequence[1:], duration=duration_ms, loop=0)
    return path


def save_traversal_gif(
    traversals: np.ndarray, path: Path, *, limit: float = TRAVERSAL_LIMIT, kl: Sequence[float] | np.ndarray | None = None
) -> Path:
    """The animated traversal of :func:`traversal_images` output: frame ``t`` = every latent at value ``t``.

    Cells are the latents in reading order (with ``kl``, each labelled with
    its latent and KL); the caption says the value.
    """
    values = np.linspace(-limit, limit, traversals.shape[1])
    last = traversals.shape[0] - 1
    kl_note = f"; KL: mean over {KL_OBSERVATIONS} observations" if kl is not None else ""
    captions = [f"value {v:+.2f}   cells: latents 0..{last}, row by row{kl_note}" for v in values]
    return save_gif(traversal_frames(traversals, kl=kl), path, captions=captions)


# ---------------------------------------------------------------------------
# score card


def headline_scores(
    scores: Mapping[str, float], headlines: Mapping[str, Sequence[str] | None] | None = None
) -> dict[str, dict[str, float]]:
    """``{representation: {label: score}}`` of the headline scores in ``scores``.

    ``scores`` holds ``eval/<rep>/<metric>/<key>`` and
    ``downstream/<rep>/<task>/<key>``; ``headlines`` maps a metric or task name
    to its headline keys (its plugin's ``headline`` attribute). A scorer
    without headline keys contributes all its keys. A label is the scorer's
    name, or ``name:key`` where a scorer shows several keys. Metrics come
    before downstream tasks, each group sorted by name.
    """
    headlines = headlines or {}
    chosen: dict[str, dict[tuple[int, str, str], float]] = {}
    for full, value in scores.items():
        parts = full.split("/", 3)
        if len(parts) != 4 or parts[0] not in ("eval", "downstream"):
            continue
        prefix, representation, name, key = parts
        wanted = headlines.get(name)
        if wanted and key not in wanted:
            continue
        chosen.setdefault(representation, {})[(prefix != "eval", name, key)] = float(value)
    keys_per_name: dict[str, set[str]] = {}
    for items in chosen.values():
        for _, name, key in items:
            keys_per_name.setdefault(name, set()).add(key)
    out: dict[str, dict[str, float]] = {}
    for representation in sorted(chosen, key=lambda r: (r != "mean", r)):
        ordered = sorted(chosen[representation].items())
        out[representation] = {
            (name if len(keys_per_name[name]) == 1 else f"{name}:{key}"): value for (_, name, key), value in ordered
        }
    return out


def score_card(
    title: str,
    params: Mapping[str, Any],
    scores: Mapping[str, float],
    headlines: Mapping[str, Sequence[str] | None] | None = None,
    *,
    subtitle: str | None = None,
):
    """A run's score card: its name, key hyperparameters and headline scores per representation.

    Returns a matplotlib ``Figure`` (Agg canvas, no pyplot): a header with the
    title, ``subtitle`` and ``params``, then a horizontal bar chart with one
    group per headline score and one bar per representation, each bar labelled
    with its value.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.transforms import blended_transform_factory

    table = headline_scores(scores, headlines)
    representations = list(table)
    labels = list(dict.fromkeys(label for rows in table.values() for label in rows))
    lines = ([subtitle] if subtitle else []) + _wrap("  ".join(f"{k}={_fmt_param(v)}" for k, v in params.items()), 90)
    header_in = 0.45 + 0.17 * len(lines)
    bars_in = 0.6 + 0.3 * max(1, len(labels)) * max(1, len(representations))
    figure = Figure(figsize=(8.0, min(header_in + bars_in, 40.0)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2, 1, height_ratios=(header_in, bars_in))
    head = figure.add_subplot(grid[0])
    head.set_axis_off()
    left = blended_transform_factory(figure.transFigure, head.transAxes)  # x from the figure's edge
    head.text(0.015, 1.0, title, fontsize=13, fontweight="bold", va="top", transform=left)
    head.text(0.015, 1.0 - 0.38 / header_in, "\n".join(lines), fontsize=8.5, va="top", family="monospace",
              transform=left)
    axes = figure.add_subplot(grid[1])
    if not labels:
        axes.set_axis_off()
        axes.text(0.5, 0.5, "no scores recorded", ha="center", va="center", transform=axes.transAxes)
        return figure
    colors = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")
    width = 0.8 / len(representations)
    values = [v for rows in table.values() for v in rows.values() if math.isfinite(v)]
    low, high = min([0.0, *values]), max([1.0, *values])
    for r, representation in enumerate(representations):
        positions, bars = [], []
        for i, label in enumerate(labels):
            value = table[representation].get(label)
            if value is None:
                continue
            shown = value if math.isfinite(value) else 0.0
            positions.append(i + (r - (len(representations) - 1) / 2) * width)
            bars.append(shown)
            axes.text(max(shown, 0.0) + 0.01 * (high - low), positions[-1], f"{value:.3f}", va="center", fontsize=8)
        axes.barh(positions, bars, height=width * 0.9, color=colors[r % len(colors)], label=representation)
    axes.set_yticks(range(len(labels)), [_two_lines(label) for label in labels], fontsize=9)
    axes.invert_yaxis()
    axes.set_xlim(low, high + 0.15 * (high - low))
    axes.axvline(0.0, color="black", linewidth=0.6)
    axes.tick_params(axis="x", labelsize=8)
    axes.grid(axis="x", alpha=0.3)
    axes.set_title("headline scores", fontsize=9, loc="left")
    axes.legend(title="representation", fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0),
                frameon=False)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    return figure


def _two_lines(label: str, limit: int = 26) -> str:
    """Long ``name:key`` labels on two lines so the chart keeps its width."""
    if len(label) <= limit or ":" not in label:
        return label
    name, key = label.split(":", 1)
    return f"{name}\n{key}"


def save_figure(figure, path: Path, dpi: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, facecolor="white")
    return path


def _fmt_param(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or []
