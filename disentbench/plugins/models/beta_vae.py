"""beta-VAE (Higgins et al. 2017): the study's ``vae`` model (spec/study.md §1.5, sweep §2)."""

from __future__ import annotations

import torch
from pydantic import Field

from disentbench import GaussianVAE, GaussianVAEConfig, hookimpl


class BetaVAEConfig(GaussianVAEConfig):
    beta: float = Field(
        1.0,
        ge=0,
        description="Weight of the KL term; beta=1 is the plain VAE (study sweep: 1, 2, 4, 6, 8, 16).",
    )


class BetaVAE(GaussianVAE):
    """beta-VAE: minimises ``reconstruction + beta * KL(q(z|x) || N(0, I))``.

    This is the beta-VAE objective of Higgins et al., "beta-VAE: Learning Basic
    Visual Concepts with a Constrained Variational Framework", ICLR 2017,
    ``E_q[log p(x|z)] - beta * KL(q(z|x) || p(z))``, negated as a loss to
    minimise. beta > 1 presses the posterior towards the factorised prior.
    """

    name = "beta_vae"
    description = "beta-VAE (Higgins et al. 2017): reconstruction + beta * KL"
    config_class = BetaVAEConfig

    config: BetaVAEConfig

    def regularizer(
        self,
        kl: torch.Tensor,
        mean: torch.Tensor,
        logvar: torch.Tensor,
        z: torch.Tensor,
        step: int | torch.Tensor,
    ) -> torch.Tensor:
        return self.config.beta * kl


@hookimpl
def register_models(register):
    register(BetaVAE)
