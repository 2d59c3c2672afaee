"""The fused Triton layers (core/training/kernels/triton_conv.py) equal torch's convolutions, per model, in values and gradients.

Without a GPU the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``,
set before the module is imported). The interpreter runs every program of a
grid in Python, so the layer tests use small images with the GPU's default
block sizes (the tap-aligned chunks for 32 and 64 channels, the chunks spanning
taps for 1 and 3), one test forces many small tiles and row splits, and the
whole encoder/decoder tests (64x64) use large interpreter-friendly blocks.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from disentbench.core.training.kernels import triton_conv as packed_triton  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu")

#: Fewer, larger programs for the interpreter (its cost is per program and per loop step).
INTERPRETER_BLOCKS = {
    "conv": {"BLOCK_M": 512, "BLOCK_K": 64},
    "conv_transpose": {"BLOCK_M": 512, "BLOCK_K": 64},
    "wgrad": {"BLOCK_M": 512, "BLOCK_K": 64, "ROWS": 1 << 20},
    "colsum": {"BLOCK_M": 512, "ROWS": 1 << 20},
}


@pytest.fixture(autouse=True)
def runnable():
    reason = packed_triton.available(DEVICE)
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def ieee_fp32():
    """fp32 references without TF32: cuDNN's convolutions use TF32 by default on a GPU, which is ~1e-3
    relative, not the 1e-5 the kernels' IEEE fp32 path is held to (seen on an H200). Saved and restored by
    hand: monkeypatch's undo deletes torch.backends.cuda.matmul.allow_tf32 in some pytest versions."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture
def large_blocks(monkeypatch):
    """Interpreter-friendly blocks; on a GPU the default ones (those the trainer uses) are tested."""
    if DEVICE.type == "cpu":
        monkeypatch.setattr(packed_triton, "TUNING", dict(INTERPRETER_BLOCKS))


def _assert_rel(actual, expected, tol, what=""):
    """``max |actual - expected| <= tol * max |expected|`` (a relative error on the tensor's scale)."""
    assert actual.shape == expected.shape, what
    scale = expected.abs().max().item()
    error = (actual.to(expected.dtype) - expected).abs().max().item()
    assert error <= tol * max(scale, 1e-30), f"{what}: max error {error:.3g} vs scale {scale:.3g}"


def _reference(kind, h, weight, bias, kernel, stride, padding, relu):
    """Per-model F.conv2d / F.conv_transpose2d (+ ReLU) on NHWC ``(P, N, H, W, C)`` tensors."""
    fn = F.conv2d if kind == "conv" else F.conv_transpose2d
    outs = []
    for i in range(h.shape[0]):
        out = fn(h[i].permute(0, 3, 1, 2), weight[i], bias[i], stride=stride, padding=padding)
        outs.append((torch.relu(out) if relu else out).permute(0, 2, 3, 1))
    return torch.stack(outs)


def _check_layer(kind, c, o, kernel, stride, padding, size, relu, dtype, tol, strided_input=False, n=2):
    generator = torch.Generator().manual_seed(c * 1000 + o + 7 * relu)
    rand = lambda *shape: torch.randn(*shape, generator=generator, dtype=dtype).to(DEVICE)  # noqa: E731
    p = 2
    if strided_input:  # NCHW memory read as NHWC through strides, as the encoder's first layer does
        h = rand(p, n, c, size, size).permute(0, 1, 3, 4, 2).requires_grad_()
    else:
        h = rand(p, n, size, size, c).requires_grad_()
    shape = (p, o, c, kernel, kernel) if kind == "conv" else (p, c, o, kernel, kernel)
    weight = rand(*shape).requires_grad_()
    bias = rand(p, o).requires_grad_()
    fn = packed_triton.conv2d if kind == "conv" else packed_triton.conv_transpose2d
    out = fn(h, weight, bias, kernel, stride, padding, relu)
    ref = _reference(kind, h, weight, bias, kernel, stride, padding, relu)
    assert out.dtype == dtype and out.is_contiguous()
    _assert_rel(out, ref, tol, "output")
    if relu:
        assert (ref == 0).float().mean() > 0.2  # the ReLU masks something, so the fused mask is tested
    upstream = rand(*out.shape)
    grads = torch.autograd.grad(out, (h, weight, bias), upstream)
    ref_grads = torch.autograd.grad(ref, (h, weight, bias), upstream)
    for name, g, r in zip(("input", "weight", "bias"), grads, ref_grads):
        assert g.dtype == dtype
        _assert_rel(g, r, tol, f"grad of {name}")


