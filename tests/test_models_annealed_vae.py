"""AnnealedVAE (spec/study.md §1.5): gamma * |KL - C(step)| with a linearly increased capacity."""

from __future__ import annotations

import math

import pydantic
import pytest
import torch

from disentbench.plugins.models.annealed_vae import AnnealedVAE, AnnealedVAEConfig, capacity


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


class FixedOutputAnnealedVAE(AnnealedVAE):
    """Encoder and decoder replaced by fixed outputs, so every term can be computed by hand."""

    def __init__(self, mean, logvar, logits, **params):
        super().__init__(AnnealedVAEConfig(num_latent=2, **params), (1, 64, 64))
        self.fixed = (mean, logvar, logits)

    def encode(self, x):
        return self.fixed[0], self.fixed[1]

    def decode(self, z):
        return self.fixed[2]


# --- the capacity schedule ------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 0.0), (50_000, 12.5), (100_000, 25.0), (200_000, 25.0), (1, 25.0 / 100_000), (99_999, 25.0 * 0.99999)],
)
def test_capacity_at_key_steps(step, expected):
    assert capacity(step, 25.0, 100_000) == pytest.approx(expected, rel=1e-12, abs=0)
    for tensor_step in (torch.tensor(step), torch.tensor(float(step))):
        value = capacity(tensor_step, 25.0, 100_000)
        assert isinstance(value, torch.Tensor) and value.ndim == 0
        assert value.item() == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_tensor_step_is_never_read_on_the_host():
    # A meta tensor has no values: reading one (item(), float(), bool()) would raise.
    value = capacity(torch.tensor(7, device="meta"), 25.0, 100_000)
    assert value.device.type == "meta" and value.shape == ()


# --- the loss against hand-computed values -----------------------------------------

GAMMA, C_MAX, THRESHOLD = 1000.0, 2.0, 100
MEAN = torch.tensor([[0.5, -1.0], [0.0, 0.0]])
LOGVAR = torch.tensor([[0.0, math.log(4.0)], [-1.0, 0.5]])
# KL = 0.5 * [(0.125 + 0.5 * (4 - ln 4)) + (0.5 / e + 0.5 * (e^0.5 - 1.5))] = 0.8451: between C(0) = 0 and C(T/2) = 1.
KL = 0.5 * (kl_by_hand(0.5, 0.0) + kl_by_hand(-1.0, math.log(4.0)) + kl_by_hand(0.0, -1.0) + kl_by_hand(0.0, 0.5))


def fixed_batch():
    logits = torch.zeros(2, 1, 64, 64)
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    logits[0, 0, 0, 0], x[0, 0, 0, 0] = 2.0, 1.0
    logits[1, 0, 9, 4], x[1, 0, 9, 4] = -1.5, 0.5
    # BCE at logit 0 is log 2 whatever the target.
    recon = 0.5 * (4095 * math.log(2) + bce_by_hand(2.0, 1.0) + 4095 * math.log(2) + bce_by_hand(-1.5, 0.5))
    return logits, x, recon


@pytest.mark.parametrize(
    ("step", "expected_capacity"),
    [(0, 0.0), (THRESHOLD // 2, 1.0), (THRESHOLD, 2.0), (2 * THRESHOLD, 2.0)],
)
@pytest.mark.parametrize("as_tensor", [False, True])
def test_loss_equals_hand_computed_value(step, expected_capacity, as_tensor):
    assert KL == pytest.approx(0.845077, abs=1e-6)  # so KL - C changes sign between step 0 and step T/2
    logits, x, recon = fixed_batch()
    model = FixedOutputAnnealedVAE(MEAN, LOGVAR, logits, gamma=GAMMA, c_max=C_MAX, iteration_threshold=THRESHOLD)
    terms = model.loss(x, torch.tensor(step) if as_tensor else step, torch.Generator().manual_seed(0))

    assert set(terms) == {"reconstruction", "kl", "regularizer", "elbo", "total", "capacity"}
    assert all(term.ndim == 0 for term in terms.values())
    regularizer = GAMMA * abs(KL - expected_capacity)
    assert terms["capacity"].item() == pytest.approx(expected_capacity, rel=1e-6)
    assert terms["reconstruction"].item() == pytest.approx(recon, rel=1e-6)
    assert terms["kl"].item() == pytest.approx(KL, rel=1e-6)
    assert terms["regularizer"].item() == pytest.approx(regularizer, rel=1e-5)
    assert terms["total"].item() == pytest.approx(recon + regularizer, rel=1e-5)
    assert terms["elbo"].item() == pytest.approx(-(recon + KL), rel=1e-6)


def test_regularizer_gradient_pulls_kl_towards_the_capacity():
    model = AnnealedVAE(AnnealedVAEConfig(num_latent=2, gamma=10.0, c_max=5.0, iteration_threshold=10), (1, 64, 64))
    kl = torch.tensor(1.0, requires_grad=True)
    mean = logvar = z = torch.zeros(2, 2)
    below, _ = model.regularizer(kl, mean, logvar, z, step=10)  # C = 5 > KL
    (grad_below,) = torch.autograd.grad(below, kl)
    above, _ = model.regularizer(kl, mean, logvar, z, step=0)  # C = 0 < KL
    (grad_above,) = torch.autograd.grad(above, kl)
    assert (grad_below.item(), grad_above.item()) == (-10.0, 10.0)


def test_gradients_flow_to_every_parameter():
    torch.manual_seed(0)
    model = AnnealedVAE(AnnealedVAEConfig(), (3, 64, 64))
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model.loss(x, 5_000, torch.Generator().manual_seed(0))["total"].backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


# --- config and registration ---------------------------------------------------------


def test_config_defaults_and_validation():
    config = AnnealedVAEConfig()
    assert (config.gamma, config.c_max, config.iteration_threshold) == (1000.0, 25.0, 100_000)
    for field in ("gamma", "c_max", "iteration_threshold"):
        assert AnnealedVAEConfig.model_fields[field].description
    with pytest.raises(pydantic.ValidationError):
        AnnealedVAEConfig(iteration_threshold=0)
    with pytest.raises(pydantic.ValidationError):
        AnnealedVAEConfig(c_max=-1.0)
    with pytest.raises(pydantic.ValidationError, match="beta"):
        AnnealedVAEConfig.model_validate({"beta": 2.0})
    with pytest.raises(pydantic.ValidationError, match="unknown architecture 'resnet'; known: conv"):
        AnnealedVAEConfig(architecture="resnet")
