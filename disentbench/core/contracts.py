"""The plugin contract's bases: models (the interface the trainer uses), metrics and tasks, plugin configs.

A model plugin's factory returns a :class:`Model` (a ``torch.nn.Module``):

* ``encode(x) -> (mean, logvar)`` and ``decode(z) -> logits``;
* ``loss(x, step, generator) -> dict[str, Tensor]`` of named scalar terms
  (``generator`` is the run's torch.Generator for the latent sample); it must contain
  ``reconstruction``, ``kl``, ``regularizer``, ``elbo`` and ``total`` and may
  add model-specific ones (e.g. a TC estimate);
* ``optimizers()`` -> list of ``(optimizer, loss_term_name)``: each optimizer
  minimises the named term over its own parameters only (FactorVAE owns two);
* ``sample_latent(mean, logvar, generator)``: the reparameterised sample;
* optionally ``batched_networks()`` -> ``(encoder, decoder)`` or None: the
  networks that ``encode``/``decode`` apply unchanged, which the packed trainer
  may then compute for many runs at once in its batched kernels (None, the
  default, keeps it on the generic vmap path, which works for every model).

All model configs derive from :class:`ModelConfig` (``extra="forbid"``).

Metrics and downstream tasks derive from :class:`Metric` and :class:`Task`:
``scorer(data, representation_function, random_state) -> dict[str, float]``.
Every plugin class may name itself for the one-line registration
``register(cls)``: ``name``, ``description`` and ``config_class``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

if TYPE_CHECKING:
    import numpy as np

    from disentbench.core.data.ground_truth import GroundTruthData


class PluginConfig(BaseModel):
    """Base of every plugin config: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ModelConfig(PluginConfig):
    num_latent: int = Field(10, ge=1, description="Number of latent dimensions (study: 10).")
    # A plain string here: which names exist is the model plugin's business (the
    # built-in Gaussian VAEs validate it against their architecture table).
    architecture: str = Field("conv", description="Encoder/decoder architecture (study: conv).")
    learning_rate: float = Field(1e-4, gt=0, description="Adam learning rate (study: 1e-4).")
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_eps: float = Field(1e-8, gt=0)


class Model(nn.Module):
    """Base class for VAE-family models (see module docstring for the contract)."""

    #: Registration name, one-line description and config class, for ``register(cls)``.
    name: ClassVar[str]
    description: ClassVar[str] = ""
    config_class: ClassVar[type[ModelConfig]]

    config: ModelConfig

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(
        self, x: torch.Tensor, step: int | torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def optimizers(self) -> list[tuple[torch.optim.Optimizer, str]]:
        raise NotImplementedError

    def batched_networks(self) -> tuple[nn.Module, nn.Module] | None:
        """``(encoder, decoder)`` if ``encode(x)`` is exactly ``encoder(x)`` and ``decode(z)`` is ``decoder(z)``.

        The packed trainer asks this instead of checking the model's type: a
        model that returns its networks here lets the trainer compute them for
        a whole pack at once (when it has kernels for them); None says "use the
        generic path".
        """
        return None

    @staticmethod
    def sample_latent(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I) (the reparameterisation trick)."""
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps


class Scorer:
    """What metrics and downstream tasks share: a validated config and a call that returns named scores.

    A subclass sets ``name``, ``description`` and ``config_class`` (for
    ``register(cls)``), the score keys a summary table shows (``headline``),
    and implements ``__call__``. ``Scorer()`` uses the config's defaults.
    Optionally it implements ``score_codes(codes, factors, codes_test=None,
    factors_test=None, random_state=None)``, the array core that
    ``disentbench.score_codes`` calls.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    config_class: ClassVar[type[PluginConfig]]
    #: the scores a summary table shows (all of them when empty)
    headline: tuple[str, ...] = ()  # a class default; an instance may set its own (from its config)

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.config_class()

    def __call__(
        self,
        data: GroundTruthData,
        representation_function: Callable[[np.ndarray], np.ndarray],
        random_state: np.random.RandomState,
    ) -> dict[str, float]:
        raise NotImplementedError


class Metric(Scorer):
    """Base of disentanglement metrics (``register_metrics``)."""


class Task(Scorer):
    """Base of downstream tasks (``register_tasks``)."""