#: (kind, C, O, kernel, stride, padding, input size, relu, strided input): every study layer kind
LAYERS = [
    ("conv", 1, 32, 4, 2, 1, 16, True, True),  # e1, C = 1: chunks span kernel taps
    ("conv", 3, 32, 4, 2, 1, 8, False, True),  # e1, C = 3, no ReLU
    ("conv", 32, 32, 4, 2, 1, 8, True, False),  # e2: tap-aligned chunks
    ("conv", 32, 64, 2, 2, 0, 8, True, False),  # e3
    ("conv", 64, 64, 2, 2, 0, 4, False, False),  # e4, no ReLU
    ("conv_transpose", 64, 64, 4, 2, 1, 4, True, False),  # d1
    ("conv_transpose", 64, 32, 4, 2, 1, 4, True, False),  # d2
    ("conv_transpose", 32, 32, 4, 2, 1, 4, False, True),  # d3, no ReLU, strided input
    ("conv_transpose", 32, 1, 4, 2, 1, 8, False, False),  # d4, C = 1 logits
    ("conv_transpose", 32, 3, 4, 2, 1, 8, True, False),  # d4, C = 3 (with a ReLU for the masked colsum)
]


@pytest.mark.parametrize("kind, c, o, kernel, stride, padding, size, relu, strided", LAYERS)
def test_layer_matches_torch_fp32(kind, c, o, kernel, stride, padding, size, relu, strided):
    _check_layer(kind, c, o, kernel, stride, padding, size, relu, torch.float32, 1e-5, strided)


#: float64 cases: chunks across taps and strided input (e1), tap-aligned 2x2 (e3), a transposed conv with ReLU
LAYERS_FP64 = [
    LAYERS[1],
    ("conv", 32, 64, 2, 2, 0, 4, True, False),
    ("conv_transpose", 32, 3, 4, 2, 1, 4, True, False),
]


@pytest.mark.parametrize("kind, c, o, kernel, stride, padding, size, relu, strided", LAYERS_FP64)
def test_layer_matches_torch_fp64(kind, c, o, kernel, stride, padding, size, relu, strided):
    """float64 accumulates in float64 (the broadcast-and-sum path instead of tl.dot)."""
    _check_layer(kind, c, o, kernel, stride, padding, size, relu, torch.float64, 1e-12, strided)


@pytest.mark.parametrize("kind, c, o, phase_inner", [("conv", 3, 32, 0), ("conv_transpose", 16, 32, 0),
                                                      ("conv_transpose", 16, 32, 1), ("conv", 3, 32, 1)])
def test_many_tiles_and_row_splits(monkeypatch, kind, c, o, phase_inner):
    """Tiles smaller than the channels (several M, N and K blocks) and weight-gradient row splits.

    The conv covers K chunks across taps (forward, weight gradient) and
    tap-aligned ones (its input gradient, a transposed conv of 32 channels);
    the transposed conv tap-aligned ones in all three kernels. ``phase_inner``:
    the transposed-conv kernel's other launch order (forward or input gradient).
    """
    small = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "ROWS": 16}
    monkeypatch.setattr(packed_triton, "TUNING", {k: dict(small) for k in INTERPRETER_BLOCKS})
    packed_triton.TUNING["conv_transpose"]["PHASE_INNER"] = phase_inner
    _check_layer(kind, c, o, 4, 2, 1, 8 if kind == "conv" else 4, True, torch.float32, 1e-5)


def test_window_taps_of_the_study_geometry():
    """The window form's tap table for 4x4, stride 2, padding 1, by hand: output pixel (2q + a) reads input rows
    q - 1, q, q + 1 (window cells 0, 1, 2); phase 0 meets them with taps kh = 3, 1 and none, phase 1 with none, 2, 0."""
    assert packed_triton._window_geometry(4, 2, 1) == (-1, 3)
    assert packed_triton._window_geometry(2, 2, 0) == (0, 1)  # e3, e4: one input pixel per 2x2 outputs
    taps = packed_triton._window_taps(4, 2, 1)
    none = 16
    kh = {0: [3, 1, none], 1: [none, 2, 0]}  # phase -> tap of window cells 0, 1, 2
    for a in range(2):
        for b in range(2):
            for wy in range(3):
                for wx in range(3):
                    expected = none if none in (kh[a][wy], kh[b][wx]) else kh[a][wy] * 4 + kh[b][wx]
                    assert taps[wy, wx, a, b] == expected, (wy, wx, a, b)
    assert packed_triton._window_taps(2, 2, 0).flatten().tolist() == [0, 1, 2, 3]


#: Transposed convs in the window form (TUNING's WINDOW): the decoder's shapes (d4's single output channel:
#: 4 of 16 columns used) and the convs whose input gradient it computes (masked; e3's 1-pixel window).
WINDOW_LAYERS = [LAYERS[0], LAYERS[2], LAYERS[3], LAYERS[5], LAYERS[7], LAYERS[8], LAYERS[9]]


