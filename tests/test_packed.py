"""Packed training (core/training/packed/trainer.py) equals one-by-one Trainer training, run by run.

Why two equality tests. Packed and solo runs compute the same loss values
(bitwise, on CPU) but their gradients differ by summation-order rounding.
Adam at the study's eps = 1e-8 turns a gradient near eps into a step of
``lr * g / (|g| + eps)``, so rounding in such gradients is amplified by
lr / eps = 1e4: on this toy two *solo* runs that differ only in memory layout
(channels-last on/off) are already 1e-4 apart after three steps. So the fp32
test uses adam_eps = 1e-3, where a parameter difference measures the packed
computation and not Adam's conditioning, and a float64 test keeps the
study's Adam settings (lr 1e-4, eps 1e-8) exactly.
"""

from __future__ import annotations

import pytest
import torch
from helpers import BATCH, CPU, LOG_EVERY, MODELS, STEPS, Squares, _assert_same_logs, _build, _configs, _max_diff, _solo

from disentbench.core.training.packed.trainer import (
    DEFAULT_CPU_PACK_SIZE,
    PackedTrainer,
    SpeedOptions,
    StackedAdam,
    UnpackableModel,
    choose_pack_size,
)
from disentbench.core.training.trainer import NonFiniteLoss, build_model
from disentbench.plugins.models.beta_tcvae import BetaTCVAE, BetaTCVAEConfig
from disentbench.plugins.models.beta_vae import BetaVAE, BetaVAEConfig
from disentbench.plugins.models.dip_vae import DIPVAE, DIPVAEConfig


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Squares64(Squares):
    """Squares as float64 observations (for float64 models)."""

    def to_float(self, images, random_state):
        return images.to(torch.float64)


#: Every study model, with per-run hyperparameters that differ inside the pack.








def _packed(
    models, data, seeds, steps=STEPS, checkpoint_paths=None, speed=None, checkpoint_every=10_000, formulation=None
):
    logs: dict[int, list] = {}
    if formulation is not None:
        speed = SpeedOptions(formulation=formulation)
    trainer = PackedTrainer(
        models, data, seeds, steps=steps, batch_size=BATCH, device=CPU, log_every=LOG_EVERY,
        checkpoint_paths=checkpoint_paths, speed=speed, checkpoint_every=checkpoint_every,
    )  # fmt: skip
    if formulation is not None:
        assert trainer.formulation == formulation
    result = trainer.train(on_log=lambda index, step, terms: logs.setdefault(index, []).append((step, terms)))
    return result, logs






FORMULATIONS = ["bmm", "grouped", "vmap"]


@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("name", list(MODELS))
def test_packed_equals_one_by_one_fp32(name, formulation):
    data = Squares()
    factory, configs = _configs(name, adam_eps=1e-3)
    seeds = [11 + i for i in range(len(configs))]
    solo_models = _build(factory, configs, seeds, data)
    solo_logs = [_solo(m, data, s) for m, s in zip(solo_models, seeds)]
    packed_models = _build(factory, configs, seeds, data)
    result, packed_logs = _packed(packed_models, data, seeds, formulation=formulation)
    assert result.failed == [] and result.finished == list(range(len(configs)))
    assert result.model_steps == STEPS * len(configs)
    for i, (solo, packed) in enumerate(zip(solo_models, packed_models)):
        assert _max_diff(solo, packed) <= 1e-5, f"run {i}"
        _assert_same_logs(solo_logs[i], packed_logs[i])
        assert result.results[i].steps == STEPS and result.results[i].final_terms == packed_logs[i][-1][1]


