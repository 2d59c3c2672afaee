"""DIP-VAE i and ii (spec/study.md §1.5): KL plus a covariance-to-identity penalty."""

from __future__ import annotations

import math

import pydantic
import pytest
import torch

from disentbench.plugins.models.dip_vae import DIPVAE, DIPVAEConfig, dip_covariance, dip_penalty


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


# A 3-sample, 2-latent batch.
MEANS = [[1.0, 0.0], [0.0, 2.0], [2.0, 4.0]]
VARIANCES = [[1.0, 0.5], [0.5, 1.0], [1.5, 0.25]]  # exp(logvar)
# By hand. Column means: 1 and 2. Centered means: (0, -2), (-1, 0), (1, 2).
#   Cov_00 = (0 + 1 + 1) / 3 = 2/3, Cov_11 = (4 + 0 + 4) / 3 = 8/3, Cov_01 = (0 + 0 + 2) / 3 = 2/3.
# Mean variances: (1 + 0.5 + 1.5) / 3 = 1 and (0.5 + 1 + 0.25) / 3 = 7/12.
COVARIANCE_I = [[2 / 3, 2 / 3], [2 / 3, 8 / 3]]
COVARIANCE_II = [[2 / 3 + 1, 2 / 3], [2 / 3, 8 / 3 + 7 / 12]]


def penalty_by_hand(covariance, lambda_od, lambda_d):
    off_diagonal = covariance[0][1] ** 2 + covariance[1][0] ** 2
    diagonal = (covariance[0][0] - 1) ** 2 + (covariance[1][1] - 1) ** 2
    return lambda_od * off_diagonal + lambda_d * diagonal


def batch_tensors():
    mean = torch.tensor(MEANS)
    logvar = torch.tensor(VARIANCES).log()
    return mean, logvar


@pytest.mark.parametrize(("variant", "expected"), [("i", COVARIANCE_I), ("ii", COVARIANCE_II)])
def test_covariance_by_hand(variant, expected):
    mean, logvar = batch_tensors()
    torch.testing.assert_close(dip_covariance(mean, logvar, variant), torch.tensor(expected))


def test_penalty_by_hand():
    # Variant i, lambda_od = 2, lambda_d = 10 * 2: off 2 * (2/3)^2 = 8/9, diagonal 1/9 + 25/9 = 26/9.
    assert penalty_by_hand(COVARIANCE_I, 2.0, 20.0) == pytest.approx(2 * 8 / 9 + 20 * 26 / 9)
    # Variant ii, lambda_od = lambda_d = 2: off 8/9, diagonal (2/3)^2 + (9/4)^2 = 4/9 + 81/16.
    assert penalty_by_hand(COVARIANCE_II, 2.0, 2.0) == pytest.approx(2 * 8 / 9 + 2 * (4 / 9 + 81 / 16))
    cases = [(COVARIANCE_I, 2.0, 20.0), (COVARIANCE_II, 2.0, 2.0), (COVARIANCE_I, 0.5, 3.0)]
    for covariance, lambda_od, lambda_d in cases:
        value = dip_penalty(torch.tensor(covariance), lambda_od, lambda_d).item()
        assert value == pytest.approx(penalty_by_hand(covariance, lambda_od, lambda_d), rel=1e-6)


def test_penalty_is_zero_for_identity_covariance():
    mean = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]) + 3.0  # an offset does not matter
    covariance = dip_covariance(mean, torch.zeros(4, 2), "i")
    torch.testing.assert_close(covariance, torch.eye(2))
    assert dip_penalty(covariance, 5.0, 50.0).item() == 0.0
    # Type ii adds the mean variance: exp(logvar) = 1 puts 2 on the diagonal.
    assert dip_penalty(dip_covariance(mean, torch.zeros(4, 2), "ii"), 5.0, 50.0).item() == pytest.approx(50.0 * 2)


class FixedOutputDIPVAE(DIPVAE):
    def __init__(self, mean, logvar, logits, **params):
        super().__init__(DIPVAEConfig(num_latent=2, **params), (1, 64, 64))
        self.fixed = (mean, logvar, logits)

    def encode(self, x):
        return self.fixed[0], self.fixed[1]

    def decode(self, z):
        return self.fixed[2]