@pytest.mark.parametrize("kind, c, o, kernel, stride, padding, size, relu, strided", WINDOW_LAYERS)
def test_window_form_matches_torch(monkeypatch, kind, c, o, kernel, stride, padding, size, relu, strided):
    monkeypatch.setattr(packed_triton, "TUNING", {"conv_transpose": {"WINDOW": 1}})
    if DEVICE.type == "cpu":
        packed_triton.TUNING["conv_transpose"].update(BLOCK_M=512)
    _check_layer(kind, c, o, kernel, stride, padding, size, relu, torch.float32, 1e-5, strided)


def test_window_form_in_small_tiles_and_float64(monkeypatch):
    """Several M, N and K blocks of the window form (64 columns = 4 phases x 16 channels in 16-column blocks,
    chunks within and across taps), selected for one layer shape only; float64's multiply-and-sum path."""
    small = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "WINDOW": 1}
    monkeypatch.setattr(packed_triton, "TUNING", {("conv_transpose", 16, 16, 4, 2): small})
    window_rows = packed_triton._window_rows
    calls = []
    monkeypatch.setattr(packed_triton, "_window_rows", lambda w, *a: calls.append(tuple(w.shape[1:3])) or window_rows(w, *a))
    _check_layer("conv_transpose", 16, 16, 4, 2, 1, 4, True, torch.float32, 1e-5)
    assert calls == [(16, 16)]  # the forward took the window form
    _check_layer("conv_transpose", 16, 8, 4, 2, 1, 4, True, torch.float32, 1e-5)
    assert calls == [(16, 16)]  # another shape: the phase form
    packed_triton.TUNING[("conv_transpose", 32, 3, 4, 2)] = {"WINDOW": 1}
    _check_layer("conv_transpose", 32, 3, 4, 2, 1, 4, True, torch.float64, 1e-12)
    assert calls[-1] == (32, 3)


def test_tuning_json_round_trip_and_errors():
    tuning = {"wgrad": {"BLOCK_K": 128}, ("conv_transpose", 32, 1, 4, 2): {"WINDOW": 1, "BLOCK_M": 64}}
    text = packed_triton.tuning_to_json(tuning)
    assert text == {"wgrad": {"BLOCK_K": 128}, "conv_transpose[32,1,4,2]": {"WINDOW": 1, "BLOCK_M": 64}}
    assert packed_triton.tuning_from_json(text) == tuning
    with pytest.raises(ValueError, match="'deconv' is not a kernel kind: use one of conv, conv_transpose"):
        packed_triton.tuning_from_json({"deconv": {"BLOCK_K": 64}})
    with pytest.raises(ValueError, match=r"not a kernel kind.*\[gathered channels"):
        packed_triton.tuning_from_json({"conv[32,32]": {"BLOCK_K": 64}})
    with pytest.raises(ValueError, match="conv.BLOCK=64: settings are integers, named one of BLOCK_M"):
        packed_triton.tuning_from_json({"conv": {"BLOCK": 64}})
    with pytest.raises(ValueError, match="expected an object of settings"):
        packed_triton.tuning_from_json({"conv": 64})


def test_tuned_swaps_the_settings_and_restores_them(monkeypatch):
    monkeypatch.setattr(packed_triton, "TUNING", {"conv": {"BLOCK_M": 64}})
    seen = []
    with packed_triton.tuned(packed_triton.tuning_from_json({"conv_transpose[32,1,4,2]": {"WINDOW": 1}})):
        seen.append(packed_triton._config("conv_transpose", 32, 1, 4, 2, 1 << 14, torch.bfloat16, padding=1))
        assert packed_triton.TUNING == {("conv_transpose", 32, 1, 4, 2): {"WINDOW": 1}}
    assert seen[0]["WINDOW"]
    assert packed_triton.TUNING == {"conv": {"BLOCK_M": 64}}
    with pytest.raises(RuntimeError), packed_triton.tuned({}):
        assert packed_triton.TUNING == {}  # empty: the heuristic alone
        raise RuntimeError
    assert packed_triton.TUNING == {"conv": {"BLOCK_M": 64}}  # restored after an error too
    with packed_triton.tuned(None):
        assert packed_triton.TUNING == {"conv": {"BLOCK_M": 64}}  # None: keep


def test_packed_trainer_steps_under_its_tuning(monkeypatch):
    """SpeedOptions.triton_tuning is in force around each step's compute (eager and graph capture call
    _compute), and only there; other formulations ignore it."""
    from helpers import BATCH, Squares, _build, _configs

    from disentbench.core.training.packed.trainer import PackedTrainer, SpeedOptions

    monkeypatch.setattr(packed_triton, "TUNING", {})
    data = Squares()
    factory, configs = _configs("beta_vae", adam_eps=1e-3)
    tuning = {"conv_transpose": {"WINDOW": 1}, "wgrad[32,32,4,2]": {"BLOCK_K": 128}}
    seen = []
    for formulation in ("triton", "bmm"):
        models = _build(factory, configs[:2], [1, 2], data)
        trainer = PackedTrainer(
            models, data, [1, 2], steps=1, batch_size=BATCH, device=DEVICE,
            speed=SpeedOptions(formulation=formulation, triton_tuning=tuning),
        )  # fmt: skip
        monkeypatch.setattr(trainer, "_compute_step", lambda x, draws: seen.append(dict(packed_triton.TUNING)))
        trainer._compute(None, [])
        assert packed_triton.TUNING == {}
    assert seen == [packed_triton.tuning_from_json(tuning), {}]


