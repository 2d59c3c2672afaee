"""beta-VAE and the shared conv architecture (spec/study.md §1.1-§1.5)."""

from __future__ import annotations

import math

import pydantic
import pytest
import torch
from torch import nn

from disentbench.core.nets.conv import ARCHITECTURES, ConvEncoder, DeconvDecoder
from disentbench.core.nets.losses import bernoulli_reconstruction_loss, gaussian_kl
from disentbench.plugins.models import beta_vae as beta_vae_module
from disentbench.plugins.models.beta_vae import BetaVAE, BetaVAEConfig


@pytest.fixture(autouse=True)
def _two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def make_model(num_channels: int = 1, seed: int = 0, **params) -> BetaVAE:
    torch.manual_seed(seed)
    return BetaVAE(BetaVAEConfig(**params), (num_channels, 64, 64))


# --- the loss against hand-computed values -----------------------------------------


def bce_by_hand(logit: float, target: float) -> float:
    return max(logit, 0.0) - logit * target + math.log(1.0 + math.exp(-abs(logit)))


def kl_by_hand(mean: float, logvar: float) -> float:
    return 0.5 * (mean**2 + math.exp(logvar) - logvar - 1.0)


class FixedOutputBetaVAE(BetaVAE):
    """Encoder and decoder are replaced by fixed outputs, so every loss term can be computed by hand."""

    def __init__(self, beta, mean, logvar, logits):
        super().__init__(BetaVAEConfig(beta=beta, num_latent=2), (1, 64, 64))
        self.fixed = (mean, logvar, logits)
        self.seen_z = None

    def encode(self, x):
        return self.fixed[0], self.fixed[1]

    def decode(self, z):
        self.seen_z = z
        return self.fixed[2]


