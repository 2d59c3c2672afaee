"""FactorVAE (Kim & Mnih 2018): the study's ``factor_vae`` model (spec/study.md §1.5, sweep §2)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from disentbench import GaussianVAE, GaussianVAEConfig, hookimpl
from disentbench.core.nets.conv import glorot_uniform_zero_bias
from disentbench.core.nets.losses import bernoulli_reconstruction_loss, gaussian_kl

#: The discriminator's hidden layers (spec §1.5, ``fc_discriminator``).
DISCRIMINATOR_DEPTH = 6
DISCRIMINATOR_WIDTH = 1000
#: TF's ``leaky_relu`` default slope (PyTorch's default is 0.01).
LEAKY_RELU_SLOPE = 0.2
#: Bounds of the clipped discriminator probabilities.
PROBABILITY_CLIP = 1e-6


class FactorVAEConfig(GaussianVAEConfig):
    gamma: float = Field(
        10.0,
        ge=0,
        description="Weight of the discriminator's total-correlation estimate (study sweep: 10, 20, 30, 40, 50, 100).",
    )
    discriminator_learning_rate: float = Field(
        1e-4, gt=0, description="Adam learning rate of the discriminator (study: 1e-4)."
    )
    discriminator_adam_beta1: float = Field(0.5, ge=0, lt=1, description="Discriminator Adam beta1 (study: 0.5).")
    discriminator_adam_beta2: float = Field(0.9, ge=0, lt=1, description="Discriminator Adam beta2 (study: 0.9).")


class Discriminator(nn.Module):
    """``z (N, num_latent) -> logits (N, 2)``; class 0 is "a sample of q(z)", class 1 "permuted".

    Six dense layers of 1000 units with LeakyReLU(0.2), then a dense layer to
    two logits; Glorot-uniform weights and zero biases (spec §1.1, §1.5).
    """

    def __init__(self, num_latent: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = num_latent
        for _ in range(DISCRIMINATOR_DEPTH):
            layers += [nn.Linear(width, DISCRIMINATOR_WIDTH), nn.LeakyReLU(LEAKY_RELU_SLOPE)]
            width = DISCRIMINATOR_WIDTH
        layers.append(nn.Linear(width, 2))
        self.layers = nn.Sequential(*layers)
        glorot_uniform_zero_bias(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z)


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shuffle every latent column independently across the batch (Kim & Mnih 2018, Algorithm 1).

    The result is a sample of the product of z's marginals built from the same
    minibatch. The permutations are drawn on z's device as the argsort of
    uniform noise from ``generator``.
    """
    noise = torch.rand(z.shape, generator=generator, device=z.device, dtype=torch.float32)
    return torch.gather(z, 0, noise.argsort(dim=0))


def clipped_log_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``log(clip(softmax(logits), 1e-6, 1 - 1e-6))`` (spec §1.5, ``make_discriminator``)."""
    probabilities = torch.softmax(logits, dim=1).clamp(PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
    return probabilities.log()


class FactorVAE(GaussianVAE):
    """FactorVAE: a VAE whose total correlation is penalised through a density-ratio discriminator.

    Kim & Mnih, "Disentangling by Factorising", ICML 2018, Eq. 2 and
    Algorithm 1. The VAE minimises ``reconstruction + KL + gamma * TC``, where
    the total correlation KL(q(z) || prod_j q(z_j)) is estimated with the
    density-ratio trick as ``TC = mean(D(z)[0] - D(z)[1])`` over the batch, with
    D's logits on samples z ~ q(z|x) (the density-ratio trick). The discriminator D learns to
    tell samples of q(z) (class 0) from samples of prod_j q(z_j) (class 1), the
    latter made by :func:`permute_dims` of the same minibatch. Its loss is
    ``-(0.5 * mean log p(z)[0] + 0.5 * mean log p(z_perm)[1])``, with
    probabilities clipped to [1e-6, 1 - 1e-6] (spec §1.5).

    Both objectives come from one forward pass, and nothing is detached.
    :meth:`optimizers` pairs an Adam over encoder and decoder with ``total``
    and a second Adam (betas 0.5, 0.9) over the discriminator with
    ``discriminator_loss``; the trainer takes each term's gradient with respect
    to its own optimizer's parameters only, before either steps (a
    simultaneous update, as in the reference's single ``train_op``).

    One step here is one update of each network. The reference's two
    ``minimize`` calls both increment TF's global step, so its 300k "steps"
    are probably about 150k updates of each (spec §1.5, inferred from the
    code and not verified there). To match that, give the model entry
    `training: {steps: N // 2}`, as examples/study_v1.yaml does (docs/fidelity.md).

    Extra loss terms: ``tc_estimate`` and ``discriminator_loss``.
    """

    name = "factor_vae"
    description = "FactorVAE (Kim & Mnih 2018): reconstruction + KL + gamma * discriminator TC estimate"
    config_class = FactorVAEConfig

    config: FactorVAEConfig

    def __init__(self, config: FactorVAEConfig, observation_shape: tuple[int, int, int]):
        super().__init__(config, observation_shape)
        self.discriminator = Discriminator(config.num_latent)

    def loss(
        self, x: torch.Tensor, step: int | torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Named scalar loss terms for one batch (the base class's terms plus the discriminator's).

        FactorVAE overrides the whole loss rather than only the regularizer
        because the permutation needs the run's generator.
        """
        mean, logvar = self.encode(x)
        z = self.sample_latent(mean, logvar, generator)
        reconstruction = bernoulli_reconstruction_loss(self.decode(z), x)
        kl = gaussian_kl(mean, logvar)

        logits_joint = self.discriminator(z)
        logits_permuted = self.discriminator(permute_dims(z, generator))
        tc_estimate = (logits_joint[:, 0] - logits_joint[:, 1]).mean()
        discriminator_objective = 0.5 * clipped_log_probabilities(logits_joint)[:, 0].mean() + 0.5 * (
            clipped_log_probabilities(logits_permuted)[:, 1].mean()
        )

        regularizer = kl + self.config.gamma * tc_estimate
        return {
            "reconstruction": reconstruction,
            "kl": kl,
            "regularizer": regularizer,
            "elbo": -(reconstruction + kl),
            "total": reconstruction + regularizer,
            "tc_estimate": tc_estimate,
            "discriminator_loss": -discriminator_objective,
        }

    def vae_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.decoder.parameters()]

    def build_optimizers(self) -> list[tuple[torch.optim.Optimizer, str]]:
        """The VAE's Adam (config betas) on ``total``; the discriminator's Adam on ``discriminator_loss``."""
        config = self.config
        discriminator_adam = torch.optim.Adam(
            self.discriminator.parameters(),
            lr=config.discriminator_learning_rate,
            betas=(config.discriminator_adam_beta1, config.discriminator_adam_beta2),
            eps=config.adam_eps,
        )
        return [(self.adam(self.vae_parameters()), "total"), (discriminator_adam, "discriminator_loss")]


@hookimpl
def register_models(register):
    register(FactorVAE)