@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("name", list(MODELS))
def test_packed_equals_one_by_one_float64_study_adam(name, formulation):
    data = Squares64()
    factory, configs = _configs(name)  # lr 1e-4, eps 1e-8 (FactorVAE's discriminator: betas 0.5, 0.9)
    seeds = [21 + i for i in range(len(configs))]
    solo_models = _build(factory, configs, seeds, data, torch.float64)
    solo_logs = [_solo(m, data, s, steps=3) for m, s in zip(solo_models, seeds)]
    packed_models = _build(factory, configs, seeds, data, torch.float64)
    _, packed_logs = _packed(packed_models, data, seeds, steps=3, formulation=formulation)
    for i, (solo, packed) in enumerate(zip(solo_models, packed_models)):
        assert _max_diff(solo, packed) <= 1e-10
        _assert_same_logs(solo_logs[i], packed_logs[i], rel=1e-9)


def test_hyperparameters_differ_inside_one_pack():
    """Two betas, same seed, one pack: each run's losses are those its beta gives alone."""
    data = Squares()
    configs = [BetaVAEConfig(beta=beta, num_latent=3, adam_eps=1e-3) for beta in (1.0, 16.0)]
    seeds = [5, 5]
    solo_logs = [_solo(m, data, s) for m, s in zip(_build(BetaVAE, configs, seeds, data), seeds)]
    packed_models = _build(BetaVAE, configs, seeds, data)
    _, packed_logs = _packed(packed_models, data, seeds)
    for i in range(2):
        _assert_same_logs(solo_logs[i], packed_logs[i])
    for (_, low), (_, high) in zip(packed_logs[0], packed_logs[1]):
        assert low["regularizer"] == pytest.approx(low["kl"], rel=1e-5)
        assert high["regularizer"] == pytest.approx(16.0 * high["kl"], rel=1e-5)
    assert packed_logs[1][-1][1]["regularizer"] > 10.0 * packed_logs[0][-1][1]["regularizer"] > 0.0
    assert _max_diff(*packed_models) > 1e-6


def test_nan_in_one_run_stops_that_run_only(tmp_path):
    data = Squares()
    factory, configs = _configs("beta_vae", adam_eps=1e-3)
    seeds = [31, 32, 33]
    steps = 6

    def poisoned(models):
        with torch.no_grad():
            models[1].decoder.deconvs[0].weight[0, 0, 0, 0] = float("nan")
        return models

    solo_models = poisoned(_build(factory, configs, seeds, data))
    solo_logs = {}
    for i, (m, s) in enumerate(zip(solo_models, seeds)):
        if i == 1:
            with pytest.raises(NonFiniteLoss) as solo_error:
                _solo(m, data, s, steps=steps)
        else:
            solo_logs[i] = _solo(m, data, s, steps=steps)

    packed_models = poisoned(_build(factory, configs, seeds, data))
    paths = [tmp_path / f"run{i}.pt" for i in range(3)]
    result, packed_logs = _packed(packed_models, data, seeds, steps=steps, checkpoint_paths=paths)
    assert result.failed == [1] and result.finished == [0, 2]
    assert isinstance(result.errors[1], NonFiniteLoss)
    assert result.errors[1].step == solo_error.value.step == LOG_EVERY
    assert "non-finite loss at step 2" in str(result.errors[1])
    assert result.results[1] is None and 1 not in packed_logs
    assert not paths[1].exists() and paths[0].exists() and paths[2].exists()
    for i in (0, 2):
        assert _max_diff(solo_models[i], packed_models[i]) <= 1e-5
        _assert_same_logs(solo_logs[i], packed_logs[i])


