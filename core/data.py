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
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch


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

    def sample_batch_on_device(self, batch_size: int, generator: torch.Generator, device) -> torch.Tensor:
        """A float batch drawn i.i.d. uniformly over the grid, made entirely on ``device``."""
        images = self.device_images(device)
        index = torch.randint(images.shape[0], (batch_size,), generator=generator, device=images.device)
        return self.to_float(images[index], generator)