def _stacked_modules(channels, dtype=torch.float32, p=2, latent=6):
    from torch.func import stack_module_state

    from disentbench.core.nets.conv import ConvEncoder, DeconvDecoder

    generator = torch.Generator().manual_seed(channels)
    shape = (channels, 64, 64)
    encoders = [ConvEncoder(shape, latent).to(dtype) for _ in range(p)]
    decoders = [DeconvDecoder(latent, shape).to(dtype) for _ in range(p)]
    with torch.no_grad():
        for module in encoders + decoders:
            for param in module.parameters():  # non-zero biases too, so bias placement is tested
                param.copy_(torch.randn(param.shape, generator=generator, dtype=dtype) * 0.2)
    params = {f"encoder.{k}": v for k, v in stack_module_state(encoders)[0].items()}
    params |= {f"decoder.{k}": v for k, v in stack_module_state(decoders)[0].items()}
    params = {k: v.to(DEVICE).detach().requires_grad_() for k, v in params.items()}
    x = torch.rand(p, 2, *shape, generator=generator, dtype=dtype).to(DEVICE)
    z = torch.randn(p, 2, latent, generator=generator, dtype=dtype).to(DEVICE)
    return encoders, decoders, params, x, z


def _objective(mean, logvar, logits):
    return mean.sum() + logvar.square().sum() + logits.float().square().sum() * 1e-2


@pytest.mark.usefixtures("large_blocks")
def test_encode_decode_match_the_modules():
    """encode/decode equal each stacked model's ConvEncoder/DeconvDecoder, in values and parameter gradients."""
    encoders, decoders, params, x, z = _stacked_modules(3)
    mean, logvar = packed_triton.encode(params, x)
    logits = packed_triton.decode(params, z)
    assert mean.shape == logvar.shape == (2, 2, 6) and logits.shape == (2, 2, 3, 64, 64)
    _objective(mean, logvar, logits).backward()
    for i in range(2):
        encoder, decoder = encoders[i].to(DEVICE), decoders[i].to(DEVICE)
        solo_mean, solo_logvar = encoder(x[i])
        solo_logits = decoder(z[i])
        _assert_rel(mean[i], solo_mean, 1e-5, "mean")
        _assert_rel(logvar[i], solo_logvar, 1e-5, "logvar")
        _assert_rel(logits[i], solo_logits, 1e-5, "logits")
        _objective(solo_mean, solo_logvar, solo_logits).backward()
        for prefix, module in (("encoder.", encoder), ("decoder.", decoder)):
            for name, param in module.named_parameters():
                _assert_rel(params[prefix + name].grad[i], param.grad, 1e-5, prefix + name)
    assert logits.abs().max() > 0.1  # not trivially zero


@pytest.mark.usefixtures("large_blocks")
def test_chains_apply_each_relu_backward_once_where_the_gradient_is_written(monkeypatch):
    """Inside encode/decode each ReLU backward is applied by the input-gradient kernel of the layer above
    (its output mask), so the backward kernels of e1-e3 and d1-d3 load their output gradient unmasked: of the
    8 weight-gradient launches only e4's (whose gradient comes from torch's dense layer) masks. The values
    are test_encode_decode_match_the_modules'."""
    masked_wgrads, output_masks = [], []
    wgrad, conv_t, conv = packed_triton._wgrad_launch, packed_triton._conv_transpose_launch, packed_triton._conv_launch

    def record_wgrad(a, a_mask, b, b_mask, *args):
        masked_wgrads.append(a_mask is not None or b_mask is not None)
        return wgrad(a, a_mask, b, b_mask, *args)

    def record(launch):
        def run(*args, out_mask=None):
            output_masks.append(out_mask is not None)
            return launch(*args, out_mask=out_mask)

        return run

    monkeypatch.setattr(packed_triton, "_wgrad_launch", record_wgrad)
    monkeypatch.setattr(packed_triton, "_conv_transpose_launch", record(conv_t))
    monkeypatch.setattr(packed_triton, "_conv_launch", record(conv))
    _, _, params, x, z = _stacked_modules(1)
    mean, logvar = packed_triton.encode(params, x)
    logits = packed_triton.decode(params, z)
    output_masks.clear()
    _objective(mean, logvar, logits).backward()
    assert len(masked_wgrads) == 8 and masked_wgrads.count(True) == 1  # e4's
    # input gradients of d4, d3, d2, e4, e3, e2 write masked; d1's (torch's dense layer below) does not; e1 has none
    assert len(output_masks) == 7 and output_masks.count(False) == 1
    grads = {name: param.grad.clone() for name, param in params.items()}
    monkeypatch.setattr(packed_triton, "CHAIN_MASKS", False)  # the A/B switch: masked loads, the same gradients
    masked_wgrads.clear()
    for param in params.values():
        param.grad = None
    _objective(*packed_triton.encode(params, x), packed_triton.decode(params, z)).backward()
    assert masked_wgrads.count(True) == 7  # all but d4's (no ReLU)
    for name, param in params.items():
        torch.testing.assert_close(param.grad, grads[name], rtol=0, atol=0, msg=name)
    with pytest.raises(ValueError, match="grad_premasked needs relu"):
        packed_triton.conv2d(x[:, :, :1].permute(0, 1, 3, 4, 2), params["encoder.convs.0.weight"],
                             None, 4, 2, 1, relu=False, grad_premasked=True)  # fmt: skip