def _same_structure(a, b):
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for key in a:
            _same_structure(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _same_structure(x, y)
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
    else:
        assert a == b or isinstance(a, float)


def test_checkpoints_move_between_packed_and_solo(tmp_path):
    """Packed -> solo and solo -> packed resumes continue like an uninterrupted solo run.

    Runs of one pack may resume from different steps.
    """
    data = Squares()
    factory, configs = _configs("factor_vae", adam_eps=1e-3)
    seeds = [41, 42]
    full = _build(factory, configs, seeds, data)
    full_logs = [_solo(m, data, s, steps=6) for m, s in zip(full, seeds)]

    # packed for 3 steps, then each run resumes alone
    packed_paths = [tmp_path / f"packed{i}.pt" for i in range(2)]
    _packed(_build(factory, configs, seeds, data), data, seeds, steps=3, checkpoint_paths=packed_paths)
    solo_reference = tmp_path / "solo_reference.pt"
    _solo(_build(factory, configs, seeds, data)[0], data, seeds[0], steps=3, checkpoint_path=solo_reference)
    packed_state = torch.load(packed_paths[0], weights_only=True)
    _same_structure(torch.load(solo_reference, weights_only=True), packed_state)
    assert packed_state["step"] == 3
    for i in range(2):
        resumed = _build(factory, configs, seeds, data)[i]
        logs = _solo(resumed, data, seeds[i], steps=6, checkpoint_path=packed_paths[i])
        assert _max_diff(resumed, full[i]) <= 1e-5
        _assert_same_logs(full_logs[i][-1:], logs[-1:])  # a resumed run averages only the steps it ran

    # run 0 alone for 4 steps (checkpoint), run 1 fresh: one pack resumes both
    mixed_paths = [tmp_path / "solo0.pt", tmp_path / "fresh1.pt"]
    _solo(_build(factory, configs, seeds, data)[0], data, seeds[0], steps=4, checkpoint_path=mixed_paths[0])
    models = _build(factory, configs, seeds, data)
    result, logs = _packed(models, data, seeds, steps=6, checkpoint_paths=mixed_paths)
    assert [r.resumed_from for r in result.results] == [4, 0]
    assert [r.steps for r in result.results] == [2, 6]
    for i in range(2):
        assert _max_diff(models[i], full[i]) <= 1e-5
    _assert_same_logs(full_logs[0][-1:], logs[0])
    _assert_same_logs(full_logs[1], logs[1])


def test_a_pack_keeps_no_second_copy_of_its_runs_state_between_checkpoints(tmp_path):
    """After a mid-training checkpoint the solo optimizers hold no Adam moments (the pack's are the state);
    the checkpoint itself has them, and a finished run's solo optimizers have them again."""
    data = Squares()
    factory, configs = _configs("factor_vae", adam_eps=1e-3)
    seeds = [41, 42]
    paths = [tmp_path / f"run{i}.pt" for i in range(2)]
    trainer = PackedTrainer(
        _build(factory, configs, seeds, data), data, seeds, steps=4, batch_size=BATCH, device=CPU, log_every=2,
        checkpoint_paths=paths, checkpoint_every=2,
    )  # fmt: skip
    assert trainer.advance(2) == 2
    assert all(t._initial is None for t in trainer.trainers)
    assert all(not opt.state for t in trainer.trainers for opt, _ in t.optimizers)
    saved = torch.load(paths[0], weights_only=True)
    assert saved["step"] == 2
    assert all(len(o["state"]) == sum(len(g["params"]) for g in o["param_groups"]) for o in saved["optimizers"])
    trainer.train()
    for t in trainer.trainers:
        assert t.step == 4 and all(len(opt.state) > 0 for opt, _ in t.optimizers)
    # Resumed runs: their moments go into the pack and leave the solo optimizers.
    resumed = PackedTrainer(
        _build(factory, configs, seeds, data), data, seeds, steps=6, batch_size=BATCH, device=CPU, log_every=2,
        checkpoint_paths=paths, checkpoint_every=2,
    )  # fmt: skip
    assert resumed.advance(1) == 1
    assert [t.step for t in resumed.trainers] == [4, 4]  # solo steps move at the next sync
    assert all(not opt.state for t in resumed.trainers for opt, _ in t.optimizers)
    assert resumed.train().results[0].resumed_from == 4


def test_speed_options_are_no_ops_on_cpu():
    data = Squares()
    factory, configs = _configs("beta_vae")
    seeds = [51, 52]
    plain = _build(factory, configs[:2], seeds, data)
    _packed(plain, data, seeds, steps=2)
    fast = _build(factory, configs[:2], seeds, data)
    everything = SpeedOptions(channels_last=True, autocast_bf16=True, cuda_graphs=True, overlap_sampling=True)
    _packed(fast, data, seeds, steps=2, speed=everything)
    assert SpeedOptions.fastest().on(CPU) == SpeedOptions()
    assert everything.on(CPU) == SpeedOptions()
    assert SpeedOptions(fused_loss=False).on(CPU) == SpeedOptions(fused_loss=False)  # a formulation detail: kept
    assert SpeedOptions(compile=True, formulation="bmm").on(CPU) == SpeedOptions(compile=True, formulation="bmm")
    for a, b in zip(plain, fast):
        assert _max_diff(a, b) == 0.0


def test_failing_compiled_code_falls_back_to_eager_on_the_same_inputs(monkeypatch):
    """If compiled code raises (before any update), the iteration is retried eagerly on the same batch and
    noise, with a warning, so the runs equal uncompiled ones."""
    data = Squares()
    factory, configs = _configs("beta_vae", adam_eps=1e-3)
    seeds = [61, 62]
    plain = _build(factory, configs[:2], seeds, data)
    _packed(plain, data, seeds, steps=3, formulation="bmm")
    calls = []

    def broken_compile(fn, **kwargs):
        def compiled(*args, **kw):
            calls.append(fn.__name__)
            raise RuntimeError("inductor failed")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    compiled = _build(factory, configs[:2], seeds, data)
    with pytest.warns(UserWarning, match="torch.compile of the packed loss failed.*continuing eagerly"):
        _packed(compiled, data, seeds, steps=3, speed=SpeedOptions(formulation="bmm", compile=True))
    assert calls == ["encode"]  # tried once, then eager for good
    for a, b in zip(plain, compiled):
        assert _max_diff(a, b) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("formulation", ["bmm", "grouped"])
def test_compiled_batched_formulation_equals_eager(formulation):
    """torch.compile of the batched encoder/decoder (CPU inductor here; about a minute to compile) trains
    like eager code, to fp32 rounding."""
    data = Squares()
    factory, configs = _configs("beta_vae", adam_eps=1e-3)
    seeds = [71, 72]
    eager = _build(factory, configs[:2], seeds, data)
    _, eager_logs = _packed(eager, data, seeds, formulation=formulation)
    compiled = _build(factory, configs[:2], seeds, data)
    _, compiled_logs = _packed(compiled, data, seeds, speed=SpeedOptions(formulation=formulation, compile=True))
    for i, (a, b) in enumerate(zip(eager, compiled)):
        assert _max_diff(a, b) <= 1e-5
        _assert_same_logs(eager_logs[i], compiled_logs[i])


def test_stacked_adam_equals_torch_adam_per_slice():
    generator = torch.Generator().manual_seed(0)
    settings = [dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8), dict(lr=3e-2, betas=(0.5, 0.9), eps=1e-6)]
    solo = [torch.randn(5, 4, generator=generator).requires_grad_() for _ in settings]
    optimizers = [torch.optim.Adam([p], **kw) for p, kw in zip(solo, settings)]
    stacked = torch.stack([p.detach() for p in solo]).clone()
    adam = StackedAdam(
        [stacked], lr=[kw["lr"] for kw in settings], beta1=[kw["betas"][0] for kw in settings],
        beta2=[kw["betas"][1] for kw in settings], eps=[kw["eps"] for kw in settings],
    )  # fmt: skip
    for _ in range(5):
        grads = [torch.randn(5, 4, generator=generator) * 1e-3 for _ in settings]
        for p, g, opt in zip(solo, grads, optimizers):
            p.grad = g
            opt.step()
        adam.step([torch.stack(grads)])
    for i, p in enumerate(solo):
        assert torch.allclose(stacked[i], p.detach(), rtol=0, atol=1e-7)
        assert torch.allclose(adam.exp_avg_sqs[0][i], optimizers[i].state[p]["exp_avg_sq"], rtol=1e-6, atol=0)


