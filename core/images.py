"""Pictures of a trained model: reconstructions and latent traversals as PNG grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from disentbench.core.data import GroundTruthData
from disentbench.core.model import Model


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
def traversal_grid(
    model: Model, data: GroundTruthData, device, *, steps: int = 9, limit: float = 2.0, seed: int = 0
) -> np.ndarray:
    """One row per latent: that latent set to values from -limit to +limit (the prior's bulk),
    all other latents held at a data point's mean code."""
    observation = data.sample_observations(1, np.random.RandomState(seed))
    mean, _ = model.encode(torch.from_numpy(observation).to(device))
    num_latent = mean.shape[1]
    values = torch.linspace(-limit, limit, steps, device=mean.device, dtype=mean.dtype)
    codes = mean.repeat(num_latent * steps, 1)
    for latent in range(num_latent):
        codes[latent * steps : (latent + 1) * steps, latent] = values
    decoded = torch.sigmoid(model.decode(codes)).float().cpu().numpy()
    return tile(decoded, rows=num_latent, cols=steps)
