"""The study's encoder/decoder architectures (the engine's networks; model plugins build on them).

The study's ``conv`` architecture (spec/study.md §1.2 and §1.3) is the only one so
far. :data:`ARCHITECTURES` maps an architecture name to ``(encoder_cls,
decoder_cls)``, called as ``encoder_cls(observation_shape, num_latent)`` and
``decoder_cls(num_latent, observation_shape)``. An architecture validates the
observation shapes it accepts and raises ``ValueError`` for the others.

Memory layout. We are NCHW throughout, and the reference implementation is
NHWC. This matters in two places only:

* The encoder flattens its ``(N, 64, 4, 4)`` feature map in NCHW order, so
  flat index = ``c * 16 + h * 4 + w`` (channel-major). TF flattens
  ``(N, 4, 4, 64)``, giving ``h * 256 + w * 64 + c``.
* The decoder reshapes its 1024 features to ``(64, 4, 4)`` with the same
  channel-major meaning. TF reshapes them to ``(4, 4, 64)``.

Weights are freshly initialised and never imported, so this is only a
relabelling of the units of the dense layers next to the reshape: it is the
same function family with the same initial distribution. A converter for TF
checkpoints would need to permute the rows of ``e5``'s kernel (and the columns
of the decoder's 1024-unit layer) between the two orders.

Initialisation (spec §1.1). TF1 ``tf.layers`` defaults are Glorot-uniform
kernels and zero biases, with bound ``sqrt(6 / (fan_in + fan_out))``. TF
computes the fans from the kernel shape: the last two dims are (in, out) and
the receptive field is the product of the leading dims. PyTorch's
``xavier_uniform_`` uses the same formula on its own weight layout:

* Dense. TF kernel (in, out): fan_in=in, fan_out=out. torch ``Linear.weight``
  is (out, in), and torch reads dim 1 as fan_in and dim 0 as fan_out, so the
  fans are identical.
* Conv. TF kernel (k, k, in, out): fan_in=k*k*in, fan_out=k*k*out. torch
  ``Conv2d.weight`` (out, in, k, k) gives fan_in=in*k*k and fan_out=out*k*k,
  again identical.
* Transposed conv. TF ``conv2d_transpose`` stores its kernel as
  (k, k, out, in), the kernel of the conv it is the gradient of. TF's
  "fan_in" is therefore k*k*out and its "fan_out" is k*k*in, which is backwards
  relative to the data flow. torch ``ConvTranspose2d.weight`` is (in, out, k, k).
  torch reads dim 1 as fan_in (k*k*out) and dim 0 as fan_out (k*k*in), so it
  swaps them in exactly the same way. Both sides get the same fans, and Glorot
  only depends on their sum anyway, so the bound is
  ``sqrt(6 / (k*k*(in + out)))`` in both frameworks.

Padding. TF ``"same"`` with a 4x4 kernel and stride 2 on an even input pads 1
on each side, which is ``padding=1``. With a 2x2 kernel and stride 2 it pads
nothing (``padding=0``). The transposed convs with k=4, s=2, p=1 are the
gradients of those same padded convs, so they double the size with TF's
alignment.
"""

from __future__ import annotations

import torch
from torch import nn

#: Spatial size the conv architecture is built for (spec §1.1: 64x64 inputs).
CONV_IMAGE_SIZE = 64