def test_loss_equals_hand_computed_value():
    beta = 4.0
    mean = torch.tensor([[0.5, -1.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [-1.0, 0.5]])
    # Every logit is 0 except three, and BCE at logit 0 is log 2 whatever the
    # target, so each image is (4096 - #special) * log 2 plus its special pixels.
    logits = torch.zeros(2, 1, 64, 64)
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    specials = [  # (sample, row, col, logit, target)
        (0, 0, 0, 2.0, 1.0),
        (0, 5, 7, -3.0, 0.25),
        (1, 63, 63, 0.5, 0.0),
    ]
    for sample, row, col, logit, target in specials:
        logits[sample, 0, row, col] = logit
        x[sample, 0, row, col] = target

    recon_sample0 = 4094 * math.log(2) + bce_by_hand(2.0, 1.0) + bce_by_hand(-3.0, 0.25)
    recon_sample1 = 4095 * math.log(2) + bce_by_hand(0.5, 0.0)
    recon = (recon_sample0 + recon_sample1) / 2
    # For the record, the three special pixels are 0.126928, 0.798587 and 0.974077.
    assert bce_by_hand(2.0, 1.0) == pytest.approx(math.log(1 + math.exp(-2.0)))
    assert bce_by_hand(-3.0, 0.25) == pytest.approx(0.75 + math.log(1 + math.exp(-3.0)))

    kl_sample0 = kl_by_hand(0.5, 0.0) + kl_by_hand(-1.0, math.log(4.0))  # 0.125 + 0.5 * (4 - ln 4)
    kl_sample1 = kl_by_hand(0.0, -1.0) + kl_by_hand(0.0, 0.5)
    kl = (kl_sample0 + kl_sample1) / 2
    assert kl_sample0 == pytest.approx(0.125 + 0.5 * (4.0 - math.log(4.0)))

    model = FixedOutputBetaVAE(beta, mean, logvar, logits)
    terms = model.loss(x, step=0, generator=torch.Generator().manual_seed(7))

    assert set(terms) == {"reconstruction", "kl", "regularizer", "elbo", "total"}
    assert all(term.ndim == 0 for term in terms.values())
    assert terms["reconstruction"].item() == pytest.approx(recon, rel=1e-6)
    assert terms["kl"].item() == pytest.approx(kl, rel=1e-6)
    assert terms["regularizer"].item() == pytest.approx(beta * kl, rel=1e-6)
    assert terms["total"].item() == pytest.approx(recon + beta * kl, rel=1e-6)
    assert terms["elbo"].item() == pytest.approx(-(recon + kl), rel=1e-6)

    # The decoder received z = mean + exp(logvar / 2) * eps, with eps from the given generator.
    eps = torch.randn(2, 2, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(model.seen_z, mean + torch.exp(0.5 * logvar) * eps)


def test_loss_functions_directly():
    assert gaussian_kl(torch.zeros(5, 10), torch.zeros(5, 10)).item() == 0.0
    assert gaussian_kl(torch.full((5, 10), 0.1), torch.zeros(5, 10)).item() > 0.0
    assert gaussian_kl(torch.zeros(5, 10), torch.full((5, 10), -0.1)).item() > 0.0
    logits = torch.tensor([[[[100.0, -100.0]]]])
    assert bernoulli_reconstruction_loss(logits, torch.tensor([[[[1.0, 0.0]]]])).item() == pytest.approx(0.0, abs=1e-6)
    # Stable for large logits: 100 * 1 on the wrong side, with no overflow.
    assert bernoulli_reconstruction_loss(logits, torch.tensor([[[[0.0, 0.0]]]])).item() == pytest.approx(100.0)
    with pytest.raises(ValueError, match="shape"):
        bernoulli_reconstruction_loss(torch.zeros(2, 1, 64, 64), torch.zeros(2, 3, 64, 64))


def test_beta_zero_regularizer_is_zero_and_total_is_reconstruction():
    model = make_model(beta=0.0)
    x = torch.rand(4, 1, 64, 64)
    terms = model.loss(x, step=0, generator=torch.Generator().manual_seed(0))
    assert terms["regularizer"].item() == 0.0
    assert terms["total"].item() == terms["reconstruction"].item()


# --- architecture -------------------------------------------------------------


def encoder_parameter_count_by_hand(num_channels: int) -> int:
    e1 = 4 * 4 * num_channels * 32 + 32
    e2 = 4 * 4 * 32 * 32 + 32  # 16416
    e3 = 2 * 2 * 32 * 64 + 64  # 8256
    e4 = 2 * 2 * 64 * 64 + 64  # 16448
    e5 = 1024 * 256 + 256  # 262400 (flatten 64 * 4 * 4 = 1024)
    heads = 2 * (256 * 10 + 10)  # 5140 (means and log_var)
    return e1 + e2 + e3 + e4 + e5 + heads


def decoder_parameter_count_by_hand(num_channels: int) -> int:
    d1 = 10 * 256 + 256  # 2816
    d2 = 256 * 1024 + 1024  # 263168
    t1 = 4 * 4 * 64 * 64 + 64  # 65600
    t2 = 4 * 4 * 64 * 32 + 32  # 32800
    t3 = 4 * 4 * 32 * 32 + 32  # 16416
    t4 = 4 * 4 * 32 * num_channels + num_channels
    return d1 + d2 + t1 + t2 + t3 + t4


@pytest.mark.parametrize(
    ("num_channels", "encoder_total", "decoder_total"),
    [
        (1, 544 + 16416 + 8256 + 16448 + 262400 + 5140, 2816 + 263168 + 65600 + 32800 + 16416 + 513),
        (3, 1568 + 16416 + 8256 + 16448 + 262400 + 5140, 2816 + 263168 + 65600 + 32800 + 16416 + 1539),
    ],
)
def test_parameter_counts_match_the_spec_layer_table(num_channels, encoder_total, decoder_total):
    assert encoder_parameter_count_by_hand(num_channels) == encoder_total  # 309204 (C=1), 310228 (C=3)
    assert decoder_parameter_count_by_hand(num_channels) == decoder_total  # 381313 (C=1), 382339 (C=3)
    model = make_model(num_channels)
    assert sum(p.numel() for p in model.encoder.parameters()) == encoder_total
    assert sum(p.numel() for p in model.decoder.parameters()) == decoder_total
    assert sum(p.numel() for p in model.parameters()) == encoder_total + decoder_total


@pytest.mark.parametrize("num_channels", [1, 3])
def test_output_shapes(num_channels):
    model = make_model(num_channels)
    x = torch.rand(5, num_channels, 64, 64)
    mean, logvar = model.encode(x)
    assert mean.shape == (5, 10) and logvar.shape == (5, 10)
    logits = model.decode(model.sample_latent(mean, logvar))
    assert logits.shape == (5, num_channels, 64, 64)
    # Intermediate sizes from the spec table: 32, 16, 8, 4 (encoder) and 8, 16, 32, 64 (decoder).
    sizes = []
    h = x
    for layer in model.encoder.convs:
        h = layer(h)
        if isinstance(layer, nn.Conv2d):
            sizes.append(h.shape[-1])
    assert sizes == [32, 16, 8, 4]
    sizes = []
    h = model.decoder.dense(mean)
    assert h.shape == (5, 64, 4, 4)
    for layer in model.decoder.deconvs:
        h = layer(h)
        if isinstance(layer, nn.ConvTranspose2d):
            sizes.append(h.shape[-1])
    assert sizes == [8, 16, 32, 64]


def tf_glorot_bound(layer: nn.Module) -> float:
    """The bound TF1 would use, computed from the kernel shape TF would give this layer."""
    if isinstance(layer, nn.Linear):
        tf_kernel_shape = (layer.in_features, layer.out_features)
    elif isinstance(layer, nn.Conv2d):
        k = layer.kernel_size[0]
        tf_kernel_shape = (k, k, layer.in_channels, layer.out_channels)
    elif isinstance(layer, nn.ConvTranspose2d):
        k = layer.kernel_size[0]
        tf_kernel_shape = (k, k, layer.out_channels, layer.in_channels)  # conv2d_transpose layout
    else:
        raise TypeError(layer)
    receptive_field = math.prod(tf_kernel_shape[:-2])
    fan_in = tf_kernel_shape[-2] * receptive_field
    fan_out = tf_kernel_shape[-1] * receptive_field
    return math.sqrt(6.0 / (fan_in + fan_out))


@pytest.mark.parametrize("num_channels", [1, 3])
def test_init_is_glorot_uniform_with_zero_biases(num_channels):
    model = make_model(num_channels, seed=1)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    # Encoder: 4 convs, e5, means, log_var. Decoder: 2 denses, 4 transposed convs.
    assert sum(isinstance(m, nn.Conv2d) for m in layers) == 4
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in layers) == 4
    assert sum(isinstance(m, nn.Linear) for m in layers) == 5
    for layer in layers:
        assert torch.count_nonzero(layer.bias) == 0
        bound = tf_glorot_bound(layer)
        weight = layer.weight.detach()
        assert weight.abs().max().item() <= bound
        assert weight.abs().max().item() > 0.9 * bound
        # Uniform(-b, b) has std b / sqrt(3) = sqrt(2 / (fan_in + fan_out)).
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=0.1)