@pytest.mark.usefixtures("large_blocks")
def test_bf16_autocast_matches_the_modules_under_autocast():
    """Under bf16 autocast the layers compute in bf16 (fp32 accumulation) and return fp32 parameter gradients
    close to the modules' fp32 ones.

    Outputs are compared with the modules under autocast and in fp32. For
    the gradients, bf16 itself moves some entries by tens of percent (ReLU
    masks flip where a bf16-rounded pre-activation changes sign; with
    cuDNN/cuBLAS on an H200 the largest entry's difference reached 39% of the
    largest entry in the dense layer's weight gradient), so each parameter's
    gradient is held, in norm, within 10% of the fp32 gradient through the
    whole network; test_bf16_layer_is_as_accurate_as_torch compares each
    layer's bf16 error with torch's own.
    """
    encoders, decoders, params, x, z = _stacked_modules(1)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        mean, logvar = packed_triton.encode(params, x)
        logits = packed_triton.decode(params, z)
    assert mean.dtype == logvar.dtype == logits.dtype == torch.bfloat16
    _objective(mean, logvar, logits).backward()
    for i in range(2):
        encoder, decoder = encoders[i].to(DEVICE), decoders[i].to(DEVICE)
        names = [f"encoder.{n}" for n, _ in encoder.named_parameters()] + [f"decoder.{n}" for n, _ in decoder.named_parameters()]
        weights = [*encoder.parameters(), *decoder.parameters()]
        solo_fp32 = (*encoder(x[i]), decoder(z[i]))
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            solo = (*encoder(x[i]), decoder(z[i]))
        for name, ours, ref, ref_fp32 in zip(("mean", "logvar", "logits"), (mean, logvar, logits), solo, solo_fp32):
            _assert_rel(ours[i].float(), ref.float(), 0.05, name)
            _assert_rel(ours[i].float(), ref_fp32.detach(), 0.05, name + " (fp32)")
        grads_fp32 = torch.autograd.grad(_objective(*solo_fp32), weights)
        for name, fp32 in zip(names, grads_fp32):
            ours = params[name].grad[i]
            assert ours.dtype == torch.float32
            scale = fp32.norm().item()
            # within 10% of fp32 in norm (on CPU: at most 6.1% here, 5.6% for torch's own bf16 modules)
            assert (ours - fp32).norm().item() <= 0.1 * scale, name


@pytest.mark.usefixtures("large_blocks")
@pytest.mark.parametrize("kind, c, o, kernel, stride, padding, size, relu, strided", [LAYERS[2], LAYERS[7], LAYERS[8]])
def test_bf16_layer_is_as_accurate_as_torch(kind, c, o, kernel, stride, padding, size, relu, strided):
    """One layer under bf16 autocast, from the same bf16-representable input: output and input, weight and
    bias gradients are about as close to fp32 as torch's own bf16 layer is (within 2x, in norm: both are at bf16's
    rounding level, 2^-9 relative)."""
    generator = torch.Generator().manual_seed(11 * c + o)
    rand = lambda *shape: torch.randn(*shape, generator=generator).to(DEVICE)  # noqa: E731
    h = rand(2, 2, size, size, c).bfloat16().float()
    weight = rand(*((2, o, c, kernel, kernel) if kind == "conv" else (2, c, o, kernel, kernel))) * 0.2
    bias = rand(2, o) * 0.2
    fn = packed_triton.conv2d if kind == "conv" else packed_triton.conv_transpose2d

    def run(which):
        leaves = [t.clone().requires_grad_() for t in (h, weight, bias)]
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=which != "fp32"):
            if which == "ours":
                out = fn(*leaves, kernel, stride, padding, relu)
            else:
                out = _reference(kind, *leaves, kernel, stride, padding, relu)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(DEVICE)
        return [out.float()] + [g.float() for g in torch.autograd.grad(out, leaves, upstream.to(out.dtype))]

    fp32, ours, theirs = run("fp32"), run("ours"), run("torch")
    for name, ref, a, b in zip(("output", "input grad", "weight grad", "bias grad"), fp32, ours, theirs):
        ours_error, torch_error = (a - ref).norm().item(), (b - ref).norm().item()
        assert ours_error <= 2 * torch_error + 1e-4 * ref.norm().item(), f"{name}: {ours_error:.3g} vs torch {torch_error:.3g}"