def test_choose_pack_size_and_unpackable_models():
    data = Squares()
    assert choose_pack_size(lambda: BetaVAE(BetaVAEConfig(num_latent=3), (1, 64, 64)), CPU, 64) == DEFAULT_CPU_PACK_SIZE
    mixed = [
        build_model(BetaVAE, BetaVAEConfig(num_latent=3), data.observation_shape, 1, CPU),
        build_model(BetaTCVAE, BetaTCVAEConfig(num_latent=3), data.observation_shape, 2, CPU),
    ]
    with pytest.raises(UnpackableModel, match="BetaTCVAE"):
        PackedTrainer(mixed, data, [1, 2], steps=1, batch_size=BATCH, device=CPU)
    variants = [
        build_model(DIPVAE, DIPVAEConfig(num_latent=3, variant=v), data.observation_shape, 1, CPU) for v in ("i", "ii")
    ]
    with pytest.raises(UnpackableModel, match="variant"):
        PackedTrainer(variants, data, [1, 2], steps=1, batch_size=BATCH, device=CPU)


@pytest.mark.parametrize("backend", ["bmm", "grouped"])
@pytest.mark.parametrize("channels", [1, 3])
def test_batched_encoder_decoder_equal_the_modules(channels, backend):
    """packed_conv (bmm) and packed_grouped compute ConvEncoder/DeconvDecoder of each stacked model
    (float64, random weights and biases)."""
    import importlib

    from torch.func import stack_module_state

    from disentbench.core.nets.conv import ConvEncoder, DeconvDecoder

    formulation = importlib.import_module(f"disentbench.core.training.packed.{backend}")

    generator = torch.Generator().manual_seed(channels)
    shape = (channels, 64, 64)
    encoders = [ConvEncoder(shape, 6).double() for _ in range(3)]
    decoders = [DeconvDecoder(6, shape).double() for _ in range(3)]
    with torch.no_grad():
        for module in encoders + decoders:
            for p in module.parameters():  # non-zero biases too, so bias placement is tested
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.2)
    params = {f"encoder.{k}": v for k, v in stack_module_state(encoders)[0].items()}
    params |= {f"decoder.{k}": v for k, v in stack_module_state(decoders)[0].items()}
    x = torch.rand(3, 4, *shape, generator=generator, dtype=torch.float64)
    z = torch.randn(3, 4, 6, generator=generator, dtype=torch.float64)
    mean, logvar = formulation.encode(params, x)
    logits = formulation.decode(params, z)
    assert mean.shape == logvar.shape == (3, 4, 6) and logits.shape == (3, 4, *shape)
    for i in range(3):
        solo_mean, solo_logvar = encoders[i](x[i])
        torch.testing.assert_close(mean[i], solo_mean, rtol=0, atol=1e-12)
        torch.testing.assert_close(logvar[i], solo_logvar, rtol=0, atol=1e-12)
        torch.testing.assert_close(logits[i], decoders[i](z[i]), rtol=0, atol=1e-12)
    assert logits.abs().max() > 0.1  # not trivially zero

    # gradients too: d(sum of outputs)/d(weights) per model equals the module's
    (mean.sum() + logvar.square().sum() + logits.square().sum()).backward()
    for i in range(3):
        encoders[i].zero_grad()
        decoders[i].zero_grad()
        solo_mean, solo_logvar = encoders[i](x[i])
        (solo_mean.sum() + solo_logvar.square().sum() + decoders[i](z[i]).square().sum()).backward()
        for name, p in encoders[i].named_parameters():
            torch.testing.assert_close(params[f"encoder.{name}"].grad[i], p.grad, rtol=1e-10, atol=1e-10)
        for name, p in decoders[i].named_parameters():
            torch.testing.assert_close(params[f"decoder.{name}"].grad[i], p.grad, rtol=1e-10, atol=1e-10)


