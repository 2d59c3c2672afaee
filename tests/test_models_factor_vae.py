"""FactorVAE (spec/study.md §1.5): discriminator TC estimate, permute-dims, two simultaneous optimizers."""

from __future__ import annotations

import copy
import math

import pydantic
import pytest
import torch
from helpers import Squares
from torch import nn

from disentbench.core.training.trainer import STREAM_DATA, STREAM_LATENT, Trainer, build_model, derive_seed
from disentbench.plugins.models.factor_vae import (
    Discriminator,
    FactorVAE,
    FactorVAEConfig,
    permute_dims,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # One thread: on a shared machine, OpenMP threads waiting on each other cost more than they gain.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def bce_by_hand(logit: float, target: float) -> float:
    return max(logit, 0.0) - logit * target + math.log(1.0 + math.exp(-abs(logit)))


def kl_by_hand(mean: float, logvar: float) -> float:
    return 0.5 * (mean**2 + math.exp(logvar) - logvar - 1.0)


def clipped_log_softmax_by_hand(logits: tuple[float, float], k: int) -> float:
    probability = math.exp(logits[k]) / (math.exp(logits[0]) + math.exp(logits[1]))
    return math.log(min(max(probability, 1e-6), 1.0 - 1e-6))


# --- permute-dims -----------------------------------------------------------------


def test_permute_dims_keeps_each_columns_values_and_permutes_columns_independently():
    z = torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
    permuted = permute_dims(z, torch.Generator().manual_seed(1))
    assert permuted.shape == z.shape
    # Each column holds the same multiset of values.
    torch.testing.assert_close(permuted.sort(dim=0).values, z.sort(dim=0).values, rtol=0, atol=0)
    # Rows are actually shuffled, and by a different permutation in every column.
    row_of = [
        [int((z[:, column] == permuted[row, column]).nonzero()) for row in range(64)] for column in range(10)
    ]
    assert all(sorted(rows) == list(range(64)) for rows in row_of)
    assert all(rows != list(range(64)) for rows in row_of)
    assert len({tuple(rows) for rows in row_of}) == 10


def test_permute_dims_is_reproducible_with_a_generator():
    z = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    first = permute_dims(z, torch.Generator().manual_seed(5))
    assert torch.equal(first, permute_dims(z, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, permute_dims(z, torch.Generator().manual_seed(6)))


def test_permute_dims_passes_gradients_through():
    z = torch.randn(8, 3, requires_grad=True)
    (gradient,) = torch.autograd.grad((permute_dims(z, torch.Generator().manual_seed(0)) * 2).sum(), z)
    torch.testing.assert_close(gradient, torch.full((8, 3), 2.0))


# --- the loss against hand-computed values -----------------------------------------

LOGITS_JOINT = [(1.0, -0.5), (0.25, 2.0), (30.0, -30.0)]  # the last one is clipped: p0 -> 1 - 1e-6
LOGITS_PERMUTED = [(0.0, 1.0), (-2.0, 0.5), (40.0, -40.0)]  # the last one is clipped: p1 -> 1e-6


class FixedDiscriminator(nn.Module):
    """Returns hand-set logits: the first call sees z, the second the permuted z."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, z):
        self.calls.append(z)
        logits = LOGITS_JOINT if len(self.calls) == 1 else LOGITS_PERMUTED
        return torch.tensor(logits)


class FixedOutputFactorVAE(FactorVAE):
    def __init__(self, mean, logvar, logits, gamma):
        super().__init__(FactorVAEConfig(num_latent=2, gamma=gamma), (1, 64, 64))
        self.fixed = (mean, logvar, logits)
        self.discriminator = FixedDiscriminator()

    def encode(self, x):
        return self.fixed[0], self.fixed[1]

    def decode(self, z):
        self.seen_z = z
        return self.fixed[2]


def test_loss_equals_hand_computed_value():
    gamma = 20.0
    mean = torch.tensor([[0.5, -1.0], [0.0, 0.0], [1.0, 2.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [-1.0, 0.5], [0.0, 0.0]])
    logits = torch.zeros(3, 1, 64, 64)
    x = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    logits[0, 0, 1, 2], x[0, 0, 1, 2] = 3.0, 0.75
    logits[2, 0, 63, 0], x[2, 0, 63, 0] = -1.0, 0.0
    # BCE at logit 0 is log 2 whatever the target.
    recon = (3 * 4096 * math.log(2) - 2 * math.log(2) + bce_by_hand(3.0, 0.75) + bce_by_hand(-1.0, 0.0)) / 3
    kl = (
        kl_by_hand(0.5, 0.0) + kl_by_hand(-1.0, math.log(4.0))
        + kl_by_hand(0.0, -1.0) + kl_by_hand(0.0, 0.5)
        + kl_by_hand(1.0, 0.0) + kl_by_hand(2.0, 0.0)
    ) / 3
    tc = ((1.0 + 0.5) + (0.25 - 2.0) + (30.0 + 30.0)) / 3  # mean of logit0 - logit1 on the real z
    discriminator_objective = 0.5 * sum(clipped_log_softmax_by_hand(l, 0) for l in LOGITS_JOINT) / 3 + 0.5 * sum(
        clipped_log_softmax_by_hand(l, 1) for l in LOGITS_PERMUTED
    ) / 3
    # The clipped entries by hand: log(1 - 1e-6) and log(1e-6).
    assert clipped_log_softmax_by_hand(LOGITS_JOINT[2], 0) == pytest.approx(math.log(1 - 1e-6))
    assert clipped_log_softmax_by_hand(LOGITS_PERMUTED[2], 1) == pytest.approx(math.log(1e-6))

    model = FixedOutputFactorVAE(mean, logvar, logits, gamma)
    terms = model.loss(x, step=0, generator=torch.Generator().manual_seed(7))

    assert set(terms) == {"reconstruction", "kl", "regularizer", "elbo", "total", "tc_estimate", "discriminator_loss"}
    assert all(term.ndim == 0 for term in terms.values())
    assert terms["reconstruction"].item() == pytest.approx(recon, rel=1e-6)
    assert terms["kl"].item() == pytest.approx(kl, rel=1e-6)
    assert terms["tc_estimate"].item() == pytest.approx(tc, rel=1e-6)
    assert terms["regularizer"].item() == pytest.approx(kl + gamma * tc, rel=1e-6)
    assert terms["total"].item() == pytest.approx(recon + kl + gamma * tc, rel=1e-6)
    assert terms["elbo"].item() == pytest.approx(-(recon + kl), rel=1e-6)
    assert terms["discriminator_loss"].item() == pytest.approx(-discriminator_objective, rel=1e-5)

    # The discriminator saw z = mean + exp(logvar / 2) * eps, then permute_dims(z) with the next draws.
    generator = torch.Generator().manual_seed(7)
    z = mean + torch.exp(0.5 * logvar) * torch.randn(3, 2, generator=generator)
    seen_joint, seen_permuted = model.discriminator.calls
    torch.testing.assert_close(model.seen_z, z)
    torch.testing.assert_close(seen_joint, z)
    torch.testing.assert_close(seen_permuted, permute_dims(z, generator))


# --- the discriminator -------------------------------------------------------------


def test_discriminator_layers_and_init():
    discriminator = Discriminator(10)
    linears = [m for m in discriminator.modules() if isinstance(m, nn.Linear)]
    activations = [m for m in discriminator.modules() if isinstance(m, nn.LeakyReLU)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 1000)] + [(1000, 1000)] * 5 + [(1000, 2)]
    assert len(activations) == 6 and all(m.negative_slope == 0.2 for m in activations)
    assert isinstance(discriminator.layers[-1], nn.Linear)  # logits: no activation after the last layer
    assert sum(p.numel() for p in discriminator.parameters()) == 10 * 1000 + 1000 + 5 * (1000 * 1000 + 1000) + 2002
    for layer in linears:
        bound = math.sqrt(6.0 / (layer.in_features + layer.out_features))
        assert torch.count_nonzero(layer.bias) == 0
        assert layer.weight.abs().max().item() <= bound
        assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=0.1)
    assert discriminator(torch.zeros(5, 10)).shape == (5, 2)


# --- optimizers and gradients -----------------------------------------------------------


def make_model(seed=0, **params):
    torch.manual_seed(seed)
    return FactorVAE(FactorVAEConfig(num_latent=4, **params), (1, 64, 64))


def parameter_ids(parameters):
    return {id(p) for p in parameters}


def test_optimizers_split_the_parameters():
    model = make_model(learning_rate=3e-4, discriminator_learning_rate=2e-4)
    pairs = model.optimizers()
    assert pairs is model.optimizers()
    (vae_adam, vae_term), (discriminator_adam, discriminator_term) = pairs
    assert (vae_term, discriminator_term) == ("total", "discriminator_loss")
    vae_ids = parameter_ids(p for g in vae_adam.param_groups for p in g["params"])
    discriminator_ids = parameter_ids(p for g in discriminator_adam.param_groups for p in g["params"])
    assert vae_ids == parameter_ids(model.encoder.parameters()) | parameter_ids(model.decoder.parameters())
    assert discriminator_ids == parameter_ids(model.discriminator.parameters())
    assert vae_ids | discriminator_ids == parameter_ids(model.parameters())
    group = vae_adam.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (3e-4, (0.9, 0.999), 1e-8)
    group = discriminator_adam.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (2e-4, (0.5, 0.9), 1e-8)


def test_each_term_updates_only_its_own_parameters():
    """Nothing is detached, yet the trainer applies d total/d VAE and d discriminator_loss/d D only."""
    data = Squares()
    x = data.to_float(torch.as_tensor(data.images[[0, 5, 10, 15, 3, 12]]), None)
    model = make_model(gamma=30.0)
    reference = copy.deepcopy(model)
    vae_parameters = list(reference.vae_parameters())
    discriminator_parameters = list(reference.discriminator.parameters())

    terms = reference.loss(x, 0, torch.Generator().manual_seed(2))
    total_on_vae = torch.autograd.grad(terms["total"], vae_parameters, retain_graph=True)
    total_on_discriminator = torch.autograd.grad(terms["total"], discriminator_parameters, retain_graph=True)
    discriminator_on_discriminator = torch.autograd.grad(
        terms["discriminator_loss"], discriminator_parameters, retain_graph=True
    )
    discriminator_on_encoder = torch.autograd.grad(terms["discriminator_loss"], list(reference.encoder.parameters()))
    # Both terms depend on both networks (nothing is detached) ...
    assert any(g.abs().sum() > 0 for g in total_on_discriminator)
    assert any(g.abs().sum() > 0 for g in discriminator_on_encoder)

    # ... but after the trainer's update each parameter holds its own term's gradient only.
    trainer = Trainer(model, data, seed=0, steps=1, batch_size=6, device=torch.device("cpu"), channels_last=False)
    trainer._update(model.loss(x, 0, torch.Generator().manual_seed(2)))
    for parameter, expected in zip(model.vae_parameters(), total_on_vae, strict=True):
        torch.testing.assert_close(parameter.grad, expected)
    for parameter, expected in zip(model.discriminator.parameters(), discriminator_on_discriminator, strict=True):
        torch.testing.assert_close(parameter.grad, expected)


def test_one_trainer_step_is_the_simultaneous_update():
    seed, batch_size = 11, 8
    data = Squares()
    config = FactorVAEConfig(num_latent=4, gamma=10.0)
    model = build_model(FactorVAE, config, data.observation_shape, seed, torch.device("cpu"))
    initial = copy.deepcopy(model)
    trainer = Trainer(
        model, data, seed=seed, steps=1, batch_size=batch_size, device=torch.device("cpu"), channels_last=False
    )
    trainer.train()

    # By hand: the same batch and latent draws, one gradient per term from its own
    # backward pass on a copy of the initial state, then one Adam step of each.
    x = data.sample_batch_on_device(batch_size, torch.Generator().manual_seed(derive_seed(seed, STREAM_DATA)), "cpu")
    latent_seed = derive_seed(seed, STREAM_LATENT)
    for_vae, for_discriminator = copy.deepcopy(initial), copy.deepcopy(initial)
    for_vae.loss(x, 0, torch.Generator().manual_seed(latent_seed))["total"].backward()
    for_discriminator.loss(x, 0, torch.Generator().manual_seed(latent_seed))["discriminator_loss"].backward()
    manual = copy.deepcopy(initial)
    for target, source in zip(manual.vae_parameters(), for_vae.vae_parameters()):
        target.grad = source.grad
    for target, source in zip(manual.discriminator.parameters(), for_discriminator.discriminator.parameters()):
        target.grad = source.grad
    torch.optim.Adam(manual.vae_parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8).step()
    torch.optim.Adam(manual.discriminator.parameters(), lr=1e-4, betas=(0.5, 0.9), eps=1e-8).step()

    for part in ("encoder", "decoder", "discriminator"):
        before = torch.cat([p.flatten() for p in getattr(initial, part).parameters()])
        trained = torch.cat([p.detach().flatten() for p in getattr(model, part).parameters()])
        expected = torch.cat([p.detach().flatten() for p in getattr(manual, part).parameters()])
        assert not torch.equal(trained, before), part
        torch.testing.assert_close(trained, expected, rtol=0, atol=1e-7)


def test_gradients_are_finite_and_reach_every_parameter():
    model = make_model(gamma=10.0)
    x = torch.rand(8, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    terms = model.loss(x, 0, torch.Generator().manual_seed(0))
    (terms["total"] + terms["discriminator_loss"]).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


# --- config and registration ---------------------------------------------------------


def test_config_defaults_and_validation():
    config = FactorVAEConfig()
    assert (config.gamma, config.discriminator_learning_rate) == (10.0, 1e-4)
    assert (config.discriminator_adam_beta1, config.discriminator_adam_beta2) == (0.5, 0.9)
    for field in ("gamma", "discriminator_learning_rate", "discriminator_adam_beta1", "discriminator_adam_beta2"):
        assert FactorVAEConfig.model_fields[field].description
    with pytest.raises(pydantic.ValidationError):
        FactorVAEConfig(gamma=-1.0)
    with pytest.raises(pydantic.ValidationError):
        FactorVAEConfig(discriminator_learning_rate=0.0)
    with pytest.raises(pydantic.ValidationError, match="beta"):
        FactorVAEConfig.model_validate({"beta": 2.0})
    with pytest.raises(pydantic.ValidationError, match="unknown architecture 'mlp'; known: conv"):
        FactorVAEConfig(architecture="mlp")