def test_available_and_module_api(monkeypatch):
    assert packed_triton.available(DEVICE) is None
    assert packed_triton.available() is None
    # compiled (not interpreted) kernels need CUDA: the trainer refuses the formulation in one clear line
    monkeypatch.setattr(packed_triton, "_interpreted", lambda: False)
    assert "run on CUDA devices" in packed_triton.available("cpu")
    from helpers import Squares, _build, _configs

    from disentbench.core.training.packed.trainer import PackedTrainer, SpeedOptions, UnpackableModel

    data = Squares()
    factory, configs = _configs("beta_vae")
    models = _build(factory, configs[:2], [1, 2], data)
    with pytest.raises(UnpackableModel, match="formulation 'triton' is not possible: Triton kernels run on CUDA"):
        PackedTrainer(models, data, [1, 2], steps=1, batch_size=8, device="cpu", speed=SpeedOptions(formulation="triton"))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="kernel"):
        packed_triton.conv2d(
            torch.zeros(1, 1, 8, 8, 1, device=DEVICE), torch.zeros(1, 2, 1, 2, 2, device=DEVICE), None, 4, 2, 1, True
        )


@pytest.mark.usefixtures("large_blocks")
def test_layers_make_no_host_to_device_copies():
    """No tensor is created from host data (``aten.lift_fresh``), which CUDA graph capture forbids,
    in the torch code around the kernels, forward or backward."""
    from helpers import recorded_ops

    generator = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=generator).to(DEVICE).requires_grad_()  # noqa: E731
    h, deconv_w, conv_w, bias = rand(2, 2, 4, 4, 16), rand(2, 16, 8, 4, 4), rand(2, 8, 8, 4, 4), rand(2, 8)
    with recorded_ops() as record:
        out = packed_triton.conv_transpose2d(h, deconv_w, bias, 4, 2, 1, True)
        out = packed_triton.conv2d(out, conv_w, bias, 4, 2, 1, True)
        out.square().sum().backward()
    assert "aten.permute" in record.ops  # the mode saw the weight rearrangements
    assert all(t.grad is not None for t in (h, deconv_w, conv_w, bias))
    assert "aten.lift_fresh" not in record.ops, sorted(record.ops)


@pytest.mark.parametrize("name", ["beta_vae", pytest.param("factor_vae", marks=pytest.mark.slow)])
def test_packed_trainer_with_triton_equals_one_by_one(name, large_blocks, monkeypatch):
    """PackedTrainer(formulation="triton") trains every run as one-by-one Trainer training does (fp32,
    adam_eps 1e-3 as in tests/test_packed.py): FactorVAE (slow: ~40 s in the interpreter) covers the second
    optimizer (the discriminator). Every stacked parameter is updated by the fused Adam kernel (its
    gradients are permuted views: they once fell back to torch's elementwise Adam, unnoticed)."""
    from helpers import BATCH, Squares, _assert_same_logs, _build, _configs, _max_diff, _solo

    from disentbench.core.training.packed.trainer import PackedTrainer, SpeedOptions

    if DEVICE.type != "cpu":
        pytest.skip("the one-by-one reference runs on CPU (tests/test_packed.py)")
    data = Squares()
    factory, configs = _configs(name, adam_eps=1e-3)
    configs, seeds = configs[:2], [31, 32]
    solo_models = _build(factory, configs, seeds, data)
    solo_logs = [_solo(m, data, s, steps=2) for m, s in zip(solo_models, seeds)]
    packed_models = _build(factory, configs, seeds, data)
    logs: dict[int, list] = {}
    trainer = PackedTrainer(
        packed_models, data, seeds, steps=2, batch_size=BATCH, device=DEVICE, log_every=2,
        speed=SpeedOptions(formulation="triton"),
    )  # fmt: skip
    assert trainer.formulation == "triton"
    fused_calls, nll_calls = [], []
    adam_step_, nll = packed_triton.adam_step_, packed_triton._bernoulli_nll
    monkeypatch.setattr(packed_triton, "adam_step_", lambda *args: fused_calls.append(1) or adam_step_(*args))
    monkeypatch.setattr(packed_triton, "_bernoulli_nll", lambda *args: nll_calls.append(args[2]) or nll(*args))
    trainer.train(on_log=lambda index, step, terms: logs.setdefault(index, []).append((step, terms)))
    assert len(fused_calls) == 2 * len(list(packed_models[0].parameters()))  # 2 steps x every stacked parameter
    assert nll_calls == [2, 2]  # the reconstruction loss: one fused kernel per step for the whole pack (under vmap)
    for i, (solo, packed) in enumerate(zip(solo_models, packed_models)):
        assert _max_diff(solo, packed) <= 1e-5, f"run {i}"
        _assert_same_logs(solo_logs[i], logs[i])


