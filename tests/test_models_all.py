"""Every study model through the registry: terms, parameter counts, config checks, and that training learns.

The six study models of spec/study.md §2 (DIP-VAE counted once per variant).
"""

from __future__ import annotations

import math

import pydantic
import pytest
import torch
from helpers import Squares

from disentbench.core.nets.vae import STANDARD_TERMS, GaussianVAEConfig
from disentbench.core.training.trainer import Trainer, build_model
from disentbench.plugins.models.annealed_vae import AnnealedVAE
from disentbench.plugins.models.beta_tcvae import BetaTCVAE
from disentbench.plugins.models.beta_vae import BetaVAE
from disentbench.plugins.models.dip_vae import DIPVAE
from disentbench.plugins.models.factor_vae import FactorVAE

#: (registered name, params, extra loss terms): one entry per model of the study sweep.
STUDY_MODELS = [
    ("beta_vae", {"beta": 4.0}, set()),
    ("factor_vae", {"gamma": 10.0}, {"tc_estimate", "discriminator_loss"}),
    ("dip_vae", {"variant": "i", "lambda_od": 10.0}, {"dip_penalty"}),
    ("dip_vae", {"variant": "ii", "lambda_od": 10.0}, {"dip_penalty"}),
    ("beta_tcvae", {"beta": 6.0}, {"tc_estimate"}),
    ("annealed_vae", {"gamma": 1000.0, "c_max": 5.0, "iteration_threshold": 1000}, {"capacity"}),
]
IDS = ["beta_vae", "factor_vae", "dip_vae_i", "dip_vae_ii", "beta_tcvae", "annealed_vae"]


@pytest.fixture(autouse=True)
def _one_thread():
    # One thread: on a shared machine, OpenMP threads waiting on each other cost more than they gain.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


#: the class each registered study model name builds
MODEL_CLASSES = {
    "beta_vae": BetaVAE, "factor_vae": FactorVAE, "dip_vae": DIPVAE, "beta_tcvae": BetaTCVAE,
    "annealed_vae": AnnealedVAE,
}  # fmt: skip


@pytest.mark.parametrize(("name", "params", "extra_terms"), STUDY_MODELS, ids=IDS)
def test_registered_factory_builds_that_model_with_its_params(registry, name, params, extra_terms):
    registration = registry.get("model", name)
    model = registration.factory(registration.make_config(params), (3, 64, 64))
    assert type(model) is MODEL_CLASSES[name] and model.observation_shape == (3, 64, 64)
    for key, value in params.items():
        assert getattr(model.config, key) == value, key


def test_every_study_model_is_registered(registry):
    names = {name for name, _, _ in STUDY_MODELS}
    assert names <= set(registry.plugins["model"])
    for name in names:
        registration = registry.get("model", name)
        assert registration.source == "disentbench" and registration.description
        assert issubclass(registration.config, GaussianVAEConfig)
        # Every field a model adds to the base has a description.
        for field in set(registration.config.model_fields) - set(GaussianVAEConfig.model_fields):
            assert registration.config.model_fields[field].description, (name, field)


@pytest.mark.parametrize(("name", "params", "extra_terms"), STUDY_MODELS, ids=IDS)
def test_loss_terms_are_the_standard_ones_plus_extras_and_finite(registry, name, params, extra_terms):
    registration = registry.get("model", name)
    torch.manual_seed(0)
    model = registration.factory(registration.make_config(params), (3, 64, 64))
    x = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    terms = model.loss(x, 10, torch.Generator().manual_seed(0))
    assert set(terms) == set(STANDARD_TERMS) | extra_terms
    for term, value in terms.items():
        assert value.ndim == 0 and torch.isfinite(value), term
    total = terms["reconstruction"].item() + terms["regularizer"].item()
    assert terms["total"].item() == pytest.approx(total, rel=1e-6)
    assert terms["elbo"].item() == pytest.approx(-(terms["reconstruction"].item() + terms["kl"].item()), rel=1e-6)


# The spec's layer tables (§1.2, §1.3), as in test_models_beta_vae.py:
# encoder e1 (4*4*C*32 + 32) + e2 16416 + e3 8256 + e4 16448 + e5 262400 + two heads 5140;
# decoder 2816 + 263168 + 65600 + 32800 + 16416 + (4*4*32*C + C).
@pytest.mark.parametrize(
    ("num_channels", "encoder_total", "decoder_total"),
    [
        (1, 544 + 16416 + 8256 + 16448 + 262400 + 5140, 2816 + 263168 + 65600 + 32800 + 16416 + 513),
        (3, 1568 + 16416 + 8256 + 16448 + 262400 + 5140, 2816 + 263168 + 65600 + 32800 + 16416 + 1539),
    ],
)
@pytest.mark.parametrize(("name", "params", "extra_terms"), STUDY_MODELS, ids=IDS)
def test_encoder_and_decoder_parameter_counts(
    registry, name, params, extra_terms, num_channels, encoder_total, decoder_total
):
    registration = registry.get("model", name)
    model = registration.factory(registration.make_config(params), (num_channels, 64, 64))
    assert sum(p.numel() for p in model.encoder.parameters()) == encoder_total
    assert sum(p.numel() for p in model.decoder.parameters()) == decoder_total
    # Only FactorVAE owns more: its discriminator.
    others = sum(p.numel() for p in model.parameters()) - encoder_total - decoder_total
    assert others == (10 * 1000 + 1000 + 5 * (1000 * 1000 + 1000) + 2 * 1000 + 2 if name == "factor_vae" else 0)


@pytest.mark.parametrize(("name", "params", "extra_terms"), STUDY_MODELS, ids=IDS)
def test_unknown_architecture_is_a_validation_error(registry, name, params, extra_terms):
    with pytest.raises(pydantic.ValidationError, match="unknown architecture 'resnet'; known: conv"):
        registry.get("model", name).make_config({**params, "architecture": "resnet"})


@pytest.mark.parametrize(("name", "params", "extra_terms"), STUDY_MODELS, ids=IDS)
def test_training_lowers_the_total_loss(registry, name, params, extra_terms):
    """200 steps of batch 8 through the real trainer (a few seconds per model on one idle core)."""
    data = Squares()
    registration = registry.get("model", name)
    # A larger learning rate than the study's 1e-4, so that a short run is enough.
    config = registration.make_config({**params, "learning_rate": 1e-3, "num_latent": 4})
    model = build_model(registration.factory, config, data.observation_shape, 0, torch.device("cpu"))
    trainer = Trainer(model, data, seed=0, steps=200, batch_size=8, device=torch.device("cpu"), log_every=40)
    logs = []
    trainer.train(on_log=lambda step, terms: logs.append(terms))
    assert len(logs) == 5
    assert all(math.isfinite(value) for terms in logs for value in terms.values())
    # Mean over steps 161-200 against steps 1-40. On this toy every
    # model ends well below 0.7 of its first interval's total.
    first, last = logs[0]["total"], logs[-1]["total"]
    assert last < 0.7 * first, [round(terms["total"], 1) for terms in logs]
    assert logs[-1]["reconstruction"] < 0.7 * logs[0]["reconstruction"]