def test_transposed_conv_bound_equals_tf_value():
    # t2 (64 -> 32, k=4): TF kernel (4, 4, 32, 64) gives fans 4*4*32 + 4*4*64 = 1536.
    layer = make_model().decoder.deconvs[2]
    assert isinstance(layer, nn.ConvTranspose2d) and (layer.in_channels, layer.out_channels) == (64, 32)
    assert tf_glorot_bound(layer) == pytest.approx(math.sqrt(6.0 / 1536))
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(layer.weight)
    assert fan_in + fan_out == 1536


# --- sampling, gradients, optimizer ------------------------------------------------


def test_sampling_with_a_fixed_generator_is_reproducible():
    model = make_model()
    x = torch.rand(6, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mean, logvar = model.encode(x)
        z1 = model.sample_latent(mean, logvar, torch.Generator().manual_seed(42))
        z2 = model.sample_latent(mean, logvar, torch.Generator().manual_seed(42))
        z3 = model.sample_latent(mean, logvar, torch.Generator().manual_seed(43))
        loss1 = model.loss(x, 0, torch.Generator().manual_seed(42))
        loss2 = model.loss(x, 0, torch.Generator().manual_seed(42))
    torch.testing.assert_close(z1, z2, rtol=0, atol=0)
    assert not torch.equal(z1, z3)
    for name in loss1:
        assert torch.equal(loss1[name], loss2[name])


def test_gradients_flow_to_every_parameter():
    model = make_model(3, beta=2.0)
    x = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model.loss(x, 0, torch.Generator().manual_seed(0))["total"].backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_optimizers_is_one_cached_adam_over_all_parameters():
    model = make_model(learning_rate=3e-4, adam_beta1=0.5, adam_beta2=0.9, adam_eps=1e-7)
    pairs = model.optimizers()
    assert pairs is model.optimizers()
    assert len(pairs) == 1
    optimizer, term = pairs[0]
    assert term == "total" and isinstance(optimizer, torch.optim.Adam)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (3e-4, (0.5, 0.9), 1e-7)
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for p in model.parameters()}


