"""beta-TCVAE (Chen et al. 2018): the study's ``beta_tc_vae``, registered as ``beta_tcvae`` (spec §1.5, §2)."""

from __future__ import annotations

import math

import torch
from pydantic import Field

from disentbench import GaussianVAE, GaussianVAEConfig, hookimpl

_LOG_2PI = math.log(2.0 * math.pi)


class BetaTCVAEConfig(GaussianVAEConfig):
    beta: float = Field(
        1.0,
        ge=0,
        description="Weight of the total correlation; beta=1 is the plain VAE (study sweep: 1, 2, 4, 6, 8, 10).",
    )


def gaussian_log_density(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``log N(z; mean, exp(logvar)) = -0.5 * ((z - mean)^2 * exp(-logvar) + logvar + log 2 pi)``, elementwise."""
    return -0.5 * ((z - mean).square() * torch.exp(-logvar) + logvar + _LOG_2PI)


def total_correlation(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Minibatch estimate of TC = KL(q(z) || prod_l q(z_l)), without the log(N * M) normaliser (spec §1.5).

    With ``L[j, i, l] = log N(z_jl; mean_il, exp(logvar_il))`` over all pairs of
    the batch (i = j included): ``log q(z_j) ~ LSE_i sum_l L[j, i, l]`` and
    ``log prod_l q(z_jl) ~ sum_l LSE_i L[j, i, l]``; the estimate is the batch
    mean of their difference. The dropped constants (``log(batch * N)`` once in
    the first term, d times in the second) would add ``(d - 1) * log(batch * N)``,
    so this estimate is shifted by a constant and needs no dataset size.
    """
    log_densities = gaussian_log_density(z[:, None, :], mean[None, :, :], logvar[None, :, :])  # (B, B, d)
    log_qz = torch.logsumexp(log_densities.sum(dim=2), dim=1)
    log_prod_qz = torch.logsumexp(log_densities, dim=1).sum(dim=1)
    return (log_qz - log_prod_qz).mean()


class BetaTCVAE(GaussianVAE):
    """beta-TCVAE: minimises ``reconstruction + KL + (beta - 1) * TC``.

    Chen, Li, Grosse & Duvenaud, "Isolating Sources of Disentanglement in
    Variational Autoencoders", NeurIPS 2018, Eq. 4 with alpha = gamma = 1: the
    ELBO with the total-correlation part of its KL term weighted by beta
    instead of 1. TC is estimated by minibatch-weighted sampling on the
    sampled z (:func:`total_correlation`); gradients flow through z, the means
    and the log-variances.

    Extra loss term: ``tc_estimate``.
    """

    name = "beta_tcvae"
    description = "beta-TCVAE (Chen et al. 2018): reconstruction + KL + (beta - 1) * minibatch TC estimate"
    config_class = BetaTCVAEConfig

    config: BetaTCVAEConfig

    def regularizer(
        self,
        kl: torch.Tensor,
        mean: torch.Tensor,
        logvar: torch.Tensor,
        z: torch.Tensor,
        step: int | torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tc_estimate = total_correlation(z, mean, logvar)
        return kl + (self.config.beta - 1.0) * tc_estimate, {"tc_estimate": tc_estimate}


@hookimpl
def register_models(register):
    register(BetaTCVAE)
