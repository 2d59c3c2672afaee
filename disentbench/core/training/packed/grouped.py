"""The study's conv encoder and deconv decoder for P stacked models, as cuDNN grouped convolutions in NHWC.

The third formulation of the packed trainer's encoder/decoder (next to
``vmap`` and ``bmm``, see :class:`~disentbench.core.training.packed.trainer.SpeedOptions`).
The P models' activations live in *one* image batch of ``P * C`` channels,
``(N, P*C, H, W)`` in channels-last memory (NHWC, cuDNN's tensor-core
layout), and every convolution is one ``groups=P`` convolution on it:

* stacked weights ``(P, O, C, k, k)`` (``(P, C, O, k, k)`` for transposed
  convolutions) are *views* as the grouped weight ``(P*O, C, k, k)``
  (``(P*C, O, k, k)``), biases ``(P, O)`` as ``(P*O,)``, so the parameters,
  checkpoints and Adam state are the same tensors as in the other
  formulations. With ``channels_last`` (on by default on CUDA) the packed
  trainer stores the stacked weights so that these views are channels-last
  and the batch so that the grouped image batch is a view too; otherwise
  :func:`_nhwc` copies them;
* the activations stay in that layout from the first convolution to the
  last, with no per-layer permutation (vmap's batching rule for a
  convolution moves the model dimension into the channels and back at every
  layer). Only four small reshapes remain: the input batch into the grouped
  layout, the encoder's ``4x4x64`` features into each model's dense input
  (the module's NCHW flatten order), the decoder's dense output back, and
  the logits, which are a view.

Why keep it next to ``bmm``: the issue's own measurement of this layout
(grouped convolutions, batched matmuls, one Adam, CUDA graph; H200) was
about 2,600 model-steps/s for 128 models in TF32 and 3,850 for 256 in bf16,
more than the ``bmm`` formulation's 1,966 / 2,666, while the grouped
convolutions under vmap, in vmap's per-layer layout, ran their backward as
one kernel per group. Which formulation is fastest depends on the card and
the cuDNN version; ``benchmarks/train_throughput.py --formulation`` measures
them side by side.

Dense layers are batched matmuls over the model dimension, as in
:mod:`disentbench.core.training.packed.bmm`. Everything is plain differentiable
torch code; tests compare with the per-model modules in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from disentbench.core.nets.conv import ConvEncoder
from disentbench.core.training.packed.bmm import (
    _DECODER_DECONVS,
    _ENCODER_CONVS,
    _accessors,
    decoder_head,
    encoder_head,
)

#: (kernel size, stride, padding) of the encoder's convolutions, in order
_ENCODER_GEOMETRY = ConvEncoder.CONV_GEOMETRY


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def _grouped_conv(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """``h (N, P*C, H, W)``, stacked ``weight (P, O, C, k, k)``, ``bias (P, O)``: every model's conv at once."""
    p, o = weight.shape[:2]
    return F.conv2d(h, _nhwc(weight.flatten(0, 1)), bias.reshape(p * o), stride=stride, padding=padding, groups=p)


def _grouped_deconv(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """4x4 stride-2 transposed conv (padding 1) of every model; stacked ``weight (P, C, O, 4, 4)``."""
    p, _, o = weight.shape[:3]
    return F.conv_transpose2d(
        h, _nhwc(weight.flatten(0, 1)), bias.reshape(p * o), stride=2, padding=1, groups=p
    )


def encode(params: dict[str, torch.Tensor], x: torch.Tensor, prefix: str = "encoder.") -> tuple[torch.Tensor, torch.Tensor]:
    """``ConvEncoder`` of P stacked models: ``x (P, N, C, 64, 64) -> (mean, logvar)``, each ``(P, N, d)``."""
    w, b = _accessors(params, prefix)
    p, n, c, height, width = x.shape
    if x.is_floating_point() and torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))  # the first conv would cast it anyway: half the bytes moved
    h = _nhwc(x.transpose(0, 1).reshape(n, p * c, height, width))
    for name, (_, stride, padding) in zip(_ENCODER_CONVS, _ENCODER_GEOMETRY):
        h = torch.relu(_grouped_conv(h, w(name), b(name), stride, padding))
    # (N, P*64, 4, 4) -> (P, N, 64*4*4) in each module's NCHW flatten order
    return encoder_head(params, h.unflatten(1, (p, -1)).transpose(0, 1).flatten(2), prefix)


def decode(params: dict[str, torch.Tensor], z: torch.Tensor, prefix: str = "decoder.") -> torch.Tensor:
    """``DeconvDecoder`` of P stacked models: ``z (P, N, d) -> logits (P, N, C, 64, 64)`` (a view)."""
    w, b = _accessors(params, prefix)
    p, n = z.shape[:2]
    h = _nhwc(decoder_head(params, z, prefix).transpose(0, 1).reshape(n, p * 64, 4, 4))  # each model's (64, 4, 4) NCHW meaning
    for k, name in enumerate(_DECODER_DECONVS):
        h = _grouped_deconv(h, w(name), b(name))
        if k < len(_DECODER_DECONVS) - 1:
            h = torch.relu(h)
    return h.unflatten(1, (p, -1)).transpose(0, 1)