def test_overlapped_sampling_replays_the_same_training_on_cuda():
    """CUDA only (gpu_checks.sh runs this file on the card): SpeedOptions.overlap_sampling makes each step's
    draws on a side stream; through graph capture and replays the runs end bitwise where the default ends."""
    if DEVICE.type != "cuda":
        pytest.skip("side-stream sampling is CUDA-only")
    from helpers import BATCH, Squares, _build, _configs

    from disentbench.core.training.packed.trainer import PackedTrainer, SpeedOptions

    data = Squares()
    factory, configs = _configs("beta_vae", adam_eps=1e-3)
    seeds = [71, 72]
    finals = []
    for overlap in (False, True):
        models = [m.to(DEVICE) for m in _build(factory, configs[:2], seeds, data)]
        speed = SpeedOptions(cuda_graphs=True, formulation="triton", overlap_sampling=overlap)
        PackedTrainer(models, data, seeds, steps=8, batch_size=BATCH, device=DEVICE, log_every=8, speed=speed).train()
        finals.append(models)
    for a, b in zip(*finals):
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p.detach(), q.detach())


def _torch_nll(logits, x):
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(-3).sum(-1)


@pytest.mark.parametrize("channels", [1, 3])
def test_fused_bernoulli_loss_equals_torch_under_vmap(monkeypatch, channels):
    """The models' Bernoulli reconstruction loss with the fused kernels switched on (as the packed trainer does),
    vmapped over runs: one kernel call for the whole pack, equal to torch's loss per run in value and gradient.
    Logits are the decoder's channels-last output read as (C, H, W), targets continuous in [0, 1]."""
    from torch.func import vmap

    from disentbench.core.nets import losses
    from disentbench.core.nets.losses import bernoulli_reconstruction_loss

    generator = torch.Generator().manual_seed(channels)
    base = (torch.randn(3, 4, 16, 16, channels, generator=generator) * 4).to(DEVICE)
    logits = base.permute(0, 1, 4, 2, 3).requires_grad_()
    x = torch.rand(3, 4, channels, 16, 16, generator=generator).to(DEVICE)
    calls = []
    nll = packed_triton._bernoulli_nll
    monkeypatch.setattr(packed_triton, "_bernoulli_nll", lambda *args: calls.append(args[2]) or nll(*args))
    with losses.fused_bernoulli(packed_triton.bernoulli_nll_per_sample):
        fused = vmap(bernoulli_reconstruction_loss)(logits, x)
    assert calls == [2]
    reference = torch.stack([_torch_nll(logits[i], x[i]).mean() for i in range(3)])
    _assert_rel(fused, reference, 1e-6, "loss")
    grad = torch.autograd.grad(fused.sum(), logits)[0]
    assert grad.stride() == logits.stride()  # written in the logits' own (channels-last) layout
    _assert_rel(grad, torch.autograd.grad(reference.sum(), logits)[0], 1e-6, "gradient")
    # switched off (one-by-one training, evaluation): torch's, not the kernel
    bernoulli_reconstruction_loss(logits[0], x[0])
    assert calls == [2]