def glorot_uniform_zero_bias(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases for every conv, transposed conv and dense layer.

    These are the TF1 ``tf.layers`` defaults (spec §1.1). See the module
    docstring for why torch's fans equal TF's for every layer type.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def _check_conv_observation_shape(observation_shape: tuple[int, ...]) -> int:
    """Returns the channel count C of a ``(C, 64, 64)`` shape and rejects anything else."""
    shape = tuple(int(s) for s in observation_shape)
    if len(shape) != 3:
        raise ValueError(f"observation_shape must be (C, H, W); got {shape}")
    num_channels, height, width = shape
    if num_channels < 1 or height != CONV_IMAGE_SIZE or width != CONV_IMAGE_SIZE:
        raise ValueError(
            f"the 'conv' architecture needs observations of shape (C, {CONV_IMAGE_SIZE}, {CONV_IMAGE_SIZE}) "
            f"with C >= 1 (spec §1.2); got {shape}"
        )
    return num_channels


class ConvEncoder(nn.Module):
    """The study's conv encoder (spec §1.2): ``x (N,C,64,64) -> (mean, logvar)``, each ``(N, num_latent)``.

    The class names its own layers (``CONV_LAYERS`` and so on) so that code which
    computes this network from stacked parameters (the packed trainer's batched
    kernels) reads the layout from here instead of hard-coding it; a test checks
    that the names are the modules built below.
    """

    #: Submodule names of the four convolutions, in order, and their (kernel, stride, padding).
    CONV_LAYERS = ("convs.0", "convs.2", "convs.4", "convs.6")
    CONV_GEOMETRY = ((4, 2, 1), (4, 2, 1), (2, 2, 0), (2, 2, 0))
    #: The dense layer after the NCHW flatten (e5), and the two linear heads.
    DENSE_LAYER = "convs.9"
    MEAN_LAYER = "mean"
    LOGVAR_LAYER = "logvar"

    def __init__(self, observation_shape: tuple[int, int, int], num_latent: int):
        super().__init__()
        num_channels = _check_conv_observation_shape(observation_shape)
        self.convs = nn.Sequential(
            nn.Conv2d(num_channels, 32, kernel_size=4, stride=2, padding=1),  # e1 -> 32x32
            nn.ReLU(),
            nn.Conv2d(32, 32, kernel_size=4, stride=2, padding=1),  # e2 -> 16x16
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=2, stride=2, padding=0),  # e3 -> 8x8
            nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=2, stride=2, padding=0),  # e4 -> 4x4
            nn.ReLU(),
            nn.Flatten(),  # NCHW order, see the module docstring
            nn.Linear(64 * 4 * 4, 256),  # e5
            nn.ReLU(),
        )
        self.mean = nn.Linear(256, num_latent)
        self.logvar = nn.Linear(256, num_latent)
        glorot_uniform_zero_bias(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.convs(x)
        return self.mean(hidden), self.logvar(hidden)


class DeconvDecoder(nn.Module):
    """The study's deconv decoder (spec §1.3): ``z (N, num_latent) -> logits (N,C,64,64)``.

    Like :class:`ConvEncoder`, it names its layers for code that computes it from stacked parameters.
    """

    #: Submodule names of the two dense layers, then of the four transposed convolutions.
    DENSE_LAYERS = ("dense.0", "dense.2")
    DECONV_LAYERS = ("deconvs.0", "deconvs.2", "deconvs.4", "deconvs.6")
    #: (kernel, stride, padding) shared by every transposed convolution.
    DECONV_GEOMETRY = (4, 2, 1)

    def __init__(self, num_latent: int, observation_shape: tuple[int, int, int]):
        super().__init__()
        num_channels = _check_conv_observation_shape(observation_shape)
        self.dense = nn.Sequential(
            nn.Linear(num_latent, 256),
            nn.ReLU(),
            nn.Linear(256, 1024),
            nn.ReLU(),
            nn.Unflatten(1, (64, 4, 4)),  # NCHW order, see the module docstring
        )
        self.deconvs = nn.Sequential(
            nn.ConvTranspose2d(64, 64, kernel_size=4, stride=2, padding=1),  # -> 8x8
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, kernel_size=4, stride=2, padding=1),  # -> 16x16
            nn.ReLU(),
            nn.ConvTranspose2d(32, 32, kernel_size=4, stride=2, padding=1),  # -> 32x32
            nn.ReLU(),
            nn.ConvTranspose2d(32, num_channels, kernel_size=4, stride=2, padding=1),  # -> 64x64, logits
        )
        glorot_uniform_zero_bias(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconvs(self.dense(z))


#: Architecture name -> (encoder class, decoder class). ``ModelConfig.architecture`` selects one.
ARCHITECTURES: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "conv": (ConvEncoder, DeconvDecoder),
}
