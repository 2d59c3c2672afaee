"""A small fully-connected Gaussian VAE: the model part of the example plugin.

It implements the :class:`disentbench.Model` contract directly, with
no help from the built-in models, to show everything a model plugin owes the
trainer. The objective is the beta-VAE loss (Higgins et al., ICLR 2017),
``reconstruction + beta * KL(q(z|x) || N(0, I))``; beta = 1 is the VAE of
Kingma & Welling (ICLR 2014).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from disentbench import Model, ModelConfig


class MLPVAEConfig(ModelConfig):
    # The base class's architecture field names the built-in conv nets; this
    # model has exactly one architecture, so say so instead of claiming "conv".
    architecture: Literal["mlp"] = Field("mlp", description="Always 'mlp' (two hidden layers each way).")
    hidden: int = Field(256, ge=1, description="Units in each of the two hidden layers of encoder and decoder.")
    beta: float = Field(1.0, ge=0, description="Weight of the KL term (beta = 1: the plain VAE).")


class MLPVAE(Model):
    """``MLPVAE(config, observation_shape)`` with ``observation_shape = (C, H, W)``; any image size."""

    name = "mlp_vae"
    description = "Fully-connected Gaussian VAE (example plugin): reconstruction + beta * KL, any image size"
    config_class = MLPVAEConfig

    config: MLPVAEConfig

    def __init__(self, config: MLPVAEConfig, observation_shape: tuple[int, int, int]):
        super().__init__()
        observation_shape = tuple(int(s) for s in observation_shape)
        if len(observation_shape) != 3:
            raise ValueError(f"observation_shape must be (C, H, W); got {observation_shape}")
        self.config = config
        self.observation_shape = observation_shape
        num_pixels = math.prod(observation_shape)
        hidden, num_latent = config.hidden, config.num_latent
        self.encoder = nn.Sequential(
            nn.Flatten(),
            nn.Linear(num_pixels, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 2 * num_latent),  # mean and log-variance side by side
        )
        self.decoder = nn.Sequential(
            nn.Linear(num_latent, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_pixels),
            nn.Unflatten(1, observation_shape),
        )
        self._optimizers: list[tuple[torch.optim.Optimizer, str]] | None = None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(x)

    def loss(
        self, x: torch.Tensor, step: int | torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """The negative ELBO terms, each a scalar averaged over the batch.

        ``reconstruction`` is the Bernoulli negative log-likelihood of the pixels
        under the decoder's logits, summed over pixels; ``kl`` is
        ``0.5 * sum_d (mean_d^2 + exp(logvar_d) - logvar_d - 1)`` (Kingma &
        Welling 2014, Appendix B). ``step`` is unused: beta is constant.
        """
        mean, logvar = self.encode(x)
        z = self.sample_latent(mean, logvar, generator)
        logits = self.decode(z)
        per_pixel = F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none")
        reconstruction = per_pixel.flatten(start_dim=1).sum(dim=1).mean()
        kl = (0.5 * (mean.square() + logvar.exp() - logvar - 1.0).sum(dim=1)).mean()
        regularizer = self.config.beta * kl
        return {
            "reconstruction": reconstruction,
            "kl": kl,
            "regularizer": regularizer,
            "elbo": -(reconstruction + kl),
            "total": reconstruction + regularizer,
        }

    def optimizers(self) -> list[tuple[torch.optim.Optimizer, str]]:
        """One Adam over all parameters minimising ``total``; built on first call, then reused.

        Reusing the same optimizer keeps Adam's moment estimates (and a resumed
        checkpoint's optimizer state) attached to the model.
        """
        if self._optimizers is None:
            config = self.config
            adam = torch.optim.Adam(
                self.parameters(),
                lr=config.learning_rate,
                betas=(config.adam_beta1, config.adam_beta2),
                eps=config.adam_eps,
            )
            self._optimizers = [(adam, "total")]
        return self._optimizers