def test_fused_bernoulli_loss_layouts_dtypes_and_nan():
    """Layouts the kernels cannot address by strides are copied; bfloat16 logits are computed in float32 and
    their gradient rounded once; NaN propagates; where the kernels do not apply, None (torch's loss instead)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 10, generator=generator).to(DEVICE)
    wide = (torch.randn(2, 3, 8, 20, generator=generator) * 3).to(DEVICE)
    logits = wide[..., ::2].requires_grad_()  # W stride 2: H and W do not merge
    out = packed_triton._BernoulliNLL.apply(logits, x, 1)
    _assert_rel(out, _torch_nll(logits, x), 1e-6, "strided loss")
    grad = torch.autograd.grad(out.sum() * 2, logits)[0]
    _assert_rel(grad, torch.autograd.grad(_torch_nll(logits, x).sum() * 2, logits)[0], 1e-6, "strided gradient")

    half = logits.detach().bfloat16().requires_grad_()
    out = packed_triton._BernoulliNLL.apply(half, x, 1)
    assert out.dtype == torch.float32
    exact = half.detach().float().requires_grad_()
    _assert_rel(out, _torch_nll(exact, x), 1e-6, "bf16 loss (float32 arithmetic)")
    grad = torch.autograd.grad(out.sum(), half)[0]
    assert grad.dtype == torch.bfloat16
    # within one bf16 ulp of the float32 gradient's largest entries (2^-7 of [0.5, 1): the interpreter's cast may truncate)
    _assert_rel(grad.float(), torch.autograd.grad(_torch_nll(exact, x).sum(), exact)[0], 2**-7, "bf16 gradient")

    broken = logits.detach().clone()
    broken[1, 0, 3, 3] = float("nan")
    out = packed_triton._BernoulliNLL.apply(broken, x, 1)
    assert out[0].isfinite() and out[1].isnan()

    assert packed_triton.bernoulli_nll_per_sample(logits, x) is not None
    assert packed_triton.bernoulli_nll_per_sample(logits.double(), x.double()) is None
    assert packed_triton.bernoulli_nll_per_sample(half, x) is None  # bf16 outside CUDA autocast: torch's dtype rules
    assert packed_triton.bernoulli_nll_per_sample(logits, x.clone().requires_grad_()) is None


def test_fused_adam_equals_torch_adam_per_slice():
    """StackedAdam(fused=True) (one Triton kernel per stacked parameter) equals torch.optim.Adam on each run's
    slice: per-run lr, betas, eps and step counts (run 1 resumes from step 3), several kernel blocks."""
    from disentbench.core.training.packed.trainer import StackedAdam

    generator = torch.Generator().manual_seed(0)
    settings = [dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8), dict(lr=3e-2, betas=(0.5, 0.9), eps=1e-6)]
    shape = (3, packed_triton.ADAM_BLOCK // 2 + 5)  # 1,551 elements per model: two blocks, the second partial
    solo = [torch.randn(shape, generator=generator).to(DEVICE).requires_grad_() for _ in settings]
    optimizers = [torch.optim.Adam([p], **kw) for p, kw in zip(solo, settings)]
    grad = lambda: torch.randn(shape, generator=generator).to(DEVICE) * 1e-3  # noqa: E731
    for _ in range(3):  # run 1 has Adam state from three earlier steps
        solo[1].grad = grad()
        optimizers[1].step()
    state = optimizers[1].state[solo[1]]
    stacked = torch.stack([p.detach() for p in solo]).clone()
    adam = StackedAdam(
        [stacked], lr=[kw["lr"] for kw in settings], beta1=[kw["betas"][0] for kw in settings],
        beta2=[kw["betas"][1] for kw in settings], eps=[kw["eps"] for kw in settings], steps=[0, 3],
        exp_avgs=[torch.stack([torch.zeros(shape, device=DEVICE), state["exp_avg"]])],
        exp_avg_sqs=[torch.stack([torch.zeros(shape, device=DEVICE), state["exp_avg_sq"]])], fused=True,
    )  # fmt: skip
    assert adam.fused
    for _ in range(4):
        grads = [grad() for _ in settings]
        for p, g, opt in zip(solo, grads, optimizers):
            p.grad = g
            opt.step()
        adam.step([torch.stack(grads)])
    for i, p in enumerate(solo):
        _assert_rel(stacked[i], p.detach(), 1e-6, f"run {i} parameters")
        _assert_rel(adam.exp_avgs[0][i], optimizers[i].state[p]["exp_avg"], 1e-6, f"run {i} exp_avg")
        _assert_rel(adam.exp_avg_sqs[0][i], optimizers[i].state[p]["exp_avg_sq"], 1e-6, f"run {i} exp_avg_sq")
    assert adam.select([1], [stacked[1:].clone()]).fused
    # where the kernel cannot run (float64 here), fused=True quietly means torch's elementwise operations
    assert not StackedAdam([stacked.double()], lr=[1e-3] * 2, beta1=[0.9] * 2, beta2=[0.999] * 2, eps=[1e-8] * 2,
                           fused=True).fused  # fmt: skip


def test_kernels_compile_for_h100_and_h200_without_a_gpu():
    """Triton's GPU compiler (not the interpreter) accepts every kernel launch of a bf16 training step at the
    study's shapes, with the trainer's block sizes, for sm_90, and within its shared memory
    (benchmarks/triton_compile_check.py, in a process without TRITON_INTERPRET)."""
    import subprocess
    import sys
    from pathlib import Path

    import triton

    if tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 3):
        pytest.skip(f"the compile check needs Triton >= 3.3; found {triton.__version__}")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "triton_compile_check.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--arch", "90"], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    import re

    counts = re.search(r"(\d+) of (\d+) compiled", result.stdout)
    # every distinct launch (forward, input and weight gradients of 8 layers, bias sums, Adam) compiled
    assert counts and counts[1] == counts[2] and int(counts[2]) >= 20, result.stdout[-2000:]