def test_formulation_falls_back_to_vmap_where_bmm_cannot_compute_the_model():
    """A model whose encode is overridden is trained with vmap under auto, and refused under bmm."""

    class Centred(BetaVAE):
        def encode(self, x):
            return self.encoder(x - 0.5)

    data = Squares()
    models = [build_model(Centred, BetaVAEConfig(num_latent=3), data.observation_shape, s, CPU) for s in (1, 2)]
    trainer = PackedTrainer(models, data, [1, 2], steps=1, batch_size=BATCH, device=CPU)
    assert trainer.formulation == "vmap"
    with pytest.raises(UnpackableModel, match="overrides encode"):
        PackedTrainer(models, data, [1, 2], steps=1, batch_size=BATCH, device=CPU, speed=SpeedOptions(formulation="bmm"))
    with pytest.raises(UnpackableModel, match="'grouped' is not possible: the model overrides encode"):
        PackedTrainer(
            models, data, [1, 2], steps=1, batch_size=BATCH, device=CPU, speed=SpeedOptions(formulation="grouped")
        )
    with pytest.raises(ValueError, match="formulation must be one of auto, vmap, bmm, grouped, triton"):
        SpeedOptions(formulation="cudnn")


def test_auto_formulation_takes_the_fastest_runnable_one(monkeypatch):
    """auto: triton on CUDA (fastest measured), bmm there when Triton cannot run, grouped on CPU."""
    from disentbench.core.training.kernels import triton_conv as packed_triton
    from disentbench.core.training.packed.trainer import auto_formulation

    monkeypatch.setattr(packed_triton, "available", lambda device=None: None)
    assert auto_formulation(torch.device("cuda")) == "triton"
    assert auto_formulation("cpu") == "grouped"  # the interpreter is a correctness tool, not a fast path
    monkeypatch.setattr(packed_triton, "available", lambda device=None: "triton is not installed")
    assert auto_formulation("cuda:0") == "bmm"


