"""The study's conv encoder and deconv decoder for P stacked models, as batched matrix products.

:class:`~disentbench.core.packed.PackedTrainer` can run any model's loss
under ``torch.func.vmap``; vmap turns each convolution into one *grouped*
convolution with P groups. cuDNN's grouped-convolution kernels (above all
their weight gradients) are far slower per FLOP than its dense ones, so for
the study's own architecture (``plugins/models/architectures.py``:
``ConvEncoder``/``DeconvDecoder``) this module computes the encoder and
decoder of all P models directly as strided batched GEMMs (the model index
is the GEMM batch), which cuBLAS runs on tensor cores:

* activations are kept per model in ``(P, N, H, W, C)`` layout, so every
  layer is ``(P, N*H*W, K) @ (P, K, C_out)``;
* a 4x4 stride-2 convolution gathers its 4x4 patches once (``unfold``, C
  innermost) and multiplies them with the kernel reshaped to ``(16*C_in, C_out)``;
* a 2x2 stride-2 convolution needs no gather: the patches are a permutation
  of the input (space-to-depth);
* a 4x4 stride-2 transposed convolution (padding 1) with as many output as
  input channels is split into its four output phases: output pixel
  ``(2m+a, 2n+b)`` receives exactly the 2x2 input window at padded position
  ``(m+a, n+b)`` through kernel taps ``(3-a-2r, 3-b-2s)``, so the four phases
  are one batched GEMM of 2x2 windows (batch P*4) and an interleave; one with
  fewer output channels (64 -> 32, and the last layer 32 -> C) multiplies
  each input pixel into its 16 taps' outputs and sums them with ``F.fold``
  (col2im), which moves ``C_out / C_in`` as many bytes;
* bias additions are fused into the GEMMs (``baddbmm``).

The functions are plain differentiable torch code (autograd derives the
backward pass) and compute the same function as the modules: tests compare
them with the per-model modules in float64 (to 1e-12) and through training
(``tests/test_packed.py``). Parameter names and layouts are the modules'
own (``encoder.convs.0.weight`` of shape ``(P, 32, C, 4, 4)`` and so on), so
stacked parameters, checkpoints and Adam state are shared with the vmap path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Parameter names of ConvEncoder / DeconvDecoder (indices into their nn.Sequential).
_ENCODER_CONVS = ("convs.0", "convs.2", "convs.4", "convs.6")
_ENCODER_DENSE = "convs.9"
_DECODER_DENSE = ("dense.0", "dense.2")
_DECODER_DECONVS = ("deconvs.0", "deconvs.2", "deconvs.4", "deconvs.6")


def is_study_conv_model(model) -> bool:
    """Whether ``model``'s encoder and decoder are exactly the study's conv architecture."""
    from disentbench.plugins.models.architectures import ConvEncoder, DeconvDecoder

    return type(getattr(model, "encoder", None)) is ConvEncoder and type(getattr(model, "decoder", None)) is DeconvDecoder


def _conv4x4_s2(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """4x4 conv, stride 2, padding 1: ``h (P,N,H,W,C) -> (P,N,H/2,W/2,O)``; weight (P,O,C,4,4)."""
    p, n, height, width, c = h.shape
    out_h, out_w = height // 2, width // 2
    padded = F.pad(h, (0, 0, 1, 1, 1, 1))
    # (P, N, Ho, Wo, C, 4, 4) -> (P, N, Ho, Wo, 4, 4, C): C innermost, as in memory
    patches = padded.unfold(2, 4, 2).unfold(3, 4, 2).permute(0, 1, 2, 3, 5, 6, 4)
    cols = patches.reshape(p, n * out_h * out_w, 16 * c)
    kernel = weight.permute(0, 3, 4, 2, 1).reshape(p, 16 * c, -1)  # rows [kh][kw][c]
    out = torch.baddbmm(bias.unsqueeze(1), cols, kernel)
    return out.view(p, n, out_h, out_w, -1)


def _conv2x2_s2(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """2x2 conv, stride 2, no padding: non-overlapping patches (space-to-depth), then one GEMM."""
    p, n, height, width, c = h.shape
    out_h, out_w = height // 2, width // 2
    cols = h.view(p, n, out_h, 2, out_w, 2, c).permute(0, 1, 2, 4, 3, 5, 6).reshape(p, n * out_h * out_w, 4 * c)
    kernel = weight.permute(0, 3, 4, 2, 1).reshape(p, 4 * c, -1)  # rows [kh][kw][c]
    out = torch.baddbmm(bias.unsqueeze(1), cols, kernel)
    return out.view(p, n, out_h, out_w, -1)


def _deconv4x4_s2(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """4x4 transposed conv, stride 2, padding 1: ``h (P,N,H,W,C) -> (P,N,2H,2W,O)``; weight (P,C,O,4,4).

    Output ``(2m+a, 2n+b)`` = sum over the input window rows ``m-1+a+r``, columns
    ``n-1+b+s`` (r, s in {0, 1}) through kernel tap ``(3-a-2r, 3-b-2s)``.
    """
    p, n, height, width, c = h.shape
    o = weight.shape[2]
    padded = F.pad(h, (0, 0, 1, 1, 1, 1))
    windows = padded.unfold(2, 2, 1).unfold(3, 2, 1)  # (P, N, H+1, W+1, C, 2, 2): [c][r][s]
    cols = torch.stack(
        [windows[:, :, a : a + height, b : b + width] for a in (0, 1) for b in (0, 1)], dim=1
    )  # (P, 4, N, H, W, C, 2, 2)
    cols = cols.permute(0, 1, 2, 3, 4, 6, 7, 5).reshape(p * 4, n * height * width, 4 * c)  # rows [r][s][c]
    # Phase 0 uses kernel rows (3, 1), phase 1 rows (2, 0): rows a, a+2 of the flipped kernel.
    # (Strided slices, not index lists: a list index would be a host-to-device copy,
    # which CUDA graph capture forbids.)
    flipped = weight.flip(3, 4)
    kernels = torch.stack(
        [flipped[:, :, :, a::2, b::2] for a in (0, 1) for b in (0, 1)], dim=1
    )  # (P, 4, C, O, 2, 2)
    kernels = kernels.permute(0, 1, 4, 5, 2, 3).reshape(p * 4, 4 * c, o)  # rows [r][s][c]
    bias4 = bias.unsqueeze(1).expand(p, 4, o).reshape(p * 4, 1, o)
    out = torch.baddbmm(bias4, cols, kernels)  # (P*4, N*H*W, O)
    out = out.view(p, 2, 2, n, height, width, o).permute(0, 3, 4, 1, 5, 2, 6)  # (P, N, H, a, W, b, O)
    return out.reshape(p, n, 2 * height, 2 * width, o)


class _Col2Im(torch.autograd.Function):
    """``F.fold(cols, (H, W), kernel_size=4, stride=2, padding=1)`` with a gather-based backward.

    F.fold's own backward is ``im2col``, which on CUDA launches one kernel per
    image (P*N launches per step); the gradient of a sum over taps is a
    gather, done here with one strided view and one copy.
    """

    @staticmethod
    def forward(ctx, cols, height, width):
        return F.fold(cols, (height, width), kernel_size=4, stride=2, padding=1)

    @staticmethod
    def backward(ctx, grad):
        b, o = grad.shape[:2]
        padded = F.pad(grad, (1, 1, 1, 1))
        patches = padded.unfold(2, 4, 2).unfold(3, 4, 2)  # (B, O, H/2, W/2, 4, 4)
        grad_cols = patches.permute(0, 1, 4, 5, 2, 3).reshape(b, o * 16, -1)
        return grad_cols, None, None


def _deconv4x4_s2_fold(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The same transposed conv as a GEMM into per-tap columns summed by ``F.fold`` (col2im).

    The columns hold ``16 * C_out`` values per input pixel where the window
    form gathers ``16 * C_in``, so this form moves less memory when
    ``C_out < C_in`` (the decoder's 64 -> 32 and its last 32 -> C layer).
    Returns a channels-last view ``(P, N, 2H, 2W, O)``.
    """
    p, n, height, width, c = h.shape
    o = weight.shape[2]
    cols = torch.bmm(h.reshape(p, n * height * width, c), weight.reshape(p, c, o * 16))  # columns [o][kh][kw]
    cols = cols.view(p * n, height * width, o * 16).transpose(1, 2)
    out = _Col2Im.apply(cols, 2 * height, 2 * width)  # (P*N, O, 2H, 2W)
    out = out.view(p, n, o, 2 * height, 2 * width) + bias.to(out.dtype).view(p, 1, o, 1, 1)
    return out.permute(0, 1, 3, 4, 2)


