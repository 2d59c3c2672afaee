"""beta-TCVAE (spec/study.md §1.5): KL + (beta - 1) * minibatch-weighted TC estimate."""

from __future__ import annotations

import math

import pydantic
import pytest
import torch

from disentbench.plugins.models.beta_tcvae import BetaTCVAE, BetaTCVAEConfig, gaussian_log_density, total_correlation


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


def log_normal_by_hand(z: float, mean: float, logvar: float) -> float:
    return -0.5 * ((z - mean) ** 2 * math.exp(-logvar) + logvar + math.log(2 * math.pi))


def logsumexp_by_hand(values: list[float]) -> float:
    largest = max(values)
    return largest + math.log(sum(math.exp(v - largest) for v in values))


def tc_by_hand(z, mean, logvar) -> float:
    """Spec §1.5 with explicit loops: L[j][i][l], then LSE over i of sum over l, minus sum over l of LSE over i."""
    batch, dims = len(z), len(z[0])
    log_density = [
        [[log_normal_by_hand(z[j][l], mean[i][l], logvar[i][l]) for l in range(dims)] for i in range(batch)]
        for j in range(batch)
    ]
    differences = []
    for j in range(batch):
        log_qz = logsumexp_by_hand([sum(log_density[j][i]) for i in range(batch)])
        log_prod_marginals = sum(logsumexp_by_hand([log_density[j][i][l] for i in range(batch)]) for l in range(dims))
        differences.append(log_qz - log_prod_marginals)
    return sum(differences) / batch


# A 3-sample, 2-latent batch.
Z = [[0.3, -1.2], [1.5, 0.4], [-0.7, 2.0]]
MEAN = [[0.0, -1.0], [1.0, 0.5], [-1.0, 1.5]]
LOGVAR = [[0.0, -0.5], [math.log(0.25), 0.2], [0.4, -1.0]]


def test_gaussian_log_density_matches_the_formula_and_torch():
    value = gaussian_log_density(torch.tensor(0.3), torch.tensor(1.0), torch.tensor(math.log(0.25))).item()
    assert value == pytest.approx(log_normal_by_hand(0.3, 1.0, math.log(0.25)), rel=1e-6)
    reference = torch.distributions.Normal(torch.tensor(1.0), torch.tensor(0.5)).log_prob(torch.tensor(0.3)).item()
    assert value == pytest.approx(reference, rel=1e-6)


def test_tc_estimate_on_a_three_sample_batch_by_hand():
    expected = tc_by_hand(Z, MEAN, LOGVAR)
    # The first entry by hand, to pin the conventions: L[0][0][0] = log N(0.3; 0, 1).
    assert log_normal_by_hand(0.3, 0.0, 0.0) == pytest.approx(-0.5 * (0.09 + math.log(2 * math.pi)))
    value = total_correlation(torch.tensor(Z), torch.tensor(MEAN), torch.tensor(LOGVAR)).item()
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # In double precision the agreement is to rounding.
    value64 = total_correlation(torch.tensor(Z, dtype=torch.float64), torch.tensor(MEAN, dtype=torch.float64),
                                torch.tensor(LOGVAR, dtype=torch.float64)).item()
    assert value64 == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_tc_estimate_of_a_single_sample_is_zero():
    # With one sample both log q(z) and log prod q(z_l) are sum_l L[0, 0, l].
    z, mean, logvar = torch.tensor([Z[0]]), torch.tensor([MEAN[0]]), torch.tensor([LOGVAR[0]])
    assert total_correlation(z, mean, logvar).item() == pytest.approx(0.0, abs=1e-6)


class FixedOutputBetaTCVAE(BetaTCVAE):
    def __init__(self, mean, logvar, logits, beta):
        super().__init__(BetaTCVAEConfig(num_latent=2, beta=beta), (1, 64, 64))
        self.fixed = (mean, logvar, logits)

    def encode(self, x):
        return self.fixed[0], self.fixed[1]

    def decode(self, z):
        self.seen_z = z
        return self.fixed[2]


@pytest.mark.parametrize("beta", [1.0, 6.0])
def test_loss_equals_hand_computed_value(beta):
    mean, logvar = torch.tensor(MEAN), torch.tensor(LOGVAR)
    logits = torch.zeros(3, 1, 64, 64)
    x = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    logits[2, 0, 0, 63], x[2, 0, 0, 63] = 1.5, 0.2
    recon = (3 * 4096 * math.log(2) - math.log(2) + bce_by_hand(1.5, 0.2)) / 3
    kl = sum(kl_by_hand(m, v) for row_m, row_v in zip(MEAN, LOGVAR) for m, v in zip(row_m, row_v)) / 3

    model = FixedOutputBetaTCVAE(mean, logvar, logits, beta)
    terms = model.loss(x, 0, torch.Generator().manual_seed(7))
    # The estimate is taken at the sampled z the decoder saw.
    z = model.seen_z.tolist()
    eps = torch.randn(3, 2, generator=torch.Generator().manual_seed(7)).tolist()
    for j in range(3):
        for l in range(2):
            assert z[j][l] == pytest.approx(MEAN[j][l] + math.exp(LOGVAR[j][l] / 2) * eps[j][l], rel=1e-6)
    tc = tc_by_hand(z, MEAN, LOGVAR)

    assert set(terms) == {"reconstruction", "kl", "regularizer", "elbo", "total", "tc_estimate"}
    assert terms["reconstruction"].item() == pytest.approx(recon, rel=1e-6)
    assert terms["kl"].item() == pytest.approx(kl, rel=1e-6)
    assert terms["tc_estimate"].item() == pytest.approx(tc, rel=1e-5, abs=1e-6)
    assert terms["regularizer"].item() == pytest.approx(kl + (beta - 1) * tc, rel=1e-5)
    assert terms["total"].item() == pytest.approx(recon + kl + (beta - 1) * tc, rel=1e-6)
    assert terms["elbo"].item() == pytest.approx(-(recon + kl), rel=1e-6)
    if beta == 1.0:
        assert terms["regularizer"].item() == terms["kl"].item()


def test_gradients_flow_to_every_parameter():
    torch.manual_seed(0)
    model = BetaTCVAE(BetaTCVAEConfig(beta=6.0), (1, 64, 64))
    x = torch.rand(8, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    model.loss(x, 0, torch.Generator().manual_seed(0))["total"].backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


# --- config and registration ---------------------------------------------------------


def test_config_validation():
    assert BetaTCVAEConfig().beta == 1.0
    assert BetaTCVAEConfig.model_fields["beta"].description
    with pytest.raises(pydantic.ValidationError):
        BetaTCVAEConfig(beta=-1.0)
    with pytest.raises(pydantic.ValidationError, match="gamma"):
        BetaTCVAEConfig.model_validate({"gamma": 1.0})
    with pytest.raises(pydantic.ValidationError, match="unknown architecture 'resnet'; known: conv"):
        BetaTCVAEConfig(architecture="resnet")