@pytest.mark.parametrize("layer", ["conv", "deconv"])
@pytest.mark.parametrize("size", [4, 8])
def test_packed_conv_functions_pass_gradcheck(layer, size):
    """The shifted-view GEMM layers' hand-written backward passes agree with finite differences (float64)."""
    from disentbench.core.training.packed import bmm as packed_conv

    generator = torch.Generator().manual_seed(size)
    rand = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)  # noqa: E731
    c, o = 3, 5
    h = rand(2, 2, size, size, c)
    if layer == "conv":
        weight, fn = rand(2, o, c, 4, 4), packed_conv._conv4x4_s2
    else:
        weight, fn = rand(2, c, o, 4, 4), packed_conv._deconv4x4_s2
    bias = rand(2, o)
    assert bias.abs().min() > 0  # non-zero bias, so its placement and gradient are checked
    assert torch.autograd.gradcheck(fn, (h, weight, bias), eps=1e-6, atol=1e-8)
    # a non-contiguous input (as the layers receive from the previous one) gives the same values
    wide = torch.randn(2, 2, size + 1, size + 1, c, generator=generator, dtype=torch.float64)
    strided = wide[:, :, :size, :size]
    torch.testing.assert_close(fn(strided, weight, bias), fn(strided.contiguous(), weight, bias))