@pytest.mark.parametrize(
    ("params", "covariance", "lambda_od", "lambda_d"),
    [
        ({"variant": "i", "lambda_od": 2.0}, COVARIANCE_I, 2.0, 20.0),  # study default lambda_d_factor 10
        ({"variant": "ii", "lambda_od": 2.0}, COVARIANCE_II, 2.0, 2.0),  # study default lambda_d_factor 1
        ({"variant": "ii", "lambda_od": 5.0, "lambda_d": 0.5}, COVARIANCE_II, 5.0, 0.5),
        ({"variant": "i", "lambda_od": 5.0, "lambda_d_factor": 3.0}, COVARIANCE_I, 5.0, 15.0),
    ],
)
def test_loss_equals_hand_computed_value(params, covariance, lambda_od, lambda_d):
    mean, logvar = batch_tensors()
    logits = torch.zeros(3, 1, 64, 64)
    x = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    logits[1, 0, 30, 31], x[1, 0, 30, 31] = -2.0, 1.0
    recon = (3 * 4096 * math.log(2) - math.log(2) + bce_by_hand(-2.0, 1.0)) / 3
    kl = sum(kl_by_hand(m, math.log(v)) for row_m, row_v in zip(MEANS, VARIANCES) for m, v in zip(row_m, row_v)) / 3
    penalty = penalty_by_hand(covariance, lambda_od, lambda_d)

    model = FixedOutputDIPVAE(mean, logvar, logits, **params)
    terms = model.loss(x, 0, torch.Generator().manual_seed(0))

    assert set(terms) == {"reconstruction", "kl", "regularizer", "elbo", "total", "dip_penalty"}
    assert terms["reconstruction"].item() == pytest.approx(recon, rel=1e-6)
    assert terms["kl"].item() == pytest.approx(kl, rel=1e-6)
    assert terms["dip_penalty"].item() == pytest.approx(penalty, rel=1e-6)
    assert terms["regularizer"].item() == pytest.approx(kl + penalty, rel=1e-6)
    assert terms["total"].item() == pytest.approx(recon + kl + penalty, rel=1e-6)
    assert terms["elbo"].item() == pytest.approx(-(recon + kl), rel=1e-6)


@pytest.mark.parametrize("variant", ["i", "ii"])
def test_gradients_flow_to_every_parameter(variant):
    torch.manual_seed(0)
    model = DIPVAE(DIPVAEConfig(variant=variant, lambda_od=10.0), (1, 64, 64))
    x = torch.rand(6, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    model.loss(x, 0, torch.Generator().manual_seed(0))["total"].backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


# --- config and registration ---------------------------------------------------------


@pytest.mark.parametrize(("variant", "factor"), [("i", 10.0), ("ii", 1.0)])
def test_default_diagonal_weight_is_the_studys(variant, factor):
    config = DIPVAEConfig(variant=variant, lambda_od=5.0)
    assert (config.lambda_d, config.lambda_d_factor) == (None, factor)
    assert config.diagonal_weight == 5.0 * factor
    # The filled-in default survives a round trip (the resolved params of a run).
    assert DIPVAEConfig.model_validate(config.model_dump(mode="json")) == config


def test_explicit_diagonal_weights():
    assert DIPVAEConfig(lambda_od=5.0, lambda_d=2.0).diagonal_weight == 2.0
    assert DIPVAEConfig(lambda_od=5.0, lambda_d=2.0).lambda_d_factor is None
    assert DIPVAEConfig(variant="ii", lambda_od=5.0, lambda_d_factor=4.0).diagonal_weight == 20.0


def test_config_validation():
    with pytest.raises(pydantic.ValidationError, match="lambda_d .*or lambda_d_factor .*not both"):
        DIPVAEConfig(lambda_d=1.0, lambda_d_factor=10.0)
    with pytest.raises(pydantic.ValidationError, match="variant"):
        DIPVAEConfig(variant="iii")
    for bad in ({"lambda_od": -1.0}, {"lambda_d": -1.0}, {"lambda_d_factor": -1.0}, {"beta": 1.0}):
        with pytest.raises(pydantic.ValidationError):
            DIPVAEConfig.model_validate(bad)
    with pytest.raises(pydantic.ValidationError, match="unknown architecture 'resnet'; known: conv"):
        DIPVAEConfig(architecture="resnet")
    for field in ("variant", "lambda_od", "lambda_d", "lambda_d_factor"):
        assert DIPVAEConfig.model_fields[field].description