def random_rectangles(num_images: int, generator: torch.Generator) -> torch.Tensor:
    images = torch.zeros(num_images, 1, 64, 64)
    for index in range(num_images):
        for _ in range(2):
            left, top = torch.randint(0, 48, (2,), generator=generator).tolist()
            width, height = torch.randint(6, 17, (2,), generator=generator).tolist()
            images[index, 0, top : top + height, left : left + width] = 1.0
    return images


def test_training_lowers_the_loss_on_random_rectangles():
    generator = torch.Generator().manual_seed(0)
    data = random_rectangles(512, generator)
    # A larger learning rate than the study's 1e-4, so that a few hundred steps are enough.
    model = make_model(learning_rate=1e-3)
    (optimizer, term), = model.optimizers()
    evaluation_batch = data[:64]

    def evaluate():
        with torch.no_grad():
            return model.loss(evaluation_batch, 0, torch.Generator().manual_seed(1))

    before = evaluate()
    for step in range(300):  # about 8 s on 2 idle cores
        batch = data[torch.randint(0, len(data), (8,), generator=generator)]
        loss = model.loss(batch, step, generator)[term]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    after = evaluate()

    # The best input-independent predictor, the per-pixel marginal, scores sum_pixels H(p_pixel).
    p = evaluation_batch.mean(dim=0).clamp(1e-6, 1 - 1e-6)
    marginal_entropy = -(p * p.log() + (1 - p) * (1 - p).log()).sum().item()
    assert after["total"].item() < 0.25 * before["total"].item()
    assert after["reconstruction"].item() < 0.9 * marginal_entropy  # so it uses the latent code
    assert after["kl"].item() > 1.0


# --- config and factory ----------------------------------------------------------


def test_config_validation():
    assert BetaVAEConfig().beta == 1.0
    assert BetaVAEConfig(beta=16).beta == 16.0
    with pytest.raises(pydantic.ValidationError):
        BetaVAEConfig(beta=-0.5)
    with pytest.raises(pydantic.ValidationError, match="gamma"):
        BetaVAEConfig.model_validate({"beta": 2.0, "gamma": 1.0})
    with pytest.raises(pydantic.ValidationError):
        BetaVAEConfig(architecture="resnet")
    with pytest.raises(pydantic.ValidationError):
        BetaVAEConfig(num_latent=0)


@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 64, 32), (64, 64), (0, 64, 64)])
def test_conv_architecture_rejects_other_shapes(shape):
    with pytest.raises(ValueError, match="observation"):
        BetaVAE(BetaVAEConfig(), shape)


def test_architecture_table_and_registration(registry):
    assert ARCHITECTURES["conv"] == (ConvEncoder, DeconvDecoder)
    registered = [r for r in registry.all("model") if r.factory.__module__ == beta_vae_module.__name__]
    assert [r.name for r in registered] == ["beta_vae"]
    config_cls, factory, description = registered[0].config, registered[0].factory, registered[0].description
    assert config_cls is BetaVAEConfig and description and registered[0].source == "disentbench"
    model = factory(config_cls.model_validate({"beta": 4}), (3, 64, 64))
    assert isinstance(model, BetaVAE) and model.config.beta == 4.0