def test_packed_conv_reference_values_and_autocast():
    """The layers equal torch's conv2d / conv_transpose2d per model; under bf16 autocast they run in bf16
    and return gradients in the parameters' dtype."""
    import torch.nn.functional as F

    from disentbench.core.training.packed import bmm as packed_conv

    generator = torch.Generator().manual_seed(0)
    h = torch.randn(2, 3, 8, 8, 4, generator=generator)
    conv_w, deconv_w = torch.randn(2, 6, 4, 4, 4, generator=generator), torch.randn(2, 4, 6, 4, 4, generator=generator)
    bias = torch.randn(2, 6, generator=generator)
    conv = packed_conv._conv4x4_s2(h, conv_w, bias)
    deconv = packed_conv._deconv4x4_s2(h, deconv_w, bias)
    for i in range(2):
        x = h[i].permute(0, 3, 1, 2)
        ref = F.conv2d(x, conv_w[i], bias[i], stride=2, padding=1).permute(0, 2, 3, 1)
        torch.testing.assert_close(conv[i], ref, rtol=1e-5, atol=1e-5)
        ref = F.conv_transpose2d(x, deconv_w[i], bias[i], stride=2, padding=1).permute(0, 2, 3, 1)
        torch.testing.assert_close(deconv[i], ref, rtol=1e-5, atol=1e-5)

    params = [t.clone().requires_grad_() for t in (h, conv_w, deconv_w, bias)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = packed_conv._conv4x4_s2(params[0], params[1], params[3])
        b = packed_conv._deconv4x4_s2(params[0], params[2], params[3])
    assert a.dtype == b.dtype == torch.bfloat16
    torch.testing.assert_close(a.float(), conv, rtol=0.05, atol=0.3)
    torch.testing.assert_close(b.float(), deconv, rtol=0.05, atol=0.3)
    (a.float().square().sum() + b.float().sum()).backward()
    for p in params:
        assert p.grad is not None and p.grad.dtype == torch.float32 and p.grad.shape == p.shape


@pytest.mark.parametrize("backend", ["bmm", "grouped"])
def test_batched_encoder_decoder_make_no_host_to_device_copies(backend):
    """No tensor is created from host data (``aten.lift_fresh``: e.g. indexing with a Python list),
    which CUDA graph capture forbids, in the forward or backward pass (bmm and grouped; the triton
    layers: tests/test_packed_triton.py)."""
    import importlib

    from helpers import recorded_ops
    from torch.func import stack_module_state

    from disentbench.core.nets.conv import ConvEncoder, DeconvDecoder

    formulation = importlib.import_module(f"disentbench.core.training.packed.{backend}")

    shape = (3, 64, 64)
    params = {f"encoder.{k}": v for k, v in stack_module_state([ConvEncoder(shape, 4) for _ in range(2)])[0].items()}
    params |= {f"decoder.{k}": v for k, v in stack_module_state([DeconvDecoder(4, shape) for _ in range(2)])[0].items()}
    x = torch.rand(2, 2, *shape)
    with recorded_ops() as record:
        mean, logvar = formulation.encode(params, x)
        logits = formulation.decode(params, mean + logvar)
        logits.square().sum().backward()
    assert "aten.baddbmm" in record.ops  # the mode saw the computation (the dense layers, at least)
    assert all(p.grad is not None for p in params.values())
    assert "aten.lift_fresh" not in record.ops, sorted(record.ops)


def test_grouped_channels_last_layouts_are_views_of_its_grouped_operands():
    """With channels_last (a CUDA option, forced here on CPU) the grouped formulation's stacked weights and
    batch are stored so that its grouped weights and NHWC image batch are views, and training is unchanged."""
    from disentbench.core.training.packed import grouped as packed_grouped

    data = Squares()
    factory, configs = _configs("beta_vae", adam_eps=1e-3)
    seeds = [81, 82]
    plain = _build(factory, configs[:2], seeds, data)
    _packed(plain, data, seeds, formulation="grouped")

    def channels_last_trainer(models):
        trainer = PackedTrainer(models, data, seeds, steps=STEPS, batch_size=BATCH, device=CPU, log_every=LOG_EVERY,
                                speed=SpeedOptions(formulation="grouped"))  # fmt: skip
        trainer.speed = SpeedOptions(formulation="grouped", channels_last=True)  # bypass .on(cpu), which drops it
        return trainer

    probe = channels_last_trainer(_build(factory, configs[:2], seeds, data))
    probe._start()
    grouped = probe._pack.params["model.encoder.convs.2.weight"].flatten(0, 1)
    assert grouped.is_contiguous(memory_format=torch.channels_last)
    assert packed_grouped._nhwc(grouped).data_ptr() == grouped.data_ptr()  # no copy
    x, _ = probe._sample_inputs()
    images = x.transpose(0, 1).reshape(BATCH, -1, 64, 64)
    assert images.is_contiguous(memory_format=torch.channels_last) and images.data_ptr() == x.data_ptr()
    nhwc = _build(factory, configs[:2], seeds, data)
    channels_last_trainer(nhwc).train()
    for a, b in zip(plain, nhwc):
        assert _max_diff(a, b) <= 1e-5


def test_network_classes_name_the_layers_the_batched_kernels_read():
    """The layer names and geometry the batched kernels take from ConvEncoder/DeconvDecoder are their real modules."""
    from torch import nn

    from disentbench.core.nets.conv import ConvEncoder, DeconvDecoder

    encoder, decoder = ConvEncoder((3, 64, 64), 5), DeconvDecoder(5, (3, 64, 64))
    for name, (kernel, stride, padding) in zip(ConvEncoder.CONV_LAYERS, ConvEncoder.CONV_GEOMETRY, strict=True):
        conv = encoder.get_submodule(name)
        assert isinstance(conv, nn.Conv2d)
        assert (conv.kernel_size, conv.stride, conv.padding) == ((kernel,) * 2, (stride,) * 2, (padding,) * 2)
    assert isinstance(encoder.get_submodule(ConvEncoder.DENSE_LAYER), nn.Linear)
    assert encoder.get_submodule(ConvEncoder.MEAN_LAYER).out_features == 5
    assert encoder.get_submodule(ConvEncoder.LOGVAR_LAYER).out_features == 5
    assert [decoder.get_submodule(n).in_features for n in DeconvDecoder.DENSE_LAYERS] == [5, 256]
    kernel, stride, padding = DeconvDecoder.DECONV_GEOMETRY
    for name in DeconvDecoder.DECONV_LAYERS:
        deconv = decoder.get_submodule(name)
        assert isinstance(deconv, nn.ConvTranspose2d)
        assert (deconv.kernel_size, deconv.stride, deconv.padding) == ((kernel,) * 2, (stride,) * 2, (padding,) * 2)
    # every parameter of the two networks is one the kernels read
    read = {f"{n}.{k}" for n in (*ConvEncoder.CONV_LAYERS, ConvEncoder.DENSE_LAYER, "mean", "logvar") for k in ("weight", "bias")}
    assert read == {name for name, _ in encoder.named_parameters()}
    read = {f"{n}.{k}" for n in (*DeconvDecoder.DENSE_LAYERS, *DeconvDecoder.DECONV_LAYERS) for k in ("weight", "bias")}
    assert read == {name for name, _ in decoder.named_parameters()}


def test_models_say_whether_their_networks_can_be_batched():
    """The packed trainer asks the model (batched_networks), so any Model can opt in and an override opts out."""

    class Centred(BetaVAE):
        def encode(self, x):
            return self.encoder(x - 0.5)

    data = Squares()
    plain = BetaVAE(BetaVAEConfig(num_latent=3), data.observation_shape)
    assert plain.batched_networks() == (plain.encoder, plain.decoder)
    assert Centred(BetaVAEConfig(num_latent=3), data.observation_shape).batched_networks() is None
    from disentbench.core.contracts import Model

    assert Model().batched_networks() is None


def test_networks_outside_the_model_are_not_batched():
    """batched_networks() must hand over the model's own submodules: others would train parameters no run owns."""
    from disentbench.core.nets.conv import ConvEncoder, DeconvDecoder

    class Foreign(BetaVAE):
        def batched_networks(self):
            return ConvEncoder(self.observation_shape, 3), DeconvDecoder(3, self.observation_shape)

    data = Squares()
    models = [build_model(Foreign, BetaVAEConfig(num_latent=3), data.observation_shape, s, CPU) for s in (1, 2)]
    assert PackedTrainer(models, data, [1, 2], steps=1, batch_size=BATCH, device=CPU).formulation == "vmap"
    with pytest.raises(UnpackableModel, match="not submodules of the model"):
        PackedTrainer(models, data, [1, 2], steps=1, batch_size=BATCH, device=CPU, speed=SpeedOptions(formulation="bmm"))
