"""DIP-VAE (Kumar et al. 2018): the study's ``dip_vae`` model, types i and ii (spec/study.md §1.5, sweep §2)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from disentbench import GaussianVAE, GaussianVAEConfig, hookimpl

#: lambda_d / lambda_od when neither lambda_d nor lambda_d_factor is given (the study's values, §2).
DEFAULT_LAMBDA_D_FACTOR = {"i": 10.0, "ii": 1.0}


class DIPVAEConfig(GaussianVAEConfig):
    variant: Literal["i", "ii"] = Field(
        "i",
        description="'i' penalises the covariance of the encoder means; 'ii' that of q(z) (plus the mean variance).",
    )
    lambda_od: float = Field(
        1.0, ge=0, description="Weight of the off-diagonal covariance penalty (study sweep: 1, 2, 5, 10, 20, 50)."
    )
    lambda_d: float | None = Field(
        None,
        ge=0,
        description="Weight of the diagonal penalty. Give this or lambda_d_factor, not both.",
    )
    lambda_d_factor: float | None = Field(
        None,
        ge=0,
        description=(
            "Diagonal weight as a multiple of lambda_od (lambda_d = lambda_d_factor * lambda_od). "
            "Defaults, when lambda_d is not given either, to the study's 10 for variant i and 1 for variant ii."
        ),
    )

    @model_validator(mode="after")
    def _one_diagonal_weight(self) -> DIPVAEConfig:
        if self.lambda_d is not None and self.lambda_d_factor is not None:
            raise ValueError(
                f"give lambda_d ({self.lambda_d}) or lambda_d_factor ({self.lambda_d_factor}), not both: "
                "lambda_d = lambda_d_factor * lambda_od"
            )
        if self.lambda_d is None and self.lambda_d_factor is None:
            # Filled in, so the resolved run params show the weight actually used.
            self.lambda_d_factor = DEFAULT_LAMBDA_D_FACTOR[self.variant]
        return self

    @property
    def diagonal_weight(self) -> float:
        """The effective lambda_d."""
        if self.lambda_d is not None:
            return self.lambda_d
        if self.lambda_d_factor is None:  # the validator fills it in when lambda_d is not given
            raise RuntimeError("DIPVAEConfig has neither lambda_d nor lambda_d_factor")
        return self.lambda_d_factor * self.lambda_od


def dip_covariance(mean: torch.Tensor, logvar: torch.Tensor, variant: str) -> torch.Tensor:
    """The ``(d, d)`` matrix whose distance from the identity DIP-VAE penalises.

    Type i: ``Cov_mu = E[mu mu^T] - E[mu] E[mu]^T`` over the batch (biased:
    divided by the batch size). Type ii: ``Cov_mu + diag(E[exp(logvar)])``, the
    covariance of the aggregate posterior q(z) by the law of total covariance.
    """
    centered = mean - mean.mean(dim=0, keepdim=True)
    covariance = centered.T @ centered / mean.shape[0]
    if variant == "ii":
        covariance = covariance + torch.diag(logvar.exp().mean(dim=0))
    elif variant != "i":
        raise ValueError(f"unknown DIP-VAE variant {variant!r}; choose 'i' or 'ii'")
    return covariance


def dip_penalty(covariance: torch.Tensor, lambda_od: float, lambda_d: float) -> torch.Tensor:
    """``lambda_od * sum_{i != j} C_ij^2 + lambda_d * sum_i (C_ii - 1)^2``."""
    diagonal = torch.diagonal(covariance)
    off_diagonal = covariance - torch.diag(diagonal)
    return lambda_od * off_diagonal.square().sum() + lambda_d * (diagonal - 1.0).square().sum()


class DIPVAE(GaussianVAE):
    """DIP-VAE: minimises ``reconstruction + KL + lambda_od * sum_{i!=j} C_ij^2 + lambda_d * sum_i (C_ii - 1)^2``.

    Kumar, Sattigeri & Balakrishnan, "Variational Inference of Disentangled
    Latent Concepts from Unlabeled Observations", ICLR 2018: the KL-regularised
    ELBO plus a penalty on the distance of a covariance C from the identity,
    with C the covariance of the encoder means (DIP-VAE-I) or of the aggregate
    posterior q(z) (DIP-VAE-II), estimated on the minibatch exactly as in
    spec §1.5. The penalty drives the aggregate
    posterior's covariance towards the identity, i.e. decorrelated latents.

    Extra loss term: ``dip_penalty`` (the penalty alone, without the KL).
    """

    name = "dip_vae"
    description = "DIP-VAE i/ii (Kumar et al. 2018): reconstruction + KL + covariance-to-identity penalty"
    config_class = DIPVAEConfig

    config: DIPVAEConfig

    def regularizer(
        self,
        kl: torch.Tensor,
        mean: torch.Tensor,
        logvar: torch.Tensor,
        z: torch.Tensor,
        step: int | torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        config = self.config
        penalty = dip_penalty(dip_covariance(mean, logvar, config.variant), config.lambda_od, config.diagonal_weight)
        return kl + penalty, {"dip_penalty": penalty}


@hookimpl
def register_models(register):
    register(DIPVAE)
