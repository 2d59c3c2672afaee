"""Base class of the study's Gaussian-encoder VAEs (spec/study.md §1.4 and §1.5).

Every study model has the same encoder, decoder, reconstruction loss and KL
term. They differ only in the regularizer added to the reconstruction loss,
``total = reconstruction + regularizer(kl, mean, logvar, z, step)``. A new model
subclasses :class:`GaussianVAE` and implements :meth:`GaussianVAE.regularizer`.
Models with their own parameters and optimizer (FactorVAE's discriminator)
also override :meth:`GaussianVAE.build_optimizers`. Their configs derive from
:class:`GaussianVAEConfig`, which rejects an unknown ``architecture`` when the
config is validated, before any training starts.
"""

from __future__ import annotations

import torch
from pydantic import field_validator

from disentbench.core.contracts import Model, ModelConfig
from disentbench.core.nets.conv import ARCHITECTURES
from disentbench.core.nets.losses import bernoulli_reconstruction_loss, gaussian_kl

#: Loss terms every model returns (the contract in ``core/contracts.py``).
STANDARD_TERMS = ("reconstruction", "kl", "regularizer", "elbo", "total")

RegularizerOutput = torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]


class GaussianVAEConfig(ModelConfig):
    """Config base of the built-in Gaussian VAEs: ``architecture`` must name an entry of ``ARCHITECTURES``."""

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, value: str) -> str:
        if value not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {value!r}; known: {', '.join(sorted(ARCHITECTURES))}")
        return value


class GaussianVAE(Model):
    """VAE with a diagonal Gaussian encoder q(z|x) and a Bernoulli decoder p(x|z) on logits.

    ``GaussianVAE(config, observation_shape)``, with ``observation_shape = (C, H, W)``.
    The architecture named by ``config.architecture`` decides which shapes it
    accepts: ``"conv"`` requires H = W = 64 and raises ``ValueError`` otherwise.
    """

    def __init__(self, config: ModelConfig, observation_shape: tuple[int, int, int]):
        super().__init__()
        shape = tuple(int(s) for s in observation_shape)
        if len(shape) != 3:
            raise ValueError(f"observation_shape must be (C, H, W); got {shape}")
        observation_shape = (shape[0], shape[1], shape[2])
        try:
            encoder_cls, decoder_cls = ARCHITECTURES[config.architecture]
        except KeyError:
            raise ValueError(
                f"unknown architecture {config.architecture!r}; known: {sorted(ARCHITECTURES)}"
            ) from None
        self.config = config
        self.observation_shape = observation_shape
        self.num_latent = config.num_latent
        self.encoder = encoder_cls(observation_shape, config.num_latent)
        self.decoder = decoder_cls(config.num_latent, observation_shape)
        # Built on first use, not here, so that subclasses can add modules
        # (e.g. a discriminator) in their __init__ after calling ours.
        self._optimizers: list[tuple[torch.optim.Optimizer, str]] | None = None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(x)

    def batched_networks(self) -> tuple[torch.nn.Module, torch.nn.Module] | None:
        """The encoder and decoder, unless a subclass changed what ``encode`` or ``decode`` compute."""
        cls = type(self)
        if cls.encode is not GaussianVAE.encode or cls.decode is not GaussianVAE.decode:
            return None
        return self.encoder, self.decoder

    def regularizer(
        self,
        kl: torch.Tensor,
        mean: torch.Tensor,
        logvar: torch.Tensor,
        z: torch.Tensor,
        step: int | torch.Tensor,
    ) -> RegularizerOutput:
        """The model-specific term added to the reconstruction loss (spec §1.5).

        Returns a scalar tensor. It may instead return ``(scalar, extra_terms)``,
        where ``extra_terms`` is a dict of further named scalars (a TC estimate,
        a discriminator loss) that are merged into :meth:`loss`'s output. Extra
        terms must not reuse the standard names.
        """
        raise NotImplementedError

    def loss(
        self, x: torch.Tensor, step: int | torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Named scalar loss terms for one batch (spec §1.4).

        ``reconstruction`` is the Bernoulli NLL and ``kl`` is KL(q(z|x) || N(0, I)),
        both averaged over the batch. Then ``total = reconstruction + regularizer``
        and ``elbo = -(reconstruction + kl)``.
        """
        mean, logvar = self.encode(x)
        z = self.sample_latent(mean, logvar, generator)
        logits = self.decode(z)
        reconstruction = bernoulli_reconstruction_loss(logits, x)
        kl = gaussian_kl(mean, logvar)
        regularizer = self.regularizer(kl, mean, logvar, z, step)
        extra_terms: dict[str, torch.Tensor] = {}
        if isinstance(regularizer, tuple):
            regularizer, extra_terms = regularizer
            clashes = set(extra_terms) & set(STANDARD_TERMS)
            if clashes:
                raise ValueError(f"regularizer's extra terms reuse standard names: {sorted(clashes)}")
        terms = {
            "reconstruction": reconstruction,
            "kl": kl,
            "regularizer": regularizer,
            "elbo": -(reconstruction + kl),
            "total": reconstruction + regularizer,
        }
        terms.update(extra_terms)
        return terms

    def adam(self, parameters, beta1: float | None = None, beta2: float | None = None) -> torch.optim.Adam:
        """Adam with the config's learning rate and eps. The betas default to the config's."""
        config = self.config
        return torch.optim.Adam(
            parameters,
            lr=config.learning_rate,
            betas=(
                config.adam_beta1 if beta1 is None else beta1,
                config.adam_beta2 if beta2 is None else beta2,
            ),
            eps=config.adam_eps,
        )

    def build_optimizers(self) -> list[tuple[torch.optim.Optimizer, str]]:
        """One Adam over every parameter, minimising ``total`` (spec §1.1).

        Models that own extra parameters with a separate objective override this.
        """
        return [(self.adam(self.parameters()), "total")]

    def optimizers(self) -> list[tuple[torch.optim.Optimizer, str]]:
        """The ``(optimizer, loss_term_name)`` pairs. They are built on the first call and cached.

        Call this after moving the model to its device. ``Module.to`` keeps the
        Parameter objects, so an optimizer built earlier also stays valid.
        """
        if self._optimizers is None:
            self._optimizers = self.build_optimizers()
        return self._optimizers