def _dense(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``h (P, N, I) @ weight (P, O, I)^T + bias (P, O)``."""
    return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))


def encode(params: dict[str, torch.Tensor], x: torch.Tensor, prefix: str = "encoder.") -> tuple[torch.Tensor, torch.Tensor]:
    """``ConvEncoder`` of P stacked models: ``x (P, N, C, 64, 64) -> (mean, logvar)``, each ``(P, N, d)``."""
    w = lambda name: params[prefix + name + ".weight"]  # noqa: E731
    b = lambda name: params[prefix + name + ".bias"]  # noqa: E731
    p, n = x.shape[:2]
    h = x.permute(0, 1, 3, 4, 2)  # (P, N, H, W, C)
    if x.is_floating_point() and torch.is_autocast_enabled(x.device.type):
        # the first GEMM would cast its gathered patches anyway; casting first moves half the bytes
        h = h.to(torch.get_autocast_dtype(x.device.type))
    h = torch.relu(_conv4x4_s2(h, w(_ENCODER_CONVS[0]), b(_ENCODER_CONVS[0])))
    h = torch.relu(_conv4x4_s2(h, w(_ENCODER_CONVS[1]), b(_ENCODER_CONVS[1])))
    h = torch.relu(_conv2x2_s2(h, w(_ENCODER_CONVS[2]), b(_ENCODER_CONVS[2])))
    h = torch.relu(_conv2x2_s2(h, w(_ENCODER_CONVS[3]), b(_ENCODER_CONVS[3])))
    h = h.permute(0, 1, 4, 2, 3).reshape(p, n, -1)  # flatten in the module's NCHW order
    h = torch.relu(_dense(h, w(_ENCODER_DENSE), b(_ENCODER_DENSE)))
    return _dense(h, w("mean"), b("mean")), _dense(h, w("logvar"), b("logvar"))


def decode(params: dict[str, torch.Tensor], z: torch.Tensor, prefix: str = "decoder.") -> torch.Tensor:
    """``DeconvDecoder`` of P stacked models: ``z (P, N, d) -> logits (P, N, C, 64, 64)`` (a channels-last view)."""
    w = lambda name: params[prefix + name + ".weight"]  # noqa: E731
    b = lambda name: params[prefix + name + ".bias"]  # noqa: E731
    p, n = z.shape[:2]
    h = torch.relu(_dense(z, w(_DECODER_DENSE[0]), b(_DECODER_DENSE[0])))
    h = torch.relu(_dense(h, w(_DECODER_DENSE[1]), b(_DECODER_DENSE[1])))
    h = h.view(p, n, 64, 4, 4).permute(0, 1, 3, 4, 2)  # the module's (64, 4, 4) NCHW meaning, as NHWC
    for k, name in enumerate(_DECODER_DECONVS):
        weight = w(name)
        deconv = _deconv4x4_s2_fold if weight.shape[2] < weight.shape[1] else _deconv4x4_s2
        h = deconv(h, weight, b(name))
        if k < len(_DECODER_DECONVS) - 1:
            h = torch.relu(h)
    return h.permute(0, 1, 4, 2, 3)
