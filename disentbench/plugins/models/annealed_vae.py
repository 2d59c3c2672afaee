"""AnnealedVAE (Burgess et al. 2018): the study's ``annealed_vae`` model (spec/study.md §1.5, sweep §2)."""

from __future__ import annotations

import torch
from pydantic import Field

from disentbench import GaussianVAE, GaussianVAEConfig, hookimpl


class AnnealedVAEConfig(GaussianVAEConfig):
    gamma: float = Field(
        1000.0,
        ge=0,
        description="Weight of the distance |KL - C| between the KL term and the capacity (study: 1000).",
    )
    c_max: float = Field(
        25.0,
        ge=0,
        description="Final capacity C in nats, reached at iteration_threshold (study sweep: 5, 10, 25, 50, 75, 100).",
    )
    iteration_threshold: int = Field(
        100_000,
        ge=1,
        description="Training step at which the capacity reaches c_max and stays there (study: 100000).",
    )


def capacity(step: int | torch.Tensor, c_max: float, iteration_threshold: int) -> float | torch.Tensor:
    """The linearly increased capacity ``C(step) = min(c_max, c_max * step / iteration_threshold)``.

    A Python number for an integer step, a tensor on the step's device for a
    tensor step (computed there, so no host sync).
    """
    if isinstance(step, torch.Tensor):
        # step * c_max is exact in float32 for any realistic step, so only the
        # division rounds, as in the scalar formula.
        ramp = step.to(torch.float32) * c_max / iteration_threshold
        return torch.clamp(ramp, max=c_max)
    return min(c_max, c_max * float(step) / iteration_threshold)


class AnnealedVAE(GaussianVAE):
    """AnnealedVAE: minimises ``reconstruction + gamma * |KL(q(z|x) || N(0, I)) - C(step)|``.

    This is the capacity-controlled objective of Burgess et al.,
    "Understanding disentangling in beta-VAE", arXiv 1804.03599 (2018), with
    controlled capacity increase: ``E_q[log p(x|z)] - gamma * |KL(q(z|x) || p(z)) - C|``,
    negated as a loss to minimise (spec §1.5). The capacity C grows linearly from 0 to ``c_max`` over
    the first ``iteration_threshold`` steps (spec §1.5), so the encoder is
    allowed to carry more information as training goes on.

    ``step`` is the trainer's global step, an ``int`` or a 0-d tensor. The
    loss reports C as the extra term ``capacity``.
    """

    name = "annealed_vae"
    description = "AnnealedVAE (Burgess et al. 2018): reconstruction + gamma * |KL - C(step)|, C ramped to c_max"
    config_class = AnnealedVAEConfig

    config: AnnealedVAEConfig

    def regularizer(
        self,
        kl: torch.Tensor,
        mean: torch.Tensor,
        logvar: torch.Tensor,
        z: torch.Tensor,
        step: int | torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        config = self.config
        c = capacity(step, config.c_max, config.iteration_threshold)
        if isinstance(c, torch.Tensor):
            c = c.to(device=kl.device, dtype=kl.dtype)
        else:
            c = kl.new_full((), c)  # a fill kernel, not a host-to-device copy
        return config.gamma * (kl - c).abs(), {"capacity": c}


@hookimpl
def register_models(register):
    register(AnnealedVAE)
